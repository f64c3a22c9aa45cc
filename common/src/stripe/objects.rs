//! The few fields we read from Stripe objects, in both the older shapes (localstripe,
//! older API versions) and the newer ones (fields moved in 2025 API versions).

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct StripeObject {
    pub id: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Subscription {
    pub id: String,
    #[serde(default)]
    pub customer: Option<String>,
    pub status: String,
    #[serde(default)]
    pub cancel_at_period_end: bool,
    /// On the subscription in older API versions.
    #[serde(default)]
    pub current_period_end: Option<i64>,
    #[serde(default)]
    pub items: Option<ItemList>,
    #[serde(default)]
    pub created: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct SubscriptionList {
    pub data: Vec<Subscription>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ItemList {
    #[serde(default)]
    pub data: Vec<SubscriptionItem>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SubscriptionItem {
    /// On the item since the 2025-03-31 API version.
    #[serde(default)]
    pub current_period_end: Option<i64>,
    #[serde(default)]
    plan: Option<Priced>,
    #[serde(default)]
    price: Option<Priced>,
}

impl Subscription {
    /// Not ended: Stripe may still bill it.
    pub fn is_live(&self) -> bool {
        !matches!(self.status.as_str(), "canceled" | "incomplete_expired")
    }

    /// Whether one of its items is on the given price (or plan).
    pub fn bills_price(&self, price_id: &str) -> bool {
        self.items.iter().flat_map(|l| &l.data).any(|item| {
            item.plan.as_ref().is_some_and(|p| p.id == price_id)
                || item.price.as_ref().is_some_and(|p| p.id == price_id)
        })
    }

    pub fn period_end(&self) -> Option<i64> {
        self.current_period_end.or_else(|| self.items.as_ref()?.data.iter().filter_map(|i| i.current_period_end).max())
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct InvoiceList {
    pub data: Vec<Invoice>,
    /// More, older invoices follow the last of these.
    #[serde(default)]
    pub has_more: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Invoice {
    pub id: String,
    #[serde(default)]
    pub customer: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub amount_due: i64,
    #[serde(default)]
    pub amount_paid: i64,
    #[serde(default)]
    pub currency: Option<String>,
    #[serde(default)]
    pub hosted_invoice_url: Option<String>,
    #[serde(default)]
    pub period_start: Option<i64>,
    #[serde(default)]
    pub period_end: Option<i64>,
    /// When Stripe retries a failed payment next (dunning).
    #[serde(default)]
    pub next_payment_attempt: Option<i64>,
    /// The PaymentIntent that pays it (older API versions; newer ones list payments).
    #[serde(default)]
    pub payment_intent: Option<String>,
    /// Older API versions.
    #[serde(default)]
    subscription: Option<String>,
    /// Newer API versions: `parent.subscription_details.subscription`.
    #[serde(default)]
    parent: Option<InvoiceParent>,
    #[serde(default)]
    lines: Option<LineList>,
}

#[derive(Debug, Clone, Deserialize)]
struct InvoiceParent {
    #[serde(default)]
    subscription_details: Option<SubscriptionDetails>,
}

#[derive(Debug, Clone, Deserialize)]
struct SubscriptionDetails {
    #[serde(default)]
    subscription: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct LineList {
    #[serde(default)]
    data: Vec<Line>,
}

#[derive(Debug, Clone, Deserialize)]
struct Line {
    #[serde(default)]
    plan: Option<Priced>,
    #[serde(default)]
    price: Option<Priced>,
    #[serde(default)]
    pricing: Option<Pricing>,
}

#[derive(Debug, Clone, Deserialize)]
struct Priced {
    id: String,
}

#[derive(Debug, Clone, Deserialize)]
struct Pricing {
    #[serde(default)]
    price_details: Option<PriceDetails>,
}

#[derive(Debug, Clone, Deserialize)]
struct PriceDetails {
    #[serde(default)]
    price: Option<String>,
}

impl Invoice {
    pub fn subscription(&self) -> Option<&str> {
        self.subscription
            .as_deref()
            .or_else(|| self.parent.as_ref()?.subscription_details.as_ref()?.subscription.as_deref())
    }

    /// Whether any line bills the given price (or plan).
    pub fn bills_price(&self, price_id: &str) -> bool {
        self.lines.iter().flat_map(|l| &l.data).any(|line| {
            line.plan.as_ref().is_some_and(|p| p.id == price_id)
                || line.price.as_ref().is_some_and(|p| p.id == price_id)
                || line.pricing.as_ref().and_then(|p| p.price_details.as_ref()).and_then(|d| d.price.as_deref())
                    == Some(price_id)
        })
    }

    pub fn is_paid(&self) -> bool {
        self.status.as_deref() == Some("paid")
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct PaymentIntent {
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub amount: i64,
    #[serde(default)]
    pub metadata: std::collections::HashMap<String, String>,
    #[serde(default)]
    pub last_payment_error: Option<PaymentError>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PaymentError {
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

impl PaymentIntent {
    /// Our charge this PaymentIntent was created for (`metadata.rsolv_charge_id`).
    pub fn charge_id(&self) -> Option<uuid::Uuid> {
        self.metadata.get(CHARGE_ID_METADATA)?.parse().ok()
    }
}

/// The metadata key that ties a PaymentIntent to our charge row.
pub const CHARGE_ID_METADATA: &str = "rsolv_charge_id";

/// One page of a Stripe list.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Page<T> {
    pub data: Vec<T>,
    #[serde(default)]
    pub has_more: bool,
}

/// What a list pages on (`starting_after`).
pub(crate) trait Listed {
    fn id(&self) -> &str;
}

impl Listed for PaymentIntent {
    fn id(&self) -> &str {
        &self.id
    }
}

impl Listed for ChargeRef {
    fn id(&self) -> &str {
        &self.id
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChargeRef {
    pub id: String,
    #[serde(default)]
    pub payment_intent: Option<String>,
    /// Set when the charge paid an invoice (a subscription's), not a fix.
    #[serde(default)]
    pub invoice: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub amount: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct CustomerObject {
    #[serde(default)]
    pub invoice_settings: Option<InvoiceSettings>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct InvoiceSettings {
    #[serde(default)]
    pub default_payment_method: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invoices_are_read_in_old_and_new_shapes() {
        let old: Invoice = serde_json::from_value(serde_json::json!({
            "id": "in_1", "status": "paid", "amount_paid": 59900, "subscription": "sub_1",
            "lines": {"data": [{"plan": {"id": "price_pro"}}]}
        }))
        .unwrap();
        assert_eq!(old.subscription(), Some("sub_1"));
        assert!(old.bills_price("price_pro") && old.is_paid());
        let new: Invoice = serde_json::from_value(serde_json::json!({
            "id": "in_2", "status": "open", "amount_due": 59900,
            "parent": {"subscription_details": {"subscription": "sub_2"}},
            "lines": {"data": [{"pricing": {"price_details": {"price": "price_pro"}}}]}
        }))
        .unwrap();
        assert_eq!(new.subscription(), Some("sub_2"));
        assert!(new.bills_price("price_pro") && !new.bills_price("price_other") && !new.is_paid());
    }

    #[test]
    fn subscription_period_end_is_found_where_the_api_version_puts_it() {
        let old: Subscription =
            serde_json::from_value(serde_json::json!({"id": "sub", "status": "active", "current_period_end": 10}))
                .unwrap();
        assert_eq!(old.period_end(), Some(10));
        let new: Subscription = serde_json::from_value(serde_json::json!({
            "id": "sub", "status": "active", "items": {"data": [{"current_period_end": 20}]}
        }))
        .unwrap();
        assert_eq!(new.period_end(), Some(20));
    }
}

/// A SetupIntent, as the dashboard's card form needs it.
#[derive(Debug, Clone, Deserialize)]
pub struct SetupIntent {
    pub id: String,
    /// What Stripe.js confirms it with; shown to the customer's browser only.
    pub client_secret: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PaymentMethodObject {
    pub id: String,
    /// The Stripe customer it is attached to; none once detached.
    #[serde(default)]
    pub customer: Option<String>,
    #[serde(default)]
    pub created: i64,
    #[serde(default)]
    pub card: Option<CardSummary>,
}

/// Which card: enough to recognise it, nothing to charge it with.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
pub struct CardSummary {
    #[serde(default)]
    pub brand: Option<String>,
    #[serde(default)]
    pub last4: Option<String>,
    #[serde(default)]
    pub exp_month: Option<i64>,
    #[serde(default)]
    pub exp_year: Option<i64>,
}

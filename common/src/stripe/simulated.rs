//! Realistic Stripe events of the five types we act on, in the shapes Stripe sends
//! them: for `rsolv-worker simulate-webhook`, the demo and the tests (`testing` feature).

use serde_json::{Value, json};

use super::events::Handled;

/// What a simulated event is about.
#[derive(Debug, Clone)]
pub struct Simulated {
    pub event_id: String,
    pub created: i64,
    pub stripe_customer_id: String,
    pub subscription_id: String,
    pub price_id: String,
    pub amount_cents: i64,
    pub currency: String,
    /// For subscription events.
    pub status: String,
    pub cancel_at_period_end: bool,
    pub period_start: i64,
    pub period_end: i64,
    /// For invoice events.
    pub invoice_id: String,
}

fn random_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..14].to_owned()
}

impl Simulated {
    /// Sensible values for a customer's Pro subscription, created now.
    pub fn new(stripe_customer_id: &str, subscription_id: &str, price_id: &str, amount_cents: i64) -> Self {
        let now = chrono::Utc::now().timestamp();
        Self {
            event_id: format!("evt_{}", random_suffix()),
            created: now,
            stripe_customer_id: stripe_customer_id.to_owned(),
            subscription_id: subscription_id.to_owned(),
            price_id: price_id.to_owned(),
            amount_cents,
            currency: "usd".into(),
            status: "active".into(),
            cancel_at_period_end: false,
            period_start: now,
            period_end: now + 30 * 86_400,
            invoice_id: format!("in_{}", random_suffix()),
        }
    }

    /// A full event as Stripe delivers it (API version 2024-06-20 shapes).
    pub fn event(&self, kind: Handled) -> Value {
        let object = match kind {
            Handled::InvoicePaymentSucceeded => self.invoice(true),
            Handled::InvoicePaymentFailed => self.invoice(false),
            Handled::SubscriptionCreated | Handled::SubscriptionUpdated => self.subscription(&self.status),
            Handled::SubscriptionDeleted => self.subscription("canceled"),
        };
        json!({
            "id": self.event_id,
            "object": "event",
            "api_version": "2024-06-20",
            "created": self.created,
            "data": { "object": object, "previous_attributes": {} },
            "livemode": false,
            "pending_webhooks": 1,
            "request": { "id": null, "idempotency_key": null },
            "type": kind.as_str(),
        })
    }

    fn price(&self) -> Value {
        json!({
            "id": self.price_id, "object": "price", "active": true, "currency": self.currency,
            "unit_amount": self.amount_cents, "type": "recurring",
            "recurring": { "interval": "month", "interval_count": 1, "usage_type": "licensed" },
        })
    }

    fn invoice(&self, paid: bool) -> Value {
        json!({
            "id": self.invoice_id,
            "object": "invoice",
            "customer": self.stripe_customer_id,
            "subscription": self.subscription_id,
            "billing_reason": "subscription_cycle",
            "collection_method": "charge_automatically",
            "currency": self.currency,
            "amount_due": self.amount_cents,
            "amount_paid": if paid { self.amount_cents } else { 0 },
            "amount_remaining": if paid { 0 } else { self.amount_cents },
            "attempt_count": 1,
            "attempted": true,
            "paid": paid,
            "status": if paid { "paid" } else { "open" },
            "hosted_invoice_url": format!("https://invoice.stripe.com/i/{}", self.invoice_id),
            "next_payment_attempt": if paid { Value::Null } else { json!(self.created + 3 * 86_400) },
            "period_start": self.period_start,
            "period_end": self.period_end,
            "created": self.created,
            "livemode": false,
            "lines": {
                "object": "list",
                "has_more": false,
                "data": [{
                    "id": format!("il_{}", random_suffix()),
                    "object": "line_item",
                    "amount": self.amount_cents,
                    "currency": self.currency,
                    "description": "1 × RSOLV Pro",
                    "period": { "start": self.period_start, "end": self.period_end },
                    "plan": { "id": self.price_id, "object": "plan", "amount": self.amount_cents, "interval": "month" },
                    "price": self.price(),
                    "proration": false,
                    "quantity": 1,
                    "type": "subscription",
                }],
            },
        })
    }

    fn subscription(&self, status: &str) -> Value {
        json!({
            "id": self.subscription_id,
            "object": "subscription",
            "customer": self.stripe_customer_id,
            "status": status,
            "cancel_at_period_end": self.cancel_at_period_end,
            "canceled_at": if status == "canceled" { json!(self.created) } else { Value::Null },
            "collection_method": "charge_automatically",
            "created": self.period_start,
            "current_period_start": self.period_start,
            "current_period_end": self.period_end,
            "livemode": false,
            "items": {
                "object": "list",
                "data": [{
                    "id": format!("si_{}", random_suffix()),
                    "object": "subscription_item",
                    "price": self.price(),
                    "quantity": 1,
                    "current_period_start": self.period_start,
                    "current_period_end": self.period_end,
                }],
            },
        })
    }
}

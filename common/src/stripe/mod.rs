//! The one Stripe client, and the minimal shapes of what we read from Stripe.
//!
//! # Guide
//!
//! Requests are async-stripe's typed builders, sent by its client with a Stripe
//! `Idempotency-Key` derived from our own ids on every mutating call, so a retried job
//! never creates a second customer, subscription or charge at Stripe.
//!
//! Responses are read into our own minimal types (`objects`): async-stripe's full types
//! follow today's API shapes and fail on older ones, such as localstripe's (the Stripe
//! emulator the tests and demo use), which lack newer fields. So each request is sent
//! with `.customize::<miniserde::json::Value>()` and the JSON is decoded into the few
//! fields we use, accepting both the older and the newer field locations. Against real
//! Stripe this reads the same fields.
//!
//! Webhook events are verified and decoded here too (`signature`, `events`), in our
//! own code: async-stripe-webhook refuses events that lack newer fields.

pub mod events;
pub mod objects;
pub mod signature;
#[cfg(any(test, feature = "testing"))]
pub mod simulated;

use std::collections::HashMap;

use serde::de::DeserializeOwned;
use stripe::{ApiErrorsType, Client, ClientBuilder, StripeError};
use stripe_billing::invoice::{ListInvoice, RetrieveInvoice};
use stripe_billing::subscription::{
    CancelSubscription, CreateSubscription, CreateSubscriptionItems, ListSubscription, RetrieveSubscription,
    UpdateSubscription,
};
use stripe_client_core::{IdempotencyKey, RequestBuilder, RequestStrategy, StripeMethod, StripeRequest};
use stripe_core::customer::{CreateCustomer, UpdateCustomer, UpdateCustomerInvoiceSettings};
use stripe_core::payment_intent::{CreatePaymentIntent, CreatePaymentIntentOffSession, RetrievePaymentIntent};
use stripe_payment::payment_method::AttachPaymentMethod;
use uuid::Uuid;

use crate::config::StripeSettings;
use objects::SubscriptionList;
pub use objects::{Invoice, InvoiceList, PaymentIntent, StripeObject, Subscription};

/// A list request: one customer's objects created after `since`, 100 a page.
fn list_request(path: &str, stripe_customer: &str, since: i64, starting_after: Option<&str>) -> RequestBuilder {
    #[derive(serde::Serialize)]
    struct After {
        gt: i64,
    }
    #[derive(serde::Serialize)]
    struct Query<'a> {
        customer: &'a str,
        created: After,
        limit: u8,
        #[serde(skip_serializing_if = "Option::is_none")]
        starting_after: Option<&'a str>,
    }
    let query = Query { customer: stripe_customer, created: After { gt: since }, limit: 100, starting_after };
    RequestBuilder::new(StripeMethod::Get, path).query(&query)
}

/// How a Stripe call failed, as far as a job needs to know.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The card was declined (402): a business outcome, not worth a retry.
    #[error("card declined: {message}")]
    Declined { code: String, message: String },
    /// Stripe refused the request (4xx): retrying the same request will not help.
    #[error("stripe refused the request ({status}): {message}")]
    Rejected { status: u16, message: String },
    /// The Idempotency-Key was used before with other parameters: what the first
    /// request did has to be looked up, not repeated.
    #[error("stripe idempotency conflict: {0}")]
    IdempotencyConflict(String),
    /// Network, timeout, 5xx, 409 or 429: try again later.
    #[error("stripe unavailable: {0}")]
    Unavailable(String),
}

impl From<StripeError> for CallError {
    fn from(error: StripeError) -> Self {
        match error {
            StripeError::Stripe(api, _) if api.type_ == ApiErrorsType::IdempotencyError => {
                Self::IdempotencyConflict(api.message.unwrap_or_default())
            }
            StripeError::Stripe(api, 402) => Self::Declined {
                code: api.code.map(|c| c.to_string()).unwrap_or_else(|| "card_declined".into()),
                message: api.message.unwrap_or_default(),
            },
            StripeError::Stripe(api, status) if (400..500).contains(&status) && ![409, 429].contains(&status) => {
                Self::Rejected { status, message: api.message.unwrap_or_default() }
            }
            other => Self::Unavailable(other.to_string()),
        }
    }
}

#[derive(Clone)]
pub struct StripeApi {
    client: Client,
    pro_price_id: String,
}

impl StripeApi {
    pub fn new(settings: &StripeSettings, pro_price_id: &str) -> Result<Self, CallError> {
        let client = ClientBuilder::new(settings.secret_key.expose())
            .url(settings.api_base.clone())
            .timeout(settings.timeout)
            .build()
            .map_err(|e| CallError::Unavailable(format!("client configuration: {e}")))?;
        Ok(Self { client, pro_price_id: pro_price_id.to_owned() })
    }

    pub fn pro_price_id(&self) -> &str {
        &self.pro_price_id
    }

    async fn send<T: DeserializeOwned>(&self, request: RequestBuilder, key: Option<&str>) -> Result<T, CallError> {
        let mut request = request.customize::<miniserde::json::Value>();
        if let Some(key) = key {
            let key =
                IdempotencyKey::new(key).map_err(|e| CallError::Rejected { status: 0, message: e.to_string() })?;
            request = request.request_strategy(RequestStrategy::Idempotent(key));
        }
        let json = request.send(&self.client).await?;
        serde_json::from_str(&miniserde::json::to_string(&json))
            .map_err(|e| CallError::Unavailable(format!("unexpected response shape: {e}")))
    }

    /// The Stripe customer of one of ours, tagged with `rsolv_customer_id`.
    pub async fn create_customer(&self, customer_id: Uuid, email: &str, name: &str) -> Result<StripeObject, CallError> {
        let metadata = HashMap::from([("rsolv_customer_id".to_owned(), customer_id.to_string())]);
        let request = CreateCustomer::new().email(email).name(name).metadata(metadata).build();
        self.send(request, Some(&format!("rsolv-customer-{customer_id}"))).await
    }

    /// Attaches a payment method and makes it the default for invoices; returns the
    /// attached method's id (attaching a token such as `pm_card_visa` yields a new id).
    pub async fn attach_default_payment_method(
        &self,
        stripe_customer: &str,
        payment_method: &str,
        operation: Uuid,
    ) -> Result<String, CallError> {
        let attach = AttachPaymentMethod::new(payment_method).customer(stripe_customer).build();
        let attached: StripeObject = self.send(attach, Some(&format!("rsolv-attach-{operation}"))).await?;
        self.set_default_payment_method(stripe_customer, &attached.id, operation).await?;
        Ok(attached.id)
    }

    /// Makes an attached payment method the default for the customer's invoices.
    pub async fn set_default_payment_method(
        &self,
        stripe_customer: &str,
        payment_method: &str,
        operation: Uuid,
    ) -> Result<(), CallError> {
        let mut invoice_settings = UpdateCustomerInvoiceSettings::new();
        invoice_settings.default_payment_method = Some(payment_method.to_owned());
        let update = UpdateCustomer::new(stripe_customer).invoice_settings(invoice_settings).build();
        // The card is in the key: a retried operation that settles on another card asks
        // for that, rather than for a replay of the first answer.
        let _: StripeObject =
            self.send(update, Some(&format!("rsolv-default-pm-{operation}-{payment_method}"))).await?;
        Ok(())
    }

    /// The customer's cards at Stripe, newest first.
    pub async fn payment_methods(&self, stripe_customer: &str) -> Result<Vec<objects::PaymentMethodObject>, CallError> {
        #[derive(serde::Serialize)]
        struct Query<'a> {
            customer: &'a str,
            #[serde(rename = "type")]
            kind: &'static str,
            limit: u8,
        }
        let query = Query { customer: stripe_customer, kind: "card", limit: 100 };
        let page: objects::Page<objects::PaymentMethodObject> =
            self.send(RequestBuilder::new(StripeMethod::Get, "/payment_methods").query(&query), None).await?;
        let mut methods = page.data;
        methods.sort_by_key(|m| std::cmp::Reverse(m.created));
        Ok(methods)
    }

    /// A payment method as Stripe has it (whose it is, which card).
    pub async fn payment_method(&self, payment_method: &str) -> Result<objects::PaymentMethodObject, CallError> {
        self.send(RequestBuilder::new(StripeMethod::Get, format!("/payment_methods/{payment_method}")), None).await
    }

    /// Detaches a payment method from its customer: it can pay for nothing any more.
    pub async fn detach_payment_method(&self, payment_method: &str, operation: Uuid) -> Result<(), CallError> {
        let request = RequestBuilder::new(StripeMethod::Post, format!("/payment_methods/{payment_method}/detach"));
        let _: StripeObject = self.send(request, Some(&format!("rsolv-detach-{operation}"))).await?;
        Ok(())
    }

    /// Pro on the configured price, sent as the item's `plan` (Stripe accepts a recurring
    /// price id there; localstripe knows only plans), no trial.
    pub async fn create_pro_subscription(
        &self,
        stripe_customer: &str,
        operation: Uuid,
    ) -> Result<Subscription, CallError> {
        let mut item = CreateSubscriptionItems::new();
        item.plan = Some(self.pro_price_id.clone());
        let request = CreateSubscription::new().customer(stripe_customer).items(vec![item]).build();
        self.send(request, Some(&format!("rsolv-subscribe-{operation}"))).await
    }

    /// The customer's live (not canceled) subscriptions on the Pro price, newest first:
    /// what a subscribe looks for before creating one, so that an earlier attempt whose
    /// answer was lost (a crash, a timeout) is adopted rather than doubled; and what
    /// reconciliation compares with ours.
    pub async fn live_pro_subscriptions(&self, stripe_customer: &str) -> Result<Vec<Subscription>, CallError> {
        let request = ListSubscription::new().customer(stripe_customer).limit(100).build();
        let list: SubscriptionList = self.send(request, None).await?;
        let mut live: Vec<_> =
            list.data.into_iter().filter(|s| s.is_live() && s.bills_price(&self.pro_price_id)).collect();
        live.sort_by_key(|s| std::cmp::Reverse(s.created));
        Ok(live)
    }

    /// The customer's default payment method for invoices, as Stripe has it.
    pub async fn default_payment_method(&self, stripe_customer: &str) -> Result<Option<String>, CallError> {
        let customer: objects::CustomerObject =
            self.send(RequestBuilder::new(StripeMethod::Get, format!("/customers/{stripe_customer}")), None).await?;
        Ok(customer.invoice_settings.and_then(|s| s.default_payment_method))
    }

    /// The customer's charges created after `since` (unix seconds), paid or not, every page.
    pub async fn charges_since(&self, stripe_customer: &str, since: i64) -> Result<Vec<objects::ChargeRef>, CallError> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page: objects::Page<objects::ChargeRef> =
                self.send(list_request("/charges", stripe_customer, since, after.as_deref()), None).await?;
            after = page.data.last().map(|c| c.id.clone());
            all.extend(page.data);
            if !page.has_more || after.is_none() {
                return Ok(all);
            }
        }
    }

    pub async fn invoice(&self, id: &str) -> Result<Invoice, CallError> {
        self.send(RetrieveInvoice::new(id).build(), None).await
    }

    pub async fn subscription(&self, id: &str) -> Result<Subscription, CallError> {
        self.send(RetrieveSubscription::new(id).build(), None).await
    }

    pub async fn cancel_at_period_end(&self, id: &str, operation: Uuid) -> Result<Subscription, CallError> {
        let request = UpdateSubscription::new(id).cancel_at_period_end(true).build();
        self.send(request, Some(&format!("rsolv-cancel-later-{operation}"))).await
    }

    /// Withdraws a scheduled cancellation.
    pub async fn resume(&self, id: &str, operation: Uuid) -> Result<Subscription, CallError> {
        let request = UpdateSubscription::new(id).cancel_at_period_end(false).build();
        self.send(request, Some(&format!("rsolv-resume-{operation}"))).await
    }

    pub async fn cancel_now(&self, id: &str, operation: Uuid) -> Result<Subscription, CallError> {
        self.send(CancelSubscription::new(id).build(), Some(&format!("rsolv-cancel-now-{operation}"))).await
    }

    /// The newest invoices of a customer, optionally of one subscription.
    pub async fn invoices(&self, stripe_customer: &str, subscription: Option<&str>) -> Result<Vec<Invoice>, CallError> {
        let mut request = ListInvoice::new().customer(stripe_customer).limit(24);
        if let Some(subscription) = subscription {
            request = request.subscription(subscription);
        }
        let list: InvoiceList = self.send(request.build(), None).await?;
        Ok(list.data)
    }

    /// A page of a customer's invoices, newest first: `per_page` of them older than the
    /// invoice `after` (the last of the page before).
    pub async fn invoices_page(
        &self,
        stripe_customer: &str,
        after: Option<&str>,
        per_page: i64,
    ) -> Result<InvoiceList, CallError> {
        let mut request = ListInvoice::new().customer(stripe_customer).limit(per_page);
        if let Some(after) = after {
            request = request.starting_after(after);
        }
        self.send(request.build(), None).await
    }

    /// A SetupIntent for the dashboard's card form: Stripe.js confirms it with the card,
    /// and the payment method it yields is then added as the API adds one (attached,
    /// made the default, by the `add_payment_method` job). It names no customer, so
    /// that attaching is that job's alone.
    pub async fn create_setup_intent(&self) -> Result<objects::SetupIntent, CallError> {
        #[derive(serde::Serialize)]
        struct Form {
            usage: &'static str,
            #[serde(rename = "payment_method_types[]")]
            types: &'static str,
        }
        let request = RequestBuilder::new(StripeMethod::Post, "/setup_intents")
            .form(&Form { usage: "off_session", types: "card" });
        self.send(request, None).await
    }

    pub async fn payment_intent(&self, id: &str) -> Result<PaymentIntent, CallError> {
        self.send(RetrievePaymentIntent::new(id).build(), None).await
    }

    /// The customer's PaymentIntent created after `since` (unix seconds) that `wanted`
    /// picks: how a charge whose answer was lost is found again without relying on
    /// Stripe's Idempotency-Key (kept 24 h; ignored by localstripe). Read from Stripe's
    /// PaymentIntent list by customer, page by page (it holds `requires_action` intents,
    /// which have no charge yet); where that list cannot filter by customer
    /// (localstripe's), from the customer's charges and their intents.
    pub async fn find_payment_intent(
        &self,
        stripe_customer: &str,
        since: i64,
        wanted: impl Fn(&PaymentIntent) -> bool,
    ) -> Result<Option<PaymentIntent>, CallError> {
        match self.list_since::<PaymentIntent>("/payment_intents", stripe_customer, since, |pi| wanted(pi)).await {
            Err(CallError::Rejected { status: 400, .. }) => {}
            found => return found,
        }
        let mut seen = std::collections::HashSet::new();
        let mut found = None;
        let mut after: Option<String> = None;
        loop {
            let page: objects::Page<objects::ChargeRef> =
                self.send(list_request("/charges", stripe_customer, since, after.as_deref()), None).await?;
            for intent in page.data.iter().filter_map(|c| c.payment_intent.as_deref()) {
                if seen.insert(intent.to_owned()) {
                    let intent = self.payment_intent(intent).await?;
                    if wanted(&intent) {
                        found = Some(intent);
                        break;
                    }
                }
            }
            if found.is_some() || !page.has_more {
                return Ok(found);
            }
            after = page.data.last().map(|c| c.id.clone());
        }
    }

    /// Pages through a list filtered by customer and creation time until `wanted` picks one.
    async fn list_since<T: DeserializeOwned + objects::Listed>(
        &self,
        path: &str,
        stripe_customer: &str,
        since: i64,
        wanted: impl Fn(&T) -> bool,
    ) -> Result<Option<T>, CallError> {
        let mut after: Option<String> = None;
        loop {
            let page: objects::Page<T> =
                self.send(list_request(path, stripe_customer, since, after.as_deref()), None).await?;
            let more = page.has_more;
            after = page.data.last().map(|item| item.id().to_owned());
            if let Some(found) = page.data.into_iter().find(|item| wanted(item)) {
                return Ok(Some(found));
            }
            if !more || after.is_none() {
                return Ok(None);
            }
        }
    }

    /// Charges a saved card off-session and confirms at once.
    pub async fn charge(
        &self,
        stripe_customer: &str,
        payment_method: &str,
        amount_cents: i64,
        currency: &str,
        idempotency_key: &str,
        metadata: HashMap<String, String>,
    ) -> Result<PaymentIntent, CallError> {
        let currency: stripe_types::Currency = currency
            .parse()
            .map_err(|_| CallError::Rejected { status: 0, message: format!("unknown currency {currency}") })?;
        let request = CreatePaymentIntent::new(amount_cents, currency)
            .customer(stripe_customer)
            .payment_method(payment_method)
            .confirm(true)
            .off_session(CreatePaymentIntentOffSession::Bool(true))
            .metadata(metadata)
            .build();
        self.send(request, Some(idempotency_key)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stripe_error(body: &str, status: u16) -> CallError {
        let api: stripe::ApiErrors = miniserde::json::from_str(body).expect("an error body as Stripe sends it");
        CallError::from(StripeError::Stripe(Box::new(api), status))
    }

    #[test]
    fn an_idempotency_error_is_resolved_not_refused() {
        let reused = r#"{"type": "idempotency_error", "message": "Keys for idempotent requests can only be used with the same parameters they were first used with."}"#;
        assert!(matches!(stripe_error(reused, 400), CallError::IdempotencyConflict(_)));
        let declined = r#"{"type": "card_error", "code": "card_declined", "message": "Your card was declined."}"#;
        assert!(matches!(stripe_error(declined, 402), CallError::Declined { .. }));
        let invalid = r#"{"type": "invalid_request_error", "message": "No such customer"}"#;
        assert!(matches!(stripe_error(invalid, 404), CallError::Rejected { status: 404, .. }));
        let busy = r#"{"type": "api_error", "message": "Too many requests"}"#;
        assert!(matches!(stripe_error(busy, 429), CallError::Unavailable(_)));
    }
}

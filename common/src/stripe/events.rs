//! Stripe events: the envelope we decode, the five types we act on, and realistic
//! events built for the webhook simulator and the tests.

use serde::Deserialize;
use serde_json::{Value, json};

/// The parts of an event every handler needs. `data.object` stays JSON until a
/// handler decodes the fields it uses.
#[derive(Debug, Clone, Deserialize)]
pub struct Envelope {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(deserialize_with = "crate::domain::integral")]
    pub created: i64,
    pub data: EventData,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EventData {
    pub object: Value,
}

impl Envelope {
    pub fn decode(body: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(body)
    }
}

/// The event types that change our state; every other type is recorded and ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    InvoicePaymentSucceeded,
    InvoicePaymentFailed,
    SubscriptionCreated,
    SubscriptionUpdated,
    SubscriptionDeleted,
}

impl Handled {
    pub const ALL: [Handled; 5] = [
        Self::InvoicePaymentSucceeded,
        Self::InvoicePaymentFailed,
        Self::SubscriptionCreated,
        Self::SubscriptionUpdated,
        Self::SubscriptionDeleted,
    ];

    pub fn parse(kind: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|h| h.as_str() == kind)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvoicePaymentSucceeded => "invoice.payment_succeeded",
            Self::InvoicePaymentFailed => "invoice.payment_failed",
            Self::SubscriptionCreated => "customer.subscription.created",
            Self::SubscriptionUpdated => "customer.subscription.updated",
            Self::SubscriptionDeleted => "customer.subscription.deleted",
        }
    }

    /// Orders state changes of the same second: a later stage wins a tie.
    pub fn rank(self) -> i16 {
        match self {
            Self::SubscriptionCreated => 1,
            Self::SubscriptionUpdated | Self::InvoicePaymentFailed | Self::InvoicePaymentSucceeded => 2,
            Self::SubscriptionDeleted => 3,
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stripe::objects::{Invoice, Subscription};

    #[test]
    fn simulated_events_decode_into_what_the_handlers_read() {
        let sim = Simulated::new("cus_1", "sub_1", "price_pro", 59_900);
        for kind in Handled::ALL {
            let body = serde_json::to_vec(&sim.event(kind)).unwrap();
            let envelope = Envelope::decode(&body).unwrap();
            assert_eq!(Handled::parse(&envelope.kind), Some(kind));
            assert_eq!(envelope.id, sim.event_id);
        }
        let paid = sim.event(Handled::InvoicePaymentSucceeded);
        let invoice: Invoice = serde_json::from_value(paid["data"]["object"].clone()).unwrap();
        assert!(invoice.is_paid() && invoice.bills_price("price_pro"));
        let deleted = sim.event(Handled::SubscriptionDeleted);
        let subscription: Subscription = serde_json::from_value(deleted["data"]["object"].clone()).unwrap();
        assert_eq!(subscription.status, "canceled");
        assert_eq!(Handled::parse("charge.refunded"), None);
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;
    use crate::stripe::objects::{Invoice, Subscription};

    proptest! {
        /// Any bytes decode or fail cleanly, as envelopes and as the objects we read.
        #[test]
        fn any_bytes_decode_or_fail_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let _ = Envelope::decode(&bytes);
            let _ = serde_json::from_slice::<Invoice>(&bytes);
            let _ = serde_json::from_slice::<Subscription>(&bytes);
        }

        /// Realistic events with random field values still decode or fail cleanly.
        #[test]
        fn mutated_events_decode_or_fail_cleanly(id in ".{0,40}", created in any::<i64>(), amount in any::<i64>(), status in ".{0,20}") {
            let mut sim = Simulated::new("cus_1", "sub_1", "price_1", amount);
            sim.event_id = id;
            sim.created = created;
            sim.status = status;
            for kind in Handled::ALL {
                let body = serde_json::to_vec(&sim.event(kind)).unwrap();
                let envelope = Envelope::decode(&body).unwrap();
                prop_assert_eq!(envelope.created, created);
                let _ = serde_json::from_value::<Invoice>(envelope.data.object.clone());
                let _ = serde_json::from_value::<Subscription>(envelope.data.object);
            }
        }
    }
}

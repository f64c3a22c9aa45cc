//! Stripe events: the envelope we decode and the five types we act on. Realistic
//! events for the webhook simulator and the tests are built in [`super::simulated`].

use serde::Deserialize;
use serde_json::Value;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stripe::objects::{Invoice, Subscription};
    use crate::stripe::simulated::Simulated;

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
    use crate::stripe::simulated::Simulated;

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

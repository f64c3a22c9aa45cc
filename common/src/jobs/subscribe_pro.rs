//! Subscribe to Pro: a Stripe subscription on the configured price, no trial. No
//! credits here: they come with the paid invoice (`invoice.payment_succeeded`, or the
//! renewal sweep when that webhook is missing).
//!
//! One subscription per customer: the API enqueues at most one unfinished subscribe per
//! customer (decided under the customer's row lock), and this job asks Stripe for a
//! live Pro subscription of the customer before creating one, so an earlier attempt
//! whose answer was lost (a crash after Stripe's success, a timeout) is adopted rather
//! than doubled. Stripe's Idempotency-Key is sent too, but not relied on.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{JobContext, stripe_failure};
use crate::db::{self, customers::Observed};
use crate::queue::{Job, JobError, JobKind, Outcome, RetryPolicy};
use crate::stripe::CallError;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubscribePro {
    pub customer_id: Uuid,
    pub operation_id: Uuid,
}

impl JobKind for SubscribePro {
    const KIND: &'static str = "subscribe_pro";
    const RETRY: RetryPolicy = RetryPolicy::new(10, 5).timeout(Duration::from_secs(180));

    fn unique_key(&self) -> Option<String> {
        Some(self.operation_id.to_string())
    }

    fn customer_id(&self) -> Option<Uuid> {
        Some(self.customer_id)
    }
}

impl Job for SubscribePro {
    type Context = JobContext;

    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        let stripe = ctx.stripe()?;
        let customer = ctx.customer(self.customer_id).await?;
        if customer.stripe_payment_method_id.is_none() {
            return Ok(Outcome::cancel("NO_PAYMENT_METHOD: add a payment method first"));
        }
        let Some(stripe_customer) = customer.stripe_customer_id else {
            return Err(JobError::new("the Stripe customer is not created yet"));
        };
        // Under the customer's Stripe-state lock from here to commit: two runs of a
        // subscribe (a redriven dead one beside a new one) take turns, and the second
        // finds the first's subscription at Stripe.
        let mut tx = ctx.pool.begin().await?;
        db::customers::lock_stripe_state(&mut tx, customer.id).await?;
        // Read again under the lock: a card removed since is not there to pay for Pro.
        let Some(locked) = db::customers::find(&mut *tx, customer.id).await? else {
            return Err(JobError::new("customer vanished"));
        };
        if let Some(existing) = locked.stripe_subscription_id {
            return Ok(Outcome::done(serde_json::json!({ "subscription_id": existing, "already": true })));
        }
        if locked.stripe_payment_method_id.is_none() {
            return Ok(Outcome::cancel("NO_PAYMENT_METHOD: add a payment method first"));
        }
        let adopted = stripe.live_pro_subscriptions(&stripe_customer).await.map_err(stripe_failure)?.into_iter().next();
        let subscription = match adopted {
            Some(subscription) => {
                tracing::warn!(customer_id = %customer.id, subscription_id = %subscription.id, "adopting the live Pro subscription Stripe already has");
                subscription
            }
            None => {
                // A test build can widen the window between looking and creating here.
                fail::fail_point!("subscribe_pro::before_create");
                match stripe.create_pro_subscription(&stripe_customer, self.operation_id).await {
                    Ok(subscription) => subscription,
                    Err(error @ (CallError::Declined { .. } | CallError::Rejected { .. })) => {
                        return Ok(Outcome::cancel(format!("subscription refused: {error}")));
                    }
                    Err(error) => return Err(stripe_failure(error)),
                }
            }
        };
        fail::fail_point!("subscribe_pro::after_stripe", |_| Err(JobError::new("failpoint: after Stripe answered")));
        // Read under the lock: what Stripe answered is its current state.
        super::apply_stripe_subscription(&mut *tx, customer.id, &subscription, Observed::current()).await?;
        tx.commit().await?;
        tracing::info!(customer_id = %customer.id, subscription_id = %subscription.id, status = %subscription.status, "Pro subscription created");
        Ok(Outcome::done(serde_json::json!({ "subscription_id": subscription.id, "status": subscription.status })))
    }
}

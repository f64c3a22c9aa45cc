//! Cancel Pro, now (then as `customer.subscription.deleted`: pay-as-you-go, credits
//! kept) or at the period's end (Pro stays until Stripe deletes the subscription).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{JobContext, apply_current_subscription, stripe_failure};
use crate::queue::{Job, JobError, JobKind, Outcome, RetryPolicy};
use crate::stripe::CallError;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CancelSubscription {
    pub customer_id: Uuid,
    pub operation_id: Uuid,
    pub at_period_end: bool,
}

impl JobKind for CancelSubscription {
    const KIND: &'static str = "cancel_subscription";
    const RETRY: RetryPolicy = RetryPolicy::new(10, 5).timeout(Duration::from_secs(120));

    fn unique_key(&self) -> Option<String> {
        Some(self.operation_id.to_string())
    }

    fn customer_id(&self) -> Option<Uuid> {
        Some(self.customer_id)
    }
}

impl Job for CancelSubscription {
    type Context = JobContext;

    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        let stripe = ctx.stripe()?;
        let customer = ctx.customer(self.customer_id).await?;
        let Some(subscription_id) = customer.stripe_subscription_id else {
            return Ok(Outcome::cancel("NO_ACTIVE_SUBSCRIPTION"));
        };
        let result = if self.at_period_end {
            stripe.cancel_at_period_end(&subscription_id, self.operation_id).await
        } else {
            stripe.cancel_now(&subscription_id, self.operation_id).await
        };
        let subscription = match result {
            Ok(subscription) => subscription,
            Err(error @ CallError::Rejected { .. }) => {
                return Ok(Outcome::cancel(format!("cancellation refused: {error}")));
            }
            Err(error) => return Err(stripe_failure(error)),
        };
        // Applied as read again under the customer's Stripe-state lock (see
        // `apply_current_subscription`): cancelled now, Stripe reports it ended; at
        // period end, still live with the flag.
        let mut tx = ctx.pool.begin().await?;
        apply_current_subscription(&mut tx, stripe, customer.id, &subscription.id).await?;
        tx.commit().await?;
        Ok(Outcome::done(serde_json::json!({
            "subscription_id": subscription.id, "status": subscription.status,
            "cancel_at_period_end": subscription.cancel_at_period_end,
        })))
    }
}

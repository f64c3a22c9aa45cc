//! Resume Pro: withdraw a scheduled cancellation (`cancel_at_period_end = false`), so
//! the subscription renews as before.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{JobContext, apply_current_subscription, stripe_failure};
use crate::queue::{Job, JobError, JobKind, Outcome, RetryPolicy};
use crate::stripe::CallError;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResumeSubscription {
    pub customer_id: Uuid,
    pub operation_id: Uuid,
}

impl JobKind for ResumeSubscription {
    const KIND: &'static str = "resume_subscription";
    const RETRY: RetryPolicy = RetryPolicy::new(10, 5).timeout(Duration::from_secs(120));

    fn unique_key(&self) -> Option<String> {
        Some(self.operation_id.to_string())
    }

    fn customer_id(&self) -> Option<Uuid> {
        Some(self.customer_id)
    }
}

impl Job for ResumeSubscription {
    type Context = JobContext;

    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        let stripe = ctx.stripe()?;
        let customer = ctx.customer(self.customer_id).await?;
        let Some(subscription_id) = customer.stripe_subscription_id else {
            return Ok(Outcome::cancel("NO_ACTIVE_SUBSCRIPTION"));
        };
        let subscription = match stripe.resume(&subscription_id, self.operation_id).await {
            Ok(subscription) => subscription,
            Err(error @ CallError::Rejected { .. }) => {
                return Ok(Outcome::cancel(format!("resume refused: {error}")));
            }
            Err(error) => return Err(stripe_failure(error)),
        };
        let mut tx = ctx.pool.begin().await?;
        apply_current_subscription(&mut tx, stripe, customer.id, &subscription.id).await?;
        tx.commit().await?;
        Ok(Outcome::done(serde_json::json!({
            "subscription_id": subscription.id, "status": subscription.status,
            "cancel_at_period_end": subscription.cancel_at_period_end,
        })))
    }
}

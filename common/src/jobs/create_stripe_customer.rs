//! Create the Stripe customer of a provisioned customer (metadata `rsolv_customer_id`).
//! Enqueued by provisioning in its transaction; idempotent through the recorded id and
//! Stripe's `Idempotency-Key` (`rsolv-customer-{id}`).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{JobContext, stripe_failure};
use crate::db;
use crate::queue::{Job, JobError, JobKind, Outcome, RetryPolicy};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateStripeCustomer {
    pub customer_id: Uuid,
}

impl JobKind for CreateStripeCustomer {
    const KIND: &'static str = "create_stripe_customer";
    const RETRY: RetryPolicy = RetryPolicy::new(15, 5).timeout(Duration::from_secs(120));

    fn unique_key(&self) -> Option<String> {
        Some(self.customer_id.to_string())
    }

    fn customer_id(&self) -> Option<Uuid> {
        Some(self.customer_id)
    }
}

impl Job for CreateStripeCustomer {
    type Context = JobContext;

    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        let stripe = ctx.stripe()?;
        let customer = ctx.customer(self.customer_id).await?;
        if let Some(existing) = customer.stripe_customer_id {
            return Ok(Outcome::done(serde_json::json!({ "stripe_customer_id": existing, "already": true })));
        }
        let created =
            stripe.create_customer(customer.id, &customer.email, &customer.name).await.map_err(stripe_failure)?;
        db::customers::set_stripe_customer(&ctx.pool, customer.id, &created.id).await?;
        tracing::info!(customer_id = %customer.id, stripe_customer_id = %created.id, "Stripe customer created");
        Ok(Outcome::done(serde_json::json!({ "stripe_customer_id": created.id })))
    }
}

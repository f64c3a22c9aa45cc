//! Renewals: the cron-fired sweep finds Pro subscriptions whose period has ended and
//! enqueues one renewal per customer and period; a renewal re-reads the subscription
//! and its invoices from Stripe, updates status and period, and grants the credits of
//! any paid Pro invoice whose webhook never came (same ledger key as the webhook).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::process_webhook::{InvoiceCredits, grant_invoice_credits};
use super::{JobContext, apply_current_subscription, stripe_failure};
use crate::db::{self, customers::Observed};
use crate::ledger::Posted;
use crate::queue::{self, Job, JobError, JobKind, Outcome, RetryPolicy};

/// One sweep per cron tick: the tick is the unique key, so however many worker
/// processes fire the schedule, one sweep is enqueued.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewalSweep {
    /// The tick's unix time.
    pub tick: i64,
}

impl JobKind for RenewalSweep {
    const KIND: &'static str = "renewal_sweep";
    const RETRY: RetryPolicy = RetryPolicy::new(5, 1);

    fn unique_key(&self) -> Option<String> {
        Some(self.tick.to_string())
    }
}

impl Job for RenewalSweep {
    type Context = JobContext;

    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        let mut tx = ctx.pool.begin().await?;
        let due = db::customers::due_for_renewal(&mut *tx).await?;
        let mut enqueued = 0;
        for (customer_id, period_end) in &due {
            let renewal = RenewSubscription { customer_id: *customer_id, period_end: period_end.timestamp() };
            if !queue::enqueue(&mut *tx, &renewal).await?.is_duplicate() {
                enqueued += 1;
            }
        }
        tx.commit().await?;
        Ok(Outcome::done(serde_json::json!({ "due": due.len(), "enqueued": enqueued })))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewSubscription {
    pub customer_id: Uuid,
    /// The ended period this renewal is for (unix seconds).
    pub period_end: i64,
}

impl JobKind for RenewSubscription {
    const KIND: &'static str = "renew_subscription";
    const RETRY: RetryPolicy = RetryPolicy::new(10, 5);

    fn unique_key(&self) -> Option<String> {
        Some(format!("{}:{}", self.customer_id, self.period_end))
    }

    fn customer_id(&self) -> Option<Uuid> {
        Some(self.customer_id)
    }
}

impl Job for RenewSubscription {
    type Context = JobContext;

    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        let stripe = ctx.stripe()?;
        let customer = ctx.customer(self.customer_id).await?;
        let (Some(subscription_id), Some(stripe_customer)) =
            (customer.stripe_subscription_id.clone(), customer.stripe_customer_id.clone())
        else {
            return Ok(Outcome::done(serde_json::json!({ "outcome": "no subscription any more" })));
        };
        // Listed before the state is applied: applying locks the customer's row, which is
        // held for no Stripe call.
        let invoices = stripe.invoices(&stripe_customer, Some(&subscription_id)).await.map_err(stripe_failure)?;
        let mut tx = ctx.pool.begin().await?;
        let Some((subscription, _)) =
            apply_current_subscription(&mut tx, stripe, customer.id, &subscription_id).await?
        else {
            // Stripe does not know it (any more): it has ended for us too.
            db::customers::apply_subscription_ended(&mut *tx, customer.id, &subscription_id, Observed::current())
                .await?;
            tx.commit().await?;
            return Ok(Outcome::done(serde_json::json!({ "outcome": "unknown at Stripe: ended" })));
        };
        let mut healed = Vec::new();
        for invoice in invoices.iter().filter(|i| i.is_paid()) {
            if let InvoiceCredits::Posted(Posted::Posted { .. }) =
                grant_invoice_credits(&mut tx, &ctx, customer.id, invoice).await?
            {
                healed.push(invoice.id.clone());
            }
        }
        tx.commit().await?;
        if !healed.is_empty() {
            tracing::warn!(customer_id = %customer.id, invoices = ?healed, "granted Pro credits whose webhook never came");
        }
        Ok(Outcome::done(serde_json::json!({ "status": subscription.status, "credits_healed_for": healed })))
    }
}

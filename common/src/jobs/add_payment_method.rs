//! Attach a payment method as the Stripe customer's default for invoices, record the
//! consent, make a trial pay-as-you-go, and grant the billing-added credits once per
//! customer (the ledger key is per customer, so a second card grants nothing).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{JobContext, stripe_failure};
use crate::db;
use crate::domain::LedgerSource;
use crate::ledger::{self, Posted, Posting};
use crate::queue::{Job, JobError, JobKind, Outcome, RetryPolicy};
use crate::stripe::CallError;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddPaymentMethod {
    pub customer_id: Uuid,
    pub payment_method_id: String,
    /// Names this request at Stripe (idempotency) and for its status URL.
    pub operation_id: Uuid,
    pub consent_at: DateTime<Utc>,
}

impl JobKind for AddPaymentMethod {
    const KIND: &'static str = "add_payment_method";
    const RETRY: RetryPolicy = RetryPolicy::new(10, 5).timeout(Duration::from_secs(120));

    fn unique_key(&self) -> Option<String> {
        Some(self.operation_id.to_string())
    }

    fn customer_id(&self) -> Option<Uuid> {
        Some(self.customer_id)
    }
}

impl Job for AddPaymentMethod {
    type Context = JobContext;

    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        let stripe = ctx.stripe()?;
        let customer = ctx.customer(self.customer_id).await?;
        let Some(stripe_customer) = customer.stripe_customer_id else {
            return Err(JobError::new("the Stripe customer is not created yet"));
        };
        // Two cards added at once take turns from Stripe's default to ours, so the one
        // we record is the one Stripe ends with (found by the fault simulation).
        let mut tx = ctx.pool.begin().await?;
        db::customers::lock_stripe_state(&mut tx, customer.id).await?;
        let attached = match stripe
            .attach_default_payment_method(&stripe_customer, &self.payment_method_id, self.operation_id)
            .await
        {
            Ok(id) => id,
            Err(error @ (CallError::Declined { .. } | CallError::Rejected { .. })) => {
                return Ok(Outcome::cancel(format!("payment method not attached: {error}")));
            }
            Err(error) => return Err(stripe_failure(error)),
        };
        // Against a replayed answer (Stripe keeps one a day per key): the card must still
        // be this customer's, not one removed since.
        let card = stripe.payment_method(&attached).await.map_err(stripe_failure)?;
        if card.customer.as_deref() != Some(stripe_customer.as_str()) {
            return Ok(Outcome::cancel("the card was removed before it was added"));
        }
        // A test build can stop here: Stripe's default is set, ours is not yet.
        fail::fail_point!("add_payment_method::after_stripe");
        db::customers::set_payment_method(&mut *tx, customer.id, &attached, self.consent_at).await?;
        let granted = if ctx.settings.credits.billing_added > 0 {
            let posting = Posting {
                customer_id: customer.id,
                amount: ctx.settings.credits.billing_added,
                source: LedgerSource::TrialBillingAdded,
                metadata: serde_json::json!({ "payment_method_id": attached }),
                idempotency_key: format!("trial_billing_added:{}", customer.id),
            };
            matches!(ledger::post(&mut tx, &posting).await?, Posted::Posted { .. })
        } else {
            false
        };
        tx.commit().await?;
        tracing::info!(customer_id = %customer.id, granted, "payment method added");
        Ok(Outcome::done(serde_json::json!({ "payment_method_id": attached, "credits_granted": granted })))
    }
}

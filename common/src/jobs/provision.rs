//! Provision a customer: the customer row (trial), its first API key (hash only) and
//! the trial credits, in one transaction. Later steps (the Stripe customer, the
//! onboarding emails) are enqueued in the same transaction as their own jobs, each with
//! its own idempotency, so provisioning never calls out while holding the transaction.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{CreateStripeCustomer, JobContext, SendEmailStep};
use crate::db;
use crate::domain::{ApiKeyHash, CustomerName, Email, LedgerSource};
use crate::email::sequences;
use crate::ledger::{self, Posted, Posting};
use crate::queue::{self, Job, JobError, JobKind, Outcome, RetryPolicy};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProvisionCustomer {
    pub customer_id: Uuid,
    pub name: CustomerName,
    pub email: Email,
    pub source: Option<String>,
    pub api_key_hash: ApiKeyHash,
    pub api_key_prefix: String,
}

impl JobKind for ProvisionCustomer {
    const KIND: &'static str = "provision_customer";
    const RETRY: RetryPolicy = RetryPolicy::new(10, 10).timeout(Duration::from_secs(60));

    /// One provisioning per email: the API's duplicate check.
    fn unique_key(&self) -> Option<String> {
        Some(self.email.as_str().to_owned())
    }

    fn customer_id(&self) -> Option<Uuid> {
        Some(self.customer_id)
    }
}

impl Job for ProvisionCustomer {
    type Context = JobContext;

    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        let mut tx = ctx.pool.begin().await?;
        let created =
            db::customers::insert_trial(&mut *tx, self.customer_id, &self.name, &self.email, self.source.as_deref())
                .await?;
        if !created {
            // Either an earlier run committed everything (the same id exists), or
            // another customer owns the email; neither changes with a retry.
            return Ok(if db::customers::exists(&mut *tx, self.customer_id).await? {
                Outcome::done(serde_json::json!({ "already_provisioned": true }))
            } else {
                Outcome::cancel(format!("email {} belongs to another customer", self.email))
            });
        }
        db::api_keys::insert(&mut *tx, self.customer_id, "default", &self.api_key_hash, &self.api_key_prefix).await?;
        let trial = Posting {
            customer_id: self.customer_id,
            amount: ctx.settings.credits.trial_signup,
            source: LedgerSource::TrialSignup,
            metadata: serde_json::json!({}),
            idempotency_key: format!("trial_signup:{}", self.customer_id),
        };
        let balance = match trial.amount {
            0 => 0,
            _ => match ledger::post(&mut tx, &trial).await? {
                Posted::Posted { balance_after, .. } => balance_after,
                other => {
                    return Err(JobError::new(format!("trial credits not posted: {other:?}")));
                }
            },
        };
        // The next steps, committed with the customer: each its own idempotent job.
        if ctx.stripe.is_some() {
            queue::enqueue(&mut *tx, &CreateStripeCustomer { customer_id: self.customer_id }).await?;
        }
        if ctx.mailer.is_some() {
            let now = chrono::Utc::now();
            SendEmailStep::schedule(&mut tx, self.customer_id, &sequences::ONBOARDING, now, "", serde_json::json!({}))
                .await?;
        }
        tx.commit().await?;
        tracing::info!(customer_id = %self.customer_id, balance, "customer provisioned");
        Ok(Outcome::done(serde_json::json!({ "customer_id": self.customer_id, "credit_balance": balance })))
    }
}

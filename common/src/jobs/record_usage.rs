//! Record a deployed fix: consume one credit, once per `fix_id`.
//!
//! With no credit left the fix is refused (`NO_BILLING_INFO`); the billing issue adds
//! the per-fix charge for customers with a payment method.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::JobContext;
use crate::db;
use crate::domain::LedgerSource;
use crate::ledger::{self, LedgerError, Posted, Posting};
use crate::queue::{Job, JobError, JobKind, Outcome, RetryPolicy};

/// Refusal codes a recorded fix can carry.
pub mod refusal {
    pub const NO_BILLING_INFO: &str = "NO_BILLING_INFO";
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordUsage {
    pub customer_id: Uuid,
    pub fix_id: String,
    pub repo: String,
    #[serde(default)]
    pub metadata: serde_json::Value,
}

impl RecordUsage {
    pub fn unique_key_for(customer_id: Uuid, fix_id: &str) -> String {
        format!("{customer_id}:{fix_id}")
    }
}

impl JobKind for RecordUsage {
    const KIND: &'static str = "record_usage";
    const RETRY: RetryPolicy = RetryPolicy::new(10, 10);

    fn unique_key(&self) -> Option<String> {
        Some(Self::unique_key_for(self.customer_id, &self.fix_id))
    }

    fn customer_id(&self) -> Option<Uuid> {
        Some(self.customer_id)
    }
}

impl Job for RecordUsage {
    type Context = JobContext;

    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        let mut tx = ctx.pool.begin().await?;
        let debit = Posting {
            customer_id: self.customer_id,
            amount: -1,
            source: LedgerSource::FixDeployed,
            metadata: serde_json::json!({ "fix_id": self.fix_id, "repo": self.repo }),
            idempotency_key: format!("fix_deployed:{}:{}", self.customer_id, self.fix_id),
        };
        // Posting locks the customer row first, so the check below sees every fix of
        // this customer recorded before us.
        let posted = match ledger::post(&mut tx, &debit).await {
            Ok(posted) => posted,
            Err(LedgerError::CustomerNotFound(id)) => {
                return Err(JobError::new(format!("customer {id} does not exist (yet)")));
            }
            Err(LedgerError::Database(e)) => return Err(e.into()),
        };
        if let Some(record) = db::usage::find(&mut *tx, self.customer_id, &self.fix_id).await? {
            // Recorded by an earlier run; a debit just posted would be a second one, so
            // roll everything back.
            tx.rollback().await?;
            return Ok(Outcome::done(
                serde_json::json!({ "duplicate": true, "outcome": record.outcome, "refusal_code": record.refusal_code }),
            ));
        }
        let detail = match posted {
            Posted::Posted {
                entry_id,
                balance_after,
            } => {
                db::usage::record_consumed(
                    &mut *tx,
                    self.customer_id,
                    &self.fix_id,
                    &self.repo,
                    entry_id,
                )
                .await?;
                serde_json::json!({ "outcome": "consumed", "balance_after": balance_after })
            }
            Posted::AlreadyPosted { entry_id } => {
                db::usage::record_consumed(
                    &mut *tx,
                    self.customer_id,
                    &self.fix_id,
                    &self.repo,
                    entry_id,
                )
                .await?;
                serde_json::json!({ "outcome": "consumed", "already_posted": true })
            }
            Posted::InsufficientCredits { .. } => {
                db::usage::record_refused(
                    &mut *tx,
                    self.customer_id,
                    &self.fix_id,
                    &self.repo,
                    refusal::NO_BILLING_INFO,
                )
                .await?;
                serde_json::json!({ "outcome": "refused", "refusal_code": refusal::NO_BILLING_INFO })
            }
        };
        tx.commit().await?;
        Ok(Outcome::done(detail))
    }
}

//! Grant (or, with a negative amount, take back) credits through the ledger, once per
//! idempotency key however often the job runs.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::JobContext;
use super::batch::Work;
use crate::domain::LedgerSource;
use crate::ledger::{self, LedgerError, Posted, Posting};
use crate::queue::{Job, JobError, JobKind, Outcome, RetryPolicy};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrantCredits {
    pub customer_id: Uuid,
    pub amount: i64,
    pub source: LedgerSource,
    /// The ledger's idempotency key, and the job's unique key.
    pub idempotency_key: String,
    #[serde(default)]
    pub metadata: serde_json::Value,
}

impl JobKind for GrantCredits {
    const KIND: &'static str = "grant_credits";
    const RETRY: RetryPolicy = RetryPolicy::new(10, 10).timeout(Duration::from_secs(60));

    fn unique_key(&self) -> Option<String> {
        Some(self.idempotency_key.clone())
    }

    fn customer_id(&self) -> Option<Uuid> {
        Some(self.customer_id)
    }
}

impl Job for GrantCredits {
    type Context = JobContext;

    fn settler(ctx: &JobContext) -> Option<crate::queue::settle::Settler> {
        super::batch::settler(ctx, |grant: Self| Work::Grant(grant.posting()))
    }

    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        if self.amount == 0 {
            return Ok(Outcome::cancel("a grant of 0 credits posts nothing"));
        }
        let posting = self.posting();
        let mut tx = ctx.pool.begin().await?;
        let posted = match ledger::post(&mut tx, &posting).await {
            Ok(posted) => posted,
            // The customer may still be being provisioned: retry with backoff.
            Err(LedgerError::CustomerNotFound(id)) => {
                return Err(JobError::new(format!("customer {id} does not exist (yet)")));
            }
            Err(LedgerError::Database(e)) => return Err(e.into()),
        };
        tx.commit().await?;
        Ok(outcome(posted))
    }
}

impl GrantCredits {
    fn posting(self) -> Posting {
        Posting {
            customer_id: self.customer_id,
            amount: self.amount,
            source: self.source,
            metadata: self.metadata,
            idempotency_key: self.idempotency_key,
        }
    }
}

/// A posted grant's outcome, the same whether it ran batched or alone.
pub(crate) fn outcome(posted: Posted) -> Outcome {
    match posted {
        Posted::Posted { entry_id, balance_after } => {
            Outcome::done(serde_json::json!({ "entry_id": entry_id, "balance_after": balance_after }))
        }
        Posted::AlreadyPosted { entry_id } => {
            Outcome::done(serde_json::json!({ "entry_id": entry_id, "already_posted": true }))
        }
        Posted::InsufficientCredits { balance } => {
            Outcome::cancel(format!("would take the balance of {balance} below zero"))
        }
    }
}

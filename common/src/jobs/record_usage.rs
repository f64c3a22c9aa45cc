//! Record a deployed fix: consume one credit, once per `fix_id`.
//!
//! With no credit left: a customer with a payment method is charged the plan's per-fix
//! price off-session (Stripe `Idempotency-Key` from the fix id), then +1 `purchased` and
//! −1 `fix_deployed` are posted; a declined card is recorded as a refused fix with no
//! credit change; without a payment method the fix is refused (`NO_BILLING_INFO`).
//!
//! The Stripe call happens outside any transaction (no row lock held across the
//! network); the recorded fix, checked again under the customer's lock afterwards, is
//! what makes a second run charge nothing.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use std::collections::HashMap;

use super::{JobContext, stripe_failure};
use crate::db;
use crate::domain::{LedgerSource, SubscriptionType};
use crate::ledger::{self, LedgerError, Posted, Posting};
use crate::queue::{Job, JobError, JobKind, Outcome, RetryPolicy};
use crate::stripe::CallError;

/// Refusal codes a recorded fix can carry.
pub mod refusal {
    pub const NO_BILLING_INFO: &str = "NO_BILLING_INFO";
    pub const CARD_DECLINED: &str = "CARD_DECLINED";
    pub const PAYMENT_FAILED: &str = "PAYMENT_FAILED";
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
            Posted::Posted { entry_id, balance_after } => {
                db::usage::record_consumed(&mut *tx, self.customer_id, &self.fix_id, &self.repo, entry_id).await?;
                serde_json::json!({ "outcome": "consumed", "balance_after": balance_after })
            }
            Posted::AlreadyPosted { entry_id } => {
                db::usage::record_consumed(&mut *tx, self.customer_id, &self.fix_id, &self.repo, entry_id).await?;
                serde_json::json!({ "outcome": "consumed", "already_posted": true })
            }
            Posted::InsufficientCredits { .. } => {
                let customer = db::customers::find(&mut *tx, self.customer_id).await?;
                let payer = customer.as_ref().and_then(|c| {
                    Some((
                        c.stripe_customer_id.clone()?,
                        c.stripe_payment_method_id.clone()?,
                        c.subscription_type.clone(),
                    ))
                });
                if let (Some(payer), Some(_)) = (payer, &ctx.stripe) {
                    tx.rollback().await?;
                    return self.charge(&ctx, payer).await;
                }
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

impl RecordUsage {
    /// Pays for the fix at the plan's per-fix price, then posts the purchase and the debit.
    async fn charge(
        self,
        ctx: &JobContext,
        (stripe_customer, payment_method, plan): (String, String, String),
    ) -> Result<Outcome, JobError> {
        let stripe = ctx.stripe()?;
        let prices = &ctx.settings.prices;
        let amount =
            if plan == SubscriptionType::Pro.as_str() { prices.fix_pro_overage_cents } else { prices.fix_payg_cents };
        let metadata = HashMap::from([
            ("rsolv_customer_id".to_owned(), self.customer_id.to_string()),
            ("fix_id".to_owned(), self.fix_id.clone()),
        ]);
        let key = format!("rsolv-fix-{}-{}", self.customer_id, self.fix_id);
        let charged = stripe.charge(&stripe_customer, &payment_method, amount, &prices.currency, &key, metadata).await;

        let mut tx = ctx.pool.begin().await?;
        // Lock the customer and look again: an earlier run may have recorded this fix.
        let locked = sqlx::query("SELECT 1 FROM customers WHERE id = $1 FOR UPDATE")
            .bind(self.customer_id)
            .execute(&mut *tx)
            .await?;
        if locked.rows_affected() == 0 {
            return Err(JobError::new("customer vanished"));
        }
        if let Some(record) = db::usage::find(&mut *tx, self.customer_id, &self.fix_id).await? {
            return Ok(Outcome::done(serde_json::json!({ "duplicate": true, "outcome": record.outcome })));
        }
        let payment = match charged {
            Ok(payment) if payment.status == "succeeded" => payment,
            Ok(payment) => {
                tracing::warn!(customer_id = %self.customer_id, payment_intent = %payment.id, status = %payment.status, "fix charge not completed");
                let reason = format!("payment {} is {}", payment.id, payment.status);
                return self.refuse(tx, refusal::PAYMENT_FAILED, &reason).await;
            }
            Err(CallError::Declined { code, message }) => {
                tracing::info!(customer_id = %self.customer_id, fix_id = %self.fix_id, %code, "fix charge declined");
                return self.refuse(tx, refusal::CARD_DECLINED, &message).await;
            }
            Err(error @ CallError::Rejected { .. }) => {
                return self.refuse(tx, refusal::PAYMENT_FAILED, &error.to_string()).await;
            }
            Err(error) => return Err(stripe_failure(error)),
        };
        let purchase = Posting {
            customer_id: self.customer_id,
            amount: 1,
            source: LedgerSource::Purchased,
            metadata: serde_json::json!({ "fix_id": self.fix_id, "payment_intent_id": payment.id, "amount_cents": amount }),
            idempotency_key: format!("purchased:{}:{}", self.customer_id, self.fix_id),
        };
        let debit = Posting {
            customer_id: self.customer_id,
            amount: -1,
            source: LedgerSource::FixDeployed,
            metadata: serde_json::json!({ "fix_id": self.fix_id, "repo": self.repo, "payment_intent_id": payment.id }),
            idempotency_key: format!("fix_deployed:{}:{}", self.customer_id, self.fix_id),
        };
        let ledger_error = |e: LedgerError| JobError::new(e.to_string());
        ledger::post(&mut tx, &purchase).await.map_err(ledger_error)?;
        let entry_id = match ledger::post(&mut tx, &debit).await.map_err(ledger_error)? {
            Posted::Posted { entry_id, .. } | Posted::AlreadyPosted { entry_id } => entry_id,
            Posted::InsufficientCredits { .. } => {
                return Err(JobError::new("purchased credit not available for the debit"));
            }
        };
        db::usage::record_charged(&mut *tx, self.customer_id, &self.fix_id, &self.repo, entry_id, amount, &payment.id)
            .await?;
        tx.commit().await?;
        tracing::info!(customer_id = %self.customer_id, fix_id = %self.fix_id, amount, "fix charged");
        Ok(Outcome::done(
            serde_json::json!({ "outcome": "consumed", "charged_cents": amount, "payment_intent_id": payment.id }),
        ))
    }

    async fn refuse(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
        code: &str,
        reason: &str,
    ) -> Result<Outcome, JobError> {
        db::usage::record_refused(&mut *tx, self.customer_id, &self.fix_id, &self.repo, code).await?;
        tx.commit().await?;
        Ok(Outcome::done(serde_json::json!({ "outcome": "refused", "refusal_code": code, "reason": reason })))
    }
}

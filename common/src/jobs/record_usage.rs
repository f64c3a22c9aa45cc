//! Record a deployed fix: consume one credit, once per `fix_id`.
//!
//! # Guide
//!
//! The common cases (a credit to consume, a fix recorded before, a refusal for want of
//! credits and card) are settled in the claim with the other fixes it takes
//! (`jobs::batch`); this is the path of every fix left to run on its own.
//!
//! Deciding, under the customer's lock in one transaction: a fix already recorded is a
//! duplicate; a fix that has a charge goes to that charge's resolution and is never
//! debited; otherwise one credit is debited, or, at balance 0 with a payment method, a
//! charge is written down (`pending`: our charge id, the plan's per-fix price) and
//! committed **before** Stripe is called. Without a payment method the fix is refused
//! (`NO_BILLING_INFO`).
//!
//! Resolving a charge (`settle`): Stripe is asked what became of it first, by the
//! PaymentIntent id we recorded or by our charge id in PaymentIntent metadata, and only
//! when Stripe has nothing is a PaymentIntent created (Idempotency-Key from the charge
//! id, which helps within Stripe's 24 h but is not relied on). Then, under the
//! customer's lock again, the outcome is recorded once: succeeded → +1 `purchased`,
//! −1 `fix_deployed`, the fix consumed; declined → the fix refused, no credit moved;
//! `requires_action` → the charge waits for the customer, visible on the fix's status.
//!
//! So a crash between any two steps, a retry, or an operator's redrive days later
//! re-runs into `settle`, which finds the earlier PaymentIntent instead of paying again.
//! The charge's row lock is held across the Stripe calls (bounded by
//! `STRIPE_TIMEOUT_MS`), so two runs of one fix never pay side by side; the customer's
//! row is locked only for the short transactions before and after.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use std::collections::HashMap;

use super::batch::Work;
use super::{JobContext, stripe_failure};
use crate::db::{self, charges::Charge, charges::ChargeStatus, customers::Customer};
use crate::domain::{LedgerSource, SubscriptionType};
use crate::ledger::{self, LedgerError, Posted, Posting};
use crate::queue::{Job, JobError, JobKind, Outcome, RetryPolicy};
use crate::stripe::objects::CHARGE_ID_METADATA;
use crate::stripe::{CallError, PaymentIntent, StripeApi};

/// Refusal codes a recorded fix can carry.
pub mod refusal {
    pub const NO_BILLING_INFO: &str = "NO_BILLING_INFO";
    pub const CARD_DECLINED: &str = "CARD_DECLINED";
    pub const PAYMENT_FAILED: &str = "PAYMENT_FAILED";
}

/// A run's result (`jobs.result.detail`), the same whether the run was batched or alone.
pub(crate) mod details {
    use serde_json::{Value, json};

    use crate::db::usage::FixRecord;

    pub fn duplicate(record: &FixRecord) -> Value {
        json!({ "duplicate": true, "outcome": record.outcome, "refusal_code": record.refusal_code })
    }

    pub fn consumed(balance_after: i64) -> Value {
        json!({ "outcome": "consumed", "balance_after": balance_after })
    }

    pub fn consumed_already_posted() -> Value {
        json!({ "outcome": "consumed", "already_posted": true })
    }

    pub fn refused(code: &str) -> Value {
        json!({ "outcome": "refused", "refusal_code": code })
    }
}

/// How far back (seconds) before a charge row's creation its PaymentIntent is looked
/// for: our clock and Stripe's may disagree a little.
const CLOCK_SKEW_SECS: i64 = 300;

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
    const RETRY: RetryPolicy = RetryPolicy::new(10, 10).timeout(Duration::from_secs(180));

    fn unique_key(&self) -> Option<String> {
        Some(Self::unique_key_for(self.customer_id, &self.fix_id))
    }

    fn customer_id(&self) -> Option<Uuid> {
        Some(self.customer_id)
    }
}

/// What Stripe did with a charge, as far as recording it goes.
#[derive(Debug)]
enum Attempt {
    Paid(PaymentIntent),
    NeedsAction(PaymentIntent),
    /// Declined (`CARD_DECLINED`) or refused (`PAYMENT_FAILED`): nothing was taken.
    Refused {
        refusal: &'static str,
        reason: String,
        intent: Option<String>,
    },
}

fn ledger_error(error: LedgerError) -> JobError {
    match error {
        LedgerError::CustomerNotFound(id) => JobError::new(format!("customer {id} does not exist (yet)")),
        LedgerError::Database(e) => e.into(),
    }
}

impl Job for RecordUsage {
    type Context = JobContext;

    fn settler(ctx: &JobContext) -> Option<crate::queue::settle::Settler> {
        super::batch::settler(ctx, |fix: Self| Work::Fix(fix))
    }

    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        let mut tx = ctx.pool.begin().await?;
        let Some(customer) = db::customers::lock(&mut *tx, self.customer_id).await? else {
            return Err(JobError::new(format!("customer {} does not exist (yet)", self.customer_id)));
        };
        if let Some(record) = db::usage::find(&mut *tx, self.customer_id, &self.fix_id).await? {
            return Ok(Outcome::done(details::duplicate(&record)));
        }
        if let Some(charge) = db::charges::find_for_fix(&mut *tx, self.customer_id, &self.fix_id).await? {
            // A charge was decided for this fix: it is paid for by that charge or not at
            // all, never by a credit that arrived since.
            tx.rollback().await?;
            return self.settle(&ctx, charge, true).await;
        }
        let detail = match ledger::post(&mut tx, &self.debit(None)).await.map_err(ledger_error)? {
            Posted::Posted { entry_id, balance_after } => {
                db::usage::record_consumed(&mut *tx, self.customer_id, &self.fix_id, &self.repo, entry_id).await?;
                details::consumed(balance_after)
            }
            Posted::AlreadyPosted { entry_id } => {
                db::usage::record_consumed(&mut *tx, self.customer_id, &self.fix_id, &self.repo, entry_id).await?;
                details::consumed_already_posted()
            }
            Posted::InsufficientCredits { .. } if can_be_charged(&customer) && ctx.stripe.is_some() => {
                let prices = &ctx.settings.prices;
                let amount = if customer.subscription_type == SubscriptionType::Pro {
                    prices.fix_pro_overage_cents
                } else {
                    prices.fix_payg_cents
                };
                let charge = db::charges::insert_pending(
                    &mut tx,
                    self.customer_id,
                    &self.fix_id,
                    &self.repo,
                    amount,
                    &prices.currency,
                )
                .await?;
                tx.commit().await?;
                return self.settle(&ctx, charge, true).await;
            }
            Posted::InsufficientCredits { .. } => {
                let code = refusal::NO_BILLING_INFO;
                db::usage::record_refused(&mut *tx, self.customer_id, &self.fix_id, &self.repo, code).await?;
                details::refused(code)
            }
        };
        tx.commit().await?;
        Ok(Outcome::done(detail))
    }
}

pub(crate) fn can_be_charged(customer: &Customer) -> bool {
    customer.stripe_customer_id.is_some() && customer.stripe_payment_method_id.is_some()
}

impl RecordUsage {
    /// The idempotency key of a fix's debit: the one ledger entry a consumed fix may name
    /// (`usage_fixes_references_checked` and `verify` hold the record to it).
    pub(crate) fn debit_key(customer_id: Uuid, fix_id: &str) -> String {
        format!("fix_deployed:{customer_id}:{fix_id}")
    }

    pub(crate) fn debit(&self, payment_intent: Option<&str>) -> Posting {
        let mut metadata = serde_json::json!({ "fix_id": self.fix_id, "repo": self.repo });
        if let Some(intent) = payment_intent {
            metadata["payment_intent_id"] = intent.into();
        }
        Posting {
            customer_id: self.customer_id,
            amount: -1,
            source: LedgerSource::FixDeployed,
            metadata,
            idempotency_key: Self::debit_key(self.customer_id, &self.fix_id),
        }
    }

    /// Finds out what Stripe did with `charge` (paying only if Stripe has nothing of
    /// it), then records that once.
    /// `may_pay`: whether, when Stripe has nothing of this charge, it is made now (the
    /// job's own run) or left alone (reconciliation, which never pays on its own).
    pub(crate) async fn settle(self, ctx: &JobContext, charge: Charge, may_pay: bool) -> Result<Outcome, JobError> {
        // One settlement of a charge at a time: its row stays locked while Stripe is asked
        // (and perhaps paid), so a rescued run racing its original cannot find "nothing
        // at Stripe yet" and pay a second time. The lock is the connection's, so it is
        // gone with a crashed process. A run that finds it taken retries later.
        let mut tx = ctx.pool.begin().await?;
        let charge = match db::charges::lock_nowait(&mut *tx, charge.id).await {
            Ok(Some(charge)) => charge,
            Ok(None) => return Err(JobError::new(format!("charge {} vanished", charge.id))),
            Err(e) if db::is_lock_not_available(&e) => {
                return Err(JobError::new(format!("charge {} is being settled by another run", charge.id)));
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(record) = db::usage::find(&mut *tx, self.customer_id, &self.fix_id).await? {
            return Ok(Outcome::done(serde_json::json!({ "duplicate": true, "outcome": record.outcome })));
        }
        if !charge.status.is_unresolved() {
            // Settled charges commit with their fix record, looked for just above.
            return Err(JobError::new(format!("charge {} is settled but its fix is not recorded", charge.id)));
        }
        let Some(customer) = db::customers::find(&mut *tx, self.customer_id).await? else {
            return Err(JobError::new("customer vanished"));
        };
        let key = Self::unique_key_for(self.customer_id, &self.fix_id);
        let job_began = crate::queue::first_enqueued_at(&mut *tx, Self::KIND, &key).await?;
        let since = job_began.map_or(charge.created_at, |began| began.min(charge.created_at)).timestamp();
        let Some(attempt) = attempt(ctx.stripe()?, &customer, &charge, since, may_pay).await? else {
            return Ok(Outcome::done(serde_json::json!({ "outcome": "not_made", "charge_id": charge.id })));
        };
        // A test build can stop here: Stripe has answered, nothing is recorded yet.
        fail::fail_point!("record_usage::after_stripe", |_| Err(JobError::new("failpoint: after Stripe answered")));
        if let Attempt::NeedsAction(intent) = &attempt
            && charge.status == ChargeStatus::RequiresAction
        {
            return Ok(Outcome::done(
                serde_json::json!({ "outcome": "requires_action", "payment_intent_id": intent.id }),
            ));
        }

        // Lock order: the charge, then its customer (for the postings).
        if db::customers::lock(&mut *tx, self.customer_id).await?.is_none() {
            return Err(JobError::new("customer vanished"));
        }
        let detail = match attempt {
            Attempt::Paid(intent) => self.record_paid(&mut tx, &charge, &intent).await?,
            Attempt::NeedsAction(intent) => {
                db::charges::resolve(&mut *tx, charge.id, ChargeStatus::RequiresAction, Some(&intent.id), None).await?;
                tracing::info!(customer_id = %self.customer_id, fix_id = %self.fix_id, payment_intent = %intent.id, "fix charge needs the customer's authentication");
                serde_json::json!({ "outcome": "requires_action", "payment_intent_id": intent.id })
            }
            Attempt::Refused { refusal, reason, intent } => {
                db::charges::resolve(&mut *tx, charge.id, ChargeStatus::Failed, intent.as_deref(), Some(refusal))
                    .await?;
                db::usage::record_refused(&mut *tx, self.customer_id, &self.fix_id, &self.repo, refusal).await?;
                tracing::info!(customer_id = %self.customer_id, fix_id = %self.fix_id, refusal, %reason, "fix charge refused");
                serde_json::json!({ "outcome": "refused", "refusal_code": refusal, "reason": reason })
            }
        };
        tx.commit().await?;
        Ok(Outcome::done(detail))
    }

    /// A paid charge, recorded once under the customer's lock: the credit bought
    /// (`purchased`, +1) and spent on the fix (`fix_deployed`, −1), the fix consumed, the
    /// charge succeeded.
    async fn record_paid(
        &self,
        tx: &mut sqlx::PgTransaction<'_>,
        charge: &Charge,
        intent: &PaymentIntent,
    ) -> Result<serde_json::Value, JobError> {
        let purchase = Posting {
            customer_id: self.customer_id,
            amount: 1,
            source: LedgerSource::Purchased,
            metadata: serde_json::json!({
                "fix_id": self.fix_id, "payment_intent_id": intent.id,
                "amount_cents": charge.amount_cents, "charge_id": charge.id,
            }),
            idempotency_key: format!("purchased:{}:{}", self.customer_id, self.fix_id),
        };
        ledger::post(tx, &purchase).await.map_err(ledger_error)?;
        let entry_id = match ledger::post(tx, &self.debit(Some(&intent.id))).await.map_err(ledger_error)? {
            Posted::Posted { entry_id, .. } | Posted::AlreadyPosted { entry_id } => entry_id,
            Posted::InsufficientCredits { .. } => {
                return Err(JobError::new("purchased credit not available for the debit"));
            }
        };
        db::usage::record_charged(
            &mut **tx,
            self.customer_id,
            &self.fix_id,
            &self.repo,
            entry_id,
            charge.amount_cents,
            &intent.id,
        )
        .await?;
        db::charges::resolve(&mut **tx, charge.id, ChargeStatus::Succeeded, Some(&intent.id), None).await?;
        tracing::info!(customer_id = %self.customer_id, fix_id = %self.fix_id, amount = charge.amount_cents, payment_intent = %intent.id, "fix charged");
        Ok(
            serde_json::json!({ "outcome": "consumed", "charged_cents": charge.amount_cents, "payment_intent_id": intent.id }),
        )
    }
}

/// What Stripe did with `charge`: the PaymentIntent we recorded, or the one an earlier
/// attempt created (found by our charge id), or, when there is none, a new one.
/// `since`: when this fix's job began (unix seconds), before which nothing was paid for it.
/// `None`: Stripe has nothing of it and `may_pay` is false.
async fn attempt(
    stripe: &StripeApi,
    customer: &Customer,
    charge: &Charge,
    since: i64,
    may_pay: bool,
) -> Result<Option<Attempt>, JobError> {
    let Some(stripe_customer) = customer.stripe_customer_id.as_deref() else {
        return Err(JobError::new("the Stripe customer is not recorded"));
    };
    let intent = match earlier_intent(stripe, stripe_customer, charge, since).await? {
        Some(intent) => intent,
        None if !may_pay => return Ok(None),
        None => match pay(stripe, stripe_customer, customer, charge).await? {
            Ok(intent) => intent,
            Err(refused) => return Ok(Some(refused)),
        },
    };
    Ok(Some(match intent.status.as_str() {
        "succeeded" => Attempt::Paid(intent),
        "requires_action" => Attempt::NeedsAction(intent),
        "requires_payment_method" | "canceled" => {
            let reason = intent
                .last_payment_error
                .as_ref()
                .and_then(|e| e.message.clone().or_else(|| e.code.clone()))
                .unwrap_or_else(|| format!("payment {} is {}", intent.id, intent.status));
            Attempt::Refused { refusal: refusal::CARD_DECLINED, reason, intent: Some(intent.id) }
        }
        // processing, requires_confirmation, requires_capture: not final yet.
        other => return Err(JobError::new(format!("payment {} is {other}; asking again later", intent.id))),
    }))
}

/// The PaymentIntent an earlier attempt made for `charge`: the one we recorded, or one
/// Stripe holds with our charge id.
async fn earlier_intent(
    stripe: &StripeApi,
    stripe_customer: &str,
    charge: &Charge,
    since: i64,
) -> Result<Option<PaymentIntent>, JobError> {
    if let Some(id) = &charge.payment_intent_id {
        return Ok(Some(stripe.payment_intent(id).await.map_err(stripe_failure)?));
    }
    // Ours by charge id; or, for a fix whose job began before charges were written
    // down, by the customer and fix id that code put in the metadata.
    let customer_id = charge.customer_id.to_string();
    let ours = |intent: &PaymentIntent| match intent.charge_id() {
        Some(id) => id == charge.id,
        None => {
            intent.metadata.get("rsolv_customer_id") == Some(&customer_id)
                && intent.metadata.get("fix_id") == Some(&charge.fix_id)
        }
    };
    stripe.find_payment_intent(stripe_customer, since - CLOCK_SKEW_SECS, ours).await.map_err(stripe_failure)
}

/// Makes the payment for `charge` (Stripe had nothing of it): the PaymentIntent, or
/// the refusal when Stripe declined or there is no payment method any more.
async fn pay(
    stripe: &StripeApi,
    stripe_customer: &str,
    customer: &Customer,
    charge: &Charge,
) -> Result<Result<PaymentIntent, Attempt>, JobError> {
    let Some(payment_method) = customer.stripe_payment_method_id.as_deref() else {
        let reason = "the payment method was removed before the charge was made".to_owned();
        return Ok(Err(Attempt::Refused { refusal: refusal::NO_BILLING_INFO, reason, intent: None }));
    };
    let metadata = HashMap::from([
        (CHARGE_ID_METADATA.to_owned(), charge.id.to_string()),
        ("rsolv_customer_id".to_owned(), charge.customer_id.to_string()),
        ("fix_id".to_owned(), charge.fix_id.clone()),
    ]);
    // A test build can widen the window before the payment here, or stop there.
    fail::fail_point!("record_usage::before_stripe_charge", |_| Err(JobError::new("failpoint: before paying")));
    let created = stripe
        .charge(
            stripe_customer,
            payment_method,
            charge.amount_cents,
            &charge.currency,
            &charge.idempotency_key,
            metadata,
        )
        .await;
    match created {
        Ok(intent) => Ok(Ok(intent)),
        Err(CallError::Declined { message, .. }) => {
            Ok(Err(Attempt::Refused { refusal: refusal::CARD_DECLINED, reason: message, intent: None }))
        }
        Err(error @ CallError::Rejected { .. }) => {
            let reason = error.to_string();
            Ok(Err(Attempt::Refused { refusal: refusal::PAYMENT_FAILED, reason, intent: None }))
        }
        // The key was used with other parameters: an earlier attempt's effect is to be
        // found, not repeated; the next attempt looks again.
        Err(error) => Err(stripe_failure(error)),
    }
}

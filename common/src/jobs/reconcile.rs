//! Reconciliation with Stripe: what events missed, reordered or a lost answer left
//! behind is found by comparing our records with Stripe's, and healed through the same
//! code and idempotency keys the jobs use; what cannot be healed safely is reported.
//!
//! A cron-fired sweep (`RECONCILE_CRON`, nightly) enqueues one `reconcile_customer` per
//! customer with a Stripe id and tick; `rsolv-worker reconcile [--customer ID]` runs
//! the same comparison at once. Per customer it compares:
//!
//! | what                     | healed                                                    | reported (kind)                 |
//! |--------------------------|-----------------------------------------------------------|---------------------------------|
//! | the Pro subscription     | adopt Stripe's live one, apply its state, or its end      | `duplicate_subscriptions`, `different_subscription` |
//! | default payment method   | —                                                         | `payment_method_differs`        |
//! | paid Pro invoices        | grant the missing credits (key: the invoice id)            | `invoice_of_unknown_subscription` |
//! | charges                  | record what Stripe did with charges no job will settle, re-check `requires_action` (never pays) | `charge_not_made`, `charge_unsettled`, `payment_without_charge` (a payment naming a charge we lack) |
//! | local invariants         | —                                                         | `invariant:<name>`              |
//!
//! Each finding is a log line, a `reconcile_drift` row (the admin page lists them) and
//! `rsolv_reconcile_drift_total{kind, healed}`.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::process_webhook::{InvoiceCredits, grant_invoice_credits};
use super::{JobContext, RecordUsage, apply_current_subscription, stripe_failure};
use crate::db::{self, charges::ChargeStatus, customers::Observed};
use crate::domain::SubscriptionState;
use crate::ledger::Posted;
use crate::queue::{self, Job, JobError, JobKind, Outcome, RetryPolicy};

/// How far back a reconciliation looks at a customer's payments: a nightly run covers
/// each day many times over, and a full history would grow without end.
const PAYMENTS_LOOKBACK_DAYS: i64 = 35;

/// One sweep per cron tick (the tick is the unique key, as for renewals).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReconcileSweep {
    pub tick: i64,
}

impl JobKind for ReconcileSweep {
    const KIND: &'static str = "reconcile_sweep";
    const RETRY: RetryPolicy = RetryPolicy::new(5, 1);

    fn unique_key(&self) -> Option<String> {
        Some(self.tick.to_string())
    }
}

impl Job for ReconcileSweep {
    type Context = JobContext;

    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        let mut tx = ctx.pool.begin().await?;
        let customers = db::customers::with_stripe_customer(&mut *tx).await?;
        for customer_id in &customers {
            queue::enqueue(&mut *tx, &ReconcileCustomer { customer_id: *customer_id, tick: self.tick }).await?;
        }
        tx.commit().await?;
        Ok(Outcome::done(serde_json::json!({ "customers": customers.len() })))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReconcileCustomer {
    pub customer_id: Uuid,
    pub tick: i64,
}

impl JobKind for ReconcileCustomer {
    const KIND: &'static str = "reconcile_customer";
    // Two at a time: a nightly pass over every customer is background work, and each
    // holds a connection across Stripe calls.
    const RETRY: RetryPolicy = RetryPolicy::new(5, 2);

    fn unique_key(&self) -> Option<String> {
        Some(format!("{}:{}", self.customer_id, self.tick))
    }

    fn customer_id(&self) -> Option<Uuid> {
        Some(self.customer_id)
    }
}

impl Job for ReconcileCustomer {
    type Context = JobContext;

    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        let report = reconcile_customer(&ctx, self.customer_id).await?;
        Ok(Outcome::done(report))
    }
}

/// One finding of a reconciliation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drift {
    pub kind: String,
    pub detail: String,
    pub healed: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub customer_id: Option<Uuid>,
    pub drift: Vec<Drift>,
}

impl Report {
    async fn found(&mut self, ctx: &JobContext, customer_id: Uuid, kind: &str, detail: String, healed: bool) {
        if healed {
            tracing::warn!(%customer_id, kind, %detail, "reconciliation healed drift from Stripe");
        } else {
            tracing::error!(%customer_id, kind, %detail, "reconciliation found drift it cannot heal");
        }
        metrics::counter!("rsolv_reconcile_drift_total", "kind" => kind.to_owned(), "healed" => healed.to_string())
            .increment(1);
        if let Err(error) = db::reconcile_drift::record(&ctx.pool, customer_id, kind, &detail, healed).await {
            tracing::error!(%customer_id, kind, %error, "recording drift failed");
        }
        self.drift.push(Drift { kind: kind.to_owned(), detail, healed });
    }
}

/// Compares one customer with Stripe and heals what can be healed.
pub async fn reconcile_customer(ctx: &JobContext, customer_id: Uuid) -> Result<Report, JobError> {
    let stripe = ctx.stripe()?;
    let customer = ctx.customer(customer_id).await?;
    let report = Report { customer_id: Some(customer_id), drift: Vec::new() };
    let Some(stripe_customer) = customer.stripe_customer_id.clone() else { return Ok(report) };
    let mut run = Reconciliation { ctx, stripe, customer, stripe_customer, report };
    run.subscription().await?;
    run.payment_method().await?;
    let invoices = run.invoices().await?;
    run.charges().await?;
    run.payments(&invoices).await?;
    run.invariants().await?;
    Ok(run.report)
}

/// One customer's reconciliation, section by section; each finding goes on the report.
struct Reconciliation<'a> {
    ctx: &'a JobContext,
    stripe: &'a crate::stripe::StripeApi,
    customer: db::customers::Customer,
    stripe_customer: String,
    report: Report,
}

impl Reconciliation<'_> {
    async fn found(&mut self, kind: &str, detail: String, healed: bool) {
        self.report.found(self.ctx, self.customer.id, kind, detail, healed).await;
    }

    /// Stripe's live Pro subscriptions against the one we track; what is applied is
    /// read again under the customer's Stripe-state lock.
    async fn subscription(&mut self) -> Result<(), JobError> {
        let (ctx, stripe, customer_id) = (self.ctx, self.stripe, self.customer.id);
        let live = stripe.live_pro_subscriptions(&self.stripe_customer).await.map_err(stripe_failure)?;
        let tracked = self.customer.stripe_subscription_id.clone();
        let tracked = tracked.as_deref();
        if live.len() > 1 {
            let ids: Vec<&str> = live.iter().map(|s| s.id.as_str()).collect();
            let detail = format!("{} live Pro subscriptions at Stripe: {}", live.len(), ids.join(", "));
            self.found("duplicate_subscriptions", detail, false).await;
        }
        match (tracked, live.iter().find(|s| Some(s.id.as_str()) == tracked).or(live.first())) {
            (Some(ours), Some(theirs)) if theirs.id != ours => {
                let detail = format!("we track {ours}, Stripe's live one is {}", theirs.id);
                self.found("different_subscription", detail, false).await;
            }
            (_, Some(theirs)) => {
                let differs = tracked.is_none()
                    || self.customer.subscription_state.map(SubscriptionState::as_str) != Some(theirs.status.as_str())
                    || self.customer.cancel_at_period_end != theirs.cancel_at_period_end;
                if differs {
                    let mut tx = ctx.pool.begin().await?;
                    if let Some((current, true)) =
                        apply_current_subscription(&mut tx, stripe, customer_id, &theirs.id).await?
                    {
                        tx.commit().await?;
                        let kind = if tracked.is_none() {
                            "subscription_missing_locally"
                        } else {
                            "subscription_state_differs"
                        };
                        let detail = format!(
                            "{} is {} (cancel at period end: {}) at Stripe",
                            current.id, current.status, current.cancel_at_period_end
                        );
                        self.found(kind, detail, true).await;
                    }
                }
            }
            (Some(ours), None) => {
                // Not live at Stripe: ended (or unknown there, which ends it for us too).
                let mut tx = ctx.pool.begin().await?;
                if apply_current_subscription(&mut tx, stripe, customer_id, ours).await?.is_none() {
                    db::customers::apply_subscription_ended(&mut *tx, customer_id, ours, Observed::current()).await?;
                }
                tx.commit().await?;
                self.found("subscription_ended_at_stripe", format!("{ours} has ended at Stripe"), true).await;
            }
            (None, None) => {}
        }
        Ok(())
    }

    /// The default payment method: reported only (consent is the customer's to give).
    async fn payment_method(&mut self) -> Result<(), JobError> {
        let theirs = self.stripe.default_payment_method(&self.stripe_customer).await.map_err(stripe_failure)?;
        if theirs.is_some() && theirs != self.customer.stripe_payment_method_id {
            let detail = format!("ours {:?}, Stripe's {:?}", self.customer.stripe_payment_method_id, theirs);
            self.found("payment_method_differs", detail, false).await;
        }
        Ok(())
    }

    /// Paid Pro invoices: each granted once, under the key the webhook uses. Returns
    /// the customer's invoices (their payments are not charges of ours).
    async fn invoices(&mut self) -> Result<Vec<crate::stripe::objects::Invoice>, JobError> {
        let (ctx, customer_id) = (self.ctx, self.customer.id);
        let invoices = self.stripe.invoices(&self.stripe_customer, None).await.map_err(stripe_failure)?;
        for invoice in invoices.iter().filter(|i| i.is_paid()) {
            let mut tx = ctx.pool.begin().await?;
            let finding = match grant_invoice_credits(&mut tx, ctx, customer_id, invoice).await? {
                InvoiceCredits::UnknownSubscription => {
                    let detail = format!("paid invoice {} of subscription {:?}", invoice.id, invoice.subscription());
                    Some(("invoice_of_unknown_subscription", detail, false))
                }
                InvoiceCredits::Posted(Posted::Posted { .. }) => {
                    tx.commit().await?;
                    Some(("invoice_grant_missing", format!("credits of paid invoice {} granted", invoice.id), true))
                }
                InvoiceCredits::Posted(_) | InvoiceCredits::NotEarned => None,
            };
            // Recorded once the transaction is over: one connection per reconciliation.
            if let Some((kind, detail, healed)) = finding {
                self.found(kind, detail, healed).await;
            }
        }
        Ok(invoices)
    }

    /// Charges no job will settle: asked of Stripe and recorded as Stripe has them, but
    /// never paid from here (a job an operator cancelled stays unpaid).
    async fn charges(&mut self) -> Result<(), JobError> {
        let (ctx, customer_id) = (self.ctx, self.customer.id);
        for charge in db::charges::unresolved(&ctx.pool, Some(customer_id)).await? {
            let key = RecordUsage::unique_key_for(customer_id, &charge.fix_id);
            let job = queue::by_unique_key(&ctx.pool, RecordUsage::KIND, &key).await?;
            let job_will_settle = job.is_some_and(|j| j.status.is_unfinished());
            if charge.status == ChargeStatus::Pending && job_will_settle {
                continue;
            }
            let fix = RecordUsage {
                customer_id,
                fix_id: charge.fix_id.clone(),
                repo: charge.repo.clone(),
                metadata: serde_json::Value::Null,
            };
            let was = charge.status;
            match fix.settle(ctx, charge.clone(), false).await {
                Ok(Outcome::Done { detail }) => {
                    let outcome = detail["outcome"].as_str().unwrap_or_default();
                    if outcome == "not_made" {
                        let detail = format!(
                            "charge {} for fix {} was never made and no job will make it",
                            charge.id, charge.fix_id
                        );
                        self.found("charge_not_made", detail, false).await;
                    } else if !(was == ChargeStatus::RequiresAction && outcome == "requires_action") {
                        let detail = format!("charge {} for fix {} settled: {outcome}", charge.id, charge.fix_id);
                        self.found("charge_settled", detail, true).await;
                    }
                }
                Ok(_) => {}
                // One charge that cannot be settled now does not stop the rest.
                Err(error) => {
                    let detail = format!("charge {} for fix {}: {error}", charge.id, charge.fix_id);
                    self.found("charge_unsettled", detail, false).await;
                }
            }
        }
        Ok(())
    }

    /// A payment that says it is for one of our charges (our metadata) must be one.
    /// Invoice payments (a subscription's) are skipped without asking Stripe about them.
    async fn payments(&mut self, invoices: &[crate::stripe::objects::Invoice]) -> Result<(), JobError> {
        let stripe = self.stripe;
        let mut known = db::charges::payment_intents(&self.ctx.pool, self.customer.id).await?;
        known.extend(invoices.iter().filter_map(|i| i.payment_intent.clone()));
        let since = (chrono::Utc::now() - chrono::Duration::days(PAYMENTS_LOOKBACK_DAYS)).timestamp();
        let payments = stripe.charges_since(&self.stripe_customer, since).await.map_err(stripe_failure)?;
        for payment in payments.iter().filter(|c| c.invoice.is_none() && c.status.as_deref() == Some("succeeded")) {
            let Some(intent) = &payment.payment_intent else { continue };
            if known.contains(intent) {
                continue;
            }
            let intent = stripe.payment_intent(intent).await.map_err(stripe_failure)?;
            if let Some(charge_id) = intent.charge_id() {
                let detail = format!(
                    "payment {} ({} cents) names charge {charge_id}, which we do not have",
                    intent.id, payment.amount
                );
                self.found("payment_without_charge", detail, false).await;
            }
        }
        Ok(())
    }

    /// Every money invariant, checked from the tables for this customer.
    async fn invariants(&mut self) -> Result<(), JobError> {
        for violation in crate::verify::money_invariants(&self.ctx.pool, Some(self.customer.id)).await? {
            let kind = format!("invariant:{}", violation.invariant);
            self.found(&kind, format!("{}: {}", violation.subject, violation.detail), false).await;
        }
        Ok(())
    }
}

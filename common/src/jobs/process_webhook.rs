//! Process one Stripe event: record it once by its id, then apply the five event types
//! of the domain spec; every other type is recorded and ignored.
//!
//! Stripe retries for days, may deliver twice and out of order; the result is that of
//! one in-order delivery because: the event row and the job's unique key make a
//! redelivery a no-op; Pro credits post under the invoice id's ledger key; and, with
//! Stripe's API configured, an event only says *what* to look at: the subscription or
//! invoice is read back from Stripe and its current state applied, under the
//! customer's Stripe-state lock (so two events of the same second cannot tie). Without
//! the API (webhooks only), a payload's state is applied only if it is newer (event
//! `created`, then stage rank) than the last one applied.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{JobContext, SendEmailStep, apply_current_subscription, stripe_failure};
use crate::db::{
    self,
    customers::{Customer, Observed},
};
use crate::domain::LedgerSource;
use crate::email::sequences;
use crate::ledger::{self, Posted, Posting};
use crate::queue::{Job, JobError, JobKind, Outcome, RetryPolicy};
use crate::stripe::events::{Envelope, Handled};
use crate::stripe::objects::{Invoice, Subscription};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessStripeEvent {
    pub event_id: String,
    pub event_type: String,
    pub created: i64,
    /// The event as Stripe sent it (verified by the API before enqueueing).
    pub payload: serde_json::Value,
}

impl ProcessStripeEvent {
    pub fn from_envelope(envelope: &Envelope, payload: serde_json::Value) -> Self {
        Self { event_id: envelope.id.clone(), event_type: envelope.kind.clone(), created: envelope.created, payload }
    }
}

impl JobKind for ProcessStripeEvent {
    const KIND: &'static str = "process_stripe_event";
    const RETRY: RetryPolicy = RetryPolicy::new(20, 10).timeout(Duration::from_secs(120));

    fn unique_key(&self) -> Option<String> {
        Some(self.event_id.clone())
    }
}

/// What a paid invoice did for the customer's Pro credits.
pub(crate) enum InvoiceCredits {
    Posted(Posted),
    /// Not the Pro price, no subscription, or Pro credits configured to 0.
    NotEarned,
    /// The Pro price, on a subscription not (yet) known as the customer's.
    UnknownSubscription,
}

/// Posts a paid Pro invoice's credits, once per invoice (the webhook, the renewal and
/// reconciliation share the key, so they never grant twice), and only for what was
/// paid: an invoice that bills the Pro price on one of the customer's subscriptions. A
/// $0 invoice grants as any other paid Pro invoice does (README).
pub(crate) async fn grant_invoice_credits(
    tx: &mut PgConnection,
    ctx: &JobContext,
    customer_id: Uuid,
    invoice: &Invoice,
) -> Result<InvoiceCredits, JobError> {
    let Some(subscription) = invoice.subscription().filter(|_| invoice.bills_price(&ctx.settings.prices.pro_price_id))
    else {
        return Ok(InvoiceCredits::NotEarned);
    };
    if !db::customers::owns_subscription(&mut *tx, customer_id, subscription).await? {
        return Ok(InvoiceCredits::UnknownSubscription);
    }
    if ctx.settings.credits.pro_invoice == 0 {
        return Ok(InvoiceCredits::NotEarned);
    }
    let posting = Posting {
        customer_id,
        amount: ctx.settings.credits.pro_invoice,
        source: LedgerSource::ProSubscriptionPayment,
        metadata: serde_json::json!({ "invoice_id": invoice.id, "amount_paid": invoice.amount_paid }),
        idempotency_key: format!("pro_invoice:{}", invoice.id),
    };
    let posted = ledger::post(tx, &posting).await?;
    Ok(InvoiceCredits::Posted(posted))
}

fn object<T: serde::de::DeserializeOwned>(payload: &serde_json::Value) -> Result<T, JobError> {
    serde_json::from_value(payload["data"]["object"].clone())
        .map_err(|e| JobError::caused("event object does not decode: ", e))
}

impl Job for ProcessStripeEvent {
    type Context = JobContext;

    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        // Recorded first and on its own, so that even an event we cannot apply yet is on file.
        db::billing_events::record(&ctx.pool, &self.event_id, &self.event_type, self.created, &self.payload).await?;

        let mut tx = ctx.pool.begin().await?;
        match db::billing_events::lock(&mut *tx, &self.event_id).await? {
            Some(Some(_processed)) => return Ok(Outcome::done(serde_json::json!({ "duplicate": true }))),
            Some(None) => {}
            None => return Err(JobError::new("event row vanished")),
        }
        let Some(kind) = Handled::parse(&self.event_type) else {
            db::billing_events::mark_processed(&mut *tx, &self.event_id, None, "ignored").await?;
            tx.commit().await?;
            return Ok(Outcome::done(serde_json::json!({ "outcome": "ignored" })));
        };
        let customer = self.customer(&mut tx).await?;
        // With Stripe's API at hand, an event is a notification: what is applied is the
        // object as Stripe has it now, read under the customer's Stripe-state lock, so
        // order, ties within one second, duplicates and delays do not matter (the
        // payload stays on file). Without it (webhooks only), the payload is applied,
        // ordered by (created, stage).
        let outcome = match kind {
            Handled::InvoicePaymentSucceeded => self.invoice_paid(&ctx, &mut tx, &customer).await?,
            Handled::InvoicePaymentFailed => self.invoice_failed(&ctx, &mut tx, &customer, kind).await?,
            Handled::SubscriptionCreated | Handled::SubscriptionUpdated | Handled::SubscriptionDeleted => {
                self.subscription_changed(&ctx, &mut tx, &customer, kind).await?
            }
        };
        db::billing_events::mark_processed(&mut *tx, &self.event_id, Some(customer.id), outcome).await?;
        tx.commit().await?;
        tracing::info!(event_id = %self.event_id, kind = kind.as_str(), customer_id = %customer.id, outcome, "Stripe event processed");
        Ok(Outcome::done(serde_json::json!({ "outcome": outcome })))
    }
}

impl ProcessStripeEvent {
    /// The customer the event's object names by its Stripe customer.
    async fn customer(&self, tx: &mut PgConnection) -> Result<Customer, JobError> {
        let stripe_customer = self.payload["data"]["object"]["customer"].as_str();
        let customer = match stripe_customer {
            Some(id) => db::customers::find_by_stripe_customer(&mut *tx, id).await?,
            None => None,
        };
        // Perhaps its Stripe customer is being recorded right now: retry with backoff,
        // then dead with this reason; never dropped silently.
        customer.ok_or_else(|| {
            JobError::new(format!("no customer with Stripe customer {}", stripe_customer.unwrap_or("(none in event)")))
        })
    }

    /// A paid invoice: its credits, once, if it is a Pro invoice of the customer's.
    async fn invoice_paid(
        &self,
        ctx: &JobContext,
        tx: &mut PgConnection,
        customer: &Customer,
    ) -> Result<&'static str, JobError> {
        let named: Invoice = object(&self.payload)?;
        let invoice = match &ctx.stripe {
            Some(stripe) => read_back(stripe, &named.id).await?,
            None => Some(named),
        };
        Ok(match invoice {
            None => "unknown_at_stripe",
            Some(invoice) if ctx.stripe.is_some() && !invoice.is_paid() => "not_paid",
            Some(invoice) => match grant_invoice_credits(tx, ctx, customer.id, &invoice).await? {
                // Paid before its subscription is on file (the subscribe job or a
                // subscription event records it): try again shortly rather than lose
                // it; an invoice of a subscription that never becomes the customer's
                // ends dead, for an operator to look at.
                InvoiceCredits::UnknownSubscription => {
                    return Err(JobError::new(format!(
                        "Pro invoice {} is for subscription {:?}, not (yet) known as the customer's",
                        invoice.id,
                        invoice.subscription()
                    )));
                }
                InvoiceCredits::Posted(Posted::Posted { .. }) => "applied",
                InvoiceCredits::Posted(Posted::AlreadyPosted { .. }) => "already_applied",
                InvoiceCredits::Posted(Posted::InsufficientCredits { .. }) | InvoiceCredits::NotEarned => "ignored",
            },
        })
    }

    /// A failed invoice: the subscription's state, and the dunning email once per
    /// failed invoice still unpaid, committed with the state.
    async fn invoice_failed(
        &self,
        ctx: &JobContext,
        tx: &mut PgConnection,
        customer: &Customer,
        kind: Handled,
    ) -> Result<&'static str, JobError> {
        let invoice: Invoice = object(&self.payload)?;
        let (applied, unpaid) = match &ctx.stripe {
            Some(stripe) => {
                // Stripe marks the subscription past due itself: its status is read, not
                // inferred from this (perhaps old) failure. Read before the state is
                // applied: applying locks the customer's row, which is held for no Stripe
                // call. Unknown at Stripe counts as paid: nobody is dunned for it.
                let paid_since = read_back(stripe, &invoice.id).await?.is_none_or(|i| i.is_paid());
                let tracked = customer.stripe_subscription_id.as_deref();
                let applied = match invoice.subscription() {
                    Some(id) if Some(id) == tracked => apply_current_subscription(&mut *tx, stripe, customer.id, id)
                        .await?
                        .is_some_and(|(_, applied)| applied),
                    _ => false,
                };
                (applied, !paid_since)
            }
            None => {
                let observed = Observed::event(self.created, kind.rank());
                (db::customers::apply_past_due(&mut *tx, customer.id, observed).await?, true)
            }
        };
        if ctx.mailer.is_some() && unpaid {
            let vars = serde_json::json!({
                "amount": format_amount(invoice.amount_due, invoice.currency.as_deref().unwrap_or("usd")),
                "next_attempt": invoice.next_payment_attempt
                    .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
                    .map(|d| d.format("%B %-d, %Y").to_string()),
                "invoice_id": invoice.id,
            });
            SendEmailStep::schedule(tx, customer.id, &sequences::DUNNING, chrono::Utc::now(), &invoice.id, vars)
                .await?;
        }
        Ok(if applied { "applied" } else { "stale" })
    }

    /// A subscription created, updated or deleted: the Pro state, if it bills Pro.
    async fn subscription_changed(
        &self,
        ctx: &JobContext,
        tx: &mut PgConnection,
        customer: &Customer,
        kind: Handled,
    ) -> Result<&'static str, JobError> {
        let subscription: Subscription = object(&self.payload)?;
        if !subscription.bills_price(&ctx.settings.prices.pro_price_id) {
            // Another product's subscription never makes a customer Pro.
            return Ok("ignored");
        }
        if let Some(stripe) = &ctx.stripe {
            return Ok(match apply_current_subscription(tx, stripe, customer.id, &subscription.id).await? {
                Some((_, true)) => "applied",
                // Not the subscription the customer has: reconciliation reports it.
                Some((_, false)) => "not_tracked",
                None => "unknown_at_stripe",
            });
        }
        let observed = Observed::event(self.created, kind.rank());
        let applied = if kind == Handled::SubscriptionDeleted {
            db::customers::apply_subscription_ended(&mut *tx, customer.id, &subscription.id, observed).await?
        } else {
            super::apply_stripe_subscription(&mut *tx, customer.id, &subscription, observed).await?
        };
        Ok(if applied { "applied" } else { "stale" })
    }
}

/// The invoice as Stripe has it now; `None` if Stripe does not know it (an event made
/// up by hand, or from another account), which is recorded and applies nothing.
async fn read_back(stripe: &crate::stripe::StripeApi, id: &str) -> Result<Option<Invoice>, JobError> {
    match stripe.invoice(id).await {
        Ok(invoice) => Ok(Some(invoice)),
        Err(crate::stripe::CallError::Rejected { status: 404, .. }) => Ok(None),
        Err(error) => Err(stripe_failure(error)),
    }
}

/// `59900, "usd"` → `$599.00`; other currencies as `599.00 EUR`.
fn format_amount(cents: i64, currency: &str) -> String {
    let amount = format!("{}.{:02}", cents / 100, (cents % 100).abs());
    match currency.to_ascii_lowercase().as_str() {
        "usd" => format!("${amount}"),
        other => format!("{amount} {}", other.to_uppercase()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn amounts_read_as_money() {
        assert_eq!(super::format_amount(59_900, "usd"), "$599.00");
        assert_eq!(super::format_amount(2_905, "eur"), "29.05 EUR");
    }
}

//! Send one step of an email sequence, at most once (see `email` for the guarantee),
//! after re-checking the sequence's stop condition.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::JobContext;
use crate::db;
use crate::db::email_deliveries::{DeliveryKey, DeliveryStatus as Delivery};
use crate::domain::SubscriptionType;
use crate::email::sequences::Sequence;
use crate::email::sequences::{self, StopCondition};
use crate::email::{self, SendError};
use crate::queue::{self, EnqueueOptions, Job, JobError, JobKind, Outcome, RetryPolicy};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SendEmailStep {
    pub customer_id: Uuid,
    pub sequence: String,
    pub step: String,
    /// Empty, or what tells repeats of a sequence apart (a dunning email's invoice).
    #[serde(default)]
    pub occurrence: String,
    /// The trigger's template variables.
    #[serde(default)]
    pub vars: serde_json::Value,
}

impl SendEmailStep {
    /// Enqueues every step of `sequence` for a customer, at trigger + each step's delay.
    /// `occurrence` tells apart repeats of one sequence (e.g. the invoice of a dunning
    /// email); `vars` are the trigger's template variables.
    pub async fn schedule(
        tx: &mut sqlx::PgConnection,
        customer_id: Uuid,
        sequence: &Sequence,
        trigger_at: chrono::DateTime<chrono::Utc>,
        occurrence: &str,
        vars: serde_json::Value,
    ) -> Result<(), sqlx::Error> {
        for step in sequence.steps {
            let job = Self {
                customer_id,
                sequence: sequence.name.to_owned(),
                step: step.key.to_owned(),
                occurrence: occurrence.to_owned(),
                vars: vars.clone(),
            };
            let run_at = trigger_at + chrono::Duration::days(step.delay_days);
            queue::enqueue_with(&mut *tx, &job, EnqueueOptions { run_at: Some(run_at), ..Default::default() }).await?;
        }
        Ok(())
    }
}

impl JobKind for SendEmailStep {
    const KIND: &'static str = "send_email_step";
    const RETRY: RetryPolicy = RetryPolicy::new(12, 5).timeout(Duration::from_secs(120));

    fn unique_key(&self) -> Option<String> {
        Some(format!("{}:{}:{}:{}", self.customer_id, self.sequence, self.step, self.occurrence))
    }

    fn customer_id(&self) -> Option<Uuid> {
        Some(self.customer_id)
    }
}

impl Job for SendEmailStep {
    type Context = JobContext;

    /// Only where email is on: elsewhere the steps wait for a worker that can send them.
    fn runs_here(ctx: &JobContext) -> bool {
        ctx.mailer.is_some()
    }

    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        let mailer = ctx.mailer.as_ref().ok_or_else(|| JobError::new("email is not configured (SMTP_URL is unset)"))?;
        let Some(sequence) = sequences::find(&self.sequence) else {
            return Ok(Outcome::cancel(format!("no sequence {:?}", self.sequence)));
        };
        let Some(step) = sequence.step(&self.step) else {
            return Ok(Outcome::cancel(format!("no step {:?} in {}", self.step, sequence.name)));
        };
        let customer = ctx.customer(self.customer_id).await?;
        let key = DeliveryKey {
            customer_id: customer.id,
            sequence: sequence.name,
            step: step.key,
            occurrence: &self.occurrence,
        };
        let (status, idle_seconds) = db::email_deliveries::open(&ctx.pool, key, &customer.email).await?;
        if let Some(outcome) = settle_unless_sendable(&ctx, key, status, idle_seconds).await? {
            return Ok(outcome);
        }
        // Unsubscribed from everything, or from this sequence in the dashboard.
        let unsubscribed = db::customers::unsubscribed(&ctx.pool, customer.id).await?.unwrap_or(true)
            || db::email_preferences::is_opted_out(&ctx.pool, customer.id, sequence.name).await?;
        let returned = sequence.stop == Some(StopCondition::UnsubscribedOrReturned)
            && db::usage::fixed_after_day(&ctx.pool, customer.id, &self.occurrence).await?;
        if stops(sequence.stop, &customer, unsubscribed || returned) {
            let from = [Delivery::Pending, Delivery::Failed];
            db::email_deliveries::transition(&ctx.pool, key, &from, Delivery::Skipped, None, None).await?;
            return Ok(delivered(Delivery::Skipped.as_str()));
        }

        let rendered = email::render(&ctx.settings, step, customer.id, &customer.name, &self.vars)
            .map_err(|e| JobError::caused("", e))?;
        if let Err(error) = mailer.reachable().await {
            db::email_deliveries::transition(
                &ctx.pool,
                key,
                &[Delivery::Pending, Delivery::Failed],
                Delivery::Failed,
                None,
                Some(&error.to_string()),
            )
            .await?;
            return Err(JobError::caused("", error));
        }
        let message_id = format!("<{}.{}.{}@rsolv>", sequence.name, step.key, Uuid::new_v4().simple());
        // Only the run that moves the record to `sending` may talk to SMTP.
        if !db::email_deliveries::transition(
            &ctx.pool,
            key,
            &[Delivery::Pending, Delivery::Failed],
            Delivery::Sending,
            Some(&message_id),
            None,
        )
        .await?
        {
            return Ok(delivered("taken by another run"));
        }
        let sent = mailer.send(&customer.email, &rendered, &message_id).await;
        match &sent {
            Ok(()) => {
                tracing::info!(customer_id = %customer.id, sequence = sequence.name, step = step.key, "email sent")
            }
            Err(SendError::Uncertain(error)) => {
                tracing::error!(customer_id = %customer.id, sequence = sequence.name, step = step.key, %error, "email delivery uncertain; not resent")
            }
            Err(_) => {}
        }
        record_sent(&ctx, key, sent).await
    }
}

/// A run's answer about its delivery.
fn delivered(what: &str) -> Outcome {
    Outcome::done(serde_json::json!({ "delivery": what }))
}

/// What a run does about a delivery that is not waiting to be sent (`None`: it is, go
/// on): another run's SMTP conversation is looked at again once it must have ended;
/// one older than that stopped mid-send, and the server may have the message, so it is
/// settled as uncertain rather than sent twice; anything else is settled already.
async fn settle_unless_sendable(
    ctx: &JobContext,
    key: DeliveryKey<'_>,
    status: Delivery,
    idle_seconds: f64,
) -> Result<Option<Outcome>, JobError> {
    Ok(Some(match status {
        Delivery::Pending | Delivery::Failed => return Ok(None),
        Delivery::Sending if idle_seconds < email::SENDING_DEADLINE.as_secs_f64() => {
            Outcome::Snooze { seconds: email::SENDING_DEADLINE.as_secs() }
        }
        Delivery::Sending => {
            let interrupted = Some("interrupted mid-send");
            db::email_deliveries::transition(
                &ctx.pool,
                key,
                &[Delivery::Sending],
                Delivery::Uncertain,
                None,
                interrupted,
            )
            .await?;
            delivered(Delivery::Uncertain.as_str())
        }
        settled => delivered(settled.as_str()),
    }))
}

/// Records what the SMTP conversation ended in, and answers for the run: sent; not
/// sent (retried); rejected for good; or uncertain (the server may have the message,
/// so it is never sent again).
async fn record_sent(ctx: &JobContext, key: DeliveryKey<'_>, sent: Result<(), SendError>) -> Result<Outcome, JobError> {
    let (to, error, answer) = match sent {
        Ok(()) => (Delivery::Sent, None, Ok(delivered(Delivery::Sent.as_str()))),
        Err(SendError::NotSent(error)) => {
            let answer = Err(JobError::new(format!("email not sent: {error}")));
            (Delivery::Failed, Some(error), answer)
        }
        Err(SendError::Rejected(error)) => {
            let answer = Ok(Outcome::cancel(format!("email rejected: {error}")));
            (Delivery::Rejected, Some(error), answer)
        }
        Err(SendError::Uncertain(error)) => {
            let answer = Ok(Outcome::cancel(format!("email delivery uncertain: {error}")));
            (Delivery::Uncertain, Some(error), answer)
        }
    };
    db::email_deliveries::transition(&ctx.pool, key, &[Delivery::Sending], to, None, error.as_deref()).await?;
    answer
}

/// Whether the sequence's stop condition holds for the customer now (`unsubscribed`
/// includes having come back, for the condition that asks).
fn stops(condition: Option<StopCondition>, customer: &db::customers::Customer, unsubscribed: bool) -> bool {
    match condition {
        None => false,
        Some(StopCondition::Unsubscribed | StopCondition::UnsubscribedOrReturned) => unsubscribed,
        Some(StopCondition::UnsubscribedOrUpgraded) => {
            unsubscribed || customer.has_payment_method() || customer.subscription_type == SubscriptionType::Pro
        }
    }
}

//! Send one step of an email sequence, at most once (see `email` for the guarantee),
//! after re-checking the sequence's stop condition.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::JobContext;
use crate::db;
use crate::db::email_deliveries::{DeliveryKey, DeliveryStatus as Delivery};
use crate::domain::SubscriptionType;
use crate::email::sequences::{self, StopCondition};
use crate::email::{self, SendError};
use crate::queue::{Job, JobError, JobKind, Outcome, RetryPolicy};

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
        let done = |what: &str| Ok(Outcome::done(serde_json::json!({ "delivery": what })));
        match status {
            Delivery::Pending | Delivery::Failed => {}
            // Another run is in its SMTP conversation now: look again once it has ended.
            Delivery::Sending if idle_seconds < email::SENDING_DEADLINE.as_secs_f64() => {
                return Ok(Outcome::Snooze { seconds: email::SENDING_DEADLINE.as_secs() });
            }
            // Longer than any SMTP conversation lasts: its run stopped mid-send, and the
            // server may have accepted the message.
            Delivery::Sending => {
                db::email_deliveries::transition(
                    &ctx.pool,
                    key,
                    &[Delivery::Sending],
                    Delivery::Uncertain,
                    None,
                    Some("interrupted mid-send"),
                )
                .await?;
                return done(Delivery::Uncertain.as_str());
            }
            settled => return done(settled.as_str()),
        }

        let unsubscribed = db::customers::unsubscribed(&ctx.pool, customer.id).await?.unwrap_or(true);
        let stop = match sequence.stop {
            None => false,
            Some(StopCondition::Unsubscribed) => unsubscribed,
            Some(StopCondition::UnsubscribedOrUpgraded) => {
                unsubscribed || customer.has_payment_method() || customer.subscription_type == SubscriptionType::Pro
            }
        };
        if stop {
            db::email_deliveries::transition(
                &ctx.pool,
                key,
                &[Delivery::Pending, Delivery::Failed],
                Delivery::Skipped,
                None,
                None,
            )
            .await?;
            return done(Delivery::Skipped.as_str());
        }

        let rendered =
            email::render(&ctx.settings, step, customer.id, &customer.name, &self.vars).map_err(JobError::new)?;
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
            return Err(JobError::new(error.to_string()));
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
            return done("taken by another run");
        }
        match mailer.send(&customer.email, &rendered, &message_id).await {
            Ok(()) => {
                db::email_deliveries::transition(&ctx.pool, key, &[Delivery::Sending], Delivery::Sent, None, None)
                    .await?;
                tracing::info!(customer_id = %customer.id, sequence = sequence.name, step = step.key, "email sent");
                done(Delivery::Sent.as_str())
            }
            Err(SendError::NotSent(error)) => {
                db::email_deliveries::transition(
                    &ctx.pool,
                    key,
                    &[Delivery::Sending],
                    Delivery::Failed,
                    None,
                    Some(&error),
                )
                .await?;
                Err(JobError::new(format!("email not sent: {error}")))
            }
            Err(SendError::Rejected(error)) => {
                db::email_deliveries::transition(
                    &ctx.pool,
                    key,
                    &[Delivery::Sending],
                    Delivery::Rejected,
                    None,
                    Some(&error),
                )
                .await?;
                Ok(Outcome::cancel(format!("email rejected: {error}")))
            }
            Err(SendError::Uncertain(error)) => {
                tracing::error!(customer_id = %customer.id, sequence = sequence.name, step = step.key, %error, "email delivery uncertain; not resent");
                db::email_deliveries::transition(
                    &ctx.pool,
                    key,
                    &[Delivery::Sending],
                    Delivery::Uncertain,
                    None,
                    Some(&error),
                )
                .await?;
                Ok(Outcome::cancel(format!("email delivery uncertain: {error}")))
            }
        }
    }
}

//! The nudges that start by themselves: a cron-fired sweep (`NUDGE_CRON`, hourly)
//! starts the expiring-trial sequence for trial customers without a card who are low
//! on credits (`NUDGE_TRIAL_CREDITS`, at most 1 left), and the re-engagement sequence
//! for customers with no fix for `NUDGE_INACTIVE_DAYS` (30). Each starts once per
//! customer and episode (`email_sequence_starts`): the trial, or a stretch of
//! inactivity named by the day it began (coming back and going quiet again is a new
//! one). The steps' own stop conditions still apply when they run.
//!
//! With email off (`SMTP_URL` unset) a sweep starts nothing and records nothing, as
//! onboarding and dunning schedule nothing then: steps queued with no mailer to send
//! them would die after their attempts, and the starts recorded with them would keep
//! the customers from being nudged once email is on.

use serde::{Deserialize, Serialize};

use super::{JobContext, SendEmailStep};
use crate::db::email_preferences as prefs;
use crate::email::sequences::{EXPIRING_TRIAL, RE_ENGAGEMENT};
use crate::queue::{Job, JobError, JobKind, Outcome, RetryPolicy};

/// One sweep per cron tick (the tick is the unique key).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NudgeSweep {
    pub tick: i64,
}

impl JobKind for NudgeSweep {
    const KIND: &'static str = "nudge_sweep";
    const RETRY: RetryPolicy = RetryPolicy::new(5, 1);

    fn unique_key(&self) -> Option<String> {
        Some(self.tick.to_string())
    }
}

impl Job for NudgeSweep {
    type Context = JobContext;

    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        if ctx.mailer.is_none() {
            return Ok(Outcome::done(serde_json::json!({ "expiring_trial": 0, "re_engagement": 0, "email": "off" })));
        }
        let nudges = &ctx.settings.nudges;
        let now = chrono::Utc::now();
        let mut tx = ctx.pool.begin().await?;
        let mut trials = 0;
        for customer_id in prefs::low_on_trial_credits(&mut *tx, nudges.trial_credits).await? {
            if prefs::start_sequence(&mut *tx, customer_id, EXPIRING_TRIAL.name, "").await? {
                let vars = serde_json::json!({ "credits": nudges.trial_credits });
                SendEmailStep::schedule(&mut tx, customer_id, &EXPIRING_TRIAL, now, "", vars).await?;
                trials += 1;
            }
        }
        let mut inactive = 0;
        for (customer_id, since) in prefs::inactive_since(&mut *tx, nudges.inactive_days).await? {
            if prefs::start_sequence(&mut *tx, customer_id, RE_ENGAGEMENT.name, &since).await? {
                let vars = serde_json::json!({ "inactive_since": since });
                SendEmailStep::schedule(&mut tx, customer_id, &RE_ENGAGEMENT, now, &since, vars).await?;
                inactive += 1;
            }
        }
        tx.commit().await?;
        if trials + inactive > 0 {
            tracing::info!(trials, inactive, "nudge sequences started");
        }
        Ok(Outcome::done(serde_json::json!({ "expiring_trial": trials, "re_engagement": inactive })))
    }
}

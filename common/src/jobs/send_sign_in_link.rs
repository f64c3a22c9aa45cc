//! Email a customer a one-time link into their dashboard.
//!
//! The link's token is made by the run, not by the request that asked for it, so no
//! raw token is ever written down (the job's arguments are stored): the run stores the
//! token's hash, then sends the link. A run that fails before the server accepted the
//! message is retried and makes a new link (the unused one expires); one whose SMTP
//! conversation broke midway is not resent, as a step of a sequence is not, and the
//! customer asks again. Sign-in email is transactional: it goes out whatever the
//! customer's email preferences.
//!
//! A request for an address without an account enqueues a [`SignInLinkNotSent`], whose
//! run sends nothing: the request then does the same durable work whether the address
//! has an account or not, so neither its answer nor the time that answer takes tells an
//! asker which addresses have one. It is a kind of its own rather than a
//! `SendSignInLink` without a customer so that workers of an earlier release, which do
//! not run the kind, never meet args they cannot read (README, "Rolling deploys").

use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::JobContext;
use crate::db;
use crate::email::{self, SendError};
use crate::queue::{self, Job, JobError, JobKind, Outcome, RetryPolicy};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SendSignInLink {
    pub customer_id: Uuid,
    /// Tells one request for a link from the next (the unique key).
    pub request: Uuid,
}

impl JobKind for SendSignInLink {
    const KIND: &'static str = "send_sign_in_link";
    // A link is worth little after its 15 minutes: a few quick attempts, then the
    // customer asks again.
    const RETRY: RetryPolicy = RetryPolicy::new(4, 5).timeout(Duration::from_secs(60));

    fn unique_key(&self) -> Option<String> {
        Some(self.request.to_string())
    }

    fn customer_id(&self) -> Option<Uuid> {
        Some(self.customer_id)
    }
}

impl Job for SendSignInLink {
    type Context = JobContext;

    /// Only where email is on: elsewhere the links wait for a worker that can send them.
    fn runs_here(ctx: &JobContext) -> bool {
        ctx.mailer.is_some()
    }

    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        let mailer = ctx.mailer.as_ref().ok_or_else(|| JobError::new("email is not configured (SMTP_URL is unset)"))?;
        // A link is worth its 15 minutes from the request: one asked for longer ago (it
        // waited for a worker with email, or through a long outage) is not sent late.
        let asked = queue::first_enqueued_at(&ctx.pool, Self::KIND, &self.request.to_string()).await?;
        let waited = asked.map(|at| chrono::Utc::now() - at).unwrap_or_default();
        if waited.to_std().is_ok_and(|waited| waited > db::sign_in_links::LINK_TTL) {
            return Ok(Outcome::cancel("asked for longer ago than a link lasts: not sent; the customer asks again"));
        }
        let customer = ctx.customer(self.customer_id).await?;
        mailer.reachable().await.map_err(|e| JobError::caused("", e))?;
        let token = db::sign_in_links::create(&ctx.pool, customer.id).await?;
        let link = format!("{}/dashboard/login/{}", ctx.settings.public_base_url, token.expose());
        let rendered =
            email::render_sign_in(&ctx.settings, &customer.name, &link).map_err(|e| JobError::caused("", e))?;
        let message_id = format!("<sign-in.{}@rsolv>", Uuid::new_v4().simple());
        match mailer.send(&customer.email, &rendered, &message_id).await {
            Ok(()) => {
                tracing::info!(customer_id = %customer.id, "sign-in link sent");
                Ok(Outcome::done(serde_json::json!({ "delivery": "sent" })))
            }
            Err(SendError::NotSent(error)) => Err(JobError::new(format!("sign-in link not sent: {error}"))),
            Err(error @ (SendError::Rejected(_) | SendError::Uncertain(_))) => {
                tracing::warn!(customer_id = %customer.id, %error, "sign-in link not resent");
                Ok(Outcome::cancel(error.to_string()))
            }
        }
    }
}

/// A sign-in link asked for an address without an account (see the module guide).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignInLinkNotSent {
    /// Tells one request from the next (the unique key), as for [`SendSignInLink`].
    pub request: Uuid,
}

impl JobKind for SignInLinkNotSent {
    const KIND: &'static str = "sign_in_link_not_sent";
    const RETRY: RetryPolicy = SendSignInLink::RETRY;

    fn unique_key(&self) -> Option<String> {
        Some(self.request.to_string())
    }
}

impl Job for SignInLinkNotSent {
    type Context = JobContext;

    async fn run(self, _ctx: JobContext) -> Result<Outcome, JobError> {
        Ok(Outcome::done(serde_json::json!({ "delivery": "no account" })))
    }
}

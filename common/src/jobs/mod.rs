//! The platform's job kinds, one file each, and the worker that runs them all.
//!
//! A job reads like its spec: load, decide, write, enqueue next, all in one
//! transaction, and safe to run twice or to race with itself.

mod add_payment_method;
mod batch;
mod cancel_subscription;
mod create_stripe_customer;
mod grant_credits;
mod nudge;
mod payment_methods;
mod process_webhook;
mod provision;
mod prune;
mod reconcile;
mod record_usage;
mod renewal;
mod resume_subscription;
mod send_email_step;
mod send_sign_in_link;
mod subscribe_pro;

use std::future::Future;
use std::sync::Arc;

use apalis::prelude::Monitor;
use sqlx::PgPool;

pub use add_payment_method::AddPaymentMethod;
pub use cancel_subscription::CancelSubscription;
pub use create_stripe_customer::CreateStripeCustomer;
pub use grant_credits::GrantCredits;
pub use nudge::NudgeSweep;
pub use payment_methods::{RemovePaymentMethod, SetDefaultPaymentMethod, removal_refused};
pub use process_webhook::ProcessStripeEvent;
pub use provision::ProvisionCustomer;
pub use prune::PruneJobs;
pub use reconcile::{Drift, ReconcileCustomer, ReconcileSweep, Report, reconcile_customer};
pub use record_usage::{RecordUsage, refusal};
pub use renewal::{RenewSubscription, RenewalSweep};
pub use resume_subscription::ResumeSubscription;
pub use send_email_step::SendEmailStep;
pub use send_sign_in_link::{SendSignInLink, SignInLinkNotSent};
pub use subscribe_pro::SubscribePro;

use crate::config::Settings;
use crate::email::Mailer;
use crate::queue::{self, JobError, JobKind, JobNotifier, RetryPolicy};
use crate::stripe::{CallError, StripeApi};

/// What every job can reach.
#[derive(Clone)]
pub struct JobContext {
    pub pool: PgPool,
    pub settings: Arc<Settings>,
    /// Absent when Stripe is not configured.
    pub stripe: Option<StripeApi>,
    /// Absent when email is not configured.
    pub mailer: Option<Mailer>,
}

/// The settings do not make the clients jobs need.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("the Stripe client: {0}")]
    Stripe(#[source] CallError),
    #[error(transparent)]
    Mailer(#[from] crate::email::MailerError),
}

impl JobContext {
    pub fn new(pool: PgPool, settings: Arc<Settings>) -> Result<Self, ContextError> {
        let stripe = match &settings.stripe {
            Some(stripe) => Some(StripeApi::new(stripe, &settings.prices.pro_price_id).map_err(ContextError::Stripe)?),
            None => None,
        };
        let mailer = settings.email.as_ref().map(Mailer::new).transpose()?;
        if mailer.is_some() && settings.unsubscribe_secret.expose() == crate::config::DEV_UNSUBSCRIBE_SECRET {
            tracing::warn!("EMAIL_UNSUBSCRIBE_SECRET is unset: unsubscribe links use the development secret");
        }
        Ok(Self { pool, settings, stripe, mailer })
    }

    /// The customer a job is about; missing is a failed attempt (it may still be being
    /// provisioned), retried with backoff.
    pub async fn customer(&self, id: uuid::Uuid) -> Result<crate::db::customers::Customer, JobError> {
        crate::db::customers::find(&self.pool, id)
            .await?
            .ok_or_else(|| JobError::new(format!("customer {id} does not exist (yet)")))
    }

    pub fn stripe(&self) -> Result<&StripeApi, JobError> {
        self.stripe.as_ref().ok_or_else(|| JobError::new("billing is not configured (STRIPE_SECRET_KEY is unset)"))
    }
}

/// A Stripe failure a job retries later (declines and refusals are handled by each job).
pub(crate) fn stripe_failure(error: CallError) -> JobError {
    JobError::caused("", error)
}

/// Reads a subscription from Stripe and applies its current state to the customer, in
/// `tx` and under the customer's Stripe-state lock (taken here, held to commit): every
/// path that changes a customer's subscription state goes through this, so the order
/// in which events, jobs and reconciliation run does not matter; the last to apply read
/// last. `None` if Stripe does not know the subscription; else the subscription and
/// whether it was applied (another price's, or another subscription than the one the
/// customer has, is read but not applied).
pub(crate) async fn apply_current_subscription(
    tx: &mut sqlx::PgConnection,
    stripe: &StripeApi,
    customer_id: uuid::Uuid,
    subscription_id: &str,
) -> Result<Option<(crate::stripe::Subscription, bool)>, JobError> {
    crate::db::customers::lock_stripe_state(&mut *tx, customer_id).await?;
    let current = match stripe.subscription(subscription_id).await {
        Ok(subscription) => subscription,
        Err(CallError::Rejected { status: 404, .. }) => return Ok(None),
        Err(error) => return Err(stripe_failure(error)),
    };
    let applied = current.bills_price(stripe.pro_price_id())
        && apply_stripe_subscription(&mut *tx, customer_id, &current, crate::db::customers::Observed::current())
            .await?;
    Ok(Some((current, applied)))
}

/// The one list of the kinds this build runs: `kinds()` and the worker are made from it,
/// so a kind cannot be configured and not run, or run and not configured.
macro_rules! job_kinds {
    ($($kind:ty),* $(,)?) => {
        /// Every kind this build runs, with its default queue settings.
        pub fn kinds() -> Vec<(&'static str, RetryPolicy)> {
            vec![$((<$kind>::KIND, <$kind>::RETRY)),*]
        }

        fn register_all(
            monitor: Monitor,
            bookkeeping: &PgPool,
            ctx: &JobContext,
            notifier: &JobNotifier,
            instance: &str,
        ) -> Monitor {
            $(let monitor = match <$kind as queue::Job>::runs_here(ctx) {
                true => queue::register::<$kind>(monitor, bookkeeping, ctx, notifier, &ctx.settings.jobs, instance),
                false => {
                    tracing::warn!(kind = <$kind>::KIND, "not run by this process (email is off): its jobs wait for a worker with SMTP_URL");
                    monitor
                }
            };)*
            monitor
        }
    };
}

job_kinds!(
    ProvisionCustomer,
    GrantCredits,
    RecordUsage,
    CreateStripeCustomer,
    AddPaymentMethod,
    SetDefaultPaymentMethod,
    RemovePaymentMethod,
    SubscribePro,
    CancelSubscription,
    ResumeSubscription,
    ProcessStripeEvent,
    RenewalSweep,
    RenewSubscription,
    ReconcileSweep,
    ReconcileCustomer,
    SendEmailStep,
    SendSignInLink,
    SignInLinkNotSent,
    NudgeSweep,
    PruneJobs,
);

/// Runs one apalis worker per job kind until `shutdown` resolves, then drains: running
/// jobs finish (up to `JOB_SHUTDOWN_TIMEOUT_MS`), claimed but unstarted ones are released.
pub async fn run_workers(
    ctx: JobContext,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let notifier = JobNotifier::listen(&crate::db::listen_pool(&ctx.settings, &ctx.pool)?).await?;
    let instance = instance_name();
    // Behind a pooler no session can be set to commit asynchronously (`db` module guide).
    let sync_commit = ctx.settings.jobs.bookkeeping_sync_commit || ctx.settings.database_direct_url.is_some();
    let bookkeeping = queue::bookkeeping_pool(&ctx.pool, sync_commit);
    let monitor = register_all(Monitor::new(), &bookkeeping, &ctx, &notifier, &instance);
    let renewals = queue::cron::spawn_schedule(ctx.pool.clone(), ctx.settings.renewal_schedule.clone(), |tick| {
        RenewalSweep { tick }
    });
    let reconciling = queue::cron::spawn_schedule(ctx.pool.clone(), ctx.settings.reconcile_schedule.clone(), |tick| {
        ReconcileSweep { tick }
    });
    let pruning = queue::cron::spawn_schedule(ctx.pool.clone(), ctx.settings.jobs.prune_schedule.clone(), |tick| {
        PruneJobs { tick }
    });
    let nudging =
        queue::cron::spawn_schedule(ctx.pool.clone(), ctx.settings.nudges.schedule.clone(), |tick| NudgeSweep { tick });
    tracing::info!(%instance, kinds = ?kinds().iter().map(|k| k.0).collect::<Vec<_>>(), "workers started");
    monitor
        .shutdown_timeout(ctx.settings.jobs.shutdown_timeout)
        .run_with_signal(async move {
            shutdown.await;
            tracing::info!("shutdown requested: draining workers");
            Ok(())
        })
        .await?;
    renewals.abort();
    reconciling.abort();
    pruning.abort();
    nudging.abort();
    tracing::info!("workers stopped");
    Ok(())
}

/// Unique per process, so that liveness and rescue can tell worker processes apart.
pub fn instance_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into());
    format!("{host}-{}-{:04x}", std::process::id(), rand::random::<u16>())
}

/// Applies a subscription as Stripe reports it: ended (canceled, incomplete_expired)
/// ends Pro; anything else is Pro with Stripe's status. `false` if a newer observation
/// was applied already.
pub(crate) async fn apply_stripe_subscription<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    id: uuid::Uuid,
    subscription: &crate::stripe::Subscription,
    observed: crate::db::customers::Observed,
) -> Result<bool, JobError> {
    use crate::db::customers;
    use crate::domain::SubscriptionState;
    // A status Stripe adds later is refused here, by name, rather than by the table's CHECK.
    let status = SubscriptionState::parse(&subscription.status)
        .map_err(|e| JobError::caused("Stripe's subscription status: ", e))?;
    let applied = if matches!(status, SubscriptionState::Canceled | SubscriptionState::IncompleteExpired) {
        customers::apply_subscription_ended(executor, id, &subscription.id, observed).await?
    } else {
        let (end, flag) = (subscription.period_end(), subscription.cancel_at_period_end);
        customers::apply_subscription(executor, id, &subscription.id, status, flag, end, observed).await?
    };
    Ok(applied)
}

//! The platform's job kinds, one file each, and the worker that runs them all.
//!
//! A job reads like its spec: load, decide, write, enqueue next, all in one
//! transaction, and safe to run twice or to race with itself.

mod grant_credits;
mod provision;
mod record_usage;

use std::future::Future;
use std::sync::Arc;

use apalis::prelude::{Monitor, WorkerBuilder, WorkerBuilderExt};
use apalis_core::backend::ext::poll_strategy::{PollWith, StreamStrategy};
use sqlx::PgPool;

pub use grant_credits::GrantCredits;
pub use provision::ProvisionCustomer;
pub use record_usage::{RecordUsage, refusal};

use crate::config::Settings;
use crate::queue::{Job, JobKind, JobNotifier, JobStore, RetryPolicy, StoreConfig};

/// What every job can reach.
#[derive(Clone)]
pub struct JobContext {
    pub pool: PgPool,
    pub settings: Arc<Settings>,
}

/// Every kind this build runs, with its default queue settings.
pub fn kinds() -> Vec<(&'static str, RetryPolicy)> {
    vec![
        (ProvisionCustomer::KIND, ProvisionCustomer::RETRY),
        (GrantCredits::KIND, GrantCredits::RETRY),
        (RecordUsage::KIND, RecordUsage::RETRY),
    ]
}

/// Runs one apalis worker per job kind until `shutdown` resolves, then drains: running
/// jobs finish (up to `JOB_SHUTDOWN_TIMEOUT_MS`), claimed but unstarted ones are released.
pub async fn run_workers(
    ctx: JobContext,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let notifier = JobNotifier::listen(&ctx.pool).await?;
    let instance = instance_name();
    let monitor = Monitor::new();
    let monitor = register::<ProvisionCustomer>(monitor, &ctx, &notifier, &instance);
    let monitor = register::<GrantCredits>(monitor, &ctx, &notifier, &instance);
    let monitor = register::<RecordUsage>(monitor, &ctx, &notifier, &instance);
    tracing::info!(%instance, kinds = ?kinds().iter().map(|k| k.0).collect::<Vec<_>>(), "workers started");
    monitor
        .shutdown_timeout(ctx.settings.jobs.shutdown_timeout)
        .run_with_signal(async move {
            shutdown.await;
            tracing::info!("shutdown requested: draining workers");
            Ok(())
        })
        .await?;
    tracing::info!("workers stopped");
    Ok(())
}

fn register<J>(
    monitor: Monitor,
    ctx: &JobContext,
    notifier: &JobNotifier,
    instance: &str,
) -> Monitor
where
    J: Job<Context = JobContext>,
{
    let jobs = &ctx.settings.jobs;
    let policy = jobs.retry_policy(J::KIND, &J::RETRY);
    let config = StoreConfig {
        kind: J::KIND,
        batch_size: policy.concurrency,
        policy,
        heartbeat_interval: jobs.heartbeat_interval,
        orphan_after: jobs.orphan_after,
    };
    let poll_interval = jobs.poll_interval;
    let ctx = ctx.clone();
    let notifier = notifier.clone();
    let name = format!("{}@{instance}", J::KIND);
    monitor.register(move |restarts| {
        let store = JobStore::<J>::new(ctx.pool.clone(), config.clone());
        let wake_ups = StreamStrategy::new(notifier.wake_ups(J::KIND, poll_interval));
        let ctx = ctx.clone();
        WorkerBuilder::new(format!("{name}#{restarts}"))
            .backend(PollWith::new(store, wake_ups))
            .catch_panic()
            .concurrency(policy.concurrency)
            .build(move |job: J| job.run(ctx.clone()))
    })
}

/// Unique per process, so that liveness and rescue can tell worker processes apart.
fn instance_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into());
    format!(
        "{host}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

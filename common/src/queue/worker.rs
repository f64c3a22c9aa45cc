//! Registering a job kind with an apalis `Monitor`: its store, its wake-ups, its
//! concurrency, panic catching, and metrics around every run.

use apalis::prelude::{Monitor, WorkerBuilder, WorkerBuilderExt};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use super::{Job, JobError, JobNotifier, JobStore, Outcome, StoreConfig};
use crate::config::JobSettings;

/// The pool a process's workers claim, acknowledge and heartbeat with: `pool`'s database,
/// and unless `sync_commit`, with `synchronous_commit = off`, which makes those commits
/// cheaper (no wait for the disk): a third more jobs/s from our statements alone
/// (BENCHMARKS.md).
///
/// It loses no job and corrupts nothing: Postgres may lose only the last few commits,
/// and only in a crash of its own (not in a clean restart). A lost claim puts the job
/// back to waiting, and it runs again (at least once, as always). A lost acknowledgement
/// leaves the job `running` under a worker that no longer holds it, which that worker's
/// heartbeat gives back (`JobStore`). A job's own writes still commit synchronously, and
/// such a commit makes everything before it in the log durable, its claim included.
pub fn bookkeeping_pool(pool: &PgPool, sync_commit: bool) -> PgPool {
    let options = pool.connect_options().as_ref().clone();
    let options = match sync_commit {
        true => options,
        false => options.options([("synchronous_commit", "off")]),
    };
    PgPoolOptions::new()
        .max_connections(pool.options().get_max_connections())
        .acquire_timeout(pool.options().get_acquire_timeout())
        .connect_lazy_with(options)
}

/// Adds one worker for kind `J` to `monitor`, with the kind's configured policy;
/// `pool` is the process's [`bookkeeping_pool`]; `instance` names this process.
pub fn register<J: Job>(
    monitor: Monitor,
    pool: &PgPool,
    ctx: &J::Context,
    notifier: &JobNotifier,
    jobs: &JobSettings,
    instance: &str,
) -> Monitor {
    let policy = jobs.retry_policy(J::KIND, &J::RETRY);
    register_with::<J>(monitor, pool, ctx, notifier, jobs, policy, instance)
}

/// As [`register`], with an explicit policy (concurrency, attempts, backoff).
pub fn register_with<J: Job>(
    monitor: Monitor,
    pool: &PgPool,
    ctx: &J::Context,
    notifier: &JobNotifier,
    jobs: &JobSettings,
    policy: super::RetryPolicy,
    instance: &str,
) -> Monitor {
    let config = StoreConfig {
        kind: J::KIND,
        batch_size: policy.concurrency.max(jobs.fetch_batch),
        policy,
        heartbeat_interval: jobs.heartbeat_interval,
        orphan_after: jobs.orphan_after,
    };
    let poll_interval = jobs.poll_interval;
    let (pool, ctx, notifier) = (pool.clone(), ctx.clone(), notifier.clone());
    let name = format!("{}@{instance}", J::KIND);
    monitor.register(move |restarts| {
        let store = JobStore::<J>::new(pool.clone(), config.clone(), notifier.wake_ups(J::KIND, poll_interval));
        let store = match J::settler(&ctx) {
            Some(settler) => store.settling(settler),
            None => store,
        };
        let ctx = ctx.clone();
        WorkerBuilder::new(format!("{name}#{restarts}"))
            .backend(store)
            .catch_panic()
            .concurrency(policy.concurrency)
            .build(move |job: J| observed(job, ctx.clone(), policy.timeout))
    })
}

/// Runs a job within its kind's timeout, recording its start, duration and outcome.
async fn observed<J: Job>(job: J, ctx: J::Context, timeout: std::time::Duration) -> Result<Outcome, JobError> {
    let started = std::time::Instant::now();
    metrics::counter!("rsolv_jobs_started_total", "kind" => J::KIND).increment(1);
    let result = match tokio::time::timeout(timeout, job.run(ctx)).await {
        Ok(result) => result,
        Err(_) => {
            metrics::counter!("rsolv_jobs_timed_out_total", "kind" => J::KIND).increment(1);
            Err(JobError::new(format!(
                "timed out after {} ms (JOB_{}_TIMEOUT_MS): stopped, to be retried",
                timeout.as_millis(),
                J::KIND.to_uppercase()
            )))
        }
    };
    // Fault tests hold a run here: its effect is done, its result not yet reported.
    #[cfg(feature = "failpoints")]
    let result = match super::hooks::after_run(J::KIND).await {
        Ok(()) => result,
        Err(error) => Err(JobError::new(error)),
    };
    metrics::histogram!("rsolv_job_duration_seconds", "kind" => J::KIND).record(started.elapsed().as_secs_f64());
    let outcome = match &result {
        Ok(Outcome::Done { .. } | Outcome::Snooze { .. }) => "rsolv_jobs_succeeded_total",
        Ok(Outcome::Cancel { .. }) => "rsolv_jobs_cancelled_total",
        Err(_) => "rsolv_jobs_failed_total",
    };
    metrics::counter!(outcome, "kind" => J::KIND).increment(1);
    result
}

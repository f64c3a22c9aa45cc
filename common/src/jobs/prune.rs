//! Prune finished jobs: completed and cancelled ones after `JOB_RETENTION_COMPLETED_HOURS`
//! (7 days), dead ones after `JOB_RETENTION_DEAD_HOURS` (30 days), in batches of
//! `JOB_PRUNE_BATCH` rows (one short transaction each, so pruning never holds locks for
//! long), at most `MAX_BATCHES` a run; the next tick continues. Fired by cron.

use serde::{Deserialize, Serialize};

use super::JobContext;
use crate::queue::{Job, JobError, JobKind, Outcome, RetryPolicy};

const MAX_BATCHES: usize = 100;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PruneJobs {
    pub tick: i64,
}

impl JobKind for PruneJobs {
    const KIND: &'static str = "prune_jobs";
    const RETRY: RetryPolicy = RetryPolicy::new(3, 1);

    fn unique_key(&self) -> Option<String> {
        Some(self.tick.to_string())
    }
}

impl Job for PruneJobs {
    type Context = JobContext;

    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        let jobs = &ctx.settings.jobs;
        let mut deleted = [0u64; 2];
        for (slot, statuses, hours) in [
            (0, vec!["completed", "cancelled"], jobs.retention_completed_hours),
            (1, vec!["dead"], jobs.retention_dead_hours),
        ] {
            let statuses: Vec<String> = statuses.into_iter().map(str::to_owned).collect();
            for _ in 0..MAX_BATCHES {
                let batch = sqlx::query!(
                    "DELETE FROM jobs WHERE id IN (
                         SELECT id FROM jobs
                         WHERE status = ANY($1) AND finished_at < now() - $2 * interval '1 hour'
                         LIMIT $3)",
                    &statuses,
                    hours as f64,
                    jobs.prune_batch as i64,
                )
                .execute(&ctx.pool)
                .await?
                .rows_affected();
                deleted[slot] += batch;
                if batch < jobs.prune_batch as u64 {
                    break;
                }
            }
        }
        // Ended rate-limit windows, idempotency records past their 24 hours, expired sessions.
        crate::db::rate_limits::prune(&ctx.pool).await?;
        crate::db::idempotency::prune(&ctx.pool).await?;
        crate::db::sessions::prune(&ctx.pool).await?;
        crate::db::sign_in_links::prune(&ctx.pool).await?;
        if deleted.iter().any(|&n| n > 0) {
            tracing::info!(finished = deleted[0], dead = deleted[1], "pruned jobs");
        }
        Ok(Outcome::done(serde_json::json!({ "finished": deleted[0], "dead": deleted[1] })))
    }
}

//! Cron schedules, fired exactly once per tick across any number of worker processes.
//!
//! Every worker process runs every schedule; at a tick each one enqueues the schedule's
//! job with the tick in its unique key, so the first insert wins and the others are
//! no-ops. No leader to elect or lose: while any worker process lives, ticks fire.

use chrono::Utc;
use sqlx::PgPool;
use tokio::task::JoinHandle;

use super::{Enqueued, JobKind, enqueue};

pub fn spawn_schedule<J: JobKind>(
    pool: PgPool,
    schedule: cron::Schedule,
    job_for_tick: fn(i64) -> J,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Some(next) = schedule.upcoming(Utc).next() else {
                tracing::warn!(kind = J::KIND, "schedule has no further ticks");
                return;
            };
            tokio::time::sleep((next - Utc::now()).to_std().unwrap_or_default()).await;
            match enqueue(&pool, &job_for_tick(next.timestamp())).await {
                Ok(Enqueued::Inserted(id)) => {
                    tracing::info!(kind = J::KIND, tick = %next, job_id = id, "cron tick fired")
                }
                Ok(Enqueued::Duplicate) => {
                    tracing::debug!(kind = J::KIND, tick = %next, "cron tick fired by another process")
                }
                Err(error) => tracing::error!(kind = J::KIND, tick = %next, %error, "cron tick could not be enqueued"),
            }
        }
    })
}

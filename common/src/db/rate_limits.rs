//! Fixed one-minute windows counted in Postgres, so every API process shares them.

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use sqlx::PgExecutor;

/// Where a bucket stands after counting one more request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub limit: u32,
    pub hits: u32,
    /// When the window ends and the count starts again.
    pub resets_at: DateTime<Utc>,
}

impl Quota {
    pub fn allowed(&self) -> bool {
        self.hits <= self.limit
    }

    pub fn remaining(&self) -> u32 {
        self.limit.saturating_sub(self.hits)
    }
}

/// Counts a request in the bucket's minute at `now` (the API's [`Clock`](crate::clock::Clock):
/// processes on hosts kept in time by NTP agree on the minute but at its edges).
pub async fn hit<'e>(
    db: impl PgExecutor<'e>,
    bucket: &str,
    limit: u32,
    now: DateTime<Utc>,
) -> Result<Quota, sqlx::Error> {
    hit_in(db, bucket, limit, now, TimeDelta::minutes(1)).await
}

/// As [`hit`], in windows of `window` (at most an hour: longer ones are pruned early).
pub async fn hit_in<'e>(
    db: impl PgExecutor<'e>,
    bucket: &str,
    limit: u32,
    now: DateTime<Utc>,
    window: TimeDelta,
) -> Result<Quota, sqlx::Error> {
    let minute = now.duration_trunc(window).unwrap_or(now);
    let window_length = window;
    let window = sqlx::query!(
        "INSERT INTO rate_limit_windows (bucket, window_start, hits) VALUES ($1, $2, 1)
         ON CONFLICT (bucket, window_start) DO UPDATE SET hits = rate_limit_windows.hits + 1
         RETURNING hits, window_start",
        bucket,
        minute,
    )
    .fetch_one(db)
    .await?;
    Ok(Quota { limit, hits: window.hits.max(0) as u32, resets_at: window.window_start + window_length })
}

/// Forgets windows that have ended: the minute windows after two minutes, the hourly
/// ones (sign-in buckets, `sign-in-…`) after two hours.
pub async fn prune<'e>(db: impl PgExecutor<'e>) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        "DELETE FROM rate_limit_windows
          WHERE window_start < now() - interval '2 hours'
             OR (window_start < now() - interval '2 minutes' AND bucket NOT LIKE 'sign-in-%')"
    )
    .execute(db)
    .await?
    .rows_affected())
}

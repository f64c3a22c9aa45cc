//! What ops see and steer: per-queue counts, job lists and details, and redrive,
//! discard and cancel, each on the audit log with who did it. Used by the admin API,
//! the admin page and the CLI.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use super::JobStatus;
use super::notifier::CHANNEL;

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct QueueStats {
    pub queue: String,
    /// Due now and waiting for a worker.
    pub available: i64,
    /// Waiting for their time (scheduled, or a retry's backoff).
    pub scheduled: i64,
    pub running: i64,
    pub retryable: i64,
    pub completed: i64,
    pub cancelled: i64,
    pub dead: i64,
    /// Seconds the oldest due job has waited (0 when none waits).
    pub oldest_waiting_seconds: f64,
    pub completed_last_minute: i64,
    pub failed_last_minute: i64,
}

/// One row per job kind this build runs, including empty queues.
pub async fn overview<'e>(db: impl PgExecutor<'e>, kinds: &[&str]) -> Result<Vec<QueueStats>, sqlx::Error> {
    sqlx::query_as!(
        QueueStats,
        r#"SELECT k.kind AS "queue!",
                count(*) FILTER (WHERE j.status = 'available' AND j.run_at <= now()) AS "available!",
                count(*) FILTER (WHERE j.status IN ('available', 'retryable') AND j.run_at > now()) AS "scheduled!",
                count(*) FILTER (WHERE j.status = 'running') AS "running!",
                count(*) FILTER (WHERE j.status = 'retryable') AS "retryable!",
                count(*) FILTER (WHERE j.status = 'completed') AS "completed!",
                count(*) FILTER (WHERE j.status = 'cancelled') AS "cancelled!",
                count(*) FILTER (WHERE j.status = 'dead') AS "dead!",
                coalesce(extract(epoch FROM now() - min(j.run_at)
                    FILTER (WHERE j.status IN ('available', 'retryable') AND j.run_at <= now())), 0)::float8
                    AS "oldest_waiting_seconds!",
                count(*) FILTER (WHERE j.status = 'completed' AND j.finished_at > now() - interval '1 minute')
                    AS "completed_last_minute!",
                count(*) FILTER (WHERE j.status = 'dead' AND j.finished_at > now() - interval '1 minute')
                    AS "failed_last_minute!"
         FROM unnest($1::text[]) AS k(kind) LEFT JOIN jobs j ON j.kind = k.kind
         GROUP BY k.kind ORDER BY k.kind"#,
        kinds as _,
    )
    .fetch_all(db)
    .await
}

/// What the queue gauges export, per kind: a cheaper cut of [`overview`]. The overview
/// counts every row of the table (finished ones included) and is for a person asking;
/// this runs every few seconds in every process, so it reads only what partial indexes
/// hold: waiting rows (`jobs_claim`) and dead ones (`jobs_dead`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct QueueGauges {
    pub queue: String,
    /// Due available jobs plus retryable ones, as `available + retryable` in the overview.
    pub depth: i64,
    pub oldest_waiting_seconds: f64,
    pub dead: i64,
}

pub async fn gauges<'e>(db: impl PgExecutor<'e>, kinds: &[&str]) -> Result<Vec<QueueGauges>, sqlx::Error> {
    sqlx::query_as!(
        QueueGauges,
        r#"SELECT k.kind AS "queue!", w.depth AS "depth!", w.oldest_waiting_seconds AS "oldest_waiting_seconds!",
                (SELECT count(*) FROM jobs d WHERE d.kind = k.kind AND d.status = 'dead') AS "dead!"
         FROM unnest($1::text[]) AS k(kind)
         CROSS JOIN LATERAL (
             SELECT count(*) FILTER (WHERE j.status = 'retryable' OR j.run_at <= now()) AS depth,
                    coalesce(extract(epoch FROM now() - min(j.run_at) FILTER (WHERE j.run_at <= now())), 0)::float8
                        AS oldest_waiting_seconds
             FROM jobs j WHERE j.kind = k.kind AND j.status IN ('available', 'retryable')) AS w
         ORDER BY k.kind"#,
        kinds as _,
    )
    .fetch_all(db)
    .await
}

/// Keeps the per-queue gauges (`rsolv_queue_*`, exported by `telemetry::metrics`)
/// current from the jobs table.
pub fn spawn_gauges(pool: PgPool, kinds: Vec<&'static str>, every: std::time::Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match gauges(&pool, &kinds).await {
                Ok(queues) => {
                    for q in queues {
                        let label = [("queue", q.queue.clone())];
                        metrics::gauge!("rsolv_queue_depth", &label).set(q.depth as f64);
                        metrics::gauge!("rsolv_queue_oldest_waiting_seconds", &label).set(q.oldest_waiting_seconds);
                        metrics::gauge!("rsolv_queue_dead", &label).set(q.dead as f64);
                    }
                }
                Err(error) => tracing::warn!(%error, "queue gauges not refreshed"),
            }
            tokio::time::sleep(every).await;
        }
    })
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct JobSummary {
    pub id: i64,
    pub queue: String,
    pub status: JobStatus,
    pub attempts: i32,
    pub max_attempts: Option<i32>,
    pub run_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub customer_id: Option<Uuid>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub queue: Option<String>,
    pub status: Option<JobStatus>,
    pub customer_id: Option<Uuid>,
    /// Keyset paging: jobs with a smaller id than this.
    pub before_id: Option<i64>,
    pub limit: i64,
}

/// Newest first.
pub async fn list<'e>(db: impl PgExecutor<'e>, filter: &JobFilter) -> Result<Vec<JobSummary>, sqlx::Error> {
    sqlx::query_as!(
        JobSummary,
        r#"SELECT id, kind AS queue, status AS "status: JobStatus", attempts, max_attempts, run_at, created_at,
                finished_at, customer_id, errors -> -1 ->> 'error' AS last_error
         FROM jobs
         WHERE ($1::text IS NULL OR kind = $1) AND ($2::text IS NULL OR status = $2)
           AND ($3::uuid IS NULL OR customer_id = $3) AND ($4::bigint IS NULL OR id < $4)
         ORDER BY id DESC LIMIT $5"#,
        filter.queue,
        filter.status as _,
        filter.customer_id,
        filter.before_id,
        filter.limit.clamp(1, 500),
    )
    .fetch_all(db)
    .await
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct JobDetail {
    #[serde(flatten)]
    #[sqlx(flatten)]
    pub summary: JobSummary,
    /// With secrets (key hashes, tokens, passwords) replaced by `[redacted]`.
    pub args: Value,
    pub result: Option<Value>,
    /// Every failed attempt: `[{attempt, at, error}]`.
    pub errors: Value,
    pub unique_key: Option<String>,
    pub locked_by: Option<String>,
    pub locked_at: Option<DateTime<Utc>>,
    /// The request that caused the job (its `X-Request-Id`), if one did.
    pub request_id: Option<String>,
}

pub async fn detail<'e>(db: impl PgExecutor<'e>, id: i64) -> Result<Option<JobDetail>, sqlx::Error> {
    let row = sqlx::query!(
        r#"SELECT id, kind, status AS "status: JobStatus", attempts, max_attempts, run_at, created_at, finished_at,
                customer_id, errors -> -1 ->> 'error' AS last_error,
                args, result, errors, unique_key, locked_by, locked_at, request_id
         FROM jobs WHERE id = $1"#,
        id,
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|row| JobDetail {
        summary: JobSummary {
            id: row.id,
            queue: row.kind,
            status: row.status,
            attempts: row.attempts,
            max_attempts: row.max_attempts,
            run_at: row.run_at,
            created_at: row.created_at,
            finished_at: row.finished_at,
            customer_id: row.customer_id,
            last_error: row.last_error,
        },
        args: redact(row.args),
        result: row.result,
        errors: row.errors,
        unique_key: row.unique_key,
        locked_by: row.locked_by,
        locked_at: row.locked_at,
        request_id: row.request_id,
    }))
}

/// Replaces the values of secret-looking keys, at any depth.
pub fn redact(value: Value) -> Value {
    const SECRET_WORDS: [&str; 6] = ["hash", "secret", "token", "password", "api_key", "signature"];
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let lower = k.to_lowercase();
                    if SECRET_WORDS.iter().any(|w| lower.contains(w)) && !lower.ends_with("_prefix") {
                        (k, Value::String("[redacted]".into()))
                    } else {
                        (k, redact(v))
                    }
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(redact).collect()),
        other => other,
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdminError {
    #[error("no job {0}")]
    NotFound(i64),
    #[error("job {id} is {status}; {action} needs a job that is {wanted}")]
    WrongState { id: i64, status: JobStatus, action: &'static str, wanted: &'static str },
    #[error("job {0} holds a unique key that a newer job has taken; discard one of them")]
    KeyTaken(i64),
    #[error("database: {0}")]
    Database(String),
}

impl From<sqlx::Error> for AdminError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(e.to_string())
    }
}

/// Why an action guarded by the job's state changed nothing: no such job, or its state.
async fn refused(
    conn: &mut PgConnection,
    id: i64,
    action: &'static str,
    wanted: &'static str,
) -> Result<(), AdminError> {
    let status: Option<JobStatus> =
        sqlx::query_scalar!(r#"SELECT status AS "status: JobStatus" FROM jobs WHERE id = $1"#, id)
            .fetch_optional(conn)
            .await?;
    let status = status.ok_or(AdminError::NotFound(id))?;
    Err(AdminError::WrongState { id, status, action, wanted })
}

/// Appends an operator's action to the audit log, in the action's transaction: an action
/// takes effect with its audit line or not at all.
async fn audited(
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    actor: &str,
    action: &str,
    target: &str,
    detail: Value,
) -> Result<(), AdminError> {
    crate::db::audit::record(&mut *tx, actor, action, target, None, &detail).await?;
    tx.commit().await?;
    Ok(())
}

/// Puts a dead job back: due now, with a fresh set of attempts; its error history stays.
pub async fn redrive(pool: &PgPool, id: i64, actor: &str) -> Result<(), AdminError> {
    let mut tx = pool.begin().await?;
    let result = sqlx::query!("UPDATE jobs SET status = 'available', attempts = 0, run_at = now(), finished_at = NULL,
             errors = errors || jsonb_build_array(jsonb_build_object('attempt', attempts, 'at', now(), 'error', 'redriven by an operator'))
         WHERE id = $1 AND status = 'dead'",
        id,
    )
    .execute(&mut *tx)
    .await;
    match result {
        Ok(done) if done.rows_affected() == 1 => {
            // Delivered when the transaction commits.
            sqlx::query!("SELECT pg_notify($1, kind) FROM jobs WHERE id = $2", CHANNEL, id,).execute(&mut *tx).await?;
            audited(tx, actor, "redrive", &format!("job:{id}"), Value::Null).await
        }
        Ok(_) => refused(&mut tx, id, "redrive", "dead").await,
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(AdminError::KeyTaken(id)),
        Err(e) => Err(e.into()),
    }
}

/// Redrives every dead job of a queue whose unique key is free; returns how many.
pub async fn redrive_all(pool: &PgPool, queue: &str, actor: &str) -> Result<u64, AdminError> {
    let mut tx = pool.begin().await?;
    let moved = sqlx::query!("UPDATE jobs d SET status = 'available', attempts = 0, run_at = now(), finished_at = NULL,
             errors = d.errors || jsonb_build_array(jsonb_build_object('attempt', d.attempts, 'at', now(), 'error', 'redriven by an operator'))
         WHERE d.kind = $1 AND d.status = 'dead'
           AND (d.unique_key IS NULL OR NOT EXISTS (
               SELECT 1 FROM jobs l WHERE l.kind = d.kind AND l.unique_key = d.unique_key
                 AND l.status NOT IN ('dead', 'cancelled')))",
        queue,
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if moved > 0 {
        sqlx::query!("SELECT pg_notify($1, $2)", CHANNEL, queue,).execute(&mut *tx).await?;
    }
    audited(tx, actor, "redrive_all", &format!("queue:{queue}"), serde_json::json!({ "redriven": moved })).await?;
    Ok(moved)
}

/// Deletes a dead or cancelled job.
pub async fn discard(pool: &PgPool, id: i64, actor: &str) -> Result<(), AdminError> {
    let mut tx = pool.begin().await?;
    let deleted = sqlx::query!("DELETE FROM jobs WHERE id = $1 AND status IN ('dead', 'cancelled')", id,)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if deleted == 1 {
        return audited(tx, actor, "discard", &format!("job:{id}"), Value::Null).await;
    }
    refused(&mut tx, id, "discard", "dead or cancelled").await
}

/// Stops a job that has not started: it will never run.
pub async fn cancel(pool: &PgPool, id: i64, actor: &str) -> Result<(), AdminError> {
    let mut tx = pool.begin().await?;
    let cancelled = sqlx::query!("UPDATE jobs SET status = 'cancelled', finished_at = now(),
             errors = errors || jsonb_build_array(jsonb_build_object('attempt', attempts, 'at', now(), 'error', 'cancelled by an operator'))
         WHERE id = $1 AND status IN ('available', 'retryable')",
        id,
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if cancelled == 1 {
        return audited(tx, actor, "cancel", &format!("job:{id}"), Value::Null).await;
    }
    refused(&mut tx, id, "cancel", "waiting (available or retryable)").await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_at_any_depth() {
        let args = serde_json::json!({
            "api_key_hash": "abc", "api_key_prefix": "rsolv_Ab…", "email": "a@example.com",
            "nested": [{"webhook_secret": "whsec", "amount": 5}]
        });
        let redacted = redact(args);
        assert_eq!(redacted["api_key_hash"], "[redacted]");
        assert_eq!(redacted["api_key_prefix"], "rsolv_Ab…");
        assert_eq!(redacted["email"], "a@example.com");
        assert_eq!(redacted["nested"][0]["webhook_secret"], "[redacted]");
        assert_eq!(redacted["nested"][0]["amount"], 5);
    }
}

//! Reading a job's state, for status endpoints.

use sqlx::PgExecutor;
use uuid::Uuid;

use super::JobStatus;

/// Where a job stands, with its last error if it failed.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct JobState {
    pub id: i64,
    pub status: JobStatus,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub result: Option<serde_json::Value>,
}

/// A checked `SELECT` of [`JobState`]s from `jobs`, followed by the rest of the statement.
macro_rules! select_job_states {
    ($rest:literal $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            JobState,
            "SELECT id, status AS \"status: JobStatus\", attempts, errors -> -1 ->> 'error' AS last_error, result
             FROM jobs " + $rest
            $(, $arg)*
        )
    };
}

/// The newest job of `kind` about a customer.
pub async fn latest_for_customer<'e>(
    db: impl PgExecutor<'e>,
    kind: &str,
    customer_id: Uuid,
) -> Result<Option<JobState>, sqlx::Error> {
    select_job_states!("WHERE kind = $1 AND customer_id = $2 ORDER BY id DESC LIMIT 1", kind, customer_id)
        .fetch_optional(db)
        .await
}

/// The newest job of `kind` holding (or having held) a unique key.
///
/// In two halves, each answered by a partial index (see [`first_enqueued_at`]).
pub async fn by_unique_key<'e>(
    db: impl PgExecutor<'e>,
    kind: &str,
    key: &str,
) -> Result<Option<JobState>, sqlx::Error> {
    select_job_states!(
        "WHERE id = greatest(
             (SELECT max(id) FROM jobs
              WHERE kind = $1 AND unique_key = $2 AND status NOT IN ('dead', 'cancelled')),
             (SELECT max(id) FROM jobs
              WHERE kind = $1 AND unique_key = $2 AND status IN ('dead', 'cancelled')))",
        kind,
        key,
    )
    .fetch_optional(db)
    .await
}

/// A job by id, only if it is about `customer_id` (callers see their own jobs only).
pub async fn for_customer<'e>(
    db: impl PgExecutor<'e>,
    id: i64,
    customer_id: Uuid,
) -> Result<Option<(String, JobState)>, sqlx::Error> {
    let row = sqlx::query!(
        r#"SELECT kind, id, status AS "status: JobStatus", attempts, errors -> -1 ->> 'error' AS last_error, result
         FROM jobs WHERE id = $1 AND customer_id = $2"#,
        id,
        customer_id,
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|row| {
        let state = JobState {
            id: row.id,
            status: row.status,
            attempts: row.attempts,
            last_error: row.last_error,
            result: row.result,
        };
        (row.kind, state)
    }))
}

/// The oldest unfinished (waiting, running or retrying) job of `kind` about a customer
/// whose args contain `args`: the operation a customer-level intent is already pending
/// as. Callers hold the customer's row lock, so no other such job can appear meanwhile.
pub async fn unfinished_for_customer<'e>(
    db: impl PgExecutor<'e>,
    kind: &str,
    customer_id: Uuid,
    args: &serde_json::Value,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT id FROM jobs
         WHERE customer_id = $2 AND kind = $1 AND status IN ('available', 'running', 'retryable') AND args @> $3
         ORDER BY id LIMIT 1",
        kind,
        customer_id,
        args,
    )
    .fetch_optional(db)
    .await
}

/// When the first job of `kind` with this unique key was enqueued (a redriven or
/// re-enqueued job keeps the history).
///
/// Each job with a key is in one of two partial indexes, by its state: `jobs_unique_key`
/// while it holds the key (which keeps the key unique), `jobs_given_back_keys` once it
/// died or was cancelled and gave the key back. So each half of this lookup reads an
/// index, and a job's insert and completion write one entry for its key, not two (the
/// older index of every key, `jobs_by_unique_key`, is gone: migrations
/// `20261202000004_jobs_given_back_keys` and `20261203000002_drop_jobs_by_unique_key`).
pub async fn first_enqueued_at<'e>(
    db: impl PgExecutor<'e>,
    kind: &str,
    key: &str,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT least(
             (SELECT min(created_at) FROM jobs
              WHERE kind = $1 AND unique_key = $2 AND status NOT IN ('dead', 'cancelled')),
             (SELECT min(created_at) FROM jobs
              WHERE kind = $1 AND unique_key = $2 AND status IN ('dead', 'cancelled')))",
        kind,
        key,
    )
    .fetch_one(db)
    .await
}

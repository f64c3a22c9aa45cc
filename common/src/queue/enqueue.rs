//! Inserting jobs, through any executor: a pool, a connection, or a caller's open
//! transaction (so that a job exists exactly when the write that caused it committed).

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use super::JobKind;

/// What `enqueue` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Inserted(i64),
    /// A job of the same kind and unique key is waiting, running or completed.
    Duplicate,
}

impl Enqueued {
    pub fn is_duplicate(self) -> bool {
        matches!(self, Self::Duplicate)
    }
}

#[derive(Debug, Clone, Default)]
pub struct EnqueueOptions {
    /// Not before this time (default: now).
    pub run_at: Option<DateTime<Utc>>,
    /// Overrides the kind's configured attempts (`JOB_<KIND>_MAX_ATTEMPTS`) for this job.
    pub max_attempts: Option<i32>,
    pub wake_up: WakeUp,
}

/// How the workers learn of a new job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WakeUp {
    /// The insert notifies them, delivered when its transaction commits.
    #[default]
    AtCommit,
    /// The caller wakes them after the commit (see `JobWaker`); only for an insert in a
    /// transaction of its own, since later inserts in the same transaction would not
    /// notify either.
    Deferred,
}

const INSERT: &str = "INSERT INTO jobs (kind, args, max_attempts, run_at, unique_key, customer_id, request_id)
     VALUES ($1, $2, $3, coalesce($4, now()), $5, $6, $7)
     ON CONFLICT (kind, unique_key) WHERE unique_key IS NOT NULL AND status NOT IN ('dead', 'cancelled')
     DO NOTHING
     RETURNING id";

/// As `INSERT`, telling the `jobs` trigger not to notify: `rsolv.wake_up` is set for the
/// rest of the transaction, which is why this is only for a transaction of its own.
const INSERT_DEFERRING_WAKE_UP: &str =
    "INSERT INTO jobs (kind, args, max_attempts, run_at, unique_key, customer_id, request_id)
     SELECT $1, $2, $3, coalesce($4, now()), $5, $6, $7
     FROM (SELECT set_config('rsolv.wake_up', 'deferred', true)) AS wake_up
     ON CONFLICT (kind, unique_key) WHERE unique_key IS NOT NULL AND status NOT IN ('dead', 'cancelled')
     DO NOTHING
     RETURNING id";

/// Enqueues `job` to run now with its kind's default attempts.
pub async fn enqueue<'e, J: JobKind>(executor: impl PgExecutor<'e>, job: &J) -> Result<Enqueued, sqlx::Error> {
    enqueue_with(executor, job, EnqueueOptions::default()).await
}

pub async fn enqueue_with<'e, J: JobKind>(
    executor: impl PgExecutor<'e>,
    job: &J,
    options: EnqueueOptions,
) -> Result<Enqueued, sqlx::Error> {
    insert_row(executor, &Row::of(job, options.max_attempts)?, options.run_at, options.wake_up).await
}

/// A job as it is inserted: its args serialized, its request id read from the task
/// that enqueues it (see `correlation`).
pub(super) struct Row {
    pub kind: &'static str,
    pub args: serde_json::Value,
    pub max_attempts: Option<i32>,
    pub unique_key: Option<String>,
    pub customer_id: Option<uuid::Uuid>,
    pub request_id: Option<String>,
}

impl Row {
    pub fn of<J: JobKind>(job: &J, max_attempts: Option<i32>) -> Result<Self, sqlx::Error> {
        Ok(Self {
            kind: J::KIND,
            args: serde_json::to_value(job).map_err(|e| sqlx::Error::Encode(Box::new(e)))?,
            max_attempts,
            unique_key: job.unique_key(),
            customer_id: job.customer_id(),
            request_id: crate::correlation::current().map(|id| id.to_string()),
        })
    }
}

pub(super) async fn insert_row<'e>(
    executor: impl PgExecutor<'e>,
    row: &Row,
    run_at: Option<DateTime<Utc>>,
    wake_up: WakeUp,
) -> Result<Enqueued, sqlx::Error> {
    let sql = match wake_up {
        WakeUp::AtCommit => INSERT,
        WakeUp::Deferred => INSERT_DEFERRING_WAKE_UP,
    };
    let id: Option<i64> = sqlx::query_scalar(sql)
        .bind(row.kind)
        .bind(&row.args)
        .bind(row.max_attempts)
        .bind(run_at)
        .bind(row.unique_key.as_deref())
        .bind(row.customer_id)
        .bind(row.request_id.as_deref())
        .fetch_optional(executor)
        .await?;
    Ok(id.map_or(Enqueued::Duplicate, Enqueued::Inserted))
}

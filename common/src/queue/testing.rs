//! Assertions about the queue for tests, after River's `rivertest`: what a test wants to
//! know is whether a job of a kind was enqueued, with which args, and when it reached a
//! state. Written once here, typed by the job kind, instead of `SELECT … FROM jobs` in
//! every test.
//!
//! Behind the `testing` feature: the test crate turns it on, the binaries never see it.
//! Each helper panics with what it found, as an assertion does.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};

use super::{JobKind, JobStatus};

/// A job found by [`require_inserted`]: its row and its args, decoded as its kind.
#[derive(Debug, Clone)]
pub struct InsertedJob<J> {
    pub id: i64,
    pub args: J,
    pub status: JobStatus,
    pub attempts: i32,
    pub max_attempts: Option<i32>,
    /// When it runs (or ran) next.
    pub run_at: DateTime<Utc>,
    pub unique_key: Option<String>,
    pub request_id: Option<String>,
}

#[derive(sqlx::FromRow)]
struct JobRow {
    id: i64,
    args: serde_json::Value,
    status: JobStatus,
    attempts: i32,
    max_attempts: Option<i32>,
    run_at: DateTime<Utc>,
    unique_key: Option<String>,
    request_id: Option<String>,
}

const COLUMNS: &str = "id, args, status, attempts, max_attempts, run_at, unique_key, request_id";

impl<J: JobKind> InsertedJob<J> {
    fn decode(row: JobRow) -> Self {
        let args = serde_json::from_value(row.args.clone())
            .unwrap_or_else(|e| panic!("job {} does not decode as {}: {e}; args {}", row.id, J::KIND, row.args));
        Self {
            id: row.id,
            args,
            status: row.status,
            attempts: row.attempts,
            max_attempts: row.max_attempts,
            run_at: row.run_at,
            unique_key: row.unique_key,
            request_id: row.request_id,
        }
    }
}

/// Every job of kind `J`, oldest first.
pub async fn inserted<'e, J: JobKind>(db: impl PgExecutor<'e>) -> Vec<InsertedJob<J>> {
    let rows: Vec<JobRow> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM jobs WHERE kind = $1 ORDER BY id")))
            .bind(J::KIND)
            .fetch_all(db)
            .await
            .expect("reading jobs");
    rows.into_iter().map(InsertedJob::decode).collect()
}

/// The one job of kind `J`; panics if there is none or more than one.
pub async fn require_inserted<'e, J: JobKind>(db: impl PgExecutor<'e>) -> InsertedJob<J> {
    let mut jobs = inserted::<J>(db).await;
    match jobs.len() {
        1 => jobs.remove(0),
        n => panic!("expected one {} job, found {n}: {:?}", J::KIND, jobs.iter().map(|j| j.id).collect::<Vec<_>>()),
    }
}

/// Panics if any job of kind `J` exists.
pub async fn require_not_inserted<'e, J: JobKind>(db: impl PgExecutor<'e>) {
    let jobs = inserted::<J>(db).await;
    assert!(
        jobs.is_empty(),
        "expected no {} job, found {:?}",
        J::KIND,
        jobs.iter().map(|j| (j.id, j.status)).collect::<Vec<_>>()
    );
}

/// The statuses of the jobs of `kind`, oldest first.
pub async fn statuses(pool: &PgPool, kind: &str) -> Vec<JobStatus> {
    try_statuses(pool, kind).await.expect("reading job statuses")
}

async fn try_statuses(pool: &PgPool, kind: &str) -> Result<Vec<JobStatus>, sqlx::Error> {
    sqlx::query_scalar("SELECT status FROM jobs WHERE kind = $1 ORDER BY id").bind(kind).fetch_all(pool).await
}

/// Job `id`'s status; `None` once it is gone (discarded or pruned).
pub async fn status_of<'e>(db: impl PgExecutor<'e>, id: i64) -> Option<JobStatus> {
    sqlx::query_scalar("SELECT status FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await
        .expect("reading a job's status")
}

/// Waits until job `id` is in `status`; panics after `deadline` with where it stands.
pub async fn wait_for_status(pool: &PgPool, id: i64, status: JobStatus, deadline: Duration) {
    let started = Instant::now();
    loop {
        // A busy test (hundreds of concurrent requests on the same pool) may time out
        // reading; that is "not yet", not a failure, until the deadline.
        let now = sqlx::query_scalar::<_, JobStatus>("SELECT status FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await;
        if matches!(now, Ok(Some(now)) if now == status) {
            return;
        }
        assert!(started.elapsed() < deadline, "job {id} is {now:?} after {deadline:?}, not {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until no job of `kind` waits or runs; panics after `deadline` with how many do.
pub async fn wait_for_kind_finished(pool: &PgPool, kind: &str, deadline: Duration) {
    let started = Instant::now();
    loop {
        // As above: a read that times out under load is "not yet".
        let unfinished =
            try_statuses(pool, kind).await.map(|statuses| statuses.into_iter().filter(|s| s.is_unfinished()).count());
        if matches!(unfinished, Ok(0)) {
            return;
        }
        assert!(started.elapsed() < deadline, "{kind} jobs unfinished after {deadline:?}: {unfinished:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

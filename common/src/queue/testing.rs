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
    /// The worker holding it while it runs.
    pub locked_by: Option<String>,
    /// Each failed attempt's error, oldest first.
    pub errors: Vec<String>,
}

/// Any job, its args left as JSON: for tests about the queue rather than one kind.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobRow {
    pub id: i64,
    pub kind: String,
    pub args: serde_json::Value,
    pub customer_id: Option<uuid::Uuid>,
    pub status: JobStatus,
    pub attempts: i32,
    pub max_attempts: Option<i32>,
    pub run_at: DateTime<Utc>,
    pub unique_key: Option<String>,
    pub request_id: Option<String>,
    pub locked_by: Option<String>,
    #[sqlx(json)]
    pub errors: Vec<ErrorEntry>,
}

impl JobRow {
    /// The last failed attempt's error.
    pub fn last_error(&self) -> Option<&str> {
        self.errors.last().map(|e| e.error.as_str())
    }
}

/// One entry of a job's error history.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ErrorEntry {
    pub attempt: i32,
    pub at: DateTime<Utc>,
    pub error: String,
}

const COLUMNS: &str =
    "id, kind, args, customer_id, status, attempts, max_attempts, run_at, unique_key, request_id, locked_by, errors";

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
            locked_by: row.locked_by,
            errors: row.errors.into_iter().map(|e| e.error).collect(),
        }
    }
}

/// Every job, oldest first.
pub async fn all_jobs<'e>(db: impl PgExecutor<'e>) -> Vec<JobRow> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM jobs ORDER BY id")))
        .fetch_all(db)
        .await
        .expect("reading jobs")
}

/// Job `id`; panics if there is none.
pub async fn require_job<'e>(db: impl PgExecutor<'e>, id: i64) -> JobRow {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM jobs WHERE id = $1")))
        .bind(id)
        .fetch_optional(db)
        .await
        .expect("reading a job")
        .unwrap_or_else(|| panic!("no job {id}"))
}

/// How many jobs there are of `kind` (any kind: `None`) in any of `statuses` (any
/// status: empty).
pub async fn count<'e>(db: impl PgExecutor<'e>, kind: Option<&str>, statuses: &[JobStatus]) -> i64 {
    try_count(db, kind, statuses).await.expect("counting jobs")
}

/// [`count`], with the error for the caller to judge (a database restarting, say).
pub async fn try_count<'e>(
    db: impl PgExecutor<'e>,
    kind: Option<&str>,
    statuses: &[JobStatus],
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM jobs
          WHERE ($1::text IS NULL OR kind = $1) AND (cardinality($2::text[]) = 0 OR status = ANY($2))",
    )
    .bind(kind)
    .bind(statuses)
    .fetch_one(db)
    .await
}

/// Every job there is.
pub async fn count_all<'e>(db: impl PgExecutor<'e>) -> i64 {
    count(db, None, &[]).await
}

/// How many jobs (of every kind) wait or run.
pub async fn count_unfinished<'e>(db: impl PgExecutor<'e>) -> i64 {
    count(db, None, &UNFINISHED).await
}

const UNFINISHED: [JobStatus; 3] = [JobStatus::Available, JobStatus::Running, JobStatus::Retryable];

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

/// Claims due jobs of kind `J` as the worker `worker` would with room for `room` in its
/// buffer, settling what the kind settles in its claims (`settle`, with `ctx`'s settler,
/// up to 100 jobs, the default batch): the ids of the jobs claimed to be run (now
/// `running` under `worker`), and whether the queue may hold more due jobs; an error
/// where the worker's claim would have failed (a settlement whose commit's fate is unknown).
pub async fn claim<J: super::Job>(
    pool: &PgPool,
    ctx: &J::Context,
    worker: &str,
    room: usize,
) -> Result<(Vec<i64>, bool), sqlx::Error> {
    let config = super::StoreConfig {
        kind: J::KIND,
        batch_size: 100,
        policy: J::RETRY,
        heartbeat_interval: Duration::from_secs(5),
        orphan_after: Duration::from_secs(30),
    };
    let table = super::table::JobTable::of::<J>(pool.clone(), config, J::settler(ctx));
    let claim = table.claim(worker, room).await?;
    Ok((claim.tasks.iter().filter_map(|task| task.task_id().and_then(super::table::job_id)).collect(), claim.more))
}

//! [`JobStore`]: apalis's `Persistence` and `Backend` over our `jobs` table.
//!
//! apalis's `Persisted` driver calls us to register the worker, heartbeat, fetch a
//! batch, acknowledge a batch of results and give back tasks it claimed but never
//! started; the SQL for each is here and nowhere else.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use apalis_codec::json::JsonCodec;
use apalis_core::backend::finalize::Durable;
use apalis_core::backend::persistence::{Persisted, Persistence, State, TaskEvent, TaskPersistLayer};
use apalis_core::backend::{Backend, BackendConfig, TaskResult, WireFormatBackend};
use apalis_core::task::Task;
use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::task_id::TaskId;
use apalis_core::worker::context::WorkerContext;
use serde::Deserialize;
use serde_json::Value;
use sqlx::{PgPool, Row};

use super::{JobKind, Outcome, RetryPolicy};

/// The settings one kind's worker runs with.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub kind: &'static str,
    /// Jobs claimed per fetch; claimed jobs wait in the worker's buffer until a slot frees.
    pub batch_size: usize,
    pub policy: RetryPolicy,
    pub heartbeat_interval: Duration,
    pub orphan_after: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("job store: {0}")]
    Database(#[from] sqlx::Error),
}

/// The apalis backend of one job kind `J`.
pub struct JobStore<J> {
    persisted: Persisted<PgPersistence>,
    codec: JsonCodec<Value>,
    _kind: PhantomData<fn() -> J>,
}

impl<J: JobKind> JobStore<J> {
    pub fn new(pool: PgPool, config: StoreConfig) -> Self {
        assert_eq!(config.kind, J::KIND, "a store serves exactly its own kind");
        let persistence = PgPersistence {
            pool,
            config: Arc::new(config),
            decodes: |args| J::deserialize(args).map(drop).map_err(|e| e.to_string()),
        };
        Self { persisted: Persisted::new(persistence), codec: JsonCodec::default(), _kind: PhantomData }
    }
}

impl<J> Clone for JobStore<J> {
    fn clone(&self) -> Self {
        Self { persisted: self.persisted.clone(), codec: self.codec.clone(), _kind: PhantomData }
    }
}

impl<J> Backend for JobStore<J> {
    type Task = Task<Value>;
    type Error = StoreError;

    fn poll_ready(&mut self, cx: &mut Context<'_>, worker: &WorkerContext) -> Poll<Result<(), StoreError>> {
        let heartbeat = self.persisted.config.heartbeat_interval;
        self.persisted.poll_ready(cx, worker, heartbeat)
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Option<Result<Task<Value>, StoreError>>> {
        self.persisted.poll_next(cx, worker)
    }

    fn poll_close(&mut self, cx: &mut Context<'_>, worker: &WorkerContext) -> Poll<Result<(), StoreError>> {
        // apalis's `Persisted::poll_close` drops a fetch that is still in flight, but its
        // UPDATE may have claimed rows already, which would then stay `running` until
        // orphan rescue. Finish the fetch first, so its tasks count as claimed but not
        // started, and are released with the rest of the buffer.
        if let State::Fetch(fetch) = self.persisted.state_mut() {
            match fetch.poll_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(tasks)) => *self.persisted.state_mut() = State::Buffered(VecDeque::from(tasks)),
                Poll::Ready(Err(error)) => {
                    tracing::warn!(%error, "fetch failed during shutdown; its claims fall to orphan rescue");
                    *self.persisted.state_mut() = State::Ready;
                }
            }
        }
        self.persisted.poll_close(cx, worker)
    }
}

impl<J> BackendConfig for JobStore<J> {
    type Args = J;
    type Id = i64;
    type Kind = Durable;
    type Config = StoreConfig;
    type Layer = TaskPersistLayer<JsonCodec<Value>, Value>;

    fn config(&self) -> &StoreConfig {
        &self.persisted.config
    }

    fn middleware(&mut self, _: &mut WorkerContext) -> Self::Layer {
        let batch = self.persisted.config.batch_size;
        // Results are our acknowledgements; claiming already marked the rows running.
        self.persisted.layer(JsonCodec::<Value>::default(), batch).persist_results(true).lock_tasks(false)
    }
}

impl<J> WireFormatBackend for JobStore<J> {
    type Codec = JsonCodec<Value>;
    type Compact = Value;

    fn codec(&self) -> &Self::Codec {
        &self.codec
    }
}

#[derive(Clone)]
struct PgPersistence {
    pool: PgPool,
    config: Arc<StoreConfig>,
    /// Whether stored args decode as the kind's type; a row that does not is poison.
    decodes: fn(&Value) -> Result<(), String>,
}

impl PgPersistence {
    fn kind(&self) -> &'static str {
        self.config.kind
    }

    /// Marks the worker alive and rescues this kind's jobs held by workers that are not.
    async fn beat(&self, worker: &WorkerContext) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO job_workers (name, kind) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET last_seen = now()",
        )
        .bind(worker.name())
        .bind(self.kind())
        .execute(&mut *tx)
        .await?;
        let orphan_ms = self.config.orphan_after.as_millis() as i64;
        let rescued = sqlx::query(
            "WITH lost AS (
                 SELECT j.id FROM jobs j
                 WHERE j.kind = $1 AND j.status = 'running'
                   AND NOT EXISTS (
                       SELECT 1 FROM job_workers w
                       WHERE w.name = j.locked_by
                         AND w.last_seen > now() - $2 * interval '1 millisecond')
                 FOR UPDATE SKIP LOCKED)
             UPDATE jobs j SET
                 status = CASE WHEN j.attempts >= coalesce(j.max_attempts, $3) THEN 'dead' ELSE 'retryable' END,
                 finished_at = CASE WHEN j.attempts >= coalesce(j.max_attempts, $3) THEN now() END,
                 errors = j.errors || jsonb_build_array(jsonb_build_object(
                     'attempt', j.attempts, 'at', now(),
                     'error', 'worker ' || coalesce(j.locked_by, '?') || ' stopped while running the job')),
                 locked_by = NULL
             FROM lost WHERE j.id = lost.id",
        )
        .bind(self.kind())
        .bind(orphan_ms)
        .bind(self.config.policy.max_attempts)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // Forget workers long gone that hold nothing any more.
        sqlx::query(
            "DELETE FROM job_workers w
             WHERE w.kind = $1 AND w.last_seen < now() - $2 * interval '4 millisecond'
               AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.status = 'running' AND j.locked_by = w.name)",
        )
        .bind(self.kind())
        .bind(orphan_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if rescued > 0 {
            tracing::warn!(kind = self.kind(), rescued, "rescued jobs from a worker that stopped");
        }
        Ok(())
    }
}

#[derive(sqlx::FromRow)]
struct ClaimedRow {
    id: i64,
    args: Value,
    attempts: i32,
}

fn job_id(task_id: &TaskId) -> Option<i64> {
    match task_id {
        TaskId::Int(id) => i64::try_from(*id).ok(),
        other => other.to_string().parse().ok(),
    }
}

/// Acknowledgements sorted by what they do to the row.
#[derive(Default)]
struct Acks {
    done: (Vec<i64>, Vec<Value>),
    snoozed: (Vec<i64>, Vec<i64>),
    cancelled: (Vec<i64>, Vec<String>),
    failed: (Vec<i64>, Vec<String>),
}

impl Acks {
    fn sort(results: Vec<TaskResult<Value>>) -> Self {
        let mut acks = Self::default();
        for result in results {
            let Some(id) = job_id(&result.task_id) else {
                tracing::error!(task_id = %result.task_id, "acknowledgement for a task id that is not ours");
                continue;
            };
            match result.result {
                Ok(value) => match Outcome::deserialize(&value) {
                    Ok(Outcome::Done { detail }) => push(&mut acks.done, id, detail),
                    Ok(Outcome::Snooze { seconds }) => {
                        push(&mut acks.snoozed, id, i64::try_from(seconds).unwrap_or(i64::MAX))
                    }
                    Ok(Outcome::Cancel { reason }) => push(&mut acks.cancelled, id, reason),
                    // A handler that answered something else still finished.
                    Err(_) => push(&mut acks.done, id, value),
                },
                Err(error) => push(&mut acks.failed, id, error),
            }
        }
        acks
    }
}

fn push<T>(columns: &mut (Vec<i64>, Vec<T>), id: i64, value: T) {
    columns.0.push(id);
    columns.1.push(value);
}

/// How often, and how far apart, a batch of acknowledgements is retried while the
/// database is unreachable, before its jobs are left to orphan rescue.
const ACK_RETRIES: [Duration; 5] = [
    Duration::from_millis(100),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
];

/// apalis stops a worker for good when its backend returns an error (there is no
/// restart policy by default), so a database outage must not surface as one: a failed
/// fetch is an empty fetch (the polling tick tries again), a failed heartbeat a missed
/// beat, and a failed acknowledgement is retried, then left to orphan rescue (those jobs
/// run again: at least once). Each is logged.
impl Persistence for PgPersistence {
    type Compact = Value;
    type Response = Value;
    type Error = StoreError;

    async fn register(&mut self, worker: &WorkerContext) -> Result<(), StoreError> {
        if let Err(error) = self.beat(worker).await {
            tracing::warn!(kind = self.kind(), %error, "worker registration failed; the next heartbeat retries");
        }
        tracing::debug!(kind = self.kind(), worker = worker.name(), "worker registered");
        Ok(())
    }

    async fn heartbeat(&mut self, worker: &WorkerContext) -> Result<(), StoreError> {
        if let Err(error) = self.beat(worker).await {
            tracing::warn!(kind = self.kind(), %error, "heartbeat failed");
        }
        Ok(())
    }

    async fn fetch_next(&mut self, worker: &WorkerContext) -> Result<Vec<Task<Value>>, StoreError> {
        self.claim(worker).await.or_else(|error| {
            tracing::warn!(kind = self.kind(), %error, "claiming jobs failed; the next tick retries");
            Ok(Vec::new())
        })
    }

    async fn reenqueue_abandoned(
        &mut self,
        tasks: Vec<Task<Value>>,
        worker: &WorkerContext,
    ) -> Result<u64, StoreError> {
        self.release(tasks, worker).await.or_else(|error| {
            tracing::warn!(kind = self.kind(), %error, "releasing claimed jobs failed; orphan rescue will");
            Ok(0)
        })
    }

    async fn handle_events(&mut self, events: Vec<TaskEvent<Value>>, worker: &WorkerContext) -> Result<(), StoreError> {
        let results: Vec<TaskResult<Value>> = events
            .into_iter()
            .filter_map(|event| match event {
                TaskEvent::Complete(result) => Some(result),
                _ => None,
            })
            .collect();
        if results.is_empty() {
            return Ok(());
        }
        let acks = Acks::sort(results);
        for pause in ACK_RETRIES {
            match self.acknowledge(&acks, worker).await {
                Ok(()) => return Ok(()),
                Err(error) => {
                    tracing::warn!(kind = self.kind(), %error, ?pause, "acknowledging jobs failed; retrying");
                    tokio::time::sleep(pause).await;
                }
            }
        }
        if let Err(error) = self.acknowledge(&acks, worker).await {
            tracing::error!(kind = self.kind(), %error, "acknowledgements lost; orphan rescue will run these jobs again");
        }
        Ok(())
    }

    async fn push_tasks(&mut self, tasks: Vec<Task<Value>>) -> Result<(), StoreError> {
        // apalis's own `push` path: plain inserts of this kind, due now.
        let args: Vec<Value> = tasks.into_iter().map(|t| t.args).collect();
        sqlx::query("INSERT INTO jobs (kind, args) SELECT $1, a FROM UNNEST($2::jsonb[]) AS a")
            .bind(self.kind())
            .bind(&args)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

impl PgPersistence {
    async fn claim(&self, worker: &WorkerContext) -> Result<Vec<Task<Value>>, StoreError> {
        let rows: Vec<ClaimedRow> = sqlx::query_as(
            "WITH next AS (
                 SELECT id FROM jobs
                 WHERE kind = $1 AND status IN ('available', 'retryable') AND run_at <= now()
                 ORDER BY run_at
                 LIMIT $2
                 FOR UPDATE SKIP LOCKED)
             UPDATE jobs j SET status = 'running', attempts = j.attempts + 1,
                               locked_by = $3, locked_at = now()
             FROM next WHERE j.id = next.id
             RETURNING j.id, j.args, j.attempts",
        )
        .bind(self.kind())
        .bind(self.config.batch_size as i64)
        .bind(worker.name())
        .fetch_all(&self.pool)
        .await?;

        let mut tasks = Vec::with_capacity(rows.len());
        let mut poison = (Vec::new(), Vec::new());
        for row in rows {
            match (self.decodes)(&row.args) {
                Ok(()) => tasks.push(
                    TaskBuilder::new(row.args)
                        .task_id(TaskId::Int(row.id as u64))
                        .attempt(row.attempts as usize)
                        .build(),
                ),
                Err(e) => push(&mut poison, row.id, format!("args do not decode as {}: {e}", self.kind())),
            }
        }
        if !poison.0.is_empty() {
            tracing::error!(kind = self.kind(), ids = ?poison.0, "undecodable jobs marked dead");
            sqlx::query(
                "UPDATE jobs j SET status = 'dead', finished_at = now(), locked_by = NULL,
                     errors = j.errors || jsonb_build_array(jsonb_build_object(
                         'attempt', j.attempts, 'at', now(), 'error', u.error))
                 FROM UNNEST($1::bigint[], $2::text[]) AS u(id, error) WHERE j.id = u.id",
            )
            .bind(&poison.0)
            .bind(&poison.1)
            .execute(&self.pool)
            .await?;
        }
        Ok(tasks)
    }

    async fn release(&self, tasks: Vec<Task<Value>>, worker: &WorkerContext) -> Result<u64, StoreError> {
        // Claimed but never started (the worker is shutting down): give the attempt back.
        let ids: Vec<i64> = tasks.iter().filter_map(|t| t.task_id().and_then(job_id)).collect();
        let released = sqlx::query(
            "UPDATE jobs SET status = 'available', attempts = attempts - 1, locked_by = NULL
             WHERE id = ANY($1) AND status = 'running' AND locked_by = $2",
        )
        .bind(&ids)
        .bind(worker.name())
        .execute(&self.pool)
        .await?
        .rows_affected();
        tracing::info!(kind = self.kind(), released, "released claimed jobs on shutdown");
        Ok(released)
    }

    async fn acknowledge(&self, acks: &Acks, worker: &WorkerContext) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        // Each update only touches rows this worker still holds: if the job was rescued
        // from us meanwhile, its new owner decides its fate.
        if !acks.done.0.is_empty() {
            sqlx::query(
                "UPDATE jobs j SET status = 'completed', result = u.result, finished_at = now(), locked_by = NULL
                 FROM UNNEST($1::bigint[], $2::jsonb[]) AS u(id, result)
                 WHERE j.id = u.id AND j.status = 'running' AND j.locked_by = $3",
            )
            .bind(&acks.done.0)
            .bind(&acks.done.1)
            .bind(worker.name())
            .execute(&mut *tx)
            .await?;
        }
        if !acks.snoozed.0.is_empty() {
            sqlx::query(
                "UPDATE jobs j SET status = 'available', attempts = j.attempts - 1, locked_by = NULL,
                     run_at = now() + u.seconds * interval '1 second'
                 FROM UNNEST($1::bigint[], $2::bigint[]) AS u(id, seconds)
                 WHERE j.id = u.id AND j.status = 'running' AND j.locked_by = $3",
            )
            .bind(&acks.snoozed.0)
            .bind(&acks.snoozed.1)
            .bind(worker.name())
            .execute(&mut *tx)
            .await?;
        }
        if !acks.cancelled.0.is_empty() {
            sqlx::query(
                "UPDATE jobs j SET status = 'cancelled', finished_at = now(), locked_by = NULL,
                     errors = j.errors || jsonb_build_array(jsonb_build_object(
                         'attempt', j.attempts, 'at', now(), 'error', u.reason))
                 FROM UNNEST($1::bigint[], $2::text[]) AS u(id, reason)
                 WHERE j.id = u.id AND j.status = 'running' AND j.locked_by = $3",
            )
            .bind(&acks.cancelled.0)
            .bind(&acks.cancelled.1)
            .bind(worker.name())
            .execute(&mut *tx)
            .await?;
        }
        if !acks.failed.0.is_empty() {
            let policy = &self.config.policy;
            // Exponential backoff with jitter, persisted in run_at: base * 2^(attempt-1),
            // capped, then scaled by a random 75-100% so retries of a burst spread out.
            let dead = sqlx::query(
                "UPDATE jobs j SET
                     status = CASE WHEN j.attempts >= coalesce(j.max_attempts, $4) THEN 'dead' ELSE 'retryable' END,
                     finished_at = CASE WHEN j.attempts >= coalesce(j.max_attempts, $4) THEN now() END,
                     run_at = CASE WHEN j.attempts >= coalesce(j.max_attempts, $4) THEN j.run_at
                              ELSE now() + least($5::float8 * power(2, j.attempts - 1), $6::float8)
                                         * (0.75 + random() * 0.25) * interval '1 millisecond' END,
                     errors = j.errors || jsonb_build_array(jsonb_build_object(
                         'attempt', j.attempts, 'at', now(), 'error', u.error)),
                     locked_by = NULL
                 FROM UNNEST($1::bigint[], $2::text[]) AS u(id, error)
                 WHERE j.id = u.id AND j.status = 'running' AND j.locked_by = $3
                 RETURNING j.status",
            )
            .bind(&acks.failed.0)
            .bind(&acks.failed.1)
            .bind(worker.name())
            .bind(policy.max_attempts)
            .bind(policy.backoff_base.as_millis() as f64)
            .bind(policy.backoff_max.as_millis() as f64)
            .fetch_all(&mut *tx)
            .await?;
            let died = dead.iter().filter(|row| row.get::<&str, _>(0) == "dead").count();
            if died > 0 {
                metrics::counter!("rsolv_jobs_dead_total", "kind" => self.kind()).increment(died as u64);
            }
            for (id, error) in acks.failed.0.iter().zip(&acks.failed.1) {
                tracing::warn!(kind = self.kind(), job_id = id, %error, "job attempt failed");
            }
        }
        tx.commit().await?;
        Ok(())
    }
}

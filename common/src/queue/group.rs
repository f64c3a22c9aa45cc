//! Group commit for the API's one-job inserts: concurrent requests share a statement
//! and its commit, and each is answered only once that commit is durable.
//!
//! # Why
//!
//! A request that enqueues one job (a reported fix, a Stripe event) needs one durable
//! commit before it may answer: a 202 means the job exists. One commit per request
//! made the commit the bound of those routes (the bench's one-at-a-time enqueue rate).
//! Here the requests that arrive while a commit is on its way wait for the next one and
//! go in together: one `INSERT … SELECT FROM unnest(…)` in a transaction of its own,
//! `synchronous_commit` as the pool has it (on), so no answer is given before the rows
//! are on disk. Nothing waits on a timer: a lone request is flushed at once, and
//! batches grow only as load grows (at most [`FLUSHERS`] commits are in flight).
//!
//! # What each request gets
//!
//! Exactly what [`enqueue_with`](super::enqueue_with) would have answered: `Inserted`
//! with its own job id, or `Duplicate`. Rows carry ids drawn from the jobs' sequence
//! before the insert, so each request's answer is its own row's, whatever order
//! Postgres inserts in. Two requests with one unique key in one batch are one row: the
//! first is inserted (or found a duplicate) and the second is a duplicate, as they would
//! be one after the other. A batch Postgres refuses is retried one row at a time, so a
//! bad row fails its own request only; a batch that fails for want of the database
//! (unreachable, connection lost) answers each request that error, as each alone would
//! have been answered. Keys go in sorted, so two batches never deadlock on each other's
//! keys. At most [`MAX_WAITING`] rows wait: beyond that a request is refused at once
//! (503) instead of piling up in memory while the database is down.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::enqueue::Row;
use super::{Enqueued, WakeUp};
use crate::coalesce::Coalescer;

/// Commits in flight at once: one filling while one is being written.
pub const FLUSHERS: usize = 2;
/// Rows in one statement at most.
pub const MAX_BATCH: usize = 512;
/// Rows waiting for a commit at most; beyond them a request is refused at once (503)
/// rather than held in memory while the database cannot keep up or is down.
pub const MAX_WAITING: usize = 8 * MAX_BATCH;

struct Pending {
    row: Row,
    answer: oneshot::Sender<Result<Enqueued, sqlx::Error>>,
}

/// The handle requests send their rows through; cheap to clone.
#[derive(Clone)]
pub(super) struct GroupInsert(Coalescer<Pending>);

impl GroupInsert {
    /// Starts [`FLUSHERS`] flushing tasks on the current runtime.
    pub fn spawn(pool: PgPool) -> Self {
        Self(Coalescer::spawn("grouped insert", FLUSHERS, MAX_BATCH, MAX_WAITING, move |batch| {
            flush(pool.clone(), batch)
        }))
    }

    /// Inserts `row` with the next commit; answers once that commit is durable.
    pub async fn insert(&self, row: Row) -> Result<Enqueued, sqlx::Error> {
        let (answer, answered) = oneshot::channel();
        self.0.offer(Pending { row, answer }).map_err(|_| sqlx::Error::PoolTimedOut)?;
        answered.await.map_err(|_| sqlx::Error::PoolClosed)?
    }

    /// Batches committed since the start (each holds one or more rows).
    pub fn commits(&self) -> u64 {
        self.0.batches()
    }
}

/// The batch's insert. The sequence is named once per statement (a subquery, so an
/// InitPlan): as `nextval(pg_get_serial_sequence(…))` each row looked the sequence up by
/// name again, a tenth of the statement's time for 16 rows (BENCHMARKS.md).
const INSERT_MANY: &str = "
    WITH input AS (
        SELECT nextval((SELECT pg_get_serial_sequence('jobs', 'id')::regclass)) AS id, r.*
        FROM unnest($1::text[], $2::jsonb[], $3::int4[], $4::text[], $5::uuid[], $6::text[]) WITH ORDINALITY
            AS r(kind, args, max_attempts, unique_key, customer_id, request_id, n)),
    wake_up AS (SELECT set_config('rsolv.wake_up', 'deferred', true)),
    inserted AS (
        INSERT INTO jobs (id, kind, args, max_attempts, run_at, unique_key, customer_id, request_id)
        OVERRIDING SYSTEM VALUE
        SELECT id, kind, args, max_attempts, now(), unique_key, customer_id, request_id FROM input, wake_up
        ORDER BY n
        ON CONFLICT (kind, unique_key) WHERE unique_key IS NOT NULL AND status NOT IN ('dead', 'cancelled')
        DO NOTHING
        RETURNING id)
    SELECT inserted.id FROM input LEFT JOIN inserted USING (id) ORDER BY input.n";

/// Inserts a batch in one statement and answers each request. A row Postgres refuses
/// fails the statement: the rows are then tried one at a time, so it fails alone. Any
/// other failure (the database unreachable, the connection lost with the commit's fate
/// unknown) is every request's answer, as it would have been for each alone.
async fn flush(pool: PgPool, batch: Vec<Pending>) {
    // A request whose client went away is owed nothing: its row is left out.
    let mut batch: Vec<Pending> = batch.into_iter().filter(|p| !p.answer.is_closed()).collect();
    // Keys in one order in every batch: two batches waiting on each other's uncommitted
    // keys (ON CONFLICT waits) would deadlock otherwise. Stable, so that of two requests
    // with one key the first to arrive stays first.
    batch.sort_by(|a, b| (a.row.kind, a.row.unique_key.as_deref()).cmp(&(b.row.kind, b.row.unique_key.as_deref())));
    // Rows sharing a kind and unique key go in once, as their first; the rest follow it.
    let mut leaders: Vec<Pending> = Vec::with_capacity(batch.len());
    let mut followers: Vec<(usize, Pending)> = Vec::new();
    let mut seen: HashMap<(&'static str, String), usize> = HashMap::new();
    for pending in batch {
        if let Some(key) = pending.row.unique_key.clone() {
            match seen.entry((pending.row.kind, key)) {
                Entry::Occupied(leader) => {
                    followers.push((*leader.get(), pending));
                    continue;
                }
                Entry::Vacant(slot) => {
                    slot.insert(leaders.len());
                }
            }
        }
        leaders.push(pending);
    }
    if leaders.len() > 1 {
        match insert_many(&pool, &leaders).await {
            Ok(ids) => {
                for (pending, id) in leaders.into_iter().zip(ids) {
                    let _ = pending.answer.send(Ok(id.map_or(Enqueued::Duplicate, Enqueued::Inserted)));
                }
                for (_, pending) in followers {
                    let _ = pending.answer.send(Ok(Enqueued::Duplicate));
                }
                return;
            }
            Err(error) if refused_a_row(&error) => {
                tracing::warn!(%error, rows = leaders.len(), "a grouped insert was refused; inserting its rows one at a time");
            }
            Err(error) => {
                tracing::error!(%error, rows = leaders.len(), "a grouped insert failed");
                for pending in leaders.into_iter().chain(followers.into_iter().map(|(_, p)| p)) {
                    let _ = pending.answer.send(Err(crate::coalesce::same_kind_of(&error)));
                }
                return;
            }
        }
    }
    one_at_a_time(&pool, leaders, followers).await;
}

/// Whether Postgres refused the statement for something in it (a constraint, a bad
/// value, a deadlock), as opposed to the connection, the server or its resources failing
/// under it (classes 08, 57, 53, 58, XX), where trying each row alone would only fail
/// each of them more slowly.
fn refused_a_row(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| !["08", "57", "53", "58", "XX"].iter().any(|class| code.starts_with(class)))
}

/// Each row in a statement of its own: a lone row, or the rows of a batch that failed.
async fn one_at_a_time(pool: &PgPool, leaders: Vec<Pending>, followers: Vec<(usize, Pending)>) {
    let mut failed = Vec::new();
    for (index, Pending { row, answer }) in leaders.into_iter().enumerate() {
        let inserted = insert_one(pool, &row).await;
        if inserted.is_err() {
            failed.push(index);
        }
        let _ = answer.send(inserted);
    }
    for (leader, Pending { row, answer }) in followers {
        // The follower of a stored row is its duplicate; of a failed one, it tries itself.
        let _ = answer.send(match failed.contains(&leader) {
            true => insert_one(pool, &row).await,
            false => Ok(Enqueued::Duplicate),
        });
    }
}

/// The batch's rows in one statement: for each, its new id, or `None` for a duplicate.
async fn insert_many(pool: &PgPool, rows: &[Pending]) -> Result<Vec<Option<i64>>, sqlx::Error> {
    let kinds: Vec<&str> = rows.iter().map(|p| p.row.kind).collect();
    let args: Vec<&Value> = rows.iter().map(|p| &p.row.args).collect();
    let attempts: Vec<Option<i32>> = rows.iter().map(|p| p.row.max_attempts).collect();
    let keys: Vec<Option<&str>> = rows.iter().map(|p| p.row.unique_key.as_deref()).collect();
    let customers: Vec<Option<Uuid>> = rows.iter().map(|p| p.row.customer_id).collect();
    let requests: Vec<Option<&str>> = rows.iter().map(|p| p.row.request_id.as_deref()).collect();
    let answered: Vec<Option<i64>> = sqlx::query_scalar(INSERT_MANY)
        .bind(&kinds)
        .bind(&args)
        .bind(&attempts)
        .bind(&keys)
        .bind(&customers)
        .bind(&requests)
        .fetch_all(pool)
        .await?;
    if answered.len() != rows.len() {
        return Err(sqlx::Error::Protocol(format!("{} rows answered for {}", answered.len(), rows.len())));
    }
    Ok(answered)
}

/// One row, exactly as `enqueue_with` inserts it (a batch of one, or a failed batch's rows).
async fn insert_one(pool: &PgPool, row: &Row) -> Result<Enqueued, sqlx::Error> {
    super::enqueue::insert_row(pool, row, None, WakeUp::Deferred).await
}

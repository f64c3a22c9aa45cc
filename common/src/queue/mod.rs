//! The job backbone: durable jobs in Postgres, run by apalis workers.
//!
//! # Guide
//!
//! A job kind is a typed, serde args struct that implements [`JobKind`]: its stable
//! `KIND` name (the queue it lives in and the name stored with every row), its default
//! retry policy, and, where the domain has one, its unique key. Its worker logic is
//! [`Job::run`], which returns an explicit [`Outcome`] (done, snooze, cancel) or a
//! [`JobError`] (retry later, with backoff).
//!
//! Jobs are inserted with [`enqueue`] through any sqlx executor, so a job caused by a
//! business write is inserted in the same transaction as that write and exists exactly
//! when the write committed. A duplicate of a unique job is a no-op that the caller sees
//! as [`Enqueued::Duplicate`].
//!
//! Workers are plain apalis workers (`WorkerBuilder` + `Monitor`) over [`JobStore`], our
//! implementation of apalis's `Backend` trait on our own `jobs` table, which claims and
//! acknowledges in a pipeline (see `store.rs`). A kind whose common cases are cheap and
//! batchable (ledger postings) may settle them in the claim's own transaction instead
//! ([`Job::settler`], `settle.rs`).
//!
//! # Why our own storage rather than apalis-postgres's
//!
//! apalis-postgres 1.0 re-runs a failed job at once (no persisted backoff), keeps
//! finished rows in the claim path, inserts without `ON CONFLICT` (a duplicate fails
//! its batch), cannot enqueue inside a caller's transaction and notifies once per row.
//! Our table keeps only waiting rows in the claim index, stores the backoff in `run_at`,
//! treats duplicates as no-ops, and notifies once per statement. apalis still runs the
//! jobs: concurrency, panic catching, middleware, the monitor and graceful shutdown.
//!
//! # Delivery
//!
//! At least once: a job's effect may be applied and its acknowledgement lost (a crash in
//! between), so every job is written to be idempotent. A job is never lost: it is
//! `completed`, `cancelled` (its own decision) or `dead` (attempts exhausted, its errors
//! kept), and a job held by a worker that stopped heartbeating is rescued.

mod ack;
pub mod admin;
pub mod cron;
mod enqueue;
mod group;
#[cfg(feature = "failpoints")]
pub mod hooks;
mod notifier;
pub mod settle;
mod store;
mod table;
mod waker;
mod worker;

use std::future::Future;

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use uuid::Uuid;

pub use enqueue::{EnqueueOptions, Enqueued, WakeUp, enqueue, enqueue_with};
pub use notifier::JobNotifier;
pub use store::{CLAIM_AHEAD, HOLD_FOR, JobStore, MOST_AHEAD, StoreConfig};
pub use waker::JobWaker;
/// The claim and completion statements, for measuring what Postgres alone does with them.
pub mod statements {
    pub use super::table::{CLAIM, COMPLETE};
}
pub use worker::{bookkeeping_pool, register, register_with};

/// A job kind: typed args with a stable name and its queue settings beside them.
pub trait JobKind: Serialize + DeserializeOwned + Send + Sync + Unpin + 'static {
    /// Stable name: the queue, and what is stored in `jobs.kind`. Never rename one.
    const KIND: &'static str;

    /// Defaults; `JOB_<KIND>_MAX_ATTEMPTS` / `_CONCURRENCY` override them.
    const RETRY: RetryPolicy;

    /// A duplicate enqueue with the same key is a no-op while the first job is
    /// waiting, running or completed.
    fn unique_key(&self) -> Option<String> {
        None
    }

    /// The customer the job is about, so ops and status endpoints can find it.
    fn customer_id(&self) -> Option<Uuid> {
        None
    }
}

/// What a job does when a worker runs it.
pub trait Job: JobKind {
    type Context: Clone + Send + Sync + 'static;

    fn run(self, ctx: Self::Context) -> impl Future<Output = Result<Outcome, JobError>> + Send;

    /// What settles the kind's common cases in the claim's own transaction, if anything
    /// (see `settle`); jobs it leaves are run by [`Job::run`].
    fn settler(_ctx: &Self::Context) -> Option<settle::Settler> {
        None
    }

    /// Whether this process can run the kind at all. One that cannot (email kinds where
    /// `SMTP_URL` is unset) is not registered, so its jobs wait, neither claimed nor
    /// charged attempts, for a process that can.
    fn runs_here(_ctx: &Self::Context) -> bool {
        true
    }
}

/// How a kind runs and retries (defined with the job settings it is read into, so the
/// configuration depends on nothing above it).
pub use crate::config::RetryPolicy;

/// How a job run ended, as the worker decided it (River's explicit outcomes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Finished; `detail` is kept as the job's result.
    Done {
        #[serde(default)]
        detail: serde_json::Value,
    },
    /// Not now: run again after `seconds`, without spending an attempt.
    Snooze { seconds: u64 },
    /// Will never succeed: stop without further attempts, keeping the reason.
    Cancel { reason: String },
}

impl Outcome {
    pub fn done(detail: impl Serialize) -> Self {
        Self::Done { detail: serde_json::to_value(detail).unwrap_or(serde_json::Value::Null) }
    }

    pub fn cancel(reason: impl Into<String>) -> Self {
        Self::Cancel { reason: reason.into() }
    }
}

/// A failed attempt: the job is retried after its backoff, or is dead after its last
/// attempt. Its message (`Display`, with the cause's) is kept in the job's error
/// history; the cause itself travels as `source()` for whoever logs it.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The run's own reason (a precondition not met yet, a state it refuses).
    #[error("{0}")]
    Refused(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Ledger(#[from] crate::ledger::LedgerError),
    /// A failure of something above the queue (Stripe, SMTP, a template): the room
    /// that failed names it in `context`.
    #[error("{context}{source}")]
    Caused {
        context: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl JobError {
    pub fn new(message: impl Into<String>) -> Self {
        Self::Refused(message.into())
    }

    /// `source` as the cause, its message prefixed by `context` (e.g. `"email not sent: "`).
    pub fn caused(context: &'static str, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Caused { context, source: Box::new(source) }
    }
}

mod state;
pub use state::JobStatus;
#[cfg(feature = "testing")]
pub mod testing;

mod inspect;
pub use inspect::{
    JobState, by_unique_key, first_enqueued_at, for_customer, latest_for_customer, unfinished_for_customer,
};

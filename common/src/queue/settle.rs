//! Kinds that settle their common cases in the claim's own transaction.
//!
//! # Why
//!
//! A job is written three times: inserted, claimed (`running`), and acknowledged
//! (`completed`). Each of the last two is a whole new row version with an entry in every
//! index of `jobs` (a status change is never a HOT update), and for a usage report that
//! is most of what Postgres does for it: more than its ledger entry and its
//! `usage_fixes` row together (BENCHMARKS.md, "Where a metering run's time goes").
//!
//! A kind with a [`Settler`] is claimed differently: its due jobs are locked
//! (`FOR UPDATE SKIP LOCKED`, as a claim does), the settler decides the ones it can in
//! the same transaction (a batch of ledger postings, `jobs::batch`), and those jobs go
//! from waiting to `completed` in one update, committed with their effect. The rest are
//! claimed as always (`running` under this worker) and run by apalis, on their own path.
//! So a settled job is written twice instead of three times, its completion commits with
//! its effect (no window in which the effect is durable and the job still `running`),
//! and it needs no acknowledgement.
//!
//! # What does not change
//!
//! Every job still has its attempt counted, its result kept, and its unique key held;
//! a job the settler cannot decide is run exactly as before. If the settler fails (a
//! lock held too long, a posting Postgres refuses), the transaction is rolled back and
//! the same jobs are claimed the ordinary way, each then run alone: a poison job fails
//! its own attempt, never its neighbours'. The transaction commits synchronously: it
//! moves money, whatever the worker's bookkeeping pool does for its claims.

use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::Value;
use sqlx::PgConnection;

/// A locked, due job handed to a settler.
#[derive(Debug)]
pub struct Claimed {
    pub id: i64,
    pub args: Value,
}

/// What a settler decided: per job, in order, `Some(detail)` when the job is done in this
/// transaction (its result), `None` when it is to be run by the worker. `after_commit`
/// runs once the transaction is durable (counting what it posted).
pub struct Settled {
    pub done: Vec<Option<Value>>,
    pub after_commit: Option<Box<dyn FnOnce() + Send>>,
}

/// Decides a batch of a kind's due jobs inside the claim's transaction (see the module's
/// guide). It must write nothing for a job it answers `None` for.
pub type Settler = Arc<
    dyn for<'c> Fn(&'c mut PgConnection, &'c [Claimed]) -> BoxFuture<'c, Result<Settled, sqlx::Error>> + Send + Sync,
>;

/// A [`Settler`] from a function (where the closure's lifetimes are inferred).
pub fn settler<F>(settle: F) -> Settler
where
    F: for<'c> Fn(&'c mut PgConnection, &'c [Claimed]) -> BoxFuture<'c, Result<Settled, sqlx::Error>>
        + Send
        + Sync
        + 'static,
{
    Arc::new(settle)
}

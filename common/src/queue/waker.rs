//! [`JobWaker`]: wake-ups sent after commit, at most one `NOTIFY` in flight per process.
//!
//! Every other insert notifies from the `jobs` trigger, inside its own transaction, which
//! is the simplest way to make a wake-up exist exactly when the job does. But `NOTIFY`
//! takes a database-wide lock that is held until the transaction's commit is on disk, so
//! notifying transactions commit one at a time: measured on the webhook route, they
//! spent most of their time waiting for that lock (`pg_stat_activity`: `Lock/object`).
//! The API's hot paths therefore insert quietly and hand the kind to this waker, which
//! sends one `NOTIFY` for everything handed to it while the previous one was on its way.
//! A wake-up lost with a crashed process is covered by the workers' polling tick.
//!
//! Its [`enqueue`](JobWaker::enqueue) is the API's one-job insert, group-committed
//! (see `group.rs`): concurrent requests share a commit, each answered after it.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use sqlx::PgPool;
use tokio::sync::Notify;

use super::enqueue::Row;
use super::group::GroupInsert;
use super::notifier::CHANNEL;
use super::{Enqueued, JobKind};

#[derive(Clone)]
pub struct JobWaker {
    pending: Arc<Mutex<BTreeSet<&'static str>>>,
    poke: Arc<Notify>,
    inserts: GroupInsert,
}

impl JobWaker {
    /// Starts the sending task and the group-commit tasks on the current runtime; they
    /// live as long as the process.
    pub fn spawn(pool: PgPool) -> Self {
        let inserts = GroupInsert::spawn(pool.clone());
        let waker = Self { pending: Arc::default(), poke: Arc::new(Notify::new()), inserts };
        let sender = waker.clone();
        tokio::spawn(async move {
            loop {
                sender.poke.notified().await;
                let kinds: Vec<&str> =
                    std::mem::take(&mut *sender.pending.lock().expect("waker lock")).into_iter().collect();
                if kinds.is_empty() {
                    continue;
                }
                let sent = sqlx::query!(
                    "SELECT pg_notify($1, kind) FROM unnest($2::text[]) AS kind",
                    CHANNEL,
                    &kinds[..] as _
                )
                .execute(&pool)
                .await;
                if let Err(error) = sent {
                    tracing::warn!(%error, ?kinds, "waking workers failed; their polling tick finds the jobs");
                }
            }
        });
        waker
    }

    /// Wakes the workers of `kind` soon.
    pub fn wake(&self, kind: &'static str) {
        self.pending.lock().expect("waker lock").insert(kind);
        self.poke.notify_one();
    }

    /// Enqueues `job` to run now, outside any transaction of the caller's: it is
    /// committed with whatever other requests enqueue meanwhile, and this answers once
    /// that commit is durable. Then wakes its workers.
    pub async fn enqueue<J: JobKind>(&self, job: &J) -> Result<Enqueued, sqlx::Error> {
        let enqueued = self.inserts.insert(Row::of(job, None)?).await?;
        if let Enqueued::Inserted(_) = enqueued {
            self.wake(J::KIND);
        }
        Ok(enqueued)
    }

    /// Commits the group inserts have made since the start (each holds one or more jobs).
    pub fn group_commits(&self) -> u64 {
        self.inserts.commits()
    }
}

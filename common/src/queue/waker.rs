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

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use sqlx::PgPool;
use tokio::sync::Notify;

use super::notifier::CHANNEL;
use super::{EnqueueOptions, Enqueued, JobKind, WakeUp, enqueue_with};

#[derive(Clone)]
pub struct JobWaker {
    pending: Arc<Mutex<BTreeSet<&'static str>>>,
    poke: Arc<Notify>,
}

impl JobWaker {
    /// Starts the sending task on the current runtime; it lives as long as the process.
    pub fn spawn(pool: PgPool) -> Self {
        let waker = Self { pending: Arc::default(), poke: Arc::new(Notify::new()) };
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

    /// Enqueues `job` in a transaction of its own, then wakes its workers.
    pub async fn enqueue<J: JobKind>(&self, pool: &PgPool, job: &J) -> Result<Enqueued, sqlx::Error> {
        let enqueued =
            enqueue_with(pool, job, EnqueueOptions { wake_up: WakeUp::Deferred, ..Default::default() }).await?;
        if let Enqueued::Inserted(_) = enqueued {
            self.wake(J::KIND);
        }
        Ok(enqueued)
    }
}

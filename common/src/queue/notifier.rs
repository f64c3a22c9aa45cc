//! Wake-up: one LISTEN connection per process, fanned out to the idle worker of each
//! kind, plus a polling tick as the fallback for scheduled jobs, retries whose backoff
//! has ended, and a notification missed while the connection was re-established.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{self, BoxStream, StreamExt};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;

pub const CHANNEL: &str = "rsolv_jobs";

#[derive(Clone, Default)]
pub struct JobNotifier {
    kinds: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
}

impl JobNotifier {
    /// Starts listening on the pool's database; the task lives as long as the process.
    pub async fn listen(pool: &PgPool) -> Result<Self, sqlx::Error> {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(CHANNEL).await?;
        let notifier = Self::default();
        let fan_out = notifier.clone();
        tokio::spawn(async move {
            loop {
                // `recv` reconnects by itself after a lost connection; the polling tick
                // covers what was inserted in between.
                match listener.recv().await {
                    Ok(notification) => fan_out.wake(notification.payload()),
                    Err(error) => {
                        tracing::warn!(%error, "job notification listener failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        });
        Ok(notifier)
    }

    fn slot(&self, kind: &str) -> Arc<Notify> {
        let mut kinds = self.kinds.lock().expect("notifier lock poisoned");
        kinds.entry(kind.to_owned()).or_default().clone()
    }

    /// Wakes the worker of `kind`; if it is busy, the wake-up is kept for its next wait.
    pub fn wake(&self, kind: &str) {
        self.slot(kind).notify_one();
    }

    /// A stream that yields whenever the worker of `kind` should look for jobs.
    pub fn wake_ups(&self, kind: &str, poll_interval: Duration) -> BoxStream<'static, ()> {
        let notify = self.slot(kind);
        stream::unfold(notify, move |notify| async move {
            tokio::select! {
                _ = notify.notified() => {}
                _ = tokio::time::sleep(poll_interval) => {}
            }
            Some(((), notify))
        })
        .boxed()
    }
}

//! Coalescing: requests that arrive while a statement of their kind is on its way wait
//! for the next one and go in together.
//!
//! # Why
//!
//! On a small machine the API's cost per request is mostly round trips: a statement, its
//! answer, and the context switches between client, API and Postgres around each. Under
//! load, many requests want the same statement with another argument (insert this job,
//! look up this key). Sent as one statement, they share one round trip (and, for writes,
//! one commit). Nothing waits on a timer: a lone request goes at once, and a batch grows
//! only while the statements before it are in flight, so batches grow with the load and
//! a quiet system answers as fast as without this.
//!
//! A [`Coalescer`] owns the queue and its flushing tasks; what a batch does, and how each
//! request is answered (each carries its own answer channel), is the caller's `flush`.
//! Users: the API's group commit (`queue::group`) and API key lookups
//! (`db::api_keys::KeyLookups`), and the worker's batched postings (`jobs::batch`).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Mutex, mpsc};

/// The handle requests are offered through; cheap to clone.
pub struct Coalescer<T> {
    items: mpsc::Sender<T>,
    batches: Arc<AtomicU64>,
}

impl<T> Clone for Coalescer<T> {
    fn clone(&self) -> Self {
        Self { items: self.items.clone(), batches: self.batches.clone() }
    }
}

impl<T: Send + 'static> Coalescer<T> {
    /// Starts `flushers` tasks on the current runtime, each taking the next batch (at
    /// most `max_batch` items) and awaiting `flush` on it; at most `max_waiting` items
    /// wait. `what` names the batches in logs.
    pub fn spawn<F, Fut>(what: &'static str, flushers: usize, max_batch: usize, max_waiting: usize, flush: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (items, receiver) = mpsc::channel(max_waiting);
        let receiver = Arc::new(Mutex::new(receiver));
        let batches = Arc::new(AtomicU64::new(0));
        let flush = Arc::new(flush);
        for _ in 0..flushers {
            let (receiver, batches, flush) = (receiver.clone(), batches.clone(), flush.clone());
            tokio::spawn(async move {
                while let Some(batch) = next_batch(&receiver, max_batch).await {
                    // In a task of its own: a panic fails this batch's requests (their
                    // answer channels are dropped), never the flusher, so later ones go on.
                    if let Err(error) = tokio::spawn(flush(batch)).await {
                        tracing::error!(%error, what, "a batch panicked; its requests were answered with an error");
                    }
                    batches.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        Self { items, batches }
    }

    /// Queues `item` for the next batch; gives it back when `max_waiting` items already
    /// wait (the caller refuses the request at once rather than pile up in memory).
    pub fn offer(&self, item: T) -> Result<(), T> {
        self.items.try_send(item).map_err(|error| error.into_inner())
    }

    /// Batches flushed since the start.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }
}

/// Waits for one item, then takes every item already waiting, up to `max`.
async fn next_batch<T>(receiver: &Mutex<mpsc::Receiver<T>>, max: usize) -> Option<Vec<T>> {
    let mut receiver = receiver.lock().await;
    let first = receiver.recv().await?;
    let mut batch = vec![first];
    while batch.len() < max {
        match receiver.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
    Some(batch)
}

/// An error each request of a failed batch can be answered with (`sqlx::Error` is not
/// `Clone`): what the API answers for it stays the same (see `ApiError`'s `From`): the
/// database unavailable (no connection, a broken one, classes 08, 57 and 53) is 503,
/// anything else the statement met is 500.
pub fn same_kind_of(error: &sqlx::Error) -> sqlx::Error {
    let unavailable = error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| ["08", "57", "53"].iter().any(|class| code.starts_with(class)));
    match error {
        sqlx::Error::PoolTimedOut => sqlx::Error::PoolTimedOut,
        sqlx::Error::PoolClosed => sqlx::Error::PoolClosed,
        sqlx::Error::Io(e) => sqlx::Error::Io(std::io::Error::new(e.kind(), e.to_string())),
        sqlx::Error::Protocol(message) => sqlx::Error::Protocol(message.clone()),
        other if unavailable => sqlx::Error::Protocol(format!("a grouped statement failed: {other}")),
        other => sqlx::Error::InvalidArgument(format!("a grouped statement failed: {other}")),
    }
}

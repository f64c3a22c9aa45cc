//! The middleware that reports each finished run to its store's acknowledger, and runs
//! it in a `job` span (kind, job id, attempt, customer, request id) so that its log lines
//! say which job wrote them, as part of the request that caused the job.
//!
//! It sits outermost in a worker's service stack (apalis puts a backend's middleware
//! there), so it sees the handler's final answer after panics were caught. The channel
//! is bounded: when acknowledgements fall behind, new runs wait instead of piling up
//! finished-but-unrecorded jobs in memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use apalis_core::error::BoxDynError;
use apalis_core::layers::{Layer, Service};
use apalis_core::task::Task;
use futures::channel::mpsc::Sender;
use futures::channel::oneshot;
use futures::future::BoxFuture;
use futures::{FutureExt, SinkExt};
use serde::Serialize;
use tracing::Instrument;

use super::table::{Finished, claim_of, job_id, origin_of};
use crate::correlation;

/// What the acknowledger receives, in the order it was sent.
pub(super) enum AckMessage {
    Finished(Finished),
    /// Answered once everything sent before it is written (or given up on).
    Flush(oneshot::Sender<()>),
}

#[derive(Clone)]
pub struct AckLayer {
    kind: &'static str,
    sender: Sender<AckMessage>,
    runs_finished: Arc<AtomicU64>,
}

impl AckLayer {
    /// `runs_finished` counts every run as it ends (the claimer's pace, see `store`).
    pub(super) fn new(kind: &'static str, sender: Sender<AckMessage>, runs_finished: Arc<AtomicU64>) -> Self {
        Self { kind, sender, runs_finished }
    }
}

impl<S> Layer<S> for AckLayer {
    type Service = AckService<S>;

    fn layer(&self, inner: S) -> AckService<S> {
        AckService { inner, kind: self.kind, sender: self.sender.clone(), runs_finished: self.runs_finished.clone() }
    }
}

#[derive(Clone)]
pub struct AckService<S> {
    inner: S,
    kind: &'static str,
    sender: Sender<AckMessage>,
    runs_finished: Arc<AtomicU64>,
}

impl<S, Args> Service<Task<Args>> for AckService<S>
where
    S: Service<Task<Args>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxDynError>,
    S::Response: Serialize + Send,
    Args: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxDynError;
    type Future = BoxFuture<'static, Result<S::Response, BoxDynError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxDynError>> {
        match self.sender.poll_ready(cx) {
            Poll::Ready(Ok(())) => self.inner.poll_ready(cx).map_err(Into::into),
            Poll::Ready(Err(closed)) => Poll::Ready(Err(closed.into())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, task: Task<Args>) -> Self::Future {
        // The job, and the claim this run came from (what fences its result).
        let id = task.ctx().task_id().and_then(job_id).zip(claim_of(&task));
        let origin = origin_of(&task);
        let customer = origin.as_ref().and_then(|origin| origin.customer_id);
        let request_id = origin.and_then(|origin| origin.request_id);
        // Every line the run logs names its job (kind, id, attempt), its customer and the
        // request that caused it.
        let span = tracing::info_span!(
            "job",
            kind = %self.kind,
            job_id = id.map(|(id, _)| id),
            attempt = id.map(|(_, claim)| claim.attempt),
            customer = customer.map(tracing::field::display),
            request_id = request_id.as_ref().map(tracing::field::display),
        );
        let mut sender = self.sender.clone();
        let runs_finished = self.runs_finished.clone();
        // What the run enqueues is part of the same request.
        let run = correlation::scope(request_id, self.inner.call(task)).instrument(span);
        async move {
            let result = run.await.map_err(Into::into);
            // Counted as the run ends, not when its result is written: a slow write is
            // not a slow run.
            runs_finished.fetch_add(1, Ordering::Relaxed);
            match id {
                Some((id, claim)) => {
                    let report = match &result {
                        Ok(response) => serde_json::to_value(response).map_err(|e| e.to_string()),
                        Err(error) => Err(error.to_string()),
                    };
                    // Only fails once the store is gone; the job then falls to orphan rescue.
                    let _ = sender.send(AckMessage::Finished(Finished { id, claim, result: report })).await;
                }
                None => tracing::error!("a finished task without a job id cannot be acknowledged"),
            }
            result
        }
        .boxed()
    }
}

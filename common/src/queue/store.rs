//! [`JobStore`]: apalis's `Backend` over our `jobs` table, as a pipeline.
//!
//! apalis's own `Persisted` driver claims, runs and acknowledges one after the other in
//! one state machine: while a batch of results is written nothing is claimed, and while
//! a batch is claimed nothing is acknowledged. Here each of those has its own task and
//! its own connection, so they overlap:
//!
//! - the **claimer** keeps claimed jobs ready for the worker, claiming while the worker
//!   still runs the last ones. How many wait is bounded by time, not only by count
//!   ([`Holding`]): what the worker finishes in [`HOLD_FOR`] at its recent pace, at
//!   least [`CLAIM_AHEAD`] per run slot and at most [`MOST_AHEAD`] per slot (or two
//!   claims' worth). So a process of slow jobs leaves the rest of the queue to its
//!   siblings and, if it dies, has been charged an attempt for few jobs it never
//!   started, while a kind whose jobs take microseconds still claims and acknowledges
//!   them in large batches (at two per slot, short jobs made claims of a few dozen:
//!   measured in `BENCHMARKS.md`). It claims once half of that is free (so each claim
//!   is worth its round trip), and waits for a wake-up (a notification or the polling
//!   tick) once the queue gives less than it asked for; after such a wait the pace is
//!   measured afresh from the least (what comes next may be slow). A kind with a
//!   settler (`settle`) completes in the claim's own transaction the jobs the settler
//!   decides; only the rest reach the worker;
//! - the **acknowledger** writes finished runs as they arrive, everything waiting in one
//!   transaction (so under load its batches grow by themselves);
//! - the **heartbeat** registers the worker before anything is claimed and keeps it
//!   alive, rescuing the jobs of workers that are not.
//!
//! apalis still runs the jobs: it pulls them from [`Backend::poll_next`], bounds their
//! concurrency, catches panics and reports each result through [`AckLayer`].
//!
//! Durability is unchanged: a claimed job is `running` under this worker's name until
//! acknowledged. On shutdown the claimer stops after its claim in flight, the jobs it
//! had claimed but the worker never started are given back (their attempt returned),
//! and every acknowledgement is written before the worker reports itself stopped. A
//! process that dies leaves its jobs to orphan rescue.
//!
//! A database outage never stops a worker (apalis has no restart policy by default and
//! would stop it for good on a backend error): a failed claim is an empty one (the next
//! tick tries again), a failed heartbeat a missed beat, and a failed acknowledgement is
//! retried, then left to orphan rescue (those jobs run again: at least once).

use std::collections::HashSet;
use std::convert::Infallible;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use apalis_codec::json::JsonCodec;
use apalis_core::backend::finalize::Durable;
use apalis_core::backend::{Backend, BackendConfig, WireFormatBackend};
use apalis_core::task::Task;
use apalis_core::worker::context::WorkerContext;
use futures::channel::{mpsc as ack_channel, oneshot};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, SinkExt, StreamExt};
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::ack::{AckLayer, AckMessage};
use super::settle::Settler;
use super::table::{Acks, Claim, JobTable, job_id};
use super::{JobKind, RetryPolicy};

/// The settings one kind's worker runs with.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub kind: &'static str,
    /// The most jobs one claim asks for (fewer when the buffer has less room).
    pub batch_size: usize,
    pub policy: RetryPolicy,
    pub heartbeat_interval: Duration,
    pub orphan_after: Duration,
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

/// Most results written in one acknowledgement transaction.
const MAX_ACK_BATCH: usize = 2_000;

/// Claimed-but-unstarted jobs a worker may always keep, per run slot.
///
/// Bounded by the slots a worker has, not by those free at the moment: with short jobs
/// a slot is refilled the instant it frees, so "free slots" is nearly always zero and a
/// bound on it starves the worker (measured: 453 no-op jobs/s instead of 35,000).
pub const CLAIM_AHEAD: usize = 2;

/// The most claimed-but-unstarted jobs a worker keeps per run slot, reached only by a
/// kind that runs that many per slot within [`HOLD_FOR`] (each in under 2.5 ms).
pub const MOST_AHEAD: usize = 20;

/// How long the jobs waiting in a worker's buffer may last it, at the pace it has been
/// finishing them. Long enough that a kind of short jobs claims hundreds at a time, short
/// enough that what a process holds is work of a moment.
pub const HOLD_FOR: Duration = Duration::from_millis(50);

/// The shortest time a pace is measured over: shorter, and a few runs more or less would
/// swing it from nothing to the most.
const PACED_OVER: Duration = Duration::from_millis(10);

/// How many claimed jobs a worker keeps waiting: what it finishes in [`HOLD_FOR`] at the
/// pace measured since the last measurement (at least [`PACED_OVER`] ago), between
/// `least` and `most`. It rises half way at a time (one quick moment is not a pace) and
/// falls at once (a stalled dependency is a pace: a worker whose runs stop finishing
/// keeps its least from its next claim on). Runs finished, not jobs started: slots that
/// were idle all start at once, which says nothing of how long their runs take.
#[derive(Debug)]
struct Holding {
    least: usize,
    most: usize,
    target: usize,
    /// When the pace was last measured, and how many runs had finished by then.
    since: Instant,
    finished_then: u64,
}

impl Holding {
    fn new(least: usize, most: usize, now: Instant) -> Self {
        let least = least.clamp(1, most);
        Self { least, most, target: least, since: now, finished_then: 0 }
    }

    /// The target once the worker has finished `finished` runs in all; `starved` when
    /// nothing is waiting in its buffer: then its pace was what it was fed (claims too
    /// small or too slow), not what it can run, and the target does not fall.
    fn measure(&mut self, finished: u64, starved: bool, now: Instant) -> usize {
        let elapsed = now.saturating_duration_since(self.since);
        if elapsed < PACED_OVER {
            return self.target;
        }
        let ran = finished.saturating_sub(self.finished_then) as f64;
        let paced = ((ran * HOLD_FOR.as_secs_f64() / elapsed.as_secs_f64()) as usize).clamp(self.least, self.most);
        self.target = match paced.cmp(&self.target) {
            std::cmp::Ordering::Less if starved => self.target,
            std::cmp::Ordering::Less => paced,
            _ => self.target + (paced - self.target).div_ceil(2),
        };
        self.since = now;
        self.finished_then = finished;
        self.target
    }

    /// Starts afresh from the least, after waiting for an empty queue to fill: the wait
    /// is not the worker's pace, and the jobs that come next may not run at the pace of
    /// those before (a burst after a quiet spell, of a kind whose dependency has stalled
    /// meanwhile, would otherwise be claimed by the hundred).
    fn restart(&mut self, finished: u64, now: Instant) {
        self.target = self.least;
        self.since = now;
        self.finished_then = finished;
    }
}

/// The ids of the jobs this worker holds: claimed and not yet acknowledged (buffered,
/// running, or waiting to be written). What is `running` under its name but not here
/// was lost, and the heartbeat gives it back.
#[derive(Clone, Default)]
struct Held(Arc<Mutex<HashSet<i64>>>);

impl Held {
    fn add(&self, ids: impl IntoIterator<Item = i64>) {
        self.0.lock().expect("held jobs lock").extend(ids);
    }

    fn remove(&self, ids: impl IntoIterator<Item = i64>) {
        let mut held = self.0.lock().expect("held jobs lock");
        for id in ids {
            held.remove(&id);
        }
    }

    fn snapshot(&self) -> Vec<i64> {
        self.0.lock().expect("held jobs lock").iter().copied().collect()
    }
}

/// The apalis backend of one job kind `J`.
pub struct JobStore<J> {
    table: JobTable,
    held: Held,
    codec: JsonCodec<Value>,
    wake_ups: Option<BoxStream<'static, ()>>,
    acks: ack_channel::Sender<AckMessage>,
    /// Runs finished, counted by the middleware as each ends: the claimer's pace.
    runs_finished: Arc<AtomicU64>,
    /// Taken by the acknowledger when the worker starts.
    ack_receiver: Option<ack_channel::Receiver<AckMessage>>,
    running: Option<Running>,
    closing: Option<BoxFuture<'static, ()>>,
    _kind: PhantomData<fn() -> J>,
}

/// The tasks of a started worker; aborted if the store is dropped without closing.
struct Running {
    claimed: mpsc::Receiver<Task<Value>>,
    tasks: [JoinHandle<()>; 3],
}

impl Drop for Running {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl<J: JobKind> JobStore<J> {
    /// `wake_ups` yields whenever jobs of this kind may be waiting (see `JobNotifier`).
    pub fn new(pool: PgPool, config: StoreConfig, wake_ups: BoxStream<'static, ()>) -> Self {
        assert_eq!(config.kind, J::KIND, "a store serves exactly its own kind");
        let table = JobTable::of::<J>(pool, config, None);
        // Room for every run that can finish while one batch of acknowledgements is written.
        let (acks, ack_receiver) = ack_channel::channel(table.config.batch_size * 4);
        Self {
            table,
            held: Held::default(),
            codec: JsonCodec::default(),
            wake_ups: Some(wake_ups),
            acks,
            runs_finished: Arc::default(),
            ack_receiver: Some(ack_receiver),
            running: None,
            closing: None,
            _kind: PhantomData,
        }
    }
}

impl<J> JobStore<J> {
    /// Settles the kind's common cases in its claims (see `settle`).
    pub fn settling(mut self, settler: Settler) -> Self {
        self.table.settler = Some(settler);
        self
    }

    fn start(&mut self, worker: &WorkerContext) {
        let name: Arc<str> = worker.name().into();
        let slots = self.table.config.policy.concurrency.max(1);
        // A batch is at least the concurrency, so this is at least CLAIM_AHEAD per slot.
        let most = (MOST_AHEAD * slots).min(2 * self.table.config.batch_size);
        let (claimed_tx, claimed) = mpsc::channel(most);
        let (registered_tx, registered) = oneshot::channel();
        let wake_ups = self.wake_ups.take().expect("a store starts once");
        let ack_receiver = self.ack_receiver.take().expect("a store starts once");
        let (table, held) = (&self.table, &self.held);
        let heartbeat = tokio::spawn(heartbeat(table.clone(), name.clone(), held.clone(), registered_tx));
        let claimer = tokio::spawn(claim_loop(
            table.clone(),
            name.clone(),
            held.clone(),
            claimed_tx,
            wake_ups,
            registered,
            self.runs_finished.clone(),
        ));
        let acknowledger = tokio::spawn(acknowledge_loop(table.clone(), name, held.clone(), ack_receiver));
        self.running = Some(Running { claimed, tasks: [heartbeat, claimer, acknowledger] });
    }
}

async fn heartbeat(table: JobTable, worker: Arc<str>, held: Held, registered: oneshot::Sender<()>) {
    let mut registered = Some(registered);
    let mut ticks = tokio::time::interval(table.config.heartbeat_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match table.beat(&worker).await {
            Ok(()) if registered.is_some() => tracing::debug!(kind = table.kind(), %worker, "worker registered"),
            Ok(()) => {}
            Err(error) => tracing::warn!(kind = table.kind(), %error, "heartbeat failed"),
        }
        if registered.is_none()
            && let Err(error) = table.give_back_untracked(&worker, &held.snapshot()).await
        {
            tracing::warn!(kind = table.kind(), %error, "checking for lost jobs failed; the next beat retries");
        }
        // Claiming waits for the first beat, successful or not: a failed one is retried
        // long before another process could take this worker for dead.
        if let Some(registered) = registered.take() {
            let _ = registered.send(());
        }
    }
}

async fn claim_loop(
    table: JobTable,
    worker: Arc<str>,
    held: Held,
    claimed: mpsc::Sender<Task<Value>>,
    mut wake_ups: BoxStream<'static, ()>,
    registered: oneshot::Receiver<()>,
    finished: Arc<AtomicU64>,
) {
    // The buffer has room for the most a worker may hold; `Holding` decides how much of
    // it to fill. A claim waits until at most half the target is waiting, then asks for
    // what reaches the target (at most a batch).
    let batch = table.config.batch_size.max(1);
    let most = claimed.max_capacity();
    let slots = table.config.policy.concurrency.max(1);
    let mut holding = Holding::new(CLAIM_AHEAD * slots, most, Instant::now());
    if registered.await.is_err() {
        return;
    }
    loop {
        // No permit is held here: what the channel lacks in capacity is waiting in it.
        let waiting = most - claimed.capacity();
        let target = holding.measure(finished.load(Ordering::Relaxed), waiting == 0, Instant::now());
        let free_enough = most - target / 2;
        let Ok(permits) = claimed.reserve_many(free_enough).await else { return };
        // That wait lasts as long as the worker's runs do (minutes, if a dependency
        // stalls): the pace is measured again before claiming.
        let waiting = most - free_enough - claimed.capacity();
        let target = holding.measure(finished.load(Ordering::Relaxed), waiting == 0, Instant::now());
        let want = target.saturating_sub(waiting).min(batch);
        if want == 0 {
            continue;
        }
        let extra = want.saturating_sub(free_enough).min(claimed.capacity());
        let Ok(extra_permits) = claimed.try_reserve_many(extra) else { return };
        let want = want.min(free_enough + extra);
        let Claim { mut tasks, more } = match table.claim(&worker, want).await {
            Ok(claim) => claim,
            Err(error) => {
                tracing::warn!(kind = table.kind(), %error, "claiming jobs failed; the next tick retries");
                Claim { tasks: Vec::new(), more: false }
            }
        };
        // Never expected (a claim takes at most `want`); but a job claimed and not sent
        // would stay `running` under this worker, held and never run: given back.
        if tasks.len() > want {
            let excess = tasks.split_off(want);
            tracing::error!(kind = table.kind(), want, excess = excess.len(), "a claim returned more jobs than asked");
            if let Err(error) = table.release(&excess, &worker).await {
                tracing::warn!(kind = table.kind(), %error, "giving back excess jobs failed; orphan rescue will");
            }
        }
        held.add(tasks.iter().filter_map(|task| task.task_id().and_then(job_id)));
        // Permits not used return to the channel when dropped.
        for (permit, task) in permits.chain(extra_permits).zip(tasks) {
            permit.send(task);
        }
        if !more {
            tokio::select! {
                _ = wake_ups.next() => {}
                _ = claimed.closed() => return,
            }
            holding.restart(finished.load(Ordering::Relaxed), Instant::now());
        }
    }
}

async fn acknowledge_loop(
    table: JobTable,
    worker: Arc<str>,
    held: Held,
    mut messages: ack_channel::Receiver<AckMessage>,
) {
    let mut finished = Vec::new();
    let mut flushes = Vec::new();
    while let Some(first) = messages.next().await {
        let mut next = Some(first);
        while let Some(message) = next {
            match message {
                AckMessage::Finished(run) => finished.push(run),
                AckMessage::Flush(done) => flushes.push(done),
            }
            next = if finished.len() < MAX_ACK_BATCH { messages.try_recv().ok() } else { None };
        }
        if !finished.is_empty() {
            let acks = Acks::sort(finished.drain(..));
            write_acks(&table, &worker, &acks).await;
            // Written or given up on: either way no longer ours to track. An unwritten
            // one stays `running` under our name, and the heartbeat gives it back.
            held.remove(acks.ids());
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

async fn write_acks(table: &JobTable, worker: &str, acks: &Acks) {
    for pause in ACK_RETRIES {
        match table.acknowledge(acks, worker).await {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(kind = table.kind(), %error, ?pause, "acknowledging jobs failed; retrying");
                tokio::time::sleep(pause).await;
            }
        }
    }
    if let Err(error) = table.acknowledge(acks, worker).await {
        tracing::error!(
            kind = table.kind(),
            jobs = acks.len(),
            %error,
            "acknowledgements lost; orphan rescue will run these jobs again"
        );
    }
}

/// Stops claiming, gives back what was claimed but never started, and writes every
/// acknowledgement sent so far.
async fn close(
    table: JobTable,
    worker: Arc<str>,
    mut claimed: mpsc::Receiver<Task<Value>>,
    mut acks: ack_channel::Sender<AckMessage>,
) {
    // Closing the buffer stops the claimer after its claim in flight, whose jobs still
    // arrive here: the channel ends when the claimer has returned.
    claimed.close();
    let mut unstarted = Vec::new();
    while let Some(task) = claimed.recv().await {
        unstarted.push(task);
    }
    if !unstarted.is_empty() {
        match table.release(&unstarted, &worker).await {
            Ok(released) => tracing::info!(kind = table.kind(), released, "released claimed jobs on shutdown"),
            Err(error) => {
                tracing::warn!(kind = table.kind(), %error, "releasing claimed jobs failed; orphan rescue will")
            }
        }
    }
    let (flushed, done) = oneshot::channel();
    if acks.send(AckMessage::Flush(flushed)).await.is_ok() {
        let _ = done.await;
    }
}

impl<J> Backend for JobStore<J> {
    type Task = Task<Value>;
    /// Never: database errors are absorbed and retried (see the module's guide), since
    /// apalis stops a worker for good on a backend error.
    type Error = Infallible;

    fn poll_ready(&mut self, cx: &mut Context<'_>, worker: &WorkerContext) -> Poll<Result<(), Infallible>> {
        if self.running.is_none() && self.closing.is_none() {
            self.start(worker);
            worker.heartbeat(cx);
        }
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Option<Result<Task<Value>, Infallible>>> {
        match self.running.as_mut() {
            // The claimer only ends when closed, or if it panicked: either way, no more.
            Some(running) => running.claimed.poll_recv(cx).map(|task| task.map(Ok)),
            None => Poll::Ready(None),
        }
    }

    fn poll_close(&mut self, cx: &mut Context<'_>, worker: &WorkerContext) -> Poll<Result<(), Infallible>> {
        if self.closing.is_none() {
            let Some(running) = self.running.as_mut() else { return Poll::Ready(Ok(())) };
            let (_, claimed) = mpsc::channel(1);
            let claimed = std::mem::replace(&mut running.claimed, claimed);
            let name: Arc<str> = worker.name().into();
            self.closing = Some(close(self.table.clone(), name, claimed, self.acks.clone()).boxed());
        }
        let closing = self.closing.as_mut().expect("set above");
        closing.poll_unpin(cx).map(|()| {
            // Heartbeat and acknowledger end with the store.
            self.running = None;
            Ok(())
        })
    }
}

impl<J> BackendConfig for JobStore<J> {
    type Args = J;
    type Id = i64;
    type Kind = Durable;
    type Config = StoreConfig;
    type Layer = AckLayer;

    fn config(&self) -> &StoreConfig {
        &self.table.config
    }

    fn middleware(&mut self, _: &mut WorkerContext) -> AckLayer {
        AckLayer::new(self.table.kind(), self.acks.clone(), self.runs_finished.clone())
    }
}

impl<J> WireFormatBackend for JobStore<J> {
    type Codec = JsonCodec<Value>;
    type Compact = Value;

    fn codec(&self) -> &Self::Codec {
        &self.codec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Measures after `rounds` windows of `every` in which `per_window` runs finished.
    fn run(holding: &mut Holding, at: &mut Instant, finished: &mut u64, rounds: u32, every: Duration, per_window: u64) {
        for _ in 0..rounds {
            *finished += per_window;
            *at += every;
            holding.measure(*finished, false, *at);
        }
    }

    /// A worker (least 10, most 1,000) that has run 50 jobs a millisecond long enough to
    /// hold its most.
    fn at_full_pace() -> (Holding, Instant, u64) {
        let (mut at, mut finished) = (Instant::now(), 0);
        let mut holding = Holding::new(10, 1_000, at);
        run(&mut holding, &mut at, &mut finished, 12, 10 * MS, 500);
        assert_eq!(holding.target, 1_000);
        (holding, at, finished)
    }

    #[test]
    fn a_worker_that_finishes_its_jobs_fast_holds_more_of_them_up_to_its_most() {
        let (mut at, mut finished) = (Instant::now(), 0);
        let mut holding = Holding::new(100, 1_000, at);
        // 50 runs a millisecond: 2,500 in HOLD_FOR, above the most.
        let mut targets = Vec::new();
        for _ in 0..12 {
            run(&mut holding, &mut at, &mut finished, 1, 10 * MS, 500);
            targets.push(holding.target);
        }
        assert!(targets.windows(2).all(|t| t[0] <= t[1]), "rises step by step: {targets:?}");
        assert!(targets[0] < 1_000, "not at once: {targets:?}");
        assert_eq!(*targets.last().unwrap(), 1_000, "{targets:?}");
    }

    #[test]
    fn a_worker_whose_runs_are_slow_or_stalled_holds_its_least() {
        let (mut at, mut finished) = (Instant::now(), 0);
        let mut holding = Holding::new(20, 1_000, at);
        // One run in 10 ms is 5 in HOLD_FOR: below the least.
        run(&mut holding, &mut at, &mut finished, 5, 10 * MS, 1);
        assert_eq!(holding.target, 20);
        // Nothing finishes for a second (every slot started a run that hangs).
        run(&mut holding, &mut at, &mut finished, 1, 1_000 * MS, 0);
        assert_eq!(holding.target, 20);
    }

    #[test]
    fn a_worker_whose_runs_stall_after_a_fast_spell_falls_to_its_least_at_once() {
        let (mut holding, mut at, mut finished) = at_full_pace();
        assert_eq!(holding.target, 1_000);
        // The dependency stalls: one run a second.
        run(&mut holding, &mut at, &mut finished, 1, 1_000 * MS, 1);
        assert_eq!(holding.target, 10);
    }

    #[test]
    fn a_worker_that_ran_out_of_claimed_jobs_keeps_its_target() {
        let (mut holding, mut at, mut finished) = at_full_pace();
        // A slow claim (a loaded database): the worker finished all it had, and its
        // pace was what it was fed.
        finished += 100;
        at += 200 * MS;
        assert_eq!(holding.measure(finished, true, at), 1_000);
        // Fed and still slow: that is its pace.
        finished += 100;
        at += 200 * MS;
        assert_eq!(holding.measure(finished, false, at), 25);
    }

    #[test]
    fn a_moment_shorter_than_the_measuring_window_changes_nothing() {
        let (mut at, mut finished) = (Instant::now(), 0);
        let mut holding = Holding::new(10, 1_000, at);
        run(&mut holding, &mut at, &mut finished, 4, 10 * MS, 200);
        let paced = holding.target;
        // Measured again right after (a claim, then its wait for room ending at once):
        // neither a run that finished nor none finishing moves it.
        run(&mut holding, &mut at, &mut finished, 1, MS, 0);
        assert_eq!(holding.target, paced);
        run(&mut holding, &mut at, &mut finished, 1, MS, 1);
        assert_eq!(holding.target, paced);
    }

    #[test]
    fn after_the_queue_ran_dry_the_pace_is_measured_afresh_from_the_least() {
        let (mut holding, mut at, mut finished) = at_full_pace();
        assert_eq!(holding.target, 1_000);
        // Idle for a minute: the first claim after the wake-up asks for the least, even
        // measured at once and with the buffer empty.
        at += 60_000 * MS;
        holding.restart(finished, at);
        assert_eq!(holding.measure(finished, true, at + MS), 10);
        // Not the idle minute taken for a slow pace: the same pace as before rises again.
        let mut targets = Vec::new();
        for _ in 0..12 {
            run(&mut holding, &mut at, &mut finished, 1, 10 * MS, 500);
            targets.push(holding.target);
        }
        assert!(targets[0] > 10 && targets[0] < 1_000, "{targets:?}");
        assert_eq!(*targets.last().unwrap(), 1_000, "{targets:?}");
    }
}

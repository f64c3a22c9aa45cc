//! Fixes settled as they are reported: the API's group commit for
//! `POST /api/v1/usage/fixes` writes the fix's debit itself, where it can.
//!
//! # Why
//!
//! A reported fix used to be a `record_usage` job: inserted by the API (one commit),
//! claimed and settled by a worker (another), each a whole row of `jobs` with an entry in
//! every one of its indexes, and the round trips of both processes around them. Profiled
//! (BENCHMARKS.md, "Fixes settled as they are reported"), the job's own rows were most of
//! what Postgres wrote for a fix, and the job's two processes shared two CPUs with it.
//! Most fixes need nothing a job gives — no Stripe call, no retry: a credit to debit, a
//! fix recorded before, a refusal for want of credits and card. Those are now decided in
//! the commit that answers the report, so a 202 for them means the debit is durable.
//!
//! # How
//!
//! Reports that arrive while a batch is being written wait for the next one
//! (`coalesce`). A batch is one transaction, decided exactly as a worker's claim decides
//! its `record_usage` jobs (`jobs::batch`): customers locked in id order, a fix recorded
//! before is a duplicate, a credit is debited under the ledger's non-negative rule, a fix
//! with neither credits nor card is refused (`NO_BILLING_INFO`). What a batch does not
//! decide — a fix to be charged by card, a fix with a charge, a fix whose key a job
//! already holds — is enqueued as a `record_usage` job in the same transaction, so every
//! report is either recorded or queued by the commit that answers it (the job's key is
//! what makes a report of a fix held by a job that job's duplicate). Each report is
//! answered only once that commit is durable (`synchronous_commit` on).
//!
//! Why this is safe beside the jobs: every path that records a fix (this one, a claim's
//! batch, a job run alone) locks the customer first and then looks for the fix's record
//! and charge. A job inserted for a fix while a batch holds its customer finds, when it
//! runs, the batch's record and does nothing; a batch that waits for a job's customer
//! lock finds the job's record, or its charge, or its key.
//!
//! # When a batch fails
//!
//! It writes nothing (its transaction is rolled back), and each of its reports is
//! enqueued alone as a job (`JobWaker::enqueue`, as with `USAGE_SETTLE_ON_REPORT=false`):
//! the worker decides it. So a report is never refused for its neighbour's sake, and a
//! poison report fails its own job only. If the database is unreachable, that enqueue
//! fails too and the request is answered 503, as any other would be.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use sqlx::PgPool;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::RecordUsage;
use super::batch::{self, Decided, DecidedFor, Work};
use crate::coalesce::Coalescer;
use crate::ledger;
use crate::queue::{self, Enqueued, JobKind, JobWaker};

/// Batches in flight at once: one filling while one is being written.
const FLUSHERS: usize = 2;
/// Reports in one batch at most.
const MAX_BATCH: usize = 256;
/// Reports waiting at most; beyond them a report goes straight to the job queue.
const MAX_WAITING: usize = 16 * MAX_BATCH;

/// What became of a report by the time it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reported {
    /// Decided and durable: debited, refused, or found recorded before (`duplicate`).
    Settled { duplicate: bool },
    /// Left to a `record_usage` job: enqueued, or a duplicate of the job holding its key.
    Queued(Enqueued),
}

impl Reported {
    /// Nothing new will be charged for this report.
    pub fn is_duplicate(self) -> bool {
        match self {
            Self::Settled { duplicate } => duplicate,
            Self::Queued(enqueued) => enqueued.is_duplicate(),
        }
    }
}

struct Pending {
    fix: RecordUsage,
    /// The reporting request's id, for the job if the fix is left to one.
    request_id: Option<String>,
    /// `None`: the batch failed, enqueue the report alone.
    answer: oneshot::Sender<Option<Reported>>,
}

/// Where the API sends reported fixes; cheap to clone.
#[derive(Clone)]
pub struct FixReports {
    batches: Option<Coalescer<Pending>>,
    waker: JobWaker,
}

impl FixReports {
    /// Settles reports as they arrive (`settle`: `USAGE_SETTLE_ON_REPORT`), starting
    /// [`FLUSHERS`] tasks on the current runtime; without `settle`, every report is
    /// enqueued as a job.
    pub fn spawn(pool: PgPool, waker: JobWaker, settle: bool) -> Self {
        let batches = settle.then(|| {
            let waker = waker.clone();
            Coalescer::spawn("settled fix reports", FLUSHERS, MAX_BATCH, MAX_WAITING, move |batch| {
                flush(pool.clone(), waker.clone(), batch)
            })
        });
        Self { batches, waker }
    }

    /// Settles or enqueues `fix`; answers once what was written for it is durable.
    pub async fn report(&self, fix: RecordUsage) -> Result<Reported, sqlx::Error> {
        if let Some(batches) = &self.batches {
            let (answer, answered) = oneshot::channel();
            let request_id = crate::correlation::current().map(|id| id.to_string());
            if batches.offer(Pending { fix: fix.clone(), request_id, answer }).is_ok()
                && let Ok(Some(reported)) = answered.await
            {
                return Ok(reported);
            }
        }
        Ok(Reported::Queued(self.waker.enqueue(&fix).await?))
    }
}

/// Settles one batch and answers each report (see the module's guide).
async fn flush(pool: PgPool, waker: JobWaker, batch: Vec<Pending>) {
    // A report whose client went away is owed nothing: it is left out.
    let mut batch: Vec<Pending> = batch.into_iter().filter(|p| !p.answer.is_closed()).collect();
    // In key order (a job's key is customer then fix id), so that the jobs a batch
    // enqueues go in in the order the group insert uses too.
    batch.sort_by(|a, b| (a.fix.customer_id, &a.fix.fix_id).cmp(&(b.fix.customer_id, &b.fix.fix_id)));
    // A fix reported twice in one batch is decided once, as its first report.
    let mut leaders: Vec<Pending> = Vec::with_capacity(batch.len());
    let mut followers: Vec<(usize, Pending)> = Vec::new();
    let mut seen: HashMap<(Uuid, String), usize> = HashMap::new();
    for pending in batch {
        match seen.entry((pending.fix.customer_id, pending.fix.fix_id.clone())) {
            Entry::Occupied(leader) => followers.push((*leader.get(), pending)),
            Entry::Vacant(slot) => {
                slot.insert(leaders.len());
                leaders.push(pending);
            }
        }
    }
    let answers = match settle(&pool, &leaders).await {
        Ok(answers) => answers,
        Err(error) => {
            tracing::warn!(%error, reports = leaders.len(), "a batch of fix reports failed; each is enqueued as a job");
            for pending in leaders.into_iter().chain(followers.into_iter().map(|(_, p)| p)) {
                let _ = pending.answer.send(None);
            }
            return;
        }
    };
    if answers.iter().any(|a| matches!(a, Reported::Queued(Enqueued::Inserted(_)))) {
        waker.wake(RecordUsage::KIND);
    }
    for (leader, pending) in followers {
        let again = match answers[leader] {
            Reported::Settled { .. } => Reported::Settled { duplicate: true },
            Reported::Queued(_) => Reported::Queued(Enqueued::Duplicate),
        };
        let _ = pending.answer.send(Some(again));
    }
    for (pending, answer) in leaders.into_iter().zip(answers) {
        let _ = pending.answer.send(Some(answer));
    }
}

/// One transaction: the batch decided, the rest enqueued, committed.
async fn settle(pool: &PgPool, reports: &[Pending]) -> Result<Vec<Reported>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // A 202 for a settled fix is all its client gets: durable before it is sent, whatever
    // the pool's or the role's setting (a stricter one is kept).
    sqlx::query(
        "SELECT set_config('synchronous_commit', CASE current_setting('synchronous_commit')
                 WHEN 'off' THEN 'on' ELSE current_setting('synchronous_commit') END, true)",
    )
    .execute(&mut *tx)
    .await?;
    let decided = async {
        let decided = decide_and_enqueue(&mut tx, reports).await?;
        fail::fail_point!("usage_reports::before_commit", |_| Err(sqlx::Error::Protocol("failpoint".into())));
        Ok(decided)
    }
    .await;
    let (answers, posted, mut enqueued) = match decided {
        Ok(decided) => decided,
        Err(error) => {
            // Rolled back before the reports are enqueued alone: they must not wait on
            // this transaction's job keys.
            if let Err(rollback) = tx.rollback().await {
                tracing::warn!(%rollback, "rolling back a failed batch of fix reports");
            }
            return Err(error);
        }
    };
    tx.commit().await?;
    // A commit whose answer is lost (the connection drops as it lands) looks the same.
    fail::fail_point!("usage_reports::after_commit", |_| Err(sqlx::Error::Protocol("failpoint".into())));
    posted.iter().for_each(ledger::count_posted);
    answers
        .into_iter()
        .map(|answer| match answer {
            Some(answer) => Ok(Reported::Settled { duplicate: answer.duplicate }),
            None => enqueued
                .next()
                .map(Reported::Queued)
                .ok_or_else(|| sqlx::Error::Protocol("a report left to a job was not enqueued".into())),
        })
        .collect()
}

/// The batch decided in `tx`, and the reports it left enqueued as jobs: each report's
/// answer (`None`: left to a job), the postings made, and the jobs' answers in order.
async fn decide_and_enqueue(
    tx: &mut sqlx::PgConnection,
    reports: &[Pending],
) -> Result<(Vec<Option<batch::Answer>>, Vec<ledger::Posting>, std::vec::IntoIter<Enqueued>), sqlx::Error> {
    let work: Vec<Work> = reports.iter().map(|p| Work::Fix(p.fix.clone())).collect();
    // Whether a fix without credits may be charged is the job's to find out: `true`
    // leaves every fix with a card on file to it.
    let Decided { answers, posted } = batch::decide(tx, &work, true, DecidedFor::Report).await?;
    let left: Vec<(&RecordUsage, Option<String>)> = reports
        .iter()
        .zip(&answers)
        .filter(|(_, answer)| answer.is_none())
        .map(|(p, _)| (&p.fix, p.request_id.clone()))
        .collect();
    let enqueued = queue::enqueue_batch_quietly(tx, &left).await?.into_iter();
    Ok((answers, posted, enqueued))
}

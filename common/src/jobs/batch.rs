//! Group commit for the ledger's jobs: grants and fix debits that run at the same time
//! in one worker process share one transaction and one durable commit.
//!
//! # Why
//!
//! A grant or a fix debit is a handful of statements and one durable commit
//! (`synchronous_commit` stays on: it moves money). Run one job per transaction, the
//! commit and the round trips around it bound the ledger at a few thousand postings a
//! second however many jobs run at once. apalis still runs each job on its own; a job
//! of these kinds hands its posting to [`PostingBatches`], and the postings handed over
//! while the previous batch was being written go in together: customers locked in id
//! order, each posting under its own idempotency key and the non-negative rule
//! (`ledger::post_many`), and the job is answered after the commit.
//!
//! # What stays with the job
//!
//! A batch decides only the common cases: a grant, a fix paid by a credit, a fix
//! recorded before, a fix refused for want of credits and card. Anything else — a fix
//! with a charge, one to be charged, a customer not there yet, a grant of nothing —
//! is answered [`Batched::Alone`] and the job runs its own path, unchanged. A batch
//! whose transaction fails answers every member `Alone`, so a poison posting fails its
//! own job alone (with its own retries), never its neighbours.

use std::collections::{HashMap, HashSet};

use sqlx::PgPool;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::record_usage::{RecordUsage, details, refusal};
use crate::coalesce::Coalescer;
use crate::db;
use crate::ledger::{self, Posted, Posting};
use crate::queue::Outcome;

/// Batches written at once per process: one filling while one commits.
const FLUSHERS: usize = 2;
/// Postings in one transaction at most (a batch holds its customers' locks this long).
const MAX_BATCH: usize = 256;
/// Postings waiting at most; in practice the jobs that can wait are fewer (their kinds'
/// concurrency), and a job finding it full runs alone.
const MAX_WAITING: usize = 16 * MAX_BATCH;

/// What a batch decided for one job.
#[derive(Debug)]
pub enum Batched {
    /// Committed: the job's outcome.
    Done(Outcome),
    /// The job runs its own path.
    Alone,
    /// What the batch did is unknown to this run (a test build's stop after the commit,
    /// as a crash would leave it): the attempt fails, and its retry finds what committed.
    Lost,
}

/// A job's work as a batch takes it.
#[derive(Debug)]
pub(crate) enum Work {
    Grant(Posting),
    Fix(RecordUsage),
}

struct Pending {
    work: Work,
    answer: oneshot::Sender<Batched>,
}

/// The handle jobs hand their postings to; cheap to clone. `None` in a context runs
/// every job alone.
#[derive(Clone)]
pub struct PostingBatches(Coalescer<Pending>);

impl PostingBatches {
    /// Starts the batch writers on the current runtime. `charges`: whether a fix that
    /// finds no credit may be charged (Stripe is configured), in which case it runs alone.
    /// A panicking batch drops its answers: its jobs run alone.
    pub fn spawn(pool: PgPool, charges: bool) -> Self {
        Self(Coalescer::spawn("batch of postings", FLUSHERS, MAX_BATCH, MAX_WAITING, move |batch| {
            let pool = pool.clone();
            async move { write(&pool, batch, charges).await }
        }))
    }

    /// Runs `work` with the next batch; `Alone` if the batch cannot decide it, or if
    /// [`MAX_WAITING`] postings already wait.
    pub(crate) async fn run(&self, work: Work) -> Batched {
        let (answer, answered) = oneshot::channel();
        if self.0.offer(Pending { work, answer }).is_err() {
            return Batched::Alone;
        }
        answered.await.unwrap_or(Batched::Alone)
    }
}

/// Decides and commits a batch, then answers each job; a failed batch answers `Alone`.
async fn write(pool: &PgPool, batch: Vec<Pending>, charges: bool) {
    let (work, answers): (Vec<Work>, Vec<_>) = batch.into_iter().map(|p| (p.work, p.answer)).unzip();
    let decided = match decide(pool, &work, charges).await {
        // A test build can stop here: committed, no job told (as a crash would leave it).
        Ok(decided) if stopped_after_commit() => decided.into_iter().map(|_| Batched::Lost).collect(),
        Ok(decided) => decided,
        Err(error) => {
            tracing::warn!(%error, jobs = work.len(), "a batch of postings failed; its jobs run one at a time");
            work.iter().map(|_| Batched::Alone).collect()
        }
    };
    for (answer, batched) in answers.into_iter().zip(decided) {
        let _ = answer.send(batched);
    }
}

/// Whether the `postings::after_commit` failpoint is on (never in a release build).
fn stopped_after_commit() -> bool {
    fail::fail_point!("postings::after_commit", |_| true);
    false
}

/// How one job's work stands while its batch is decided.
enum Plan {
    Done(Outcome),
    Alone,
    /// Its posting is `postings[i]`.
    Grant(usize),
    Fix(usize),
}

async fn decide(pool: &PgPool, work: &[Work], charges: bool) -> Result<Vec<Batched>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // A customer held elsewhere (an operator's long transaction) must not hold up the
    // batch's other customers: past this wait the batch fails and its jobs run alone.
    sqlx::query("SET LOCAL lock_timeout = '2s'").execute(&mut *tx).await?;
    // The lookups below join the batch's keys against tables that grow (see
    // `db::planned_for_arguments`); the postings after them run the ledger's triggers
    // once per entry, and keep their cached plans.
    db::planned_for_arguments(&mut tx).await?;
    let mut ids: Vec<Uuid> = work.iter().map(Work::customer_id).collect();
    ids.sort_unstable();
    ids.dedup();
    let customers: HashMap<Uuid, db::customers::Customer> =
        db::customers::lock_many(&mut *tx, &ids).await?.into_iter().map(|c| (c.id, c)).collect();
    let fixes: Vec<&RecordUsage> = work.iter().filter_map(Work::fix).collect();
    let (fix_customers, fix_ids): (Vec<Uuid>, Vec<String>) =
        fixes.iter().map(|f| (f.customer_id, f.fix_id.clone())).unzip();
    let recorded: HashMap<(Uuid, String), db::usage::FixRecord> =
        db::usage::find_many(&mut *tx, &fix_customers, &fix_ids)
            .await?
            .into_iter()
            .map(|(c, f, r)| ((c, f), r))
            .collect();
    let charged: HashSet<(Uuid, String)> =
        db::charges::fixes_with_charges(&mut *tx, &fix_customers, &fix_ids).await?.into_iter().collect();
    db::cached_plans(&mut tx).await?;

    let mut postings = Vec::new();
    let mut seen_fixes = HashSet::new();
    let plans: Vec<Plan> = work
        .iter()
        .map(|work| match work {
            Work::Grant(posting) if posting.amount == 0 || !customers.contains_key(&posting.customer_id) => Plan::Alone,
            Work::Grant(posting) => {
                postings.push(posting.clone());
                Plan::Grant(postings.len() - 1)
            }
            Work::Fix(fix) => {
                let key = (fix.customer_id, fix.fix_id.clone());
                if !customers.contains_key(&fix.customer_id)
                    || charged.contains(&key)
                    || !seen_fixes.insert(key.clone())
                {
                    Plan::Alone
                } else if let Some(record) = recorded.get(&key) {
                    Plan::Done(Outcome::done(details::duplicate(record)))
                } else {
                    postings.push(fix.debit(None));
                    Plan::Fix(postings.len() - 1)
                }
            }
        })
        .collect();

    let posted = ledger::post_many(&mut tx, &postings).await?;
    let mut consumed = Consumed::default();
    let mut decided = Vec::with_capacity(plans.len());
    for (plan, work) in plans.into_iter().zip(work) {
        decided.push(match (plan, work) {
            (Plan::Done(outcome), _) => Batched::Done(outcome),
            (Plan::Alone, _) => Batched::Alone,
            (Plan::Grant(i), _) => match &posted[i] {
                Ok(posted) => Batched::Done(super::grant_credits::outcome(*posted)),
                Err(_) => Batched::Alone,
            },
            (Plan::Fix(i), Work::Fix(fix)) => match &posted[i] {
                Ok(Posted::Posted { entry_id, balance_after }) => {
                    consumed.push(fix, *entry_id);
                    Batched::Done(Outcome::done(details::consumed(*balance_after)))
                }
                Ok(Posted::AlreadyPosted { entry_id }) => {
                    consumed.push(fix, *entry_id);
                    Batched::Done(Outcome::done(details::consumed_already_posted()))
                }
                Ok(Posted::InsufficientCredits { .. })
                    if charges && super::record_usage::can_be_charged(&customers[&fix.customer_id]) =>
                {
                    Batched::Alone
                }
                Ok(Posted::InsufficientCredits { .. }) => {
                    let code = refusal::NO_BILLING_INFO;
                    db::usage::record_refused(&mut *tx, fix.customer_id, &fix.fix_id, &fix.repo, code).await?;
                    Batched::Done(Outcome::done(details::refused(code)))
                }
                Err(_) => Batched::Alone,
            },
            (Plan::Fix(_), Work::Grant(_)) => unreachable!("a fix's plan is for a fix"),
        });
    }
    consumed.record(&mut tx).await?;
    // A test build can stop here: decided and written, not committed.
    fail::fail_point!("postings::before_commit", |_| Err(sqlx::Error::Protocol("failpoint: before commit".into())));
    tx.commit().await?;
    for (posting, posted) in postings.iter().zip(&posted) {
        if let Ok(Posted::Posted { .. }) = posted {
            ledger::count_posted(posting);
        }
    }
    Ok(decided)
}

/// Fixes paid by a credit in this batch, recorded in one insert.
#[derive(Default)]
struct Consumed {
    customers: Vec<Uuid>,
    fix_ids: Vec<String>,
    repos: Vec<String>,
    entries: Vec<i64>,
}

impl Consumed {
    fn push(&mut self, fix: &RecordUsage, entry_id: i64) {
        self.customers.push(fix.customer_id);
        self.fix_ids.push(fix.fix_id.clone());
        self.repos.push(fix.repo.clone());
        self.entries.push(entry_id);
    }

    async fn record(self, tx: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
        if self.customers.is_empty() {
            return Ok(());
        }
        db::usage::record_consumed_many(tx, &self.customers, &self.fix_ids, &self.repos, &self.entries).await
    }
}

impl Work {
    fn customer_id(&self) -> Uuid {
        match self {
            Self::Grant(posting) => posting.customer_id,
            Self::Fix(fix) => fix.customer_id,
        }
    }

    fn fix(&self) -> Option<&RecordUsage> {
        match self {
            Self::Fix(fix) => Some(fix),
            Self::Grant(_) => None,
        }
    }
}

impl Batched {
    /// For a job's `run`: the batch's outcome, `None` to run alone, or the failed attempt.
    pub fn done(self) -> Result<Option<Outcome>, crate::queue::JobError> {
        match self {
            Self::Done(outcome) => Ok(Some(outcome)),
            Self::Alone => Ok(None),
            Self::Lost => Err(crate::queue::JobError::new("the batch's outcome was lost; the retry finds it")),
        }
    }
}

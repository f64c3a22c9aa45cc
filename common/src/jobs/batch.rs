//! Group commit for the ledger's jobs: the grants and fix debits one claim takes are
//! decided and posted in the claim's own transaction, with one durable commit.
//!
//! # Why
//!
//! A grant or a fix debit is a handful of statements and one durable commit
//! (`synchronous_commit` stays on: it moves money). Run one job per transaction, the
//! commit and the round trips around it bound the ledger at a few thousand postings a
//! second however many jobs run at once. These kinds settle their claims ([`settler`],
//! `queue::settle`): the due jobs a claim locks are decided together — customers locked
//! in id order, each posting under its own idempotency key and the non-negative rule
//! (`ledger::post_many`) — and the jobs decided are completed in the same transaction,
//! so a settled job's row is written twice (inserted, completed) instead of three times,
//! and its completion commits with its posting.
//!
//! # What stays with the job
//!
//! A batch decides only the common cases: a grant, a fix paid by a credit, a fix
//! recorded before, a fix refused for want of credits and card. Anything else — a fix
//! with a charge, one to be charged, a customer not there yet, a grant of nothing or one
//! the balance cannot take — is left to the worker, which runs the job's own path,
//! unchanged; nothing is written for it here. A batch whose transaction fails leaves
//! every job to the worker (the claim is retried the ordinary way), so a poison posting
//! fails its own job alone (with its own retries), never its neighbours.

use std::collections::{HashMap, HashSet};

use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::JobContext;
use super::record_usage::{RecordUsage, details, refusal};
use crate::db;
use crate::ledger::{self, Posted, Posting};
use crate::queue::Outcome;
use crate::queue::settle::{self, Claimed, Settled, Settler};

/// A job's work as a batch takes it.
#[derive(Debug)]
pub(crate) enum Work {
    Grant(Posting),
    Fix(RecordUsage),
}

/// What settles the claims of kind `J`, whose jobs' work a batch takes as `work` says;
/// none with `JOB_BATCH_POSTINGS=false`, where each job runs in a transaction of its own.
pub(crate) fn settler<J: DeserializeOwned + 'static>(ctx: &JobContext, work: fn(J) -> Work) -> Option<Settler> {
    // Whether a fix that finds no credit may be charged (Stripe is configured), in which
    // case it is left to the worker.
    let charges = ctx.stripe.is_some();
    ctx.settings.jobs.batch_postings.then(|| settle::settler(move |tx, jobs| Box::pin(settle(tx, jobs, work, charges))))
}

async fn settle<J: DeserializeOwned>(
    tx: &mut sqlx::PgConnection,
    jobs: &[Claimed],
    work: fn(J) -> Work,
    charges: bool,
) -> Result<Settled, sqlx::Error> {
    // The store has checked that the args decode (one that does not is left alone).
    let mut batch = Vec::with_capacity(jobs.len());
    let taken: Vec<bool> = jobs
        .iter()
        .map(|job| match <J as serde::Deserialize>::deserialize(&job.args).ok().map(work) {
            Some(work) => {
                batch.push(work);
                true
            }
            None => false,
        })
        .collect();
    let Decided { answers, posted } = decide(tx, &batch, charges).await?;
    let mut answers = answers.into_iter();
    let done = taken
        .into_iter()
        .map(|taken| match taken.then(|| answers.next()).flatten() {
            Some(Some(Outcome::Done { detail })) => Some(detail),
            // A grant the balance cannot take is cancelled by its own run, which finds
            // the same; nothing was written for it here.
            _ => None,
        })
        .collect();
    Ok(Settled { done, after_commit: Some(Box::new(move || posted.iter().for_each(ledger::count_posted))) })
}

/// A batch decided in its transaction: each job's outcome (`None`: left to the worker,
/// nothing written for it), and the postings made, to be counted once committed.
struct Decided {
    answers: Vec<Option<Outcome>>,
    posted: Vec<Posting>,
}

/// How one job's work stands while its batch is decided.
enum Plan {
    Done(Outcome),
    Alone,
    /// Its posting is `postings[i]`.
    Grant(usize),
    Fix(usize),
}

/// Decides a batch in `tx`, leaving nothing written for a job it leaves to the worker.
async fn decide(tx: &mut sqlx::PgConnection, work: &[Work], charges: bool) -> Result<Decided, sqlx::Error> {
    // A customer held elsewhere (an operator's long transaction) must not hold up the
    // batch's other customers: past this wait the batch fails and its jobs run alone.
    sqlx::query("SET LOCAL lock_timeout = '2s'").execute(&mut *tx).await?;
    // The lookups below join the batch's keys against tables that grow (see
    // `db::planned_for_arguments`); the postings after them run the ledger's triggers
    // once per entry, and keep their cached plans.
    db::planned_for_arguments(&mut *tx).await?;
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
    db::cached_plans(&mut *tx).await?;

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

    let posted = ledger::post_many(&mut *tx, &postings).await?;
    let mut consumed = Consumed::default();
    let mut decided = Vec::with_capacity(plans.len());
    for (plan, work) in plans.into_iter().zip(work) {
        decided.push(match (plan, work) {
            (Plan::Done(outcome), _) => Some(outcome),
            (Plan::Alone, _) => None,
            (Plan::Grant(i), _) => match &posted[i] {
                Ok(posted) => Some(super::grant_credits::outcome(*posted)),
                Err(_) => None,
            },
            (Plan::Fix(i), Work::Fix(fix)) => match &posted[i] {
                Ok(Posted::Posted { entry_id, balance_after }) => {
                    consumed.push(fix, *entry_id);
                    Some(Outcome::done(details::consumed(*balance_after)))
                }
                Ok(Posted::AlreadyPosted { entry_id }) => {
                    consumed.push(fix, *entry_id);
                    Some(Outcome::done(details::consumed_already_posted()))
                }
                Ok(Posted::InsufficientCredits { .. })
                    if charges && super::record_usage::can_be_charged(&customers[&fix.customer_id]) =>
                {
                    None
                }
                Ok(Posted::InsufficientCredits { .. }) => {
                    let code = refusal::NO_BILLING_INFO;
                    db::usage::record_refused(&mut *tx, fix.customer_id, &fix.fix_id, &fix.repo, code).await?;
                    Some(Outcome::done(details::refused(code)))
                }
                Err(_) => None,
            },
            (Plan::Fix(_), Work::Grant(_)) => unreachable!("a fix's plan is for a fix"),
        });
    }
    consumed.record(&mut *tx).await?;
    let posted = postings
        .into_iter()
        .zip(&posted)
        .filter_map(|(posting, posted)| matches!(posted, Ok(Posted::Posted { .. })).then_some(posting))
        .collect();
    Ok(Decided { answers: decided, posted })
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

//! The job backbone: retries with persisted backoff, dead jobs, unique and
//! transactional enqueue, poison jobs, and every job kind's idempotency.

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::domain::{ApiKey, CustomerName, Email};
use common::jobs::{GrantCredits, ProvisionCustomer, RecordUsage, SignInLinkNotSent};
use common::queue::{self, EnqueueOptions, Enqueued, Job, JobKind, JobStatus, Outcome, testing};
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{
    TestApp, assert_ledger_consistent, grant, hold_customer_row, release_after, wait_for, wait_for_kind_finished,
};

async fn job(app: &TestApp, id: i64) -> testing::JobRow {
    testing::require_job(&app.db.pool, id).await
}

#[tokio::test]
async fn a_failing_job_backs_off_between_attempts_then_dies_with_its_errors() {
    let app = TestApp::spawn(&[("JOB_BACKOFF_BASE_MS", "400")], true).await;
    // A grant for a customer that does not exist fails on every attempt.
    let enqueued = queue::enqueue_with(
        &app.db.pool,
        &grant(Uuid::new_v4(), "doomed", 5),
        EnqueueOptions { max_attempts: Some(3), ..Default::default() },
    )
    .await
    .unwrap();
    let Enqueued::Inserted(id) = enqueued else { panic!("inserted") };

    // After the first failure the next run is persisted in the future, not now.
    let app_ref = &app;
    wait_for("the first failure", Duration::from_secs(10), || async move {
        let job = job(app_ref, id).await;
        job.attempts >= 1 && job.status != JobStatus::Running
    })
    .await;
    let after_first = job(&app, id).await;
    assert_eq!(after_first.status, JobStatus::Retryable);
    let first_failed_at = after_first.errors[0].at;
    let delay = after_first.run_at - first_failed_at;
    assert!(
        delay >= chrono::Duration::milliseconds(300) && delay <= chrono::Duration::milliseconds(400),
        "first backoff {delay}"
    );

    wait_for(
        "the job to die",
        Duration::from_secs(15),
        || async move { job(app_ref, id).await.status == JobStatus::Dead },
    )
    .await;
    let dead = job(&app, id).await;
    assert_eq!(dead.attempts, 3);
    let errors = &dead.errors;
    assert_eq!(errors.len(), 3, "every attempt's error is kept: {errors:?}");
    let at: Vec<DateTime<Utc>> = errors.iter().map(|e| e.at).collect();
    for (i, error) in errors.iter().enumerate() {
        assert_eq!(error.attempt as usize, i + 1);
        assert!(error.error.contains("does not exist"), "{error:?}");
    }
    // Exponential: ~400 ms then ~800 ms (75-100% jitter), never at once.
    assert!(at[1] - at[0] >= chrono::Duration::milliseconds(300), "second attempt came too soon");
    assert!(at[2] - at[1] >= chrono::Duration::milliseconds(600), "third attempt came too soon");
    // A dead job gives its unique key back: the work can be submitted again.
    assert!(matches!(
        queue::enqueue(&app.db.pool, &grant(Uuid::new_v4(), "doomed", 5)).await.unwrap(),
        Enqueued::Inserted(_)
    ));
}

#[tokio::test]
async fn a_duplicate_enqueue_is_a_detectable_no_op() {
    let app = TestApp::api_only().await;
    let job = grant(Uuid::new_v4(), "once", 1);
    assert!(matches!(queue::enqueue(&app.db.pool, &job).await.unwrap(), Enqueued::Inserted(_)));
    assert_eq!(queue::enqueue(&app.db.pool, &job).await.unwrap(), Enqueued::Duplicate);
    assert_eq!(testing::count_all(&app.db.pool).await, 1);
}

#[tokio::test]
async fn enqueue_joins_the_callers_transaction() {
    let app = TestApp::api_only().await;
    let mut tx = app.db.pool.begin().await.unwrap();
    queue::enqueue(&mut *tx, &grant(Uuid::new_v4(), "rolled-back", 1)).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(testing::count_all(&app.db.pool).await, 0, "a rolled-back job never existed");

    let mut tx = app.db.pool.begin().await.unwrap();
    queue::enqueue(&mut *tx, &grant(Uuid::new_v4(), "committed", 1)).await.unwrap();
    assert_eq!(testing::count_all(&app.db.pool).await, 0, "invisible before commit");
    tx.commit().await.unwrap();
    assert_eq!(testing::count_all(&app.db.pool).await, 1);
}

#[tokio::test]
async fn a_poison_job_dies_at_once_and_does_not_block_its_queue() {
    let app = TestApp::with_worker().await;
    let (customer_id, _) = app.onboarded_customer("poison@example.com").await;
    sqlx::query("INSERT INTO jobs (kind, args) VALUES ('grant_credits', '{\"not\": \"a grant\"}')")
        .execute(&app.db.pool)
        .await
        .unwrap();
    queue::enqueue(&app.db.pool, &grant(customer_id, "after-poison", 3)).await.unwrap();
    wait_for_kind_finished(&app.db.pool, "grant_credits", Duration::from_secs(10)).await;
    let grants: Vec<_> =
        testing::all_jobs(&app.db.pool).await.into_iter().filter(|j| j.kind == "grant_credits").collect();
    assert_eq!(grants[0].status, JobStatus::Dead);
    assert!(grants[0].errors[0].error.contains("do not decode"));
    assert_eq!(grants[1].status, JobStatus::Completed);
    let balance: i64 =
        sqlx::query_scalar("SELECT credit_balance FROM customers").fetch_one(&app.db.pool).await.unwrap();
    assert_eq!(balance, 8);
}

#[tokio::test]
async fn a_job_that_can_never_succeed_is_cancelled_not_retried() {
    let app = TestApp::with_worker().await;
    let (customer_id, _) = app.onboarded_customer("overdraw@example.com").await;
    queue::enqueue(&app.db.pool, &grant(customer_id, "overdraw", -6)).await.unwrap();
    wait_for_kind_finished(&app.db.pool, "grant_credits", Duration::from_secs(10)).await;
    let job = testing::require_inserted::<GrantCredits>(&app.db.pool).await;
    assert_eq!((job.status, job.attempts), (JobStatus::Cancelled, 1));
    assert_ledger_consistent(&app.db.pool).await;
}

#[tokio::test]
async fn every_job_kind_is_idempotent_run_twice_or_raced() {
    let app = TestApp::api_only().await;
    let ctx = app.job_context();

    // Provision: twice in a row and twice at once → one customer, one key, one entry.
    let key = ApiKey::generate();
    let provision = ProvisionCustomer {
        customer_id: Uuid::new_v4(),
        name: CustomerName::parse("Twice").unwrap(),
        email: Email::parse("twice@example.com").unwrap(),
        source: None,
        api_key_hash: key.hash(),
        api_key_prefix: key.display_prefix(),
    };
    let (a, b) = tokio::join!(provision.clone().run(ctx.clone()), provision.clone().run(ctx.clone()));
    assert!(matches!(a.unwrap(), Outcome::Done { .. }) && matches!(b.unwrap(), Outcome::Done { .. }));
    assert!(matches!(provision.clone().run(ctx.clone()).await.unwrap(), Outcome::Done { .. }));
    assert_eq!(app.count("SELECT count(*) FROM customers").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM api_keys").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM credit_ledger").await, 1);
    let customer_id = provision.customer_id;

    // Grant: ten racing runs of one grant → one posting.
    let g = grant(customer_id, "bonus-1", 10);
    let runs = futures::future::join_all((0..10).map(|_| g.clone().run(ctx.clone()))).await;
    assert!(runs.into_iter().all(|r| matches!(r, Ok(Outcome::Done { .. }))));
    assert_eq!(app.count("SELECT count(*) FROM credit_ledger WHERE idempotency_key = 'bonus-1'").await, 1);

    // Record usage: ten racing runs of one fix → one debit, one record.
    let fix = RecordUsage { customer_id, fix_id: "fix-1".into(), repo: "org/repo".into(), metadata: Value::Null };
    let runs = futures::future::join_all((0..10).map(|_| fix.clone().run(ctx.clone()))).await;
    assert!(runs.into_iter().all(|r| matches!(r, Ok(Outcome::Done { .. }))));
    assert!(matches!(fix.clone().run(ctx.clone()).await.unwrap(), Outcome::Done { .. }));
    assert_eq!(app.count("SELECT count(*) FROM credit_ledger WHERE source = 'fix_deployed'").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM usage_fixes").await, 1);

    let balance: i64 =
        sqlx::query_scalar("SELECT credit_balance FROM customers").fetch_one(&app.db.pool).await.unwrap();
    assert_eq!(balance, 5 + 10 - 1);
    assert_ledger_consistent(&app.db.pool).await;
}

#[tokio::test]
async fn the_ledger_refuses_to_go_negative_even_outside_our_code() {
    let app = TestApp::with_worker().await;
    let (customer_id, _) = app.onboarded_customer("check@example.com").await;
    let result = sqlx::query("UPDATE customers SET credit_balance = credit_balance - 6 WHERE id = $1")
        .bind(customer_id)
        .execute(&app.db.pool)
        .await;
    assert!(result.is_err(), "the CHECK constraint holds");
    let edit = sqlx::query("UPDATE credit_ledger SET amount = 50").execute(&app.db.pool).await;
    assert!(edit.is_err(), "the ledger is append-only");
}

#[tokio::test]
async fn shutdown_lets_a_running_job_finish() {
    let mut app = TestApp::with_worker().await;
    let (customer_id, _) = app.onboarded_customer("drain@example.com").await;
    // Hold the customer's row so the grant blocks mid-job.
    let blocker = hold_customer_row(&app.db.pool, customer_id).await;
    queue::enqueue(&app.db.pool, &grant(customer_id, "in-flight", 2)).await.unwrap();
    // Wait until the job is really executing: its transaction waits for our lock.
    let pool = app.db.pool.clone();
    wait_for("the grant to block on the customer's row", Duration::from_secs(10), || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
                == 1
        }
    })
    .await;
    let release = release_after(blocker, Duration::from_millis(300));
    app.stop_worker().await;
    release.await.unwrap();
    let status = testing::require_inserted::<GrantCredits>(&app.db.pool).await.status;
    assert_eq!(status, JobStatus::Completed, "the in-flight job finished and was acknowledged before shutdown ended");
    assert_eq!(app.count("SELECT credit_balance FROM customers").await, 7);
}

#[tokio::test]
async fn a_running_job_its_live_worker_no_longer_holds_is_given_back() {
    let app = TestApp::with_worker().await;
    let (customer_id, _) = app.onboarded_customer("lost-ack@example.com").await;
    let pool = app.db.pool.clone();
    let worker_of_kind = || async {
        sqlx::query_scalar::<_, String>("SELECT name FROM job_workers WHERE kind = 'grant_credits'")
            .fetch_optional(&pool)
            .await
            .unwrap()
    };
    wait_for("the grant worker to register", Duration::from_secs(10), || async { worker_of_kind().await.is_some() })
        .await;
    let worker = worker_of_kind().await.unwrap();
    let balance_before = app.count("SELECT credit_balance FROM customers").await;
    // A grant the live worker claimed a minute ago whose acknowledgement never reached
    // the table (given up on, or lost with a Postgres crash): `running` under a worker
    // that heartbeats, so orphan rescue would never look at it.
    let args = serde_json::to_value(grant(customer_id, "lost-ack", 5)).unwrap();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO jobs (kind, args, status, attempts, locked_by, locked_at)
         VALUES ('grant_credits', $1, 'running', 1, $2, now() - interval '1 minute') RETURNING id",
    )
    .bind(&args)
    .bind(&worker)
    .fetch_one(&app.db.pool)
    .await
    .unwrap();

    let app_ref = &app;
    wait_for("the lost job to be given back and run", Duration::from_secs(15), || async move {
        job(app_ref, id).await.status == JobStatus::Completed
    })
    .await;
    let row = job(&app, id).await;
    assert!(
        row.errors.iter().any(|e| e.error.contains("lost track of the job")),
        "the give-back is in its history: {:?}",
        row.errors
    );
    assert_eq!(row.attempts, 2);
    assert_eq!(app.count("SELECT credit_balance FROM customers").await, balance_before + 5);
}

#[tokio::test]
async fn shutdown_gives_back_the_jobs_claimed_but_not_started() {
    // Each started grant in a transaction of its own, so that each one blocks visibly
    // (batched, they would wait on one or two batches' transactions).
    let mut app = TestApp::spawn(&[("JOB_BATCH_POSTINGS", "false")], true).await;
    let (customer_id, _) = app.onboarded_customer("buffered@example.com").await;
    let balance_before = app.count("SELECT credit_balance FROM customers").await;
    // Hold the customer's row: the grants that start (ten slots) block on it, and twenty
    // more (two per slot: runs that do not finish keep a worker at its least) wait in the
    // worker's buffer, `running` under its name but not started; the other ten stay in
    // the queue.
    let blocker = hold_customer_row(&app.db.pool, customer_id).await;
    let jobs = 40;
    app.stop_worker().await;
    for n in 0..jobs {
        queue::enqueue(&app.db.pool, &grant(customer_id, &format!("buffered-{n}"), 1)).await.unwrap();
    }
    app.start_worker();
    let pool = app.db.pool.clone();
    wait_for("thirty grants claimed, ten of them blocked", Duration::from_secs(10), || {
        let pool = pool.clone();
        async move {
            let running = testing::count(&pool, Some("grant_credits"), &[JobStatus::Running]).await;
            let blocked: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            running == 30 && blocked == 10
        }
    })
    .await;
    let release = release_after(blocker, Duration::from_millis(300));
    app.stop_worker().await;
    release.await.unwrap();

    let rows = testing::inserted::<GrantCredits>(&app.db.pool).await;
    let completed = rows.iter().filter(|job| job.status == JobStatus::Completed).count() as i64;
    let given_back: Vec<_> = rows.iter().filter(|job| job.status == JobStatus::Available).collect();
    assert_eq!(completed, 10, "the started grants finished and were acknowledged");
    assert_eq!(given_back.len() as i64, jobs - 10, "the rest went back to waiting: {rows:?}");
    assert!(
        given_back.iter().all(|job| job.attempts == 0 && job.errors.is_empty()),
        "a job never started keeps its attempt and has no error: {given_back:?}"
    );
    assert_eq!(app.count("SELECT credit_balance FROM customers").await, balance_before + 10);
}

#[tokio::test]
async fn a_kind_whose_jobs_are_quick_is_claimed_in_batches_larger_than_two_per_slot() {
    // Two slots: held to two waiting jobs per slot, every claim would take two to four.
    let mut app = TestApp::spawn(&[("JOB_SIGN_IN_LINK_NOT_SENT_CONCURRENCY", "2")], false).await;
    let jobs = 3_000_i64;
    let mut tx = app.db.pool.begin().await.unwrap();
    for _ in 0..jobs {
        queue::enqueue(&mut *tx, &SignInLinkNotSent { request: Uuid::new_v4() }).await.unwrap();
    }
    tx.commit().await.unwrap();
    app.start_worker();
    let pool = app.db.pool.clone();
    wait_for("every job to complete", Duration::from_secs(60), || {
        let pool = pool.clone();
        async move { testing::count(&pool, Some(SignInLinkNotSent::KIND), &[JobStatus::Completed]).await == jobs }
    })
    .await;
    // The jobs of one claim share its time (a completion keeps it).
    let (claims, largest): (i64, i64) = sqlx::query_as(
        "SELECT count(*), max(n) FROM (SELECT count(*) AS n FROM jobs WHERE kind = $1 GROUP BY locked_at) c",
    )
    .bind(SignInLinkNotSent::KIND)
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    // Held to two per slot, a claim takes at most four.
    assert!(largest > 4, "{jobs} quick jobs took {claims} claims of at most {largest}: two per slot");
    // Still bounded: twenty per slot.
    assert!(largest <= 2 * queue::MOST_AHEAD as i64, "a claim of {largest} jobs at concurrency 2");
}

async fn inserted(app: &TestApp, job: &common::jobs::GrantCredits) -> i64 {
    match queue::enqueue(&app.db.pool, job).await.unwrap() {
        Enqueued::Inserted(id) => id,
        Enqueued::Duplicate => panic!("a fresh job"),
    }
}

#[tokio::test]
async fn a_run_that_overruns_its_timeout_is_stopped_retried_and_frees_its_slot() {
    let app =
        TestApp::spawn(&[("JOB_GRANT_CREDITS_TIMEOUT_MS", "300"), ("JOB_GRANT_CREDITS_CONCURRENCY", "1")], true).await;
    let (stuck, _) = app.onboarded_customer("stuck@example.com").await;
    let (other, _) = app.onboarded_customer("free@example.com").await;
    // The grant waits for the customer's row, longer than its kind allows.
    let held = hold_customer_row(&app.db.pool, stuck).await;
    let stuck_job = inserted(&app, &grant(stuck, "stuck-grant", 2)).await;
    wait_for("the stuck run to time out", Duration::from_secs(10), || async {
        !job(&app, stuck_job).await.errors.is_empty()
    })
    .await;
    let timed_out = job(&app, stuck_job).await;
    assert!(timed_out.errors[0].error.contains("timed out after 300 ms"), "{:?}", timed_out);

    // One slot for the kind, and it is free again: another grant runs meanwhile.
    let free_job = inserted(&app, &grant(other, "free-grant", 1)).await;
    wait_for("the other grant to complete", Duration::from_secs(10), || async {
        job(&app, free_job).await.status == JobStatus::Completed
    })
    .await;
    assert_ne!(job(&app, stuck_job).await.status, JobStatus::Completed);

    held.rollback().await.unwrap();
    wait_for("the stuck grant to complete once its row is free", Duration::from_secs(20), || async {
        job(&app, stuck_job).await.status == JobStatus::Completed
    })
    .await;
    assert_eq!(app.customer(stuck).await.credit_balance, 5 + 2, "granted once");
    assert_ledger_consistent(&app.db.pool).await;
}

/// Holds the first two runs of grant jobs after their effect: the first until `first`
/// is notified, the second until `second` is, and then fails it with `second_error`.
/// Returns how many runs have reached the hold.
fn hold_two_grant_runs(
    first: &std::sync::Arc<tokio::sync::Notify>,
    second: &std::sync::Arc<tokio::sync::Notify>,
    second_error: &'static str,
) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let hits = Arc::new(AtomicUsize::new(0));
    let (counted, first_gate, second_gate) = (hits.clone(), first.clone(), second.clone());
    queue::hooks::hold_after_run(
        "grant_credits",
        Arc::new(move || {
            let hit = counted.fetch_add(1, Ordering::SeqCst);
            let (first, second) = (first_gate.clone(), second_gate.clone());
            Box::pin(async move {
                match hit {
                    0 => first.notified().await,
                    1 => {
                        second.notified().await;
                        return Err(second_error.to_owned());
                    }
                    _ => {}
                }
                Ok(())
            })
        }),
    );
    hits
}

/// Whether the worker has ignored a stale result of a grant job.
fn stale_grant_acks() -> bool {
    common::telemetry::metrics::handle()
        .render()
        .lines()
        .any(|l| l.starts_with("rsolv_jobs_stale_acks_total{kind=\"grant_credits\"}"))
}

#[tokio::test]
async fn a_stalled_runs_result_never_finishes_a_newer_attempt_of_its_job() {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use tokio::sync::Notify;

    // Grants run by the worker, one by one: settled in their claim, they would never
    // reach the hook that stalls a run.
    let app = TestApp::spawn(&[("JOB_BATCH_POSTINGS", "false")], true).await;
    let (customer, _) = app.onboarded_customer("stalled@example.com").await;
    // The first run stalls after its effect, before its result is reported; the second
    // run (a newer attempt of the same job, claimed by the same worker) stalls too and
    // then fails.
    let (first, second) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let hits = hold_two_grant_runs(&first, &second, "the newer attempt fails");

    let id = inserted(&app, &grant(customer, "stalled-grant", 3)).await;
    wait_for("the first run to stall", Duration::from_secs(10), || async { hits.load(Ordering::SeqCst) == 1 }).await;
    // A sibling's heartbeat takes the worker for dead and rescues the job, as
    // RESCUE_ORPHANS does; the same worker then claims it again.
    sqlx::query(
        "UPDATE jobs SET status = 'retryable', locked_by = NULL, run_at = now(),
             errors = errors || jsonb_build_array(jsonb_build_object(
                 'attempt', attempts, 'at', now(), 'error', 'rescued from a stalled worker'))
         WHERE id = $1 AND status = 'running' AND attempts = 1",
    )
    .bind(id)
    .execute(&app.db.pool)
    .await
    .unwrap();
    wait_for("the newer attempt to run", Duration::from_secs(10), || async { hits.load(Ordering::SeqCst) == 2 }).await;
    assert_eq!((job(&app, id).await.status, job(&app, id).await.attempts), (JobStatus::Running, 2));

    // The stalled run reports success: the newer attempt is still running, untouched.
    first.notify_one();
    wait_for("the stale result to be written or ignored", Duration::from_secs(10), || async {
        stale_grant_acks() || job(&app, id).await.status != JobStatus::Running
    })
    .await;
    let row = job(&app, id).await;
    assert_eq!((row.status.as_str(), row.attempts), ("running", 2), "the stale run finished nothing: {row:?}");

    // The newer attempt's failure is what counts; the job retries and completes.
    second.notify_one();
    wait_for("the job to complete on its third attempt", Duration::from_secs(20), || async {
        job(&app, id).await.status == JobStatus::Completed
    })
    .await;
    let row = job(&app, id).await;
    assert_eq!(row.attempts, 3);
    assert!(row.errors.iter().any(|e| e.error.contains("the newer attempt fails")), "{:?}", row.errors);
    assert_eq!(app.count("SELECT count(*) FROM credit_ledger WHERE idempotency_key = 'stalled-grant'").await, 1);
    queue::hooks::clear("grant_credits");
}

#[tokio::test]
async fn a_job_statement_stuck_in_postgres_is_ended_by_the_statement_timeout() {
    let app = TestApp::spawn(&[("JOB_STATEMENT_TIMEOUT_MS", "300")], true).await;
    let (customer, _) = app.onboarded_customer("stuck-statement@example.com").await;
    let held = hold_customer_row(&app.db.pool, customer).await;
    let id = inserted(&app, &grant(customer, "stuck-statement", 1)).await;
    wait_for("the stuck statement to be cancelled by Postgres", Duration::from_secs(10), || async {
        !job(&app, id).await.errors.is_empty()
    })
    .await;
    let row = job(&app, id).await;
    assert!(row.errors[0].error.contains("statement timeout"), "{row:?}");
    held.rollback().await.unwrap();
    wait_for("the grant to complete", Duration::from_secs(20), || async {
        job(&app, id).await.status == JobStatus::Completed
    })
    .await;
}

#[tokio::test]
async fn a_stalled_runs_result_never_finishes_the_same_attempt_number_after_a_redrive() {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use tokio::sync::Notify;

    // Grants run by the worker, one by one: settled in their claim, they would never
    // reach the hook that stalls a run.
    let app = TestApp::spawn(&[("JOB_BATCH_POSTINGS", "false")], true).await;
    let (customer, _) = app.onboarded_customer("redriven-stall@example.com").await;
    let (first, second) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let hits = hold_two_grant_runs(&first, &second, "the redriven run fails");
    let job_args = grant(customer, "redriven-stall", 2);
    let Enqueued::Inserted(id) =
        queue::enqueue_with(&app.db.pool, &job_args, EnqueueOptions { max_attempts: Some(1), ..Default::default() })
            .await
            .unwrap()
    else {
        panic!("a fresh job")
    };
    wait_for("the first run to stall", Duration::from_secs(10), || async { hits.load(Ordering::SeqCst) == 1 }).await;
    // Rescued to dead (its one attempt spent), then redriven by an operator: attempts
    // start again at 0, and the same worker claims it as attempt 1 once more.
    sqlx::query("UPDATE jobs SET status = 'dead', locked_by = NULL, finished_at = now() WHERE id = $1")
        .bind(id)
        .execute(&app.db.pool)
        .await
        .unwrap();
    queue::admin::redrive(&app.db.pool, id, "test").await.unwrap();
    wait_for("the redriven run to start", Duration::from_secs(10), || async { hits.load(Ordering::SeqCst) == 2 }).await;
    assert_eq!((job(&app, id).await.status, job(&app, id).await.attempts), (JobStatus::Running, 1));

    first.notify_one();
    wait_for("the stale result to be written or ignored", Duration::from_secs(10), || async {
        stale_grant_acks() || job(&app, id).await.status != JobStatus::Running
    })
    .await;
    let row = job(&app, id).await;
    assert_eq!((row.status.as_str(), row.attempts), ("running", 1), "the stale run finished nothing: {row:?}");
    second.notify_one();
    wait_for("the redriven run's failure to count", Duration::from_secs(10), || async {
        job(&app, id).await.status == JobStatus::Dead
    })
    .await;
    assert!(job(&app, id).await.errors.iter().any(|e| e.error.contains("the redriven run fails")));
    queue::hooks::clear("grant_credits");
}

/// A burst right after a bulk insert: the statistics still say no job runs. Writing
/// 2,000 results against 20,000 claims must touch those 2,000 rows, not compare every
/// result with every claim (a nested loop that took 11.7 s per batch in the bench and
/// held a worker's whole queue `running` meanwhile). Checked on the plan Postgres keeps
/// for the prepared statement, by the rows it discarded rather than by a timing.
#[tokio::test]
async fn acknowledging_a_burst_compares_each_result_with_its_own_claim_only() {
    let db = crate::helpers::TestDb::fresh().await;
    let pool = &db.pool;
    sqlx::query("INSERT INTO jobs (kind, args) SELECT 'plan_probe', jsonb_build_object('n', g) FROM generate_series(1, 20000) g")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("ANALYZE jobs").execute(pool).await.unwrap();
    let claimed: Vec<(i64, Value, i32, DateTime<Utc>)> = sqlx::query_as(queue::statements::CLAIM)
        .bind("plan_probe")
        .bind(20_000_i64)
        .bind("probe-worker")
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 20_000);

    let acks = &claimed[..2_000];
    let ids: Vec<i64> = acks.iter().map(|c| c.0).collect();
    let attempts: Vec<i32> = acks.iter().map(|c| c.2).collect();
    let claimed_at: Vec<DateTime<Utc>> = acks.iter().map(|c| c.3).collect();
    let mut conn = pool.acquire().await.unwrap();
    // The plan a worker's connection keeps for its prepared statement: generic, made
    // without looking at the arrays, as sqlx's statement cache ends up using.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET plan_cache_mode = force_generic_plan; PREPARE complete AS {}",
        queue::statements::COMPLETE
    )))
    .execute(&mut *conn)
    .await
    .unwrap();
    // EXECUTE takes no bound parameters: its arguments are literals.
    fn array<T: ToString>(values: impl Iterator<Item = T>) -> String {
        format!("'{{{}}}'", values.map(|v| format!("\"{}\"", v.to_string())).collect::<Vec<_>>().join(","))
    }
    let execute = format!(
        "EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE complete({}, {}, {}, array_fill('{{}}'::jsonb, ARRAY[{}]), 'probe-worker')",
        array(ids.iter()),
        array(attempts.iter()),
        array(claimed_at.iter().map(|at| at.to_rfc3339())),
        ids.len(),
    );
    let (plan,): (Value,) = sqlx::query_as(sqlx::AssertSqlSafe(execute)).fetch_one(&mut *conn).await.unwrap();

    fn discarded(node: &Value) -> f64 {
        node["Rows Removed by Join Filter"].as_f64().unwrap_or(0.0)
            + node["Plans"].as_array().map_or(0.0, |plans| plans.iter().map(discarded).sum())
    }
    let discarded = discarded(&plan[0]["Plan"]);
    assert!(discarded <= acks.len() as f64, "{discarded} rows compared and thrown away: {plan}");
    let completed = testing::count(pool, None, &[JobStatus::Completed]).await;
    assert_eq!(completed, 2_000, "every result was written");
}

/// `JobStatus` is the one mapping of the `jobs.status` column: the values its CHECK
/// allows are exactly the enum's, and each decodes from a row and binds as a filter.
#[tokio::test]
async fn job_statuses_in_rust_are_exactly_those_the_table_allows() {
    let db = crate::helpers::TestDb::fresh().await;
    let ours = queue::JobStatus::ALL.iter().map(|status| status.as_str());
    assert_eq!(crate::helpers::allowed_by_check(&db.pool, "jobs_status_check").await, sorted(ours));

    for status in queue::JobStatus::ALL {
        let id: i64 =
            sqlx::query_scalar("INSERT INTO jobs (kind, args, status) VALUES ('probe', '{}', $1) RETURNING id")
                .bind(status)
                .fetch_one(&db.pool)
                .await
                .unwrap();
        let read: queue::JobStatus =
            sqlx::query_scalar("SELECT status FROM jobs WHERE id = $1").bind(id).fetch_one(&db.pool).await.unwrap();
        assert_eq!(read, status);
    }
}

fn sorted<'a>(values: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut values: Vec<String> = values.map(str::to_owned).collect();
    values.sort_unstable();
    values
}

/// The plan tier, Stripe's subscription states, email deliveries and fix outcomes are
/// each mapped once, as their table allows.
#[tokio::test]
async fn customer_delivery_and_fix_states_in_rust_are_exactly_those_the_tables_allow() {
    use common::domain::{SubscriptionState as State, SubscriptionType as Type};
    let db = crate::helpers::TestDb::fresh().await;
    let types = [Type::Trial, Type::PayAsYouGo, Type::Pro];
    let states = [
        State::Incomplete,
        State::IncompleteExpired,
        State::Trialing,
        State::Active,
        State::PastDue,
        State::Canceled,
        State::Unpaid,
        State::Paused,
    ];
    assert_eq!(
        crate::helpers::allowed_by_check(&db.pool, "customers_subscription_type_check").await,
        sorted(types.iter().map(|t| t.as_str()))
    );
    assert_eq!(
        crate::helpers::allowed_by_check(&db.pool, "customers_subscription_state_check").await,
        sorted(states.iter().map(|s| s.as_str()))
    );
    use common::db::{email_deliveries::DeliveryStatus, usage::FixOutcome};
    assert_eq!(
        crate::helpers::allowed_by_check(&db.pool, "email_deliveries_status_check").await,
        sorted(DeliveryStatus::ALL.iter().map(|s| s.as_str()))
    );
    assert_eq!(
        crate::helpers::allowed_by_check(&db.pool, "usage_fixes_outcome_check").await,
        sorted(FixOutcome::ALL.iter().map(|s| s.as_str()))
    );
    assert_eq!(
        crate::helpers::allowed_by_check(&db.pool, "charges_status_check").await,
        sorted(common::db::charges::ChargeStatus::ALL.iter().map(|s| s.as_str()))
    );
    for (kind, state) in types.iter().zip(states) {
        let read: (Type, Option<State>) =
            sqlx::query_as("SELECT $1::text, $2::text").bind(kind).bind(state).fetch_one(&db.pool).await.unwrap();
        assert_eq!(read, (*kind, Some(state)));
    }
}

/// The contract step that drops `jobs_by_unique_key` waits for its replacement: with
/// `jobs_given_back_keys` INVALID (a concurrent build interrupted), the migrations stop
/// with the repair to run and drop nothing (so too when it is missing); once it is
/// rebuilt they drop the old index, even one an interrupted drop left INVALID, and a
/// dead job's key is still found by key.
#[tokio::test]
async fn the_old_key_index_is_dropped_only_once_its_replacement_is_valid() {
    let db = crate::helpers::TestDb::fresh().await;
    let exists = |name: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, bool>("SELECT to_regclass($1) IS NOT NULL")
                .bind(name)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert!(!exists("jobs_by_unique_key").await, "dropped by the migrations");
    // The database as the previous release left it, its last build interrupted.
    for statement in [
        "CREATE INDEX jobs_by_unique_key ON jobs (kind, unique_key) WHERE unique_key IS NOT NULL",
        "UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'jobs_given_back_keys'::regclass",
        "DELETE FROM _sqlx_migrations WHERE version >= 20261203000001",
    ] {
        sqlx::query(statement).execute(&db.pool).await.unwrap();
    }
    // Each run in a pool of its own, as each process has: a run that fails leaves sqlx's
    // migration lock with its connection, which the process's exit releases.
    let migrate = || async {
        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        let migrated = common::db::migrate(&pool).await;
        pool.close().await;
        migrated
    };
    let stopped = migrate().await.expect_err("the migrations stop");
    assert!(
        format!("{stopped:?}").contains("REINDEX INDEX CONCURRENTLY jobs_given_back_keys"),
        "the error names the repair: {stopped:?}"
    );
    assert!(exists("jobs_by_unique_key").await, "nothing dropped");

    // Missing altogether, the error gives the statement that makes it.
    sqlx::query("DROP INDEX jobs_given_back_keys").execute(&db.pool).await.unwrap();
    let stopped = migrate().await.expect_err("the migrations stop");
    assert!(format!("{stopped:?}").contains("CREATE INDEX CONCURRENTLY jobs_given_back_keys"), "{stopped:?}");
    assert!(exists("jobs_by_unique_key").await, "nothing dropped");

    sqlx::query("CREATE INDEX jobs_given_back_keys ON jobs (kind, unique_key) WHERE unique_key IS NOT NULL AND status IN ('dead', 'cancelled')")
        .execute(&db.pool)
        .await
        .unwrap();
    // The old index as an interrupted drop leaves it (INVALID): the run again drops it.
    sqlx::query("UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'jobs_by_unique_key'::regclass")
        .execute(&db.pool)
        .await
        .unwrap();
    migrate().await.expect("the migrations finish");
    assert!(!exists("jobs_by_unique_key").await);
    let customer = Uuid::new_v4();
    let job = queue::enqueue(&db.pool, &crate::helpers::fix(customer, "dead-fix")).await.unwrap();
    let Enqueued::Inserted(id) = job else { panic!("{job:?}") };
    sqlx::query("UPDATE jobs SET status = 'dead' WHERE id = $1").bind(id).execute(&db.pool).await.unwrap();
    let key = RecordUsage::unique_key_for(customer, "dead-fix");
    let found = queue::by_unique_key(&db.pool, RecordUsage::KIND, &key).await.unwrap().expect("found by its key");
    assert_eq!((found.id, found.status), (id, JobStatus::Dead));
}

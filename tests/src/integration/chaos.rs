//! Faults: a worker killed with SIGKILL in the middle of 5,000 mixed jobs.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::domain::{Email, LedgerSource};
use common::factories::{self, CustomerState};
use common::jobs::{GrantCredits, ProcessStripeEvent, RecordUsage};
use common::queue;
use common::stripe::events::{Handled, Simulated};
use serde_json::Value;

use crate::helpers::{PRO_PRICE, TestApp, assert_ledger_consistent, binary, wait_for};

fn worker(db_url: &str) -> Child {
    Command::new(binary("rsolv-worker"))
        .env("DATABASE_URL", db_url)
        .env("JOB_POLL_INTERVAL_MS", "100")
        .env("JOB_HEARTBEAT_MS", "300")
        .env("JOB_ORPHAN_AFTER_MS", "1500")
        .env("JOB_BACKOFF_BASE_MS", "100")
        .env("STRIPE_PRO_PRICE_ID", PRO_PRICE)
        .env("METRICS_ADDR", "off")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("worker starts")
}

async fn count(app: &TestApp, sql: &'static str) -> i64 {
    app.count(sql).await
}

#[tokio::test]
async fn a_worker_killed_during_five_thousand_mixed_jobs_loses_and_doubles_nothing() {
    let app = TestApp::api_only().await;
    let mut customers = Vec::new();
    for n in 0..20 {
        let email = Email::parse(&format!("chaos{n}@example.com")).unwrap();
        customers
            .push(factories::create(&app.db.pool, &app.settings, CustomerState::Pro, email).await.unwrap().customer_id);
    }
    let entries_before = count(&app, "SELECT count(*) FROM credit_ledger").await;

    // 2,000 grants, 2,000 fixes and 1,000 paid-invoice webhooks, spread over the customers.
    let mut tx = app.db.pool.begin().await.unwrap();
    for i in 0..5_000usize {
        let customer_id = customers[i % customers.len()];
        match i % 5 {
            0 | 1 => {
                let grant = GrantCredits {
                    customer_id,
                    amount: 1,
                    source: LedgerSource::Adjustment,
                    idempotency_key: format!("chaos-grant-{i}"),
                    metadata: Value::Null,
                };
                queue::enqueue(&mut *tx, &grant).await.unwrap();
            }
            2 | 3 => {
                let fix = RecordUsage {
                    customer_id,
                    fix_id: format!("chaos-fix-{i}"),
                    repo: "org/repo".into(),
                    metadata: Value::Null,
                };
                queue::enqueue(&mut *tx, &fix).await.unwrap();
            }
            _ => {
                let c = common::db::customers::find(&mut *tx, customer_id).await.unwrap().unwrap();
                let mut sim = Simulated::new(
                    c.stripe_customer_id.as_deref().unwrap(),
                    c.stripe_subscription_id.as_deref().unwrap(),
                    PRO_PRICE,
                    59_900,
                );
                sim.event_id = format!("evt_chaos_{i}");
                sim.invoice_id = format!("in_chaos_{i}");
                let event = sim.event(Handled::InvoicePaymentSucceeded);
                let job = ProcessStripeEvent {
                    event_id: sim.event_id.clone(),
                    event_type: Handled::InvoicePaymentSucceeded.as_str().into(),
                    created: sim.created,
                    payload: event,
                };
                queue::enqueue(&mut *tx, &job).await.unwrap();
            }
        }
    }
    tx.commit().await.unwrap();

    let mut first = worker(&app.db.url);
    wait_for("a fifth of the jobs to be done", Duration::from_secs(60), || async {
        count(&app, "SELECT count(*) FROM jobs WHERE status = 'completed'").await >= 1_000
    })
    .await;
    first.kill().unwrap();
    first.wait().unwrap();
    let killed_at = Instant::now();
    let unfinished =
        count(&app, "SELECT count(*) FROM jobs WHERE status IN ('available', 'running', 'retryable')").await;
    assert!(unfinished > 0, "the kill came mid-way");

    let mut second = worker(&app.db.url);
    wait_for("every job to finish", Duration::from_secs(90), || async {
        count(&app, "SELECT count(*) FROM jobs WHERE status IN ('available', 'running', 'retryable')").await == 0
    })
    .await;
    let recovery = killed_at.elapsed();
    let _ = second.kill();
    let _ = second.wait();
    assert!(recovery < Duration::from_secs(60), "recovered in {recovery:?}");

    let not_done: Vec<(String, String, Value)> =
        sqlx::query_as("SELECT kind, status, errors FROM jobs WHERE status <> 'completed'")
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    assert!(
        not_done.iter().all(|(_, status, errors)| status == "dead" && errors.as_array().is_some_and(|e| !e.is_empty())),
        "only dead jobs with a reason: {not_done:?}"
    );
    assert!(not_done.is_empty(), "nothing should die here: {not_done:?}");

    // Every effect exactly once.
    assert_eq!(
        count(&app, "SELECT count(*) FROM credit_ledger WHERE idempotency_key LIKE 'chaos-grant-%'").await,
        2_000
    );
    assert_eq!(count(&app, "SELECT count(*) FROM usage_fixes WHERE fix_id LIKE 'chaos-fix-%'").await, 2_000);
    let consumed =
        count(&app, "SELECT count(*) FROM usage_fixes WHERE fix_id LIKE 'chaos-fix-%' AND outcome = 'consumed'").await;
    assert_eq!(
        count(&app, "SELECT count(*) FROM credit_ledger WHERE metadata->>'fix_id' LIKE 'chaos-fix-%'").await,
        consumed
    );
    assert_eq!(
        count(&app, "SELECT count(*) FROM credit_ledger WHERE idempotency_key LIKE 'pro_invoice:in_chaos_%'").await,
        1_000
    );
    assert_eq!(count(&app, "SELECT count(*) FROM billing_events WHERE event_id LIKE 'evt_chaos_%'").await, 1_000);
    let entries = count(&app, "SELECT count(*) FROM credit_ledger").await;
    assert_eq!(entries, entries_before + 2_000 + consumed + 1_000, "no posting duplicated or missing");
    assert_ledger_consistent(&app.db.pool).await;
}

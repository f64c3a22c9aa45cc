//! Real worker processes: a worker killed with SIGKILL mid-job loses nothing.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::domain::LedgerSource;
use common::jobs::GrantCredits;
use common::queue;

use crate::helpers::{TestApp, assert_ledger_consistent, binary, wait_for};

struct WorkerProcess(Child);

impl WorkerProcess {
    fn start(db_url: &str) -> Self {
        let child = Command::new(binary("rsolv-worker"))
            .env("DATABASE_URL", db_url)
            .env("JOB_POLL_INTERVAL_MS", "100")
            .env("JOB_HEARTBEAT_MS", "300")
            .env("JOB_ORPHAN_AFTER_MS", "1500")
            .env("JOB_BACKOFF_BASE_MS", "100")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("worker starts");
        Self(child)
    }

    fn kill(&mut self) {
        self.0.kill().expect("SIGKILL sent");
        self.0.wait().unwrap();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_job_of_a_killed_worker_is_rescued_and_takes_effect_once() {
    let app = TestApp::with_worker().await;
    let (customer_id, _) = app.onboarded_customer("crash@example.com").await;
    let mut app = app;
    app.stop_worker().await;

    // Hold the customer's row: the first worker's grant blocks in the middle of its
    // transaction, and is then killed there.
    let mut blocker = app.db.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM customers WHERE id = $1 FOR UPDATE")
        .bind(customer_id)
        .execute(&mut *blocker)
        .await
        .unwrap();
    let job = GrantCredits {
        customer_id,
        amount: 3,
        source: LedgerSource::Adjustment,
        idempotency_key: "survives-a-crash".into(),
        metadata: serde_json::Value::Null,
    };
    queue::enqueue(&app.db.pool, &job).await.unwrap();

    let mut first = WorkerProcess::start(&app.db.url);
    let pool = app.db.pool.clone();
    let holder = || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, Option<String>>(
                "SELECT locked_by FROM jobs WHERE kind = 'grant_credits' AND status = 'running'",
            )
            .fetch_optional(&pool)
            .await
            .unwrap()
            .flatten()
        }
    };
    wait_for("the first worker to take the job", Duration::from_secs(15), || async { holder().await.is_some() }).await;
    let first_holder = holder().await.unwrap();
    first.kill();
    blocker.rollback().await.unwrap();

    let _second = WorkerProcess::start(&app.db.url);
    wait_for("the rescued job to complete", Duration::from_secs(20), || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT status FROM jobs WHERE kind = 'grant_credits'")
                .fetch_one(&pool)
                .await
                .unwrap()
                == "completed"
        }
    })
    .await;

    let (attempts, errors): (i32, serde_json::Value) =
        sqlx::query_as("SELECT attempts, errors FROM jobs WHERE kind = 'grant_credits'")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(attempts, 2, "the killed attempt counts");
    assert!(errors[0]["error"].as_str().unwrap().contains(&first_holder), "the rescue names the lost worker: {errors}");
    assert_eq!(app.count("SELECT count(*) FROM credit_ledger WHERE idempotency_key = 'survives-a-crash'").await, 1);
    assert_eq!(app.count("SELECT credit_balance FROM customers").await, 8);
    assert_ledger_consistent(&app.db.pool).await;
}

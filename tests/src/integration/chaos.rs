//! Faults: a worker killed with SIGKILL in the middle of 5,000 mixed jobs, Stripe down,
//! Postgres restarted under traffic, and Postgres crashing under job load.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::domain::Email;
use common::factories::{self, CustomerState};
use common::jobs::CreateStripeCustomer;
use common::jobs::{ProcessStripeEvent, RecordUsage};
use common::queue;
use common::queue::JobStatus;
use common::queue::testing;
use common::stripe::events::Handled;
use common::stripe::simulated::Simulated;
use serde_json::Value;

use crate::helpers::{PRO_PRICE, Process, TestApp, assert_ledger_consistent, grant, wait_for};

fn worker(db_url: &str) -> Process {
    Process::worker(db_url, &[("STRIPE_PRO_PRICE_ID", PRO_PRICE), ("METRICS_ADDR", "off")])
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
                queue::enqueue(&mut *tx, &grant(customer_id, &format!("chaos-grant-{i}"), 1)).await.unwrap();
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
        testing::count(&app.db.pool, None, &[JobStatus::Completed]).await >= 1_000
    })
    .await;
    first.kill();
    let killed_at = Instant::now();
    let unfinished = testing::count_unfinished(&app.db.pool).await;
    assert!(unfinished > 0, "the kill came mid-way");

    let second = worker(&app.db.url);
    wait_for("every job to finish", Duration::from_secs(90), || async {
        testing::count_unfinished(&app.db.pool).await == 0
    })
    .await;
    let recovery = killed_at.elapsed();
    drop(second);
    assert!(recovery < Duration::from_secs(60), "recovered in {recovery:?}");

    let not_done: Vec<_> = testing::all_jobs(&app.db.pool)
        .await
        .into_iter()
        .filter(|job| job.status != JobStatus::Completed)
        .map(|job| (job.id, job.kind, job.status, job.errors))
        .collect();
    assert!(not_done.is_empty(), "nothing should die or be left here: {not_done:?}");

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

/// A localstripe of this test's own, to take down and bring back.
pub(crate) struct OwnStripe {
    pub(crate) port: u16,
    child: Option<Child>,
}

impl OwnStripe {
    /// A port nothing listens on yet. Not one from the kernel's ephemeral range, which
    /// the other tests' servers (bound to port 0) draw from: one of them could take it
    /// while Stripe is meant to be down, and answer in its place.
    pub(crate) fn reserved() -> Self {
        let port = (0..1_000)
            .map(|_| 20_000 + (uuid::Uuid::new_v4().as_u128() % 10_000) as u16)
            .find(|port| std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok())
            .expect("a free port below the ephemeral range");
        Self { port, child: None }
    }

    pub(crate) fn base(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    pub(crate) async fn up(&mut self) {
        let python =
            std::path::PathBuf::from(std::env::var("TEST_PYTHON").expect("TEST_PYTHON is unset: run scripts/test"));
        let localstripe = python.with_file_name("localstripe");
        let child = Command::new(localstripe)
            .args(["--port", &self.port.to_string(), "--from-scratch"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("localstripe starts");
        self.child = Some(child);
        let client = reqwest::Client::new();
        let url = format!("{}v1/plans", self.base());
        wait_for("localstripe", Duration::from_secs(30), || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let answer = client.get(&url).basic_auth(crate::helpers::STRIPE_KEY, Some("")).send().await;
                answer.is_ok_and(|r| r.status().is_success())
            }
        })
        .await;
    }

    async fn customers_tagged(&self, customer_id: uuid::Uuid) -> usize {
        let list: Value = reqwest::Client::new()
            .get(format!("{}v1/customers?limit=100", self.base()))
            .basic_auth(crate::helpers::STRIPE_KEY, Some(""))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["metadata"]["rsolv_customer_id"] == customer_id.to_string())
            .count()
    }
}

impl Drop for OwnStripe {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test]
async fn while_stripe_is_down_billing_jobs_retry_and_complete_once_it_is_back() {
    let mut stripe = OwnStripe::reserved();
    let base = stripe.base();
    let app =
        TestApp::spawn(&[("STRIPE_SECRET_KEY", crate::helpers::STRIPE_KEY), ("STRIPE_API_BASE", base.as_str())], true)
            .await;
    let (customer, key) = app.onboarded_customer("outage@example.com").await;
    let pool = app.db.pool.clone();
    wait_for("the Stripe customer job to fail twice", Duration::from_secs(15), || {
        let pool = pool.clone();
        async move { testing::require_inserted::<CreateStripeCustomer>(&pool).await.errors.len() >= 2 }
    })
    .await;
    let job = testing::require_inserted::<CreateStripeCustomer>(&app.db.pool).await;
    assert!(job.status.is_unfinished(), "retried with backoff, not dead: {}", job.status);
    assert!(job.run_at > chrono::Utc::now() - chrono::Duration::seconds(10));
    assert!(app.customer(customer).await.stripe_customer_id.is_none());

    stripe.up().await;
    wait_for("the Stripe customer", Duration::from_secs(30), || async {
        app.customer(customer).await.stripe_customer_id.is_some()
    })
    .await;
    assert_eq!(stripe.customers_tagged(customer).await, 1, "created once at Stripe");

    // A card added now is attached once and credited once.
    let added = app.add_card(&key, "pm_card_visa").await;
    assert_eq!(added["status"], "succeeded");
    assert_eq!(app.balance(customer).await, 10);
    assert_ledger_consistent(&app.db.pool).await;
}

/// A Postgres server of this test's own (the system's binaries), to restart at will.
pub(crate) struct OwnPostgres {
    bin: std::path::PathBuf,
    dir: std::path::PathBuf,
    port: u16,
}

impl OwnPostgres {
    fn as_postgres(program: std::path::PathBuf) -> Command {
        // initdb and postgres refuse to run as root.
        if unsafe_is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    pub(crate) fn start_new() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("the system's Postgres binaries")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("initdb").exists())
            .max()
            .expect("initdb");
        let dir = std::env::temp_dir().join(format!("rsolv-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        if unsafe_is_root() {
            assert!(Command::new("chown").arg("postgres").arg(&dir).status().unwrap().success());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let initdb = Self::as_postgres(bin.join("initdb"))
            .args(["-D"])
            .arg(dir.join("data"))
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(initdb.success(), "initdb");
        let server = Self { bin, dir, port };
        server.ctl("start");
        server
    }

    pub(crate) fn ctl(&self, action: &str) {
        let options =
            format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200", self.port, self.dir.display());
        let status = Self::as_postgres(self.bin.join("pg_ctl"))
            .args(["-D"])
            .arg(self.dir.join("data"))
            .args(["-w", "-m", "fast", "-o", &options, "-l"])
            .arg(self.dir.join("server.log"))
            .arg(action)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "pg_ctl {action}");
    }

    /// Stops the server the way a crash does: no checkpoint, no flush of commits that
    /// did not wait for the disk; the next start replays the log.
    fn crash(&self) {
        let status = Self::as_postgres(self.bin.join("pg_ctl"))
            .args(["-D"])
            .arg(self.dir.join("data"))
            .args(["-w", "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "pg_ctl stop -m immediate");
    }

    pub(crate) fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = Self::as_postgres(self.bin.join("pg_ctl"))
            .args(["-D"])
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn unsafe_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

#[tokio::test]
async fn a_postgres_restart_under_traffic_gives_503s_then_recovers_and_loses_no_acknowledged_webhook() {
    let postgres = OwnPostgres::start_new();
    let db = crate::helpers::TestDb::fresh_on(&postgres.admin_url()).await;
    let app = TestApp::spawn_on(
        db,
        &[
            ("DATABASE_ACQUIRE_TIMEOUT_MS", "1000"),
            ("STRIPE_WEBHOOK_SECRET", crate::helpers::WEBHOOK_SECRET),
            ("STRIPE_PRO_PRICE_ID", PRO_PRICE),
        ],
        true,
    )
    .await;
    let seeded = factories::create(
        &app.db.pool,
        &app.settings,
        CustomerState::Pro,
        Email::parse("restart@example.com").unwrap(),
    )
    .await
    .unwrap();
    let customer = common::db::customers::find(&app.db.pool, seeded.customer_id).await.unwrap().unwrap();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().unwrap();

    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let traffic = {
        let (client, base) = (client.clone(), app.address.clone());
        let (stripe_customer, subscription) =
            (customer.stripe_customer_id.clone().unwrap(), customer.stripe_subscription_id.clone().unwrap());
        tokio::spawn(async move {
            let mut results = Vec::new(); // (what, status, took, id)
            let mut n = 0;
            while !*stop_rx.borrow_and_update() {
                n += 1;
                let started = Instant::now();
                let onboard = client
                    .post(format!("{base}/api/v1/customers/onboard"))
                    .json(&serde_json::json!({ "name": "Traffic", "email": format!("traffic{n}@example.com") }))
                    .send()
                    .await;
                let status = onboard.as_ref().map(|r| r.status().as_u16()).unwrap_or(0);
                let body: Value = match onboard {
                    Ok(r) => r.json().await.unwrap_or(Value::Null),
                    Err(_) => Value::Null,
                };
                results.push((
                    "onboard",
                    status,
                    started.elapsed(),
                    body["customer_id"].as_str().unwrap_or_default().to_owned(),
                    body,
                ));

                let mut sim = Simulated::new(&stripe_customer, &subscription, PRO_PRICE, 59_900);
                sim.event_id = format!("evt_restart_{n}");
                sim.invoice_id = format!("in_restart_{n}");
                let payload = serde_json::to_vec(&sim.event(Handled::InvoicePaymentSucceeded)).unwrap();
                let signature = common::stripe::signature::sign(
                    &payload,
                    crate::helpers::WEBHOOK_SECRET,
                    chrono::Utc::now().timestamp(),
                );
                let started = Instant::now();
                let webhook = client
                    .post(format!("{base}/api/webhooks/stripe"))
                    .header("content-type", "application/json")
                    .header("stripe-signature", signature)
                    .body(payload)
                    .send()
                    .await;
                let status = webhook.as_ref().map(|r| r.status().as_u16()).unwrap_or(0);
                let body: Value = match webhook {
                    Ok(r) => r.json().await.unwrap_or(Value::Null),
                    Err(_) => Value::Null,
                };
                results.push(("webhook", status, started.elapsed(), sim.event_id.clone(), body));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            results
        })
    };

    tokio::time::sleep(Duration::from_millis(800)).await;
    postgres.ctl("stop");
    tokio::time::sleep(Duration::from_secs(3)).await;
    postgres.ctl("start");
    // Both the API and the in-process worker must come back on their own.
    let pool = app.db.pool.clone();
    let address = app.address.clone();
    wait_for("the API to be ready again", Duration::from_secs(30), || {
        let (client, address) = (client.clone(), address.clone());
        async move { client.get(format!("{address}/ready")).send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop_tx.send(true).unwrap();
    let results = traffic.await.unwrap();

    for (what, status, took, _, body) in &results {
        assert!(*took < Duration::from_secs(10), "{what} hung for {took:?}");
        match status {
            200 | 202 => {}
            503 => assert_eq!(body["error"]["code"], "SERVICE_UNAVAILABLE", "{what}: {body}"),
            other => panic!("{what} answered {other}: {body}"),
        }
    }
    assert!(results.iter().any(|r| r.1 == 503), "the outage was seen by requests");
    assert!(results.iter().rev().take(4).all(|r| r.1 == 200 || r.1 == 202), "traffic recovered");

    // Every acknowledged webhook and onboarding is processed.
    let acknowledged: Vec<String> =
        results.iter().filter(|r| r.0 == "webhook" && r.1 == 200).map(|r| r.3.clone()).collect();
    let onboarded: Vec<uuid::Uuid> =
        results.iter().filter(|r| r.0 == "onboard" && r.1 == 202).map(|r| r.3.parse().unwrap()).collect();
    wait_for("every acknowledged webhook and onboarding to be processed", Duration::from_secs(60), || {
        let (pool, acknowledged, onboarded) = (pool.clone(), acknowledged.clone(), onboarded.clone());
        async move {
            let events: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM billing_events WHERE event_id = ANY($1) AND processed_at IS NOT NULL",
            )
            .bind(&acknowledged)
            .fetch_one(&pool)
            .await
            .unwrap_or(-1);
            let customers: i64 = sqlx::query_scalar("SELECT count(*) FROM customers WHERE id = ANY($1)")
                .bind(&onboarded)
                .fetch_one(&pool)
                .await
                .unwrap_or(-1);
            events == acknowledged.len() as i64 && customers == onboarded.len() as i64
        }
    })
    .await;
    assert_ledger_consistent(&app.db.pool).await;
}

#[tokio::test]
async fn a_postgres_crash_under_job_load_loses_no_job_and_applies_none_twice() {
    // Claims and acknowledgements commit without waiting for the disk, so a crash may
    // lose the last of them: lost claims run again, lost acknowledgements are given back
    // by their (live) worker. Either way every grant must post exactly once.
    let postgres = OwnPostgres::start_new();
    let db = crate::helpers::TestDb::fresh_on(&postgres.admin_url()).await;
    let app = TestApp::spawn_on(db, &[("DATABASE_ACQUIRE_TIMEOUT_MS", "1000")], true).await;
    let mut customers = Vec::new();
    for n in 0..5 {
        let email = Email::parse(&format!("crash{n}@example.com")).unwrap();
        customers.push(
            factories::create(&app.db.pool, &app.settings, CustomerState::Trial, email).await.unwrap().customer_id,
        );
    }
    let balances = "SELECT sum(credit_balance)::bigint FROM customers";
    let before = app.count(balances).await;
    let grants = 3_000;
    let args: Vec<Value> = (0..grants)
        .map(|i| serde_json::to_value(grant(customers[i % customers.len()], &format!("crash-{i}"), 1)).unwrap())
        .collect();
    sqlx::query("INSERT INTO jobs (kind, args) SELECT 'grant_credits', a FROM UNNEST($1::jsonb[]) AS a")
        .bind(&args)
        .execute(&app.db.pool)
        .await
        .unwrap();
    let pool = app.db.pool.clone();
    // A read that fails while Postgres is down counts as none done.
    let completed = move |pool: sqlx::PgPool| async move {
        testing::try_count(&pool, Some("grant_credits"), &[JobStatus::Completed]).await.unwrap_or(-1)
    };
    wait_for("the grants to be under way", Duration::from_secs(30), || {
        let pool = pool.clone();
        async move { completed(pool).await >= 300 }
    })
    .await;

    postgres.crash();
    postgres.ctl("start");

    wait_for("every grant to complete after the crash", Duration::from_secs(90), || {
        let pool = pool.clone();
        async move { completed(pool).await == grants as i64 }
    })
    .await;
    assert_eq!(app.count(balances).await, before + grants as i64, "each grant posted exactly once");
    let entries = app.count("SELECT count(*) FROM credit_ledger WHERE idempotency_key LIKE 'crash-%'").await;
    assert_eq!(entries, grants as i64);
    assert_ledger_consistent(&app.db.pool).await;
}

#[tokio::test]
async fn a_stripe_call_that_never_answers_is_timed_out_and_retried() {
    // A "Stripe" that accepts connections and never answers.
    let black_hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/", black_hole.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = black_hole.accept().await {
            held.push(socket);
        }
    });
    let app = TestApp::spawn(
        &[
            ("STRIPE_SECRET_KEY", "sk_test_black_hole"),
            ("STRIPE_API_BASE", base.as_str()),
            ("STRIPE_TIMEOUT_MS", "300"),
        ],
        true,
    )
    .await;
    app.onboarded_customer("hung-stripe@example.com").await;
    let pool = app.db.pool.clone();
    wait_for("the hung Stripe call to fail its attempt", Duration::from_secs(15), || {
        let pool = pool.clone();
        async move {
            let job = testing::require_inserted::<CreateStripeCustomer>(&pool).await;
            job.status != JobStatus::Running && !job.errors.is_empty()
        }
    })
    .await;
    let job = testing::require_inserted::<CreateStripeCustomer>(&app.db.pool).await;
    let (status, error) = (job.status, &job.errors[0]);
    assert!(status.is_unfinished(), "retried, not dead: {status}");
    assert!(
        !error.contains("JOB_CREATE_STRIPE_CUSTOMER_TIMEOUT_MS"),
        "Stripe's own timeout ended it, not the run's: {error}"
    );
}

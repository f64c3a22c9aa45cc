//! Real worker processes: a worker killed with SIGKILL mid-job loses nothing.

use std::process::Command;
use std::time::Duration;

use common::jobs::{GrantCredits, RenewalSweep, SendEmailStep};
use common::queue;
use common::queue::JobStatus;
use common::queue::testing;

use crate::helpers::{
    MAX_CONNECTIONS, Process, TestApp, assert_ledger_consistent, binary, grant, hold_customer_row, our_command,
    wait_for,
};

#[tokio::test]
async fn a_job_of_a_killed_worker_is_rescued_and_takes_effect_once() {
    let app = TestApp::with_worker().await;
    let (customer_id, _) = app.onboarded_customer("crash@example.com").await;
    let mut app = app;
    app.stop_worker().await;

    // Hold the customer's row: the first worker's grant blocks in the middle of its
    // transaction, and is then killed there.
    let blocker = hold_customer_row(&app.db.pool, customer_id).await;
    queue::enqueue(&app.db.pool, &grant(customer_id, "survives-a-crash", 3)).await.unwrap();

    let mut first = Process::worker(&app.db.url, &[]);
    let pool = app.db.pool.clone();
    let holder = || {
        let pool = pool.clone();
        async move {
            let job = testing::require_inserted::<GrantCredits>(&pool).await;
            job.locked_by.filter(|_| job.status == JobStatus::Running)
        }
    };
    wait_for("the first worker to take the job", Duration::from_secs(15), || async { holder().await.is_some() }).await;
    let first_holder = holder().await.unwrap();
    first.kill();
    blocker.rollback().await.unwrap();

    let _second = Process::worker(&app.db.url, &[]);
    wait_for("the rescued job to complete", Duration::from_secs(20), || {
        let pool = pool.clone();
        async move { testing::require_inserted::<GrantCredits>(&pool).await.status == JobStatus::Completed }
    })
    .await;

    let job = testing::require_inserted::<GrantCredits>(&app.db.pool).await;
    assert_eq!(job.attempts, 2, "the killed attempt counts");
    let errors = &job.errors;
    assert!(errors[0].contains(&first_holder), "the rescue names the lost worker: {errors:?}");
    assert_eq!(app.count("SELECT count(*) FROM credit_ledger WHERE idempotency_key = 'survives-a-crash'").await, 1);
    assert_eq!(app.count("SELECT credit_balance FROM customers").await, 8);
    assert_ledger_consistent(&app.db.pool).await;
}

#[tokio::test]
async fn three_worker_processes_fire_one_renewal_sweep_per_tick_even_when_one_dies() {
    let app = TestApp::api_only().await;
    let every_second = [("RENEWAL_CRON", "* * * * * *")];
    let mut workers: Vec<Process> = (0..3).map(|_| Process::worker(&app.db.url, &every_second)).collect();
    let pool = app.db.pool.clone();
    let ticks = || {
        let pool = pool.clone();
        async move {
            let mut per_tick = std::collections::BTreeMap::<i64, i64>::new();
            for job in testing::inserted::<RenewalSweep>(&pool).await {
                *per_tick.entry(job.args.tick).or_default() += 1;
            }
            per_tick.into_iter().collect::<Vec<_>>()
        }
    };
    wait_for("three ticks", Duration::from_secs(20), || async { ticks().await.len() >= 3 }).await;
    let before_kill = ticks().await.last().unwrap().0;
    workers[0].kill();
    wait_for("three more ticks after a worker died", Duration::from_secs(20), || async {
        ticks().await.iter().filter(|(tick, _)| *tick > before_kill).count() >= 3
    })
    .await;
    wait_for("the sweeps to run", Duration::from_secs(20), || async {
        testing::count(&app.db.pool, Some("renewal_sweep"), &[JobStatus::Completed]).await >= 5
    })
    .await;
    drop(workers);

    let ticks = ticks().await;
    assert!(ticks.iter().all(|(_, jobs)| *jobs == 1), "one sweep per tick: {ticks:?}");
    let seconds: Vec<i64> = ticks.iter().map(|(tick, _)| *tick).collect();
    let (first, last) = (seconds[0], *seconds.last().unwrap());
    // Every second from the first tick to the last fired (the processes start a little
    // apart, so the very first may belong to one process alone; none is missing after).
    assert_eq!(seconds, (first..=last).collect::<Vec<_>>(), "no tick was skipped");
}

#[tokio::test]
async fn the_seed_command_creates_the_nine_states_with_working_keys() {
    let app = TestApp::api_only().await;
    let output = our_command("rsolv-worker", &app.db.url).arg("seed").output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(app.count("SELECT count(*) FROM customers").await, 9);
    let pro_key =
        stdout.lines().find(|l| l.starts_with("pro-partly-used")).and_then(|l| l.split_whitespace().last()).unwrap();
    let me: serde_json::Value = app.get_with_key("/api/v1/customers/me", pro_key).await.json().await.unwrap();
    assert_eq!(me["credit_balance"], 45);
    assert_ledger_consistent(&app.db.pool).await;
}

#[tokio::test]
async fn the_webhook_simulator_signs_and_posts_a_realistic_event() {
    let app = TestApp::with_worker_and_webhooks().await;
    let email = "simulated@example.com";
    let seeded = common::factories::create(
        &app.db.pool,
        &app.settings,
        common::factories::CustomerState::Pro,
        common::domain::Email::parse(email).unwrap(),
    )
    .await
    .unwrap();
    let mut simulate = our_command("rsolv-worker", &app.db.url);
    simulate
        .args(["simulate-webhook", "invoice.payment_succeeded", "--customer", email, "--url", &app.address])
        .env("STRIPE_WEBHOOK_SECRET", crate::helpers::WEBHOOK_SECRET)
        .env("STRIPE_PRO_PRICE_ID", crate::helpers::PRO_PRICE);
    // Waited for off the test's runtime: the API's group commits run on it.
    let output = tokio::task::spawn_blocking(move || simulate.output()).await.unwrap().unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    crate::helpers::wait_for_kind_finished(&app.db.pool, "process_stripe_event", Duration::from_secs(10)).await;
    let balance: i64 = sqlx::query_scalar("SELECT credit_balance FROM customers WHERE id = $1")
        .bind(seeded.customer_id)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(balance, 120, "the simulated paid invoice granted 60 more");
}

#[tokio::test]
async fn start_sequence_schedules_every_step_of_a_named_sequence() {
    let app = TestApp::api_only().await;
    let email = "nudge@example.com";
    common::factories::create(
        &app.db.pool,
        &app.settings,
        common::factories::CustomerState::Trial,
        common::domain::Email::parse(email).unwrap(),
    )
    .await
    .unwrap();
    // With email off nothing would send the steps: refused, nothing scheduled.
    let off = our_command("rsolv-worker", &app.db.url)
        .env_remove("SMTP_URL")
        .args(["start-sequence", "expiring_trial", "--customer", email])
        .output()
        .unwrap();
    assert!(!off.status.success());
    assert!(String::from_utf8_lossy(&off.stderr).contains("SMTP_URL is unset"), "{off:?}");
    testing::require_not_inserted::<SendEmailStep>(&app.db.pool).await;
    let output = our_command("rsolv-worker", &app.db.url)
        .env("SMTP_URL", "smtp://127.0.0.1:2525")
        .args(["start-sequence", "expiring_trial", "--customer", email])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let mut jobs = testing::inserted::<SendEmailStep>(&app.db.pool).await;
    jobs.sort_by_key(|job| job.run_at);
    let steps: Vec<String> = jobs.into_iter().map(|job| job.args.step).collect();
    assert_eq!(steps, ["credits_running_low", "trial_reminder", "last_call"]);
    let unknown = our_command("rsolv-worker", &app.db.url)
        .args(["start-sequence", "nonsense", "--customer", email])
        .output()
        .unwrap();
    assert!(!unknown.status.success(), "an unknown sequence is an error");
}

#[tokio::test]
async fn the_worker_process_serves_its_metrics() {
    let app = TestApp::api_only().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let token = "a-metrics-token-for-scrapers";
    let _worker = Process::worker(&app.db.url, &[("METRICS_ADDR", addr.as_str()), ("METRICS_TOKEN", token)]);
    let (customer, _) = app.onboarded_customer("worker-metrics@example.com").await;
    assert!(common::db::customers::exists(&app.db.pool, customer).await.unwrap());
    let url = format!("http://{addr}/metrics");
    let client = reqwest::Client::new();
    wait_for("the worker's metrics to show the job and the queues", Duration::from_secs(20), || {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let Ok(response) = client.get(&url).bearer_auth(token).send().await else { return false };
            let text = response.text().await.unwrap_or_default();
            text.contains("rsolv_jobs_succeeded_total{kind=\"provision_customer\"} 1")
                && text.contains("rsolv_queue_depth{queue=\"grant_credits\"}")
        }
    })
    .await;
    let anonymous = client.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), 401, "METRICS_TOKEN set: a scrape needs it");
    let wrong = client.get(&url).bearer_auth("a-guess").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
}

/// Runs a binary with `RUST_LOG=trace`, keeping everything it prints.
fn spawn_logged(name: &str, env: &[(&str, &str)], log: &std::path::Path) -> Process {
    let file = std::fs::File::create(log).unwrap();
    Process::spawn(
        Command::new(binary(name))
            .envs(env.iter().copied())
            .env("DATABASE_MAX_CONNECTIONS", MAX_CONNECTIONS)
            .env("RUST_LOG", "trace")
            .stdout(file.try_clone().unwrap())
            .stderr(file),
    )
}

#[tokio::test]
async fn no_secret_reaches_the_logs_at_any_level() {
    let app = TestApp::api_only().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let bind = format!("127.0.0.1:{port}");
    let stripe_key = "sk_test_LogSecretStripeKey0123456789";
    let webhook_secret = "whsec_log_secret_webhook_0123";
    let smtp_password = "LogSecretSmtpPassword0123";
    let admin_token = "LogSecretAdminToken0123456789";
    let smtp_url = format!("smtp://rsolv:{smtp_password}@127.0.0.1:1");
    let dir = std::env::temp_dir().join(format!("rsolv-logs-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let env = [
        ("DATABASE_URL", app.db.url.as_str()),
        ("BIND_ADDR", bind.as_str()),
        ("STRIPE_SECRET_KEY", stripe_key),
        ("STRIPE_API_BASE", "http://127.0.0.1:1/"),
        ("STRIPE_WEBHOOK_SECRET", webhook_secret),
        ("SMTP_URL", smtp_url.as_str()),
        ("ADMIN_TOKEN", admin_token),
        ("METRICS_ADDR", "off"),
        ("JOB_POLL_INTERVAL_MS", "100"),
        ("JOB_BACKOFF_BASE_MS", "100"),
    ];
    let api = spawn_logged("rsolv-api", &env, &dir.join("api.log"));
    let worker = spawn_logged("rsolv-worker", &env, &dir.join("worker.log"));
    let client = reqwest::Client::new();
    wait_for("the API", Duration::from_secs(20), || {
        let (client, base) = (client.clone(), base.clone());
        async move { client.get(format!("{base}/ready")).send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;

    // A full flow: onboard, use the key, report a fix, a webhook, an admin call, and
    // jobs that fail against the unreachable Stripe and SMTP (their errors are logged).
    let onboarded: serde_json::Value = client
        .post(format!("{base}/api/v1/customers/onboard"))
        .json(&serde_json::json!({ "name": "Quiet", "email": "quiet@example.com" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let raw_key = onboarded["api_key"].as_str().unwrap().to_owned();
    let pool = app.db.pool.clone();
    wait_for("provisioning", Duration::from_secs(20), || {
        let pool = pool.clone();
        async move { sqlx::query_scalar::<_, i64>("SELECT count(*) FROM customers").fetch_one(&pool).await.unwrap() == 1 }
    })
    .await;
    for path in ["/api/v1/customers/me", "/api/v1/api-keys"] {
        assert_eq!(
            client.get(format!("{base}{path}")).header("x-api-key", &raw_key).send().await.unwrap().status(),
            200
        );
    }
    let fix = client
        .post(format!("{base}/api/v1/usage/fixes"))
        .header("x-api-key", &raw_key)
        .json(&serde_json::json!({ "fix_id": "quiet-fix", "repo": "r" }))
        .send()
        .await
        .unwrap();
    assert_eq!(fix.status(), 202);
    let event = common::stripe::simulated::Simulated::new("cus_quiet", "sub_quiet", "price_x", 100)
        .event(common::stripe::events::Handled::InvoicePaymentSucceeded);
    let body = serde_json::to_vec(&event).unwrap();
    let signature = common::stripe::signature::sign(&body, webhook_secret, chrono::Utc::now().timestamp());
    let webhook = client
        .post(format!("{base}/api/webhooks/stripe"))
        .header("content-type", "application/json")
        .header("stripe-signature", &signature)
        .header("x-request-id", "webhook-trace-7")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(webhook.status(), 200);
    assert_eq!(
        client.get(format!("{base}/admin/api/queues")).bearer_auth(admin_token).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        client
            .get(format!("{base}/admin/api/queues"))
            .bearer_auth("wrong-token-xxxxxxxxxx")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    wait_for("Stripe and SMTP jobs to fail an attempt", Duration::from_secs(20), || {
        let pool = pool.clone();
        async move {
            let failed: std::collections::HashSet<String> = testing::all_jobs(&pool)
                .await
                .into_iter()
                .filter(|job| !job.errors.is_empty())
                .map(|job| job.kind)
                .collect();
            ["create_stripe_customer", "send_email_step", "process_stripe_event"].iter().all(|k| failed.contains(*k))
        }
    })
    .await;
    drop(api);
    drop(worker);

    let logs = std::fs::read_to_string(dir.join("api.log")).unwrap()
        + &std::fs::read_to_string(dir.join("worker.log")).unwrap();
    // A job's lines name the job they come from (colours stripped).
    let plain = logs
        .split('\x1b')
        .map(|part| part.split_once('m').filter(|_| part.starts_with('[')).map_or(part, |(_, rest)| rest))
        .collect::<String>();
    assert!(
        plain.lines().any(|l| l.contains("job{kind=create_stripe_customer job_id=") && l.contains("attempt=")),
        "job log lines carry the job's kind, id and attempt: {}",
        plain.lines().filter(|l| l.contains("job{")).take(5).collect::<Vec<_>>().join("\n")
    );
    // One grep follows the webhook from its request into the run of the job it caused.
    let traced: Vec<_> = plain.lines().filter(|l| l.contains("webhook-trace-7")).collect();
    assert!(traced.iter().any(|l| l.contains("request{request_id=webhook-trace-7")), "the request's lines");
    assert!(
        traced.iter().any(|l| l.contains("job{kind=process_stripe_event") && l.contains("request_id=webhook-trace-7")),
        "the job's lines name the request: {}",
        plain.lines().filter(|l| l.contains("job{kind=process_stripe_event")).take(3).collect::<Vec<_>>().join("\n")
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(logs.contains("TRACE") || logs.contains("DEBUG"), "logs were captured at every level");
    for (what, secret) in [
        ("the raw API key", raw_key.as_str()),
        ("the raw API key's body", &raw_key["rsolv_".len()..]),
        ("the Stripe secret key", stripe_key),
        ("the webhook secret", webhook_secret),
        ("the SMTP password", smtp_password),
        ("the admin token", admin_token),
    ] {
        assert!(!logs.contains(secret), "{what} appears in the logs");
    }
}

#[tokio::test]
async fn a_busy_process_claims_ahead_only_a_few_jobs_per_slot_and_a_killed_one_is_charged_for_those_only() {
    let app = TestApp::with_worker().await;
    let (customer_id, _) = app.onboarded_customer("claim-ahead@example.com").await;
    let mut app = app;
    app.stop_worker().await;
    // Every grant waits for the customer's row: the process's two slots stay busy.
    let blocker = hold_customer_row(&app.db.pool, customer_id).await;
    let jobs = 40;
    for i in 0..jobs {
        queue::enqueue(&app.db.pool, &grant(customer_id, &format!("ahead-{i}"), 1)).await.unwrap();
    }
    let concurrency = 2;
    let mut busy = Process::worker(&app.db.url, &[("JOB_GRANT_CREDITS_CONCURRENCY", "2")]);
    let claimed = || testing::count(&app.db.pool, Some("grant_credits"), &[JobStatus::Running]);
    wait_for("both slots to be busy", Duration::from_secs(15), || async { claimed().await >= concurrency }).await;
    busy.kill();
    // Nothing finishes while the row is held: what is running now is what the killed
    // process held, its two runs and what it had claimed ahead.
    let held = claimed().await;
    // Two running, and at most CLAIM_AHEAD (2) waiting per slot: runs that never finish
    // keep a worker at its least.
    assert!(held <= concurrency * 3, "{held} of {jobs} jobs claimed by a process with {concurrency} slots");
    blocker.rollback().await.unwrap();

    let _other = Process::worker(&app.db.url, &[]);
    wait_for("every grant to complete", Duration::from_secs(30), || async {
        testing::count(&app.db.pool, Some("grant_credits"), &[JobStatus::Completed]).await == jobs
    })
    .await;
    // An attempt is charged for the kill only to the jobs the process held. (Other failed
    // attempts, such as a pool timeout on a loaded machine, are charged as any failure.)
    let charged_for_the_kill = testing::inserted::<GrantCredits>(&app.db.pool)
        .await
        .iter()
        .flat_map(|job| &job.errors)
        .filter(|error| error.contains("stopped while running the job"))
        .count() as i64;
    assert!(charged_for_the_kill <= held, "{charged_for_the_kill} attempts charged for the kill; it held {held}");
    assert_eq!(app.count("SELECT credit_balance FROM customers").await, 5 + jobs);
    assert_ledger_consistent(&app.db.pool).await;
}

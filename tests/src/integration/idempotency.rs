//! `Idempotency-Key` on POSTs: one effect per key, replays, reuse refused, races,
//! across API processes, keys that belong to the customer and are checked before any
//! replay, and a claim left by an API process killed mid-request.

use std::process::Stdio;
use std::time::Duration;

use common::queue::testing;
use serde_json::{Value, json};

use crate::helpers::{Process, TestApp, our_command, wait_for};

async fn create_key(app: &TestApp, base: &str, key: &str, idempotency: &str, name: &str) -> reqwest::Response {
    app.client
        .post(format!("{base}/api/v1/api-keys"))
        .header("x-api-key", key)
        .header("idempotency-key", idempotency)
        .json(&json!({ "name": name }))
        .send()
        .await
        .unwrap()
}

async fn key_count(app: &TestApp) -> i64 {
    app.count("SELECT count(*) FROM api_keys").await
}

#[tokio::test]
async fn the_same_key_and_request_replays_the_first_response_with_no_second_effect() {
    let app = TestApp::with_worker().await;
    let (_, key) = app.onboarded_customer("idem@example.com").await;
    let first = create_key(&app, &app.address, &key, "create-ci-key-1", "ci").await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    assert!(first["api_key"].is_string());

    let second = create_key(&app, &app.address, &key, "create-ci-key-1", "ci").await;
    assert_eq!(second.status(), 201);
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    let second: Value = second.json().await.unwrap();
    assert_eq!(second["id"], first["id"]);
    assert!(second.get("api_key").is_none(), "a key is shown once, never replayed");
    assert_eq!(key_count(&app).await, 2, "one key created");

    let stored: String =
        sqlx::query_scalar("SELECT string_agg(encode(response_body, 'escape'), ' ') FROM idempotency_keys")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert!(!stored.contains(first["api_key"].as_str().unwrap()), "the raw key is not stored");

    let reused = create_key(&app, &app.address, &key, "create-ci-key-1", "another name").await;
    assert_eq!(reused.status(), 422);
    let body: Value = reused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(key_count(&app).await, 2);
}

#[tokio::test]
async fn concurrent_requests_with_one_key_have_one_effect() {
    let app = TestApp::with_worker().await;
    let (_, key) = app.onboarded_customer("racing@example.com").await;
    let responses =
        futures::future::join_all((0..8).map(|_| create_key(&app, &app.address, &key, "race-1", "race"))).await;
    let statuses: Vec<u16> = responses.iter().map(|r| r.status().as_u16()).collect();
    assert!(statuses.iter().all(|s| *s == 201 || *s == 409), "{statuses:?}");
    assert!(statuses.contains(&201));
    assert_eq!(key_count(&app).await, 2, "one key created: {statuses:?}");
}

#[tokio::test]
async fn a_key_holds_across_api_processes_and_onboarding_is_idempotent_too() {
    let app = TestApp::with_worker().await;
    let second = app.second_api();
    let onboard = |base: String| {
        let client = app.client.clone();
        async move {
            client
                .post(format!("{base}/api/v1/customers/onboard"))
                .header("idempotency-key", "signup-form-42")
                .json(&json!({ "name": "Once", "email": "once@example.com" }))
                .send()
                .await
                .unwrap()
        }
    };
    let first = onboard(app.address.clone()).await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let again = onboard(second).await;
    assert_eq!(again.status(), 202, "replayed, not 409 EMAIL_TAKEN");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["customer_id"], first["customer_id"]);
    assert_eq!(testing::count(&app.db.pool, Some("provision_customer"), &[]).await, 1);
}

#[tokio::test]
async fn a_billing_write_sent_twice_with_one_key_takes_effect_once() {
    let app = TestApp::with_billing().await;
    let (customer, key, _) = app.stripe_customer("twice-card@example.com").await;
    let send = || {
        app.client
            .post(app.url("/api/v1/billing/payment-methods"))
            .header("x-api-key", &key)
            .header("idempotency-key", "add-card-7")
            .json(&json!({ "payment_method_id": "pm_card_visa", "consent": true }))
            .send()
    };
    let first: Value = send().await.unwrap().json().await.unwrap();
    let second = send().await.unwrap();
    assert_eq!(second.status(), 202);
    let second: Value = second.json().await.unwrap();
    assert_eq!(second["operation_id"], first["operation_id"], "the same operation, replayed");
    assert_eq!(testing::count(&app.db.pool, Some("add_payment_method"), &[]).await, 1);
    app.finished_operation(&key, send().await.unwrap()).await;
    assert_eq!(app.balance(customer).await, 10);
}

#[tokio::test]
async fn keys_belong_to_the_customer_and_a_revoked_key_is_never_answered_from_the_store() {
    let app = TestApp::with_worker().await;
    let (_, first) = app.onboarded_customer("scoped@example.com").await;
    let created: Value = create_key(&app, &app.address, &first, "make-second", "second").await.json().await.unwrap();
    let second = created["api_key"].as_str().unwrap().to_owned();

    let original = create_key(&app, &app.address, &first, "make-third", "third").await;
    assert_eq!(original.status(), 201);
    let original: Value = original.json().await.unwrap();

    // Another live key of the same customer: the same key space, so a replay.
    let replayed = create_key(&app, &app.address, &second, "make-third", "third").await;
    assert_eq!(replayed.status(), 201);
    assert_eq!(replayed.headers()["idempotent-replayed"], "true");
    assert_eq!(replayed.json::<Value>().await.unwrap()["id"], original["id"]);

    // Revoke the first key: its retries are refused, not replayed.
    let onboarding_key_id: String =
        sqlx::query_scalar("SELECT id::text FROM api_keys WHERE name <> 'second' AND name <> 'third'")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    let revoked = app
        .client
        .delete(app.url(&format!("/api/v1/api-keys/{onboarding_key_id}")))
        .header("x-api-key", &second)
        .send()
        .await
        .unwrap();
    assert!(revoked.status().is_success(), "{}", revoked.status());
    let refused = create_key(&app, &app.address, &first, "make-third", "third").await;
    assert_eq!(refused.status(), 401, "a revoked key gets no stored answer");
    assert!(refused.headers().get("idempotent-replayed").is_none());
    assert_eq!(key_count(&app).await, 3);
}

#[tokio::test]
async fn an_unknown_key_claims_nothing_and_gets_no_bucket_of_its_own() {
    let app = crate::abuse::limited_app(
        &[("RATE_LIMIT_ANONYMOUS_PER_MINUTE", "3"), ("RATE_LIMIT_API_PER_MINUTE", "100")],
        true,
    )
    .await;
    let made_up = |i: usize| format!("rsolv_{i:0>43}");
    common::domain::ApiKey::parse(&made_up(0)).expect("the made-up keys are well formed");
    let mut statuses = Vec::new();
    for i in 0..5 {
        let response = create_key(&app, &app.address, &made_up(i), &format!("guess-{i}"), "guess").await;
        statuses.push(response.status().as_u16());
    }
    // Five different made-up keys share their address's budget of three.
    assert_eq!(statuses, [401, 401, 401, 429, 429], "{statuses:?}");
    assert_eq!(app.count("SELECT count(*) FROM idempotency_keys").await, 0, "no idempotency rows");
    assert_eq!(
        app.count("SELECT count(*) FROM rate_limit_windows WHERE bucket NOT LIKE 'anon:%'").await,
        0,
        "no bucket per made-up key"
    );
}

#[tokio::test]
async fn a_request_cut_off_by_a_killed_api_is_retried_with_its_key_and_takes_effect_once() {
    let app = TestApp::with_worker().await;
    let (customer, key) = app.onboarded_customer("killed-mid-request@example.com").await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let mut api = Process::spawn(
        our_command("rsolv-api", &app.db.url)
            .env("BIND_ADDR", format!("127.0.0.1:{port}"))
            .env("IDEMPOTENCY_LEASE_MS", "1500")
            .env("RATE_LIMIT_USAGE_PER_MINUTE", "0")
            // The fix is recorded, then the process stops before storing its answer.
            .env("FAILPOINTS", "idempotency::before_complete=pause")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit()),
    );
    let client = app.client.clone();
    let ready = format!("{base}/ready");
    wait_for("the API process to be ready", Duration::from_secs(20), || {
        let (client, ready) = (client.clone(), ready.clone());
        async move { client.get(&ready).send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;

    let report = json!({ "fix_id": "fix-cut-off", "repo": "acme/app" });
    let send = |base: String| {
        let (client, key, report) = (app.client.clone(), key.clone(), report.clone());
        async move {
            client
                .post(format!("{base}/api/v1/usage/fixes"))
                .header("x-api-key", key)
                .header("idempotency-key", "report-fix-cut-off")
                .json(&report)
                .send()
                .await
        }
    };
    let cut_off = tokio::spawn(send(base.clone()));
    let pool = app.db.pool.clone();
    wait_for("the fix recorded and its answer not yet stored", Duration::from_secs(20), || {
        let pool = pool.clone();
        async move {
            let jobs = testing::count(&pool, Some("record_usage"), &[]).await;
            let claims: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_keys WHERE response_status IS NULL")
                .fetch_one(&pool)
                .await
                .unwrap();
            jobs == 1 && claims == 1
        }
    })
    .await;
    api.kill();
    assert!(cut_off.await.unwrap().is_err(), "the client never got its answer");

    // The retry goes to another API process: 409 while the dead claim's lease runs,
    // then it takes the key over and answers.
    let mut statuses = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (status, body) = loop {
        let response = send(app.address.clone()).await.unwrap();
        statuses.push(response.status().as_u16());
        if response.status() != 409 {
            break (response.status().as_u16(), response.json::<Value>().await.unwrap());
        }
        assert!(std::time::Instant::now() < deadline, "the key was never taken over: {statuses:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["fix_id"], "fix-cut-off");
    assert_eq!(body["duplicate"], true, "the retry found the fix the dead process recorded");
    assert!(statuses[..statuses.len() - 1].iter().all(|s| *s == 409), "{statuses:?}");

    // Replayed from now on, and the fix is debited once.
    let again = send(app.address.clone()).await.unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    crate::helpers::wait_for_kind_finished(&app.db.pool, "record_usage", Duration::from_secs(20)).await;
    assert_eq!(testing::count(&app.db.pool, Some("record_usage"), &[]).await, 1);
    assert_eq!(app.count("SELECT count(*) FROM credit_ledger WHERE source = 'fix_deployed'").await, 1);
    let balance: i64 = sqlx::query_scalar("SELECT credit_balance FROM customers WHERE id = $1")
        .bind(customer)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(balance, 4, "five trial credits, one fix");
}

#[tokio::test]
async fn a_key_creation_re_run_after_its_answer_was_lost_finds_the_key_it_made() {
    let app = TestApp::with_worker().await;
    let (_, key) = app.onboarded_customer("rerun-key@example.com").await;
    let first = create_key(&app, &app.address, &key, "make-ci-key", "ci").await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    // As if the process died before storing the answer, and the lease ran out.
    sqlx::query(
        "UPDATE idempotency_keys SET response_status = NULL, response_body = NULL,
             locked_until = now() - interval '1 second'",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
    let rerun = create_key(&app, &app.address, &key, "make-ci-key", "ci").await;
    assert_eq!(rerun.status(), 201);
    assert!(rerun.headers().get("idempotent-replayed").is_none(), "run again, not replayed");
    let rerun: Value = rerun.json().await.unwrap();
    assert_eq!(rerun["id"], first["id"], "the key the first run made");
    assert!(rerun.get("api_key").is_none(), "a key is shown once");
    assert_eq!(key_count(&app).await, 2, "no second key");
}

#[tokio::test]
async fn a_slow_request_keeps_its_key_past_the_lease_while_it_runs() {
    let app = TestApp::spawn(&[("IDEMPOTENCY_LEASE_MS", "1000")], true).await;
    let (customer, key) = app.onboarded_customer("slow-request@example.com").await;
    // Creating a key waits for the customer's row, held here.
    let held = crate::helpers::hold_customer_row(&app.db.pool, customer).await;
    let slow = tokio::spawn({
        let (client, base, key) = (app.client.clone(), app.address.clone(), key.clone());
        async move {
            client
                .post(format!("{base}/api/v1/api-keys"))
                .header("x-api-key", key)
                .header("idempotency-key", "slow-create")
                .json(&json!({ "name": "slow" }))
                .send()
                .await
                .unwrap()
        }
    });
    wait_for("the slow request to claim its key", Duration::from_secs(10), || async {
        app.count("SELECT count(*) FROM idempotency_keys").await == 1
    })
    .await;
    // Twice the lease: a claim that was not renewed would be free for the taking.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let retry = create_key(&app, &app.address, &key, "slow-create", "slow").await;
    assert_eq!(retry.status(), 409, "still running: the key is not taken over");
    assert_eq!(retry.headers()["retry-after"], "1");
    held.rollback().await.unwrap();
    let first: Value = slow.await.unwrap().json().await.unwrap();
    let replayed = create_key(&app, &app.address, &key, "slow-create", "slow").await;
    assert_eq!(replayed.headers()["idempotent-replayed"], "true");
    assert_eq!(replayed.json::<Value>().await.unwrap()["id"], first["id"]);
    assert_eq!(key_count(&app).await, 2, "one key made");
}

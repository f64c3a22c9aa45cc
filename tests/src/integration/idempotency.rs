//! `Idempotency-Key` on POSTs: one effect per key, replays, reuse refused, races, and
//! across API processes.

use serde_json::{Value, json};

use crate::helpers::TestApp;

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
    assert_eq!(app.count("SELECT count(*) FROM jobs WHERE kind = 'provision_customer'").await, 1);
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
    assert_eq!(app.count("SELECT count(*) FROM jobs WHERE kind = 'add_payment_method'").await, 1);
    app.finished_operation(&key, send().await.unwrap()).await;
    assert_eq!(app.balance(customer).await, 10);
}

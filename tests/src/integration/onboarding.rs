use std::time::Duration;

use serde_json::Value;
use uuid::Uuid;

use common::queue;
use common::queue::testing;

use crate::helpers::{TestApp, assert_ledger_consistent, wait_for};

#[tokio::test]
async fn onboarding_provisions_a_trial_customer_whose_key_works_at_once() {
    let app = TestApp::with_worker().await;

    let response = app.onboard("Ada Lovelace", "Ada@Example.com").await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    let customer_id: Uuid = body["customer_id"].as_str().unwrap().parse().unwrap();
    let key = body["api_key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("rsolv_") && key.len() == 49, "key format: {key}");
    assert_eq!(body["status_url"], format!("/api/v1/onboarding/{customer_id}"));

    // The key authenticates as soon as the provision job has run.
    let me = loop_until_ok(&app, &key).await;
    assert_eq!(me["customer_id"], customer_id.to_string());
    assert_eq!(me["email"], "ada@example.com");
    assert_eq!(me["credit_balance"], 5);
    assert_eq!(me["subscription_type"], "trial");
    assert_eq!(me["subscription_state"], Value::Null);
    assert_eq!(me["has_payment_method"], false);
    let entries = me["recent_ledger_entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["source"], "trial_signup");
    assert_eq!(entries[0]["amount"], 5);

    let status: Value =
        app.client.get(app.url(body["status_url"].as_str().unwrap())).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["status"], "provisioned");

    let trial_entries = app.count("SELECT count(*) FROM credit_ledger WHERE source = 'trial_signup'").await;
    assert_eq!(trial_entries, 1);
    // The job's acknowledgement is written just after its effect commits.
    crate::helpers::wait_for_kind_finished(&app.db.pool, "provision_customer", Duration::from_secs(10)).await;
    assert_eq!(queue::testing::statuses(&app.db.pool, "provision_customer").await, [queue::JobStatus::Completed]);
    assert_ledger_consistent(&app.db.pool).await;
}

async fn loop_until_ok(app: &TestApp, key: &str) -> Value {
    let mut me = Value::Null;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        let response = app.get_with_key("/api/v1/customers/me", key).await;
        if response.status() == 200 {
            me = response.json().await.unwrap();
            break;
        }
        assert_eq!(response.status(), 401, "before provisioning the key is unknown");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!me.is_null(), "the key never authenticated");
    me
}

#[tokio::test]
async fn the_raw_api_key_is_stored_nowhere() {
    let app = TestApp::with_worker().await;
    let (_, key) = app.onboarded_customer("secret-keeper@example.com").await;
    let dump: String = sqlx::query_scalar(
        "SELECT concat_ws(' ',
            (SELECT string_agg(args::text || coalesce(result::text, ''), ' ') FROM jobs),
            (SELECT string_agg(row_to_json(k)::text, ' ') FROM api_keys k),
            (SELECT string_agg(row_to_json(c)::text, ' ') FROM customers c),
            (SELECT string_agg(row_to_json(l)::text, ' ') FROM credit_ledger l))",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert!(dump.contains("secret-keeper@example.com"), "the dump covers the tables");
    assert!(!dump.contains(&key), "the raw key leaked into the database");
    assert!(!dump.contains(&key["rsolv_".len()..]), "the raw key's body leaked into the database");
}

#[tokio::test]
async fn status_is_pending_until_a_worker_provisions() {
    let app = TestApp::api_only().await;
    let body: Value = app.onboard("Grace", "grace@example.com").await.json().await.unwrap();
    let url = app.url(body["status_url"].as_str().unwrap());
    let status: Value = app.client.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["status"], "pending");
    let unknown = app.client.get(app.url(&format!("/api/v1/onboarding/{}", Uuid::new_v4()))).send().await.unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(app.count("SELECT count(*) FROM customers").await, 0, "nothing provisions without a worker");
}

#[tokio::test]
async fn a_taken_email_is_refused_sequentially_whatever_its_case() {
    let app = TestApp::with_worker().await;
    app.onboarded_customer("taken@example.com").await;
    for email in ["taken@example.com", " TAKEN@example.com "] {
        let response = app.onboard("Someone Else", email).await;
        assert_eq!(response.status(), 409);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "EMAIL_TAKEN");
    }
    assert_eq!(app.count("SELECT count(*) FROM customers").await, 1);
}

#[tokio::test]
async fn an_email_being_provisioned_is_taken_too() {
    // No worker: the first submission is still waiting when the second arrives.
    let app = TestApp::api_only().await;
    assert_eq!(app.onboard("First", "queued@example.com").await.status(), 202);
    let second = app.onboard("Second", "queued@example.com").await;
    assert_eq!(second.status(), 409);
    assert_eq!(testing::count_all(&app.db.pool).await, 1);
}

#[tokio::test]
async fn twenty_concurrent_submissions_of_one_email_provision_one_customer() {
    let app = TestApp::with_worker().await;
    let responses = futures::future::join_all((0..20).map(|i| {
        let app = &app;
        async move { app.onboard(&format!("Racer {i}"), "race@example.com").await }
    }))
    .await;
    let mut accepted = 0;
    let mut conflicts = 0;
    for response in responses {
        match response.status().as_u16() {
            202 => accepted += 1,
            409 => conflicts += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((accepted, conflicts), (1, 19));
    let pool = app.db.pool.clone();
    wait_for("the one customer", Duration::from_secs(10), || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM customers")
                .fetch_one(&pool)
                .await
                .unwrap()
                == 1
        }
    })
    .await;
    crate::helpers::wait_for_kind_finished(&app.db.pool, "provision_customer", Duration::from_secs(10)).await;
    assert_eq!(app.count("SELECT count(*) FROM customers").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM api_keys").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM credit_ledger").await, 1);
}

#[tokio::test]
async fn the_api_wakes_the_worker_itself_with_no_polling_to_fall_back_on() {
    // The API's inserts do not notify from the trigger (that would serialize their
    // commits); its `JobWaker` notifies after each commit. With polling ten minutes
    // apart, only that notification can make this customer appear within seconds.
    let app = TestApp::spawn(&[("JOB_POLL_INTERVAL_MS", "600000")], true).await;
    let pool = app.db.pool.clone();
    wait_for("the provisioning worker to register", Duration::from_secs(10), || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM job_workers WHERE kind = 'provision_customer'")
            .fetch_one(&pool)
            .await
            .unwrap()
            == 1
    })
    .await;
    for n in 0..3 {
        // Waits (10 s at most) for the customer to be provisioned.
        app.onboarded_customer(&format!("woken-{n}@example.com")).await;
    }
}

#[tokio::test]
async fn a_failed_operation_is_told_as_a_code_never_as_its_raw_error() {
    let app = TestApp::with_worker().await;
    let (customer, key) = app.onboarded_customer("told-politely@example.com").await;
    let raw = "database: error returned from database: relation \"charges\" at 10.0.3.7:5432 (req_8sKq)";
    let insert = |kind: &'static str, status: &'static str, customer: Uuid| {
        sqlx::query_scalar::<_, i64>(
            "INSERT INTO jobs (kind, args, status, attempts, customer_id, errors, finished_at)
             VALUES ($1, '{}', $2, 10, $3, jsonb_build_array(jsonb_build_object('attempt', 10, 'error', $4::text)), now())
             RETURNING id",
        )
        .bind(kind)
        .bind(status)
        .bind(customer)
        .bind(raw)
        .fetch_one(&app.db.pool)
    };
    // An onboarding whose provisioning died.
    let lost = Uuid::new_v4();
    insert("provision_customer", "dead", lost).await.unwrap();
    let status = app.client.get(app.url(&format!("/api/v1/onboarding/{lost}"))).send().await.unwrap();
    let body = status.text().await.unwrap();
    let json: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["status"], "failed");
    assert_eq!(json["error"]["code"], "OPERATION_FAILED");
    assert!(!body.contains("10.0.3.7") && !body.contains("charges") && !body.contains("req_8sKq"), "{body}");

    // A billing operation that died.
    let operation = insert("add_payment_method", "dead", customer).await.unwrap();
    let answer = app.get_with_key(&format!("/api/v1/billing/operations/{operation}"), &key).await;
    let body = answer.text().await.unwrap();
    let json: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["status"], "failed");
    assert_eq!(json["error"]["code"], "OPERATION_FAILED");
    assert!(!body.contains("10.0.3.7") && !body.contains("req_8sKq"), "{body}");
}

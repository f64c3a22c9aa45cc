use std::time::Duration;

use common::jobs::RecordUsage;
use common::queue::{self, Enqueued, JobKind, testing};
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_ledger_consistent, fix, wait_for_kind_finished};

#[tokio::test]
async fn two_hundred_concurrent_fixes_consume_exactly_the_five_credits() {
    let app = TestApp::with_worker().await;
    let (customer_id, key) = app.onboarded_customer("busy@example.com").await;

    let reports = (0..200).map(|i| {
        let (app, key) = (&app, &key);
        async move {
            app.post_with_key("/api/v1/usage/fixes", key, &json!({ "fix_id": format!("fix-{i}"), "repo": "org/repo" }))
                .await
        }
    });
    let responses = futures::future::join_all(reports).await;
    let mut accepted = 0;
    let mut refused_at_once = 0;
    for response in responses {
        match response.status().as_u16() {
            202 => accepted += 1,
            402 => {
                let body: Value = response.json().await.unwrap();
                assert_eq!(body["error"]["code"], "NO_BILLING_INFO");
                refused_at_once += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(accepted + refused_at_once, 200);
    wait_for_kind_finished(&app.db.pool, "record_usage", Duration::from_secs(30)).await;

    let consumed = app.count("SELECT count(*) FROM usage_fixes WHERE outcome = 'consumed'").await;
    let refused_by_job = app
        .count("SELECT count(*) FROM usage_fixes WHERE outcome = 'refused' AND refusal_code = 'NO_BILLING_INFO'")
        .await;
    assert_eq!(consumed, 5);
    assert_eq!(refused_by_job + refused_at_once, 195);
    let balance: i64 = sqlx::query_scalar("SELECT credit_balance FROM customers WHERE id = $1")
        .bind(customer_id)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(balance, 0);
    assert_eq!(app.count("SELECT count(*) FROM credit_ledger WHERE source = 'fix_deployed'").await, 5);
    assert_ledger_consistent(&app.db.pool).await;

    // Blocked now: told at once, and nothing is enqueued.
    let jobs_before = testing::count_all(&app.db.pool).await;
    let blocked =
        app.post_with_key("/api/v1/usage/fixes", &key, &json!({ "fix_id": "one-more", "repo": "org/repo" })).await;
    assert_eq!(blocked.status(), 402);
    assert_eq!(testing::count_all(&app.db.pool).await, jobs_before);
    let me: Value = app.get_with_key("/api/v1/customers/me", &key).await.json().await.unwrap();
    assert_eq!(me["warnings"], json!(["BLOCKED"]));
}

#[tokio::test]
async fn one_fix_reported_twice_is_debited_once() {
    let app = TestApp::with_worker().await;
    let (_, key) = app.onboarded_customer("twice@example.com").await;
    let report = json!({ "fix_id": "fix-42", "repo": "org/repo", "metadata": { "pr": 7 } });

    let first = app.post_with_key("/api/v1/usage/fixes", &key, &report).await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["status"], "recorded");
    wait_for_kind_finished(&app.db.pool, "record_usage", Duration::from_secs(10)).await;
    let second: Value = app.post_with_key("/api/v1/usage/fixes", &key, &report).await.json().await.unwrap();
    assert_eq!(second["status"], "recorded");
    assert_eq!(second["duplicate"], true);
    wait_for_kind_finished(&app.db.pool, "record_usage", Duration::from_secs(10)).await;

    assert_eq!(app.count("SELECT count(*) FROM credit_ledger WHERE source = 'fix_deployed'").await, 1);
    let me: Value = app.get_with_key("/api/v1/customers/me", &key).await.json().await.unwrap();
    assert_eq!(me["credit_balance"], 4);
    let status: Value = app.get_with_key(first["status_url"].as_str().unwrap(), &key).await.json().await.unwrap();
    assert_eq!(status["status"], "consumed");
}

#[tokio::test]
async fn fix_reports_are_validated_and_private_to_their_customer() {
    let app = TestApp::with_worker().await;
    let (_, key) = app.onboarded_customer("owner@example.com").await;
    let (_, other_key) = app.onboarded_customer("other@example.com").await;
    for body in [
        json!({ "repo": "r" }),
        json!({ "fix_id": "", "repo": "r" }),
        json!({ "fix_id": 5, "repo": "r" }),
        json!({ "fix_id": "f", "repo": "r".repeat(201) }),
    ] {
        let response = app.post_with_key("/api/v1/usage/fixes", &key, &body).await;
        assert_eq!(response.status(), 422, "for {body}");
    }
    assert_eq!(testing::count(&app.db.pool, Some("record_usage"), &[]).await, 0);

    assert_eq!(
        app.post_with_key("/api/v1/usage/fixes", &key, &json!({ "fix_id": "mine", "repo": "r" })).await.status(),
        202
    );
    wait_for_kind_finished(&app.db.pool, "record_usage", Duration::from_secs(10)).await;
    assert_eq!(app.get_with_key("/api/v1/usage/fixes/mine", &key).await.status(), 200);
    assert_eq!(app.get_with_key("/api/v1/usage/fixes/mine", &other_key).await.status(), 404);
}

/// What every usage job's run (`first_enqueued_at`) and the usage status route
/// (`by_unique_key`) ask, by kind and key whatever the job's state, is answered from
/// indexes: with scanning the table priced out, as it is once the table holds a history
/// of finished jobs, neither reads `jobs` itself, and both see a key's whole history (a
/// dead job that gave the key back, and the job enqueued with it since). Without an index
/// for such keys, both read the whole table.
#[tokio::test]
async fn the_usage_jobs_key_lookups_read_an_index_not_the_whole_table() {
    let app = TestApp::api_only().await;
    let job = fix(uuid::Uuid::new_v4(), "fix-1");
    let key = job.unique_key().unwrap();
    let Enqueued::Inserted(first) = queue::enqueue(&app.db.pool, &job).await.unwrap() else { panic!("inserted") };
    sqlx::query(
        "UPDATE jobs SET status = 'dead', finished_at = now(), created_at = now() - interval '1 hour' WHERE id = $1",
    )
    .bind(first)
    .execute(&app.db.pool)
    .await
    .unwrap();
    let Enqueued::Inserted(second) = queue::enqueue(&app.db.pool, &job).await.unwrap() else {
        panic!("a dead job gives its key back")
    };
    let first_created: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT created_at FROM jobs WHERE id = $1")
        .bind(first)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();

    let mut tx = app.db.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL enable_seqscan = off").execute(&mut *tx).await.unwrap();
    // This backend's own counters (no delay, no other session's reads), before and after:
    // the table's, and the two key indexes'.
    let scans = "SELECT (SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relname = 'jobs'),
                        pg_stat_get_xact_numscans('jobs_unique_key'::regclass)
                        + pg_stat_get_xact_numscans('jobs_given_back_keys'::regclass)";
    let before: (i64, i64) = sqlx::query_as(scans).fetch_one(&mut *tx).await.unwrap();
    let began = queue::first_enqueued_at(&mut *tx, RecordUsage::KIND, &key).await.unwrap();
    let newest = queue::by_unique_key(&mut *tx, RecordUsage::KIND, &key).await.unwrap();
    let after: (i64, i64) = sqlx::query_as(scans).fetch_one(&mut *tx).await.unwrap();
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (0, 4),
        "table scans, and index scans of the keys, of the two lookups' two halves"
    );
    assert_eq!(began, Some(first_created), "the key's history began with the dead job");
    assert_eq!(newest.map(|job| job.id), Some(second), "the newest job with the key is the live one");
}

/// A payment intent pays for one fix at most, and the fixes paid with a credit (most of
/// them, with no intent) are not entries of the index that keeps it so: each would be a
/// write per fix for nothing.
#[tokio::test]
async fn a_payment_intent_pays_for_one_fix_and_fixes_paid_with_credits_are_not_indexed_by_it() {
    let app = TestApp::api_only().await;
    let email = common::domain::Email::parse("intents@example.com").unwrap();
    let customer = common::factories::create(&app.db.pool, &app.settings, common::factories::CustomerState::Pro, email)
        .await
        .unwrap()
        .customer_id;
    let record = |fix_id: &'static str| {
        sqlx::query(
            "INSERT INTO usage_fixes (customer_id, fix_id, repo, outcome, refusal_code, payment_intent_id)
             VALUES ($1, $2, 'org/repo', 'refused', 'CARD_DECLINED', 'pi_same')",
        )
        .bind(customer)
        .bind(fix_id)
        .execute(&app.db.pool)
    };
    record("first").await.unwrap();
    let second = record("second").await.unwrap_err();
    assert_eq!(second.as_database_error().and_then(|e| e.code()).as_deref(), Some("23505"), "{second}");

    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexdef FROM pg_indexes WHERE tablename = 'usage_fixes' AND indexdef LIKE '%payment_intent_id%'",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(indexes.len(), 1, "{indexes:?}");
    assert!(indexes[0].starts_with("CREATE UNIQUE INDEX"), "{indexes:?}");
    assert!(indexes[0].ends_with("WHERE (payment_intent_id IS NOT NULL)"), "{indexes:?}");
}

use std::time::Duration;

use common::domain::Email;
use common::factories::{self, CustomerState};
use common::jobs::RecordUsage;
use common::queue::{self, Enqueued, JobKind, testing};
use serde_json::{Value, json};
use uuid::Uuid;

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
        json!({ "fix_id": "f", "repo": "r", "metadata": { "notes": "n".repeat(4096) } }),
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
    // the table's, and the key indexes' (`jobs_by_unique_key` until a later release drops
    // it; the planner may answer either half from it meanwhile).
    let scans = "SELECT (SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relname = 'jobs'),
                        pg_stat_get_xact_numscans('jobs_unique_key'::regclass)
                        + pg_stat_get_xact_numscans('jobs_given_back_keys'::regclass)
                        + coalesce(pg_stat_get_xact_numscans(to_regclass('jobs_by_unique_key')), 0)";
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

/// A customer in `state`, made without a worker, and its API key.
async fn seeded(app: &TestApp, email: &str, state: CustomerState) -> (Uuid, String) {
    let email = Email::parse(email).unwrap();
    let seeded = factories::create(&app.db.pool, &app.settings, state, email).await.unwrap();
    (seeded.customer_id, seeded.api_key.expose().to_owned())
}

async fn balance(app: &TestApp, customer_id: Uuid) -> i64 {
    sqlx::query_scalar("SELECT credit_balance FROM customers WHERE id = $1")
        .bind(customer_id)
        .fetch_one(&app.db.pool)
        .await
        .unwrap()
}

/// The common cases are settled by the commit that answers the report (no worker runs
/// here): a credit debited, with the client's metadata kept beside it; a fix reported
/// again answered as a duplicate; a fix with neither credits nor card refused. Only a fix
/// to be charged by card becomes a job.
#[tokio::test]
async fn a_fix_paid_by_a_credit_is_debited_before_its_report_is_answered() {
    let app = TestApp::api_only().await;
    let (customer_id, key) = seeded(&app, "at-once@example.com", CustomerState::Trial).await;
    let report = json!({ "fix_id": "fix-1", "repo": "org/repo", "metadata": { "pr": 7 } });

    let first: Value = app.post_with_key("/api/v1/usage/fixes", &key, &report).await.json().await.unwrap();
    assert_eq!(first["duplicate"], false);
    assert_eq!(balance(&app, customer_id).await, 4, "debited before the answer");
    let status: Value = app.get_with_key("/api/v1/usage/fixes/fix-1", &key).await.json().await.unwrap();
    assert_eq!(status["status"], "consumed");
    let kept: Value = sqlx::query_scalar("SELECT metadata FROM credit_ledger WHERE source = 'fix_deployed'")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(kept, json!({ "fix_id": "fix-1", "repo": "org/repo", "client_metadata": { "pr": 7 } }));
    let again: Value = app.post_with_key("/api/v1/usage/fixes", &key, &report).await.json().await.unwrap();
    assert_eq!(again["duplicate"], true);
    assert_eq!(balance(&app, customer_id).await, 4);
    assert_eq!(testing::count(&app.db.pool, Some(RecordUsage::KIND), &[]).await, 0, "no job for any of them");

    // Five more at once for the four credits left: each is answered before any debit
    // lands (202) or after the last one (402 at once); of those answered 202, the one
    // that finds neither credits nor card is refused by its batch.
    let more = (2..=6).map(|i| {
        let (app, key) = (&app, &key);
        async move {
            let body = json!({ "fix_id": format!("fix-{i}"), "repo": "org/repo" });
            app.post_with_key("/api/v1/usage/fixes", key, &body).await.status().as_u16()
        }
    });
    let answered = futures::future::join_all(more).await;
    assert!(answered.iter().all(|s| [202, 402].contains(s)), "{answered:?}");
    let refused_at_once = answered.iter().filter(|s| **s == 402).count() as i64;
    assert_eq!(app.count("SELECT count(*) FROM usage_fixes WHERE outcome = 'consumed'").await, 5);
    let refused = app
        .count("SELECT count(*) FROM usage_fixes WHERE outcome = 'refused' AND refusal_code = 'NO_BILLING_INFO'")
        .await;
    assert_eq!(refused + refused_at_once, 1, "{answered:?}");
    assert_eq!(balance(&app, customer_id).await, 0);
    assert_eq!(testing::count(&app.db.pool, Some(RecordUsage::KIND), &[]).await, 0);

    // A card on file and no credits: the charge is the job's.
    let (payg, payg_key) = seeded(&app, "payg@example.com", CustomerState::PayAsYouGo).await;
    let body = json!({ "fix_id": "to-charge", "repo": "org/repo" });
    let queued: Value = app.post_with_key("/api/v1/usage/fixes", &payg_key, &body).await.json().await.unwrap();
    assert_eq!(queued["duplicate"], false);
    let job = testing::require_inserted::<RecordUsage>(&app.db.pool).await;
    assert_eq!((job.args.customer_id, job.args.fix_id.as_str()), (payg, "to-charge"));
    let jobs = testing::all_jobs(&app.db.pool).await;
    assert!(jobs.iter().all(|j| j.request_id.is_some()), "the job names the request that reported its fix");
    let status: Value = app.get_with_key("/api/v1/usage/fixes/to-charge", &payg_key).await.json().await.unwrap();
    assert_eq!(status["status"], "pending");
    let again: Value = app.post_with_key("/api/v1/usage/fixes", &payg_key, &body).await.json().await.unwrap();
    assert_eq!(again["duplicate"], true, "the job holds the fix");
    assert_ledger_consistent(&app.db.pool).await;
}

/// With `USAGE_SETTLE_ON_REPORT=false` every report is a job, as before.
#[tokio::test]
async fn reports_are_all_jobs_when_settling_on_report_is_off() {
    let app = TestApp::spawn(&[("USAGE_SETTLE_ON_REPORT", "false")], false).await;
    let (customer_id, key) = seeded(&app, "queued@example.com", CustomerState::Trial).await;
    let body = json!({ "fix_id": "fix-1", "repo": "org/repo" });
    assert_eq!(app.post_with_key("/api/v1/usage/fixes", &key, &body).await.status(), 202);
    testing::require_inserted::<RecordUsage>(&app.db.pool).await;
    assert_eq!(balance(&app, customer_id).await, 5);
}

/// A fix whose key a job holds (reported while it had to be charged, or enqueued by an
/// older API) is that job's: the report is its duplicate, nothing is debited for it, and
/// the job, when it runs, pays for the fix once.
#[tokio::test]
async fn a_report_of_a_fix_a_job_holds_is_left_to_that_job() {
    let app = TestApp::api_only().await;
    let (customer_id, key) = seeded(&app, "held@example.com", CustomerState::Trial).await;
    let job = queue::enqueue(&app.db.pool, &fix(customer_id, "held-fix")).await.unwrap();
    assert!(matches!(job, Enqueued::Inserted(_)));

    let body = json!({ "fix_id": "held-fix", "repo": "org/repo" });
    let report: Value = app.post_with_key("/api/v1/usage/fixes", &key, &body).await.json().await.unwrap();
    assert_eq!(report["duplicate"], true);
    assert_eq!(balance(&app, customer_id).await, 5, "nothing debited by the report");
    assert_eq!(app.count("SELECT count(*) FROM usage_fixes").await, 0);

    let mut app = app;
    app.start_worker();
    wait_for_kind_finished(&app.db.pool, RecordUsage::KIND, Duration::from_secs(10)).await;
    assert_eq!(balance(&app, customer_id).await, 4);
    assert_eq!(app.count("SELECT count(*) FROM credit_ledger WHERE source = 'fix_deployed'").await, 1);
    assert_ledger_consistent(&app.db.pool).await;
}

/// A batch stopped before its commit writes nothing, and its reports are enqueued as
/// jobs instead; a batch whose commit landed but whose answer was lost is enqueued too,
/// and its jobs find the fixes recorded. Either way each fix is debited exactly once.
async fn a_stopped_batch_leaves_each_fix_debited_once(point: &str, debited_by_the_report: bool) {
    let mut app = TestApp::api_only().await;
    let (customer_id, key) = seeded(&app, "stopped@example.com", CustomerState::Trial).await;
    fail::cfg(point, "return").unwrap();
    let reports = (0..3).map(|i| {
        let (app, key) = (&app, &key);
        async move {
            app.post_with_key("/api/v1/usage/fixes", key, &json!({ "fix_id": format!("fix-{i}"), "repo": "r" })).await
        }
    });
    let answered = futures::future::join_all(reports).await;
    fail::remove(point);
    assert!(answered.iter().all(|r| r.status() == 202), "every report is accepted");
    assert_eq!(testing::count(&app.db.pool, Some(RecordUsage::KIND), &[]).await, 3, "{point}: each became a job");
    let expected = if debited_by_the_report { 2 } else { 5 };
    assert_eq!(balance(&app, customer_id).await, expected, "{point}");

    app.start_worker();
    wait_for_kind_finished(&app.db.pool, RecordUsage::KIND, Duration::from_secs(10)).await;
    assert_eq!(balance(&app, customer_id).await, 2, "{point}: three fixes, three credits");
    assert_eq!(app.count("SELECT count(*) FROM credit_ledger WHERE source = 'fix_deployed'").await, 3);
    assert_eq!(app.count("SELECT count(*) FROM usage_fixes WHERE outcome = 'consumed'").await, 3);
    assert_ledger_consistent(&app.db.pool).await;
}

#[tokio::test]
async fn a_batch_of_reports_stopped_before_its_commit_becomes_jobs_that_debit_once() {
    a_stopped_batch_leaves_each_fix_debited_once("usage_reports::before_commit", false).await;
}

#[tokio::test]
async fn a_batch_of_reports_whose_commit_was_not_answered_becomes_jobs_that_find_the_debits() {
    a_stopped_batch_leaves_each_fix_debited_once("usage_reports::after_commit", true).await;
}

/// Reports race each other, a second API process, jobs of the same fixes (enqueued as an
/// older API would) and the worker settling them, for two customers with a few credits
/// each and no card, all at once (which fixes are reported how often and by which path is
/// drawn from a seed): every fix accepted is recorded once, the credits go to exactly that
/// many fixes, the rest are refused, and most were settled without a job.
#[tokio::test]
async fn reports_racing_jobs_and_each_other_record_each_fix_once() {
    for seed in 0..3u64 {
        let app = TestApp::with_worker().await;
        let second = app.second_api();
        let alice = seeded(&app, &format!("alice-{seed}@example.com"), CustomerState::Trial).await;
        let bob = seeded(&app, &format!("bob-{seed}@example.com"), CustomerState::Trial).await;
        // A small linear congruential sequence: the same seed, the same interleaving.
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let mut next = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) as usize
        };
        let mut actions = Vec::new();
        for i in 0..40 {
            let (customer_id, key) = if i % 2 == 0 { &alice } else { &bob };
            for _ in 0..1 + next() % 3 {
                actions.push((next() % 4, *customer_id, key.clone(), format!("fix-{i}")));
            }
        }
        for i in (1..actions.len()).rev() {
            actions.swap(i, next() % (i + 1));
        }
        let done = actions.into_iter().map(|(how, customer_id, key, fix_id)| {
            let (app, second) = (&app, &second);
            async move {
                let body = json!({ "fix_id": fix_id, "repo": "r" });
                let base = if how == 1 { second.clone() } else { app.address.clone() };
                let status = match how {
                    0 => {
                        queue::enqueue(&app.db.pool, &fix(customer_id, &fix_id)).await.unwrap();
                        202
                    }
                    _ => app
                        .client
                        .post(format!("{base}/api/v1/usage/fixes"))
                        .header("x-api-key", &key)
                        .json(&body)
                        .send()
                        .await
                        .unwrap()
                        .status()
                        .as_u16(),
                };
                assert!([202, 402].contains(&status), "{status}");
                (status == 202).then_some((customer_id, fix_id))
            }
        });
        let accepted: Vec<(Uuid, String)> = futures::future::join_all(done).await.into_iter().flatten().collect();
        wait_for_kind_finished(&app.db.pool, RecordUsage::KIND, Duration::from_secs(30)).await;

        let recorded: std::collections::HashSet<(Uuid, String)> =
            sqlx::query_as("SELECT customer_id, fix_id FROM usage_fixes")
                .fetch_all(&app.db.pool)
                .await
                .unwrap()
                .into_iter()
                .collect();
        for fix in &accepted {
            assert!(recorded.contains(fix), "seed {seed}: {fix:?} was accepted and is recorded");
        }
        let settled_without_a_job = app
            .count(
                "SELECT count(*) FROM usage_fixes u WHERE NOT EXISTS (SELECT 1 FROM jobs j
                  WHERE j.kind = 'record_usage' AND j.unique_key = u.customer_id || ':' || u.fix_id)",
            )
            .await;
        assert!(settled_without_a_job > 0, "seed {seed}: reports are settled as they arrive");
        let per_customer: Vec<(Uuid, i64, i64)> = sqlx::query_as(
            "SELECT customer_id, count(*) FILTER (WHERE outcome = 'consumed'), count(DISTINCT fix_id)
             FROM usage_fixes GROUP BY customer_id ORDER BY customer_id",
        )
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
        for (customer_id, consumed, distinct) in per_customer {
            assert_eq!(consumed, 5, "seed {seed}: every credit pays for one fix");
            assert_eq!(balance(&app, customer_id).await, 0, "seed {seed}");
            assert!(distinct <= 20, "seed {seed}: {distinct} fixes of 20");
        }
        let recorded_twice = app
            .count(
                "SELECT count(*) FROM (SELECT 1 FROM usage_fixes GROUP BY customer_id, fix_id HAVING count(*) > 1) t",
            )
            .await;
        assert_eq!(recorded_twice, 0, "seed {seed}");
        assert_eq!(app.count("SELECT count(*) FROM credit_ledger WHERE source = 'fix_deployed'").await, 10);
        assert_ledger_consistent(&app.db.pool).await;
    }
}

//! Shared commits: the API's one-job inserts group-committed (`JobWaker::enqueue`), its
//! key checks sharing lookups (`KeyLookups`), and
//! the worker's grants and fix debits posted in batches (`jobs::PostingBatches`). Each
//! request and job must get exactly the answer it would have got alone, a bad row must
//! fail alone, and a batch stopped before or after its commit must post nothing twice.

use std::collections::{HashMap, HashSet};

use common::db;
use common::db::api_keys::KeyLookups;
use common::domain::{ApiKey, Email};
use common::factories::{self, CustomerState};
use common::jobs::{GrantCredits, JobContext, RecordUsage};
use common::queue::{self, Enqueued, Job, JobKind, JobWaker, Outcome, testing};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{TestApp, TestDb, assert_ledger_consistent, fix, grant};

#[tokio::test]
async fn concurrent_enqueues_share_commits_and_each_is_answered_with_its_own_row() {
    let db = TestDb::fresh().await;
    let waker = JobWaker::spawn(db.pool.clone());
    let customer = Uuid::new_v4();
    queue::enqueue(&db.pool, &grant(customer, "stored-before", 1)).await.unwrap();

    // 400 requests at once: keys 0..200 twice each (amounts differ, so a row tells whose
    // it is), and one key stored before.
    let jobs: Vec<GrantCredits> = (0..400)
        .map(|i| grant(customer, &format!("key-{}", i % 200), i + 1))
        .chain([grant(customer, "stored-before", 7)])
        .collect();
    let answers = futures::future::join_all(jobs.iter().map(|job| waker.enqueue(job))).await;

    let mut inserted_per_key: HashMap<&str, Vec<i64>> = HashMap::new();
    for (job, answer) in jobs.iter().zip(&answers) {
        match answer.as_ref().expect("every enqueue succeeds") {
            Enqueued::Inserted(id) => {
                // Answered only after the commit: the row is visible to anyone now.
                let row = testing::require_job(&db.pool, *id).await;
                assert_eq!(row.args["amount"], job.amount, "job {id} is the row of the request it answered");
                inserted_per_key.entry(&job.idempotency_key).or_default().push(*id);
            }
            Enqueued::Duplicate => {}
        }
    }
    assert_eq!(inserted_per_key.len(), 200, "each new key inserted; the stored one is a duplicate");
    assert!(inserted_per_key.values().all(|ids| ids.len() == 1), "one insert per key: {inserted_per_key:?}");
    assert_eq!(testing::count(&db.pool, Some(GrantCredits::KIND), &[]).await, 201);
    let commits = waker.group_commits();
    assert!(commits < answers.len() as u64 / 4, "{} enqueues took {commits} commits", answers.len());
}

#[tokio::test]
async fn a_bad_row_in_a_grouped_insert_fails_its_own_request_only() {
    let db = TestDb::fresh().await;
    let waker = JobWaker::spawn(db.pool.clone());
    let customer = Uuid::new_v4();
    let mut jobs: Vec<GrantCredits> = (0..60).map(|i| grant(customer, &format!("fine-{i}"), 1)).collect();
    // Postgres stores no NUL in jsonb: this row fails its statement, and the batch's.
    jobs[30].metadata = json!({ "note": "a\u{0}b" });
    let answers = futures::future::join_all(jobs.iter().map(|job| waker.enqueue(job))).await;
    for (i, answer) in answers.iter().enumerate() {
        match i {
            30 => assert!(answer.is_err(), "the bad row is refused: {answer:?}"),
            _ => assert!(matches!(answer, Ok(Enqueued::Inserted(_))), "row {i}: {answer:?}"),
        }
    }
    assert_eq!(testing::count(&db.pool, Some(GrantCredits::KIND), &[]).await, 59);
    assert!(waker.group_commits() < 60, "the rows were grouped before the bad one split them");
}

#[tokio::test]
async fn concurrent_key_checks_share_lookups_and_each_is_answered_for_its_own_key() {
    let db = TestDb::fresh().await;
    let settings = crate::helpers::settings(&db.url, &[]);
    let mut seeded = Vec::new();
    for (n, state) in [CustomerState::PayAsYouGo, CustomerState::Pro, CustomerState::PayAsYouGo].into_iter().enumerate()
    {
        let email = Email::parse(&format!("keys{n}@example.com")).unwrap();
        seeded.push(factories::create(&db.pool, &settings, state, email).await.unwrap());
    }
    let revoked = &seeded[2];
    let revoked_id = db::api_keys::live(&db.pool, &revoked.api_key.hash()).await.unwrap().unwrap().0;
    assert!(db::api_keys::revoke(&db.pool, revoked.customer_id, revoked_id).await.unwrap());
    let unknown = ApiKey::generate();
    let lookups = KeyLookups::spawn(db.pool.clone());

    // 400 checks at once over four keys: two live, one revoked, one never issued.
    let keys = [&seeded[0].api_key, &seeded[1].api_key, &revoked.api_key, &unknown];
    let hashes: Vec<_> = (0..400).map(|i| keys[i % 4].hash()).collect();
    let answers = futures::future::join_all(hashes.iter().map(|hash| lookups.owner_of(hash))).await;
    for (i, answer) in answers.into_iter().enumerate() {
        let owner = answer.expect("every check is answered");
        match i % 4 {
            live @ (0 | 1) => {
                let owner = owner.expect("a live key has its owner");
                let customer = db::customers::find(&db.pool, seeded[live].customer_id).await.unwrap().unwrap();
                assert_eq!(owner.customer_id, customer.id, "check {i} is answered for its own key");
                assert_eq!(owner.credit_balance, customer.credit_balance);
            }
            _ => assert!(owner.is_none(), "check {i}: a revoked or unknown key has no owner"),
        }
    }
    assert!(lookups.lookups() < 100, "400 checks took {} lookups", lookups.lookups());

    // Nothing is cached: a key revoked now is refused by the next check.
    let live_id = db::api_keys::live(&db.pool, &seeded[0].api_key.hash()).await.unwrap().unwrap().0;
    assert!(db::api_keys::revoke(&db.pool, seeded[0].customer_id, live_id).await.unwrap());
    assert!(lookups.owner_of(&seeded[0].api_key.hash()).await.unwrap().is_none(), "revoked at once");
}

/// `n` customers with no credits and no card.
async fn customers(app: &TestApp, n: usize) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for i in 0..n {
        let email = Email::parse(&format!("batch-{i}@example.com")).unwrap();
        let seeded =
            factories::create(&app.db.pool, &app.settings, CustomerState::TrialExhausted, email).await.unwrap();
        ids.push(seeded.customer_id);
    }
    ids
}

async fn run_all<J: Job<Context = JobContext> + Clone>(ctx: &JobContext, jobs: &[J]) -> Vec<Outcome> {
    let runs = jobs.iter().cloned().map(|job| job.run(ctx.clone()));
    futures::future::join_all(runs).await.into_iter().map(|r| r.expect("every run succeeds")).collect()
}

/// Ledger entries and how many transactions wrote them (entries of one transaction share
/// its `xmin`).
async fn entries_and_transactions(app: &TestApp) -> (i64, i64) {
    sqlx::query_as("SELECT count(*), count(DISTINCT xmin::text) FROM credit_ledger")
        .fetch_one(&app.db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn batched_postings_answer_each_job_as_if_it_ran_alone() {
    let app = TestApp::api_only().await;
    let ctx = app.job_context();
    assert!(ctx.batches.is_some(), "batching is on by default");
    let ids = customers(&app, 4).await;
    let (before, _) = entries_and_transactions(&app).await;

    // Grants: each key sent twice, in one burst. Customer c gets 3 + c credits.
    let grants: Vec<GrantCredits> = (0..2)
        .flat_map(|_| ids.iter().enumerate().map(|(c, id)| grant(*id, &format!("grant-{c}"), 3 + c as i64)))
        .collect();
    let granted = run_all(&ctx, &grants).await;
    let already: usize =
        granted.iter().filter(|o| matches!(o, Outcome::Done { detail } if detail["already_posted"] == true)).count();
    assert_eq!(already, ids.len(), "each key's second grant is answered as already posted: {granted:?}");

    // Fixes: 6 per customer, one of them reported twice, all in one burst. Customer c pays
    // 3 + c of them with credits; the rest are refused (no card).
    let fixes: Vec<RecordUsage> =
        ids.iter().flat_map(|id| (0..6).map(|n| fix(*id, &format!("fix-{n}"))).chain([fix(*id, "fix-0")])).collect();
    let outcomes = run_all(&ctx, &fixes).await;
    let mut per_outcome: HashMap<String, usize> = HashMap::new();
    for outcome in &outcomes {
        let Outcome::Done { detail } = outcome else { panic!("a fix ended {outcome:?}") };
        let key = if detail["duplicate"] == true { "duplicate".into() } else { detail["outcome"].to_string() };
        *per_outcome.entry(key).or_default() += 1;
    }
    let paid: usize = (0..ids.len()).map(|c| 3 + c).sum(); // 3 + 4 + 5 + 6 = 18 of 24
    assert_eq!(per_outcome.get("\"consumed\"").copied().unwrap_or(0), paid, "{per_outcome:?}");
    assert_eq!(per_outcome.get("\"refused\"").copied().unwrap_or(0), 24 - paid, "{per_outcome:?}");
    assert_eq!(per_outcome.get("duplicate").copied().unwrap_or(0), ids.len(), "{per_outcome:?}");

    for (c, id) in ids.iter().enumerate() {
        assert_eq!(app.balance(*id).await, 0, "customer {c} spent every credit");
    }
    let (entries, transactions) = entries_and_transactions(&app).await;
    assert_eq!(entries - before, (ids.len() + paid) as i64, "one entry per grant key and per paid fix");
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_fixes WHERE fix_id LIKE 'fix-%'")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(recorded, 24, "each fix recorded once");
    assert!(transactions < entries, "postings shared transactions ({entries} entries, {transactions} transactions)");
    assert_ledger_consistent(&app.db.pool).await;
}

#[tokio::test]
async fn a_poison_posting_fails_its_own_job_and_its_batch_still_posts() {
    let app = TestApp::api_only().await;
    let ctx = app.job_context();
    let ids = customers(&app, 3).await;
    let mut grants: Vec<GrantCredits> = (0..30).map(|i| grant(ids[i % ids.len()], &format!("good-{i}"), 1)).collect();
    // One the ledger cannot store (it fails the batch's insert), one for nobody.
    grants[10].metadata = json!({ "note": "a\u{0}b" });
    grants[20].customer_id = Uuid::new_v4();
    let runs = grants.iter().cloned().map(|job| job.run(ctx.clone()));
    let results = futures::future::join_all(runs).await;
    for (i, result) in results.iter().enumerate() {
        match i {
            10 | 20 => assert!(result.is_err(), "grant {i} fails alone: {result:?}"),
            _ => assert!(result.is_ok(), "grant {i}: {result:?}"),
        }
    }
    let total: i64 =
        sqlx::query_scalar("SELECT sum(credit_balance)::bigint FROM customers").fetch_one(&app.db.pool).await.unwrap();
    assert_eq!(total, 28, "every good grant posted once");
    assert_ledger_consistent(&app.db.pool).await;
}

/// Runs the burst with `point` configured to `return`, then the same burst again (the
/// queue's retry): every posting lands once.
/// `first_ends`: how the stopped burst's jobs end: run alone and paid (the batch rolled
/// back), or failed (the batch committed and they were not told; the retry finds it).
async fn stopped_batch_posts_once(point: &str, first_ends: &str) {
    let app = TestApp::api_only().await;
    let ctx = app.job_context();
    let ids = customers(&app, 2).await;
    let grants: Vec<GrantCredits> = (0..20).map(|i| grant(ids[i % 2], &format!("grant-{i}"), 2)).collect();
    let fixes: Vec<RecordUsage> = (0..20).map(|i| fix(ids[i % 2], &format!("fix-{i}"))).collect();
    run_all(&ctx, &grants).await;

    fail::cfg(point, "return").unwrap();
    let runs = fixes.iter().cloned().map(|job| job.run(ctx.clone()));
    let first = futures::future::join_all(runs).await;
    fail::remove(point);
    let again = run_all(&ctx, &fixes).await;

    let ended = |outcome: &Outcome| match outcome {
        Outcome::Done { detail } if detail["duplicate"] == true => "duplicate".to_owned(),
        Outcome::Done { detail } => detail["outcome"].as_str().unwrap_or_default().to_owned(),
        other => format!("{other:?}"),
    };
    let first_ended = |result: &Result<Outcome, _>| result.as_ref().map_or("failed".to_owned(), ended);
    assert!(first.iter().all(|r| first_ended(r) == first_ends), "{point}: {first:?}");
    assert!(again.iter().all(|o| ended(o) == "duplicate"), "run again, each fix is a duplicate: {again:?}");
    let recorded: HashSet<String> = sqlx::query_scalar("SELECT fix_id FROM usage_fixes WHERE fix_id LIKE 'fix-%'")
        .fetch_all(&app.db.pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(recorded.len(), 20);
    for id in &ids {
        assert_eq!(app.balance(*id).await, 10, "20 credits granted, 10 spent");
    }
    assert_ledger_consistent(&app.db.pool).await;
}

#[tokio::test]
async fn a_batch_stopped_before_its_commit_leaves_each_job_to_post_once_alone() {
    stopped_batch_posts_once("postings::before_commit", "consumed").await;
}

#[tokio::test]
async fn a_batch_whose_answers_are_lost_after_its_commit_posts_nothing_twice() {
    stopped_batch_posts_once("postings::after_commit", "failed").await;
}

/// A batch reads its tables by their keys however small they were when its connection
/// planned it. A pooled connection keeps the generic plan it chose on a statement's
/// sixth run while it lives and the table is not analyzed: chosen while `usage_fixes`
/// or `customers` held a few rows (a new deployment), it read the whole table for every
/// later batch. On one connection: 8 batches while both are nearly empty, 50,000 fixes
/// and 20,000 customers added, 40 batches more, none of which may read either table
/// whole (the early ones may: small tables are cheaper read whole).
#[tokio::test]
async fn batches_read_by_key_once_the_tables_have_grown_under_their_connection() {
    let app = TestApp::api_only().await;
    // An ANALYZE would replace the cached plans (and hide the bug): none runs here.
    sqlx::query("ALTER TABLE usage_fixes SET (autovacuum_enabled = off)").execute(&app.db.pool).await.unwrap();
    sqlx::query("ALTER TABLE customers SET (autovacuum_enabled = off)").execute(&app.db.pool).await.unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&app.db.url).await.unwrap();
    let ctx = JobContext::new(pool.clone(), app.settings.clone()).unwrap();
    let email = Email::parse("grows@example.com").unwrap();
    let customer = factories::create(&app.db.pool, &app.settings, CustomerState::Pro, email).await.unwrap().customer_id;
    let consume = |fix_id: String| {
        let ctx = ctx.clone();
        async move {
            let outcome = fix(customer, &fix_id).run(ctx).await.expect("the fix is paid");
            assert!(matches!(&outcome, Outcome::Done { detail } if detail["outcome"] == "consumed"), "{outcome:?}");
        }
    };
    let (early, later) = (8, 40);
    // Each table's full reads so far, the batches' connection's included (it reports
    // its counters when its next statement ends).
    let full_reads = || async {
        sqlx::query("SELECT pg_stat_force_next_flush()").execute(&pool).await.unwrap();
        let mut reads = Vec::new();
        for table in ["usage_fixes", "customers"] {
            let read: (i64, i64) =
                sqlx::query_as("SELECT seq_scan, coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE relname = $1")
                    .bind(table)
                    .fetch_one(&app.db.pool)
                    .await
                    .unwrap();
            reads.push((table, read));
        }
        reads
    };
    for n in 0..early {
        consume(format!("early-{n}")).await;
    }
    sqlx::query(
        "INSERT INTO usage_fixes (customer_id, fix_id, repo, outcome, refusal_code)
         SELECT $1, 'recorded-' || n, 'org/repo', 'refused', 'NO_BILLING_INFO' FROM generate_series(1, 50000) n",
    )
    .bind(customer)
    .execute(&app.db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO customers (id, name, email) SELECT gen_random_uuid(), 'Other', 'other-' || n || '@example.com'
         FROM generate_series(1, 20000) n",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
    let before = full_reads().await;
    for n in 0..later {
        consume(format!("later-{n}")).await;
    }
    let after = full_reads().await;

    for ((table, (whole_before, by_key_before)), (_, (whole, by_key))) in before.into_iter().zip(after) {
        assert_eq!(whole - whole_before, 0, "the later batches read {table} whole");
        assert!(by_key - by_key_before >= later, "the later batches read {table} by key");
    }
    assert_eq!(app.balance(customer).await, 60 - early - later);
}

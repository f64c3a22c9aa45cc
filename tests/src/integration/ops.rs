//! Operating it: admin API and page, CLI, metrics, pruning, OpenAPI.

use std::process::Command;
use std::time::Duration;

use common::domain::{CustomerName, Email};
use common::jobs::PruneJobs;
use common::queue::testing;
use common::queue::{self, EnqueueOptions, Enqueued, Job, JobStatus};
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{TestApp, grant, our_command, wait_for, wait_for_kind_finished};

pub const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";

pub async fn app_with_admin() -> TestApp {
    TestApp::spawn(&[("ADMIN_TOKEN", ADMIN_TOKEN)], true).await
}

/// A grant to a customer that does not exist yet, with one attempt: dead at once.
pub async fn dead_grant(app: &TestApp) -> (i64, Uuid) {
    let customer_id = Uuid::new_v4();
    let job = grant(customer_id, &format!("ops-{customer_id}"), 7);
    let Enqueued::Inserted(id) =
        queue::enqueue_with(&app.db.pool, &job, EnqueueOptions { max_attempts: Some(1), ..Default::default() })
            .await
            .unwrap()
    else {
        panic!("inserted")
    };
    queue::testing::wait_for_status(&app.db.pool, id, JobStatus::Dead, Duration::from_secs(10)).await;
    (id, customer_id)
}

/// Makes the dead grant's customer exist, so a redrive can succeed.
pub async fn create_customer(app: &TestApp, id: Uuid) {
    let email = Email::parse(&format!("{}@example.com", id.simple())).unwrap();
    common::db::customers::insert_trial(&app.db.pool, id, &CustomerName::parse("Late").unwrap(), &email, None)
        .await
        .unwrap();
}

async fn job_status(app: &TestApp, id: i64) -> Option<JobStatus> {
    queue::testing::status_of(&app.db.pool, id).await
}

pub fn admin(app: &TestApp, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
    app.client.request(method, app.url(path)).bearer_auth(ADMIN_TOKEN)
}

#[tokio::test]
async fn a_job_whose_arguments_hold_extreme_numbers_reads_back_everywhere() {
    // Found by the schema fuzzer: jsonb prints 1.7976931348623157e308 as 309 exact
    // digits, which a lossy float parser overflows: the job showed as a 500.
    let app = TestApp::spawn(&[("ADMIN_TOKEN", ADMIN_TOKEN)], false).await;
    // No worker runs here: the job waits, as an operator would look at it.
    let customer_id = Uuid::new_v4();
    let metadata = serde_json::json!({ "max": f64::MAX, "min": f64::MIN_POSITIVE, "big": 1e300, "neg": -1e-300 });
    let fix = common::jobs::RecordUsage {
        customer_id,
        fix_id: "extreme".into(),
        repo: "org/repo".into(),
        metadata: metadata.clone(),
    };
    let Enqueued::Inserted(id) = queue::enqueue(&app.db.pool, &fix).await.unwrap() else { panic!("a new job") };
    let shown = admin(&app, reqwest::Method::GET, &format!("/admin/api/jobs/{id}")).send().await.unwrap();
    assert_eq!(shown.status(), 200);
    let shown: Value = shown.json().await.unwrap();
    assert_eq!(shown["args"]["metadata"], metadata);
    let claimed = testing::require_job(&app.db.pool, id).await;
    assert_eq!(claimed.args["metadata"], metadata, "a worker reads the same arguments back");
}

#[tokio::test]
async fn admin_needs_its_token_and_does_not_exist_without_one() {
    let without = TestApp::api_only().await;
    assert_eq!(without.client.get(without.url("/admin/api/queues")).send().await.unwrap().status(), 404);
    assert_eq!(without.client.get(without.url("/admin")).send().await.unwrap().status(), 404);

    let app = TestApp::spawn(&[("ADMIN_TOKEN", ADMIN_TOKEN)], false).await;
    assert_eq!(app.client.get(app.url("/admin/api/queues")).send().await.unwrap().status(), 401);
    let wrong = app
        .client
        .get(app.url("/admin/api/queues"))
        .bearer_auth("admin-token-for-tests-0123456788")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let body: Value = wrong.json().await.unwrap();
    assert_eq!(body["error"]["code"], "UNAUTHORIZED");
    let right = admin(&app, reqwest::Method::GET, "/admin/api/queues").send().await.unwrap();
    assert_eq!(right.status(), 200);
    let body: Value = right.json().await.unwrap();
    let queues: Vec<&str> = body["queues"].as_array().unwrap().iter().map(|q| q["queue"].as_str().unwrap()).collect();
    assert!(queues.contains(&"provision_customer") && queues.contains(&"send_email_step"), "{queues:?}");
    // The page sends a signed-out browser to sign in.
    let page = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let response = page.get(app.url("/admin")).send().await.unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/admin/login");
}

#[tokio::test]
async fn a_redriven_dead_job_runs_again_and_completes() {
    let app = app_with_admin().await;
    let (id, customer) = dead_grant(&app).await;
    let detail: Value =
        admin(&app, reqwest::Method::GET, &format!("/admin/api/jobs/{id}")).send().await.unwrap().json().await.unwrap();
    assert_eq!(detail["status"], "dead");
    assert!(
        detail["errors"][0]["error"].as_str().unwrap().contains("does not exist"),
        "the full error history: {detail}"
    );
    let listed: Value = admin(&app, reqwest::Method::GET, "/admin/api/jobs?state=dead&queue=grant_credits")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["jobs"][0]["id"], id);
    let by_customer: Value = admin(&app, reqwest::Method::GET, &format!("/admin/api/jobs?customer_id={customer}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(by_customer["jobs"].as_array().unwrap().len(), 1);
    let overview: Value =
        admin(&app, reqwest::Method::GET, "/admin/api/queues").send().await.unwrap().json().await.unwrap();
    let grants = overview["queues"].as_array().unwrap().iter().find(|q| q["queue"] == "grant_credits").unwrap().clone();
    assert_eq!(grants["dead"], 1);

    create_customer(&app, customer).await;
    let redriven = admin(&app, reqwest::Method::POST, &format!("/admin/api/jobs/{id}/redrive")).send().await.unwrap();
    assert_eq!(redriven.status(), 200);
    wait_for("the redriven job to complete", Duration::from_secs(10), || async {
        job_status(&app, id).await == Some(JobStatus::Completed)
    })
    .await;
    assert_eq!(app.balance(customer).await, 7);
    let again = admin(&app, reqwest::Method::POST, &format!("/admin/api/jobs/{id}/redrive")).send().await.unwrap();
    assert_eq!(again.status(), 409, "only dead jobs are redriven");
}

#[tokio::test]
async fn discard_removes_a_dead_job_and_cancel_stops_a_waiting_one() {
    let app = app_with_admin().await;
    let (dead, _) = dead_grant(&app).await;
    assert_eq!(
        admin(&app, reqwest::Method::POST, &format!("/admin/api/jobs/{dead}/discard")).send().await.unwrap().status(),
        200
    );
    assert_eq!(job_status(&app, dead).await, None);
    assert_eq!(
        admin(&app, reqwest::Method::GET, &format!("/admin/api/jobs/{dead}")).send().await.unwrap().status(),
        404
    );

    let (customer, _) = app.onboarded_customer("cancel-me@example.com").await;
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    let Enqueued::Inserted(waiting) = queue::enqueue_with(
        &app.db.pool,
        &grant(customer, "never", 3),
        EnqueueOptions { run_at: Some(later), ..Default::default() },
    )
    .await
    .unwrap() else {
        panic!()
    };
    let running_now =
        admin(&app, reqwest::Method::POST, &format!("/admin/api/jobs/{waiting}/cancel")).send().await.unwrap();
    assert_eq!(running_now.status(), 200);
    // Were it still waiting, it would now be first in line; the grant after it runs, it never does.
    sqlx::query("UPDATE jobs SET run_at = now() - interval '1 minute' WHERE id = $1")
        .bind(waiting)
        .execute(&app.db.pool)
        .await
        .unwrap();
    queue::enqueue(&app.db.pool, &grant(customer, "after", 3)).await.unwrap();
    wait_for_kind_finished(&app.db.pool, "grant_credits", Duration::from_secs(10)).await;
    assert_eq!(job_status(&app, waiting).await, Some(JobStatus::Cancelled));
    assert_eq!(app.balance(customer).await, 5 + 3, "only the second grant took effect");
    let twice = admin(&app, reqwest::Method::POST, &format!("/admin/api/jobs/{waiting}/cancel")).send().await.unwrap();
    assert_eq!(twice.status(), 409);
}

#[tokio::test]
async fn job_details_redact_secrets() {
    let app = app_with_admin().await;
    app.onboarded_customer("redact@example.com").await;
    let listed: Value = admin(&app, reqwest::Method::GET, "/admin/api/jobs?queue=provision_customer")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = listed["jobs"][0]["id"].as_i64().unwrap();
    let detail: Value =
        admin(&app, reqwest::Method::GET, &format!("/admin/api/jobs/{id}")).send().await.unwrap().json().await.unwrap();
    assert_eq!(detail["args"]["api_key_hash"], "[redacted]");
    assert_eq!(detail["args"]["email"], "redact@example.com");
}

fn counter(metrics: &str, name: &str, label: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn metrics_move_as_jobs_run_and_requests_are_served() {
    let app = TestApp::with_worker().await;
    let before = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    app.onboarded_customer("metrics@example.com").await;
    wait_for_kind_finished(&app.db.pool, "provision_customer", Duration::from_secs(10)).await;
    let after = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let kind = "kind=\"provision_customer\"";
    assert_eq!(
        counter(&after, "rsolv_jobs_started_total", kind) - counter(&before, "rsolv_jobs_started_total", kind),
        1.0
    );
    assert_eq!(
        counter(&after, "rsolv_jobs_succeeded_total", kind) - counter(&before, "rsolv_jobs_succeeded_total", kind),
        1.0
    );
    assert!(counter(&after, "rsolv_job_duration_seconds_count", kind) >= 1.0);
    assert!(counter(&after, "rsolv_ledger_postings_total", "source=\"trial_signup\"") >= 1.0);
    assert!(
        after.contains("rsolv_http_request_duration_seconds_bucket{route=\"/api/v1/customers/onboard\",method=\"POST\",status=\"202\""),
        "HTTP latency by route and status:\n{after}"
    );
}

#[tokio::test]
async fn pruning_deletes_only_what_is_past_retention() {
    let app = TestApp::api_only().await;
    for (status, age_hours) in [
        ("completed", 24 * 8),
        ("completed", 24 * 6),
        ("cancelled", 24 * 8),
        ("dead", 24 * 31),
        ("dead", 24 * 29),
        ("available", 24 * 40),
    ] {
        sqlx::query(
            "INSERT INTO jobs (kind, args, status, finished_at, created_at)
             VALUES ('grant_credits', $1, $2, CASE WHEN $2 = 'available' THEN NULL ELSE now() - $3 * interval '1 hour' END,
                     now() - $3 * interval '1 hour')",
        )
        .bind(serde_json::json!({ "status": status, "age": age_hours }))
        .bind(status)
        .bind(age_hours as f64)
        .execute(&app.db.pool)
        .await
        .unwrap();
    }
    PruneJobs { tick: 1 }.run(app.job_context()).await.unwrap();
    let mut left: Vec<(JobStatus, i64)> = testing::all_jobs(&app.db.pool)
        .await
        .into_iter()
        .map(|job| (job.status, job.args["age"].as_i64().unwrap()))
        .collect();
    left.sort_by_key(|(status, age)| (status.as_str(), *age));
    assert_eq!(left, vec![(JobStatus::Available, 960), (JobStatus::Completed, 144), (JobStatus::Dead, 696)]);
}

#[tokio::test]
async fn the_openapi_document_is_valid_and_lists_every_route_with_its_answers() {
    let app = TestApp::spawn(&[("ADMIN_TOKEN", ADMIN_TOKEN)], false).await;
    let raw = app.client.get(app.url("/api/openapi.json")).send().await.unwrap().text().await.unwrap();
    // Before the validator's seconds: the server's keep-alive may close the connection
    // a later request would reuse.
    let docs = app.client.get(app.url("/api/docs")).send().await.unwrap();
    assert_eq!(docs.status(), 200);
    // Validated against the OpenAPI JSON Schema by openapi-spec-validator (PyPI).
    let file = std::env::temp_dir().join(format!("rsolv-openapi-{}.json", Uuid::new_v4().simple()));
    std::fs::write(&file, &raw).unwrap();
    let python = std::env::var("TEST_PYTHON").expect("TEST_PYTHON is unset: run the tests with scripts/test");
    let check = Command::new(python).args(["-m", "openapi_spec_validator"]).arg(&file).output().unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(
        check.status.success(),
        "invalid OpenAPI document: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let doc: Value = serde_json::from_str(&raw).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let public = [
        ("get", "/health"),
        ("get", "/ready"),
        ("post", "/api/v1/customers/onboard"),
        ("get", "/api/v1/onboarding/{customer_id}"),
        ("get", "/api/v1/customers/me"),
        ("post", "/api/v1/usage/fixes"),
        ("get", "/api/v1/usage/fixes/{fix_id}"),
        ("post", "/api/v1/api-keys"),
        ("get", "/api/v1/api-keys"),
        ("delete", "/api/v1/api-keys/{key_id}"),
        ("post", "/api/v1/billing/payment-methods"),
        ("post", "/api/v1/billing/subscription"),
        ("delete", "/api/v1/billing/subscription"),
        ("post", "/api/v1/billing/subscription/resume"),
        ("get", "/api/v1/billing/invoices"),
        ("get", "/api/v1/billing/operations/{operation_id}"),
        ("post", "/api/webhooks/stripe"),
        ("get", "/email/unsubscribe"),
        ("post", "/email/unsubscribe"),
        ("get", "/admin/api/queues"),
        ("post", "/admin/api/queues/{queue}/redrive"),
        ("get", "/admin/api/jobs"),
        ("get", "/admin/api/jobs/{id}"),
        ("delete", "/admin/api/jobs/{id}"),
        ("post", "/admin/api/jobs/{id}/redrive"),
        ("post", "/admin/api/jobs/{id}/discard"),
        ("post", "/admin/api/jobs/{id}/cancel"),
        ("post", "/admin/api/customers/{id}/credits"),
        ("get", "/admin/api/audit"),
    ];
    for (method, path) in public {
        let operation = &doc["paths"][path][method];
        assert!(operation.is_object(), "{method} {path} is documented");
        // Every answer is described with its body, and names its request.
        for (status, response) in operation["responses"].as_object().unwrap() {
            assert!(response["content"].is_object(), "{method} {path} {status} has a body schema");
            assert!(response["headers"]["X-Request-Id"].is_object(), "{method} {path} {status} names X-Request-Id");
        }
    }
    let operations: usize =
        doc["paths"].as_object().unwrap().values().map(|item| item.as_object().unwrap().len()).sum();
    assert_eq!(operations, public.len(), "nothing is documented that is not listed here");
    // What the layers in front of the handlers answer is documented where it can happen.
    let onboard = &doc["paths"]["/api/v1/customers/onboard"]["post"];
    for status in ["400", "413", "415", "422", "429", "503"] {
        assert!(onboard["responses"][status].is_object(), "onboarding documents {status}");
    }
    assert!(onboard["parameters"].as_array().unwrap().iter().any(|p| p["name"] == "Idempotency-Key"));
    assert!(onboard["responses"]["429"]["headers"]["Retry-After"].is_object());
    assert!(doc["paths"]["/api/v1/customers/me"]["get"]["responses"]["401"].is_object());
    assert!(doc["paths"]["/admin/api/audit"]["get"]["security"][0]["admin_token"].is_array());
}

#[tokio::test]
async fn the_cli_lists_shows_and_redrives_dead_jobs() {
    let app = app_with_admin().await;
    let (id, customer) = dead_grant(&app).await;
    let cli = |args: &[&str]| {
        let out = our_command("rsolv-worker", &app.db.url).arg("jobs").args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(
        cli(&["queues"]).lines().any(|l| l.starts_with("grant_credits") && l.split_whitespace().nth(6) == Some("1"))
    );
    assert!(cli(&["dead"]).contains(&id.to_string()));
    assert!(cli(&["show", &id.to_string()]).contains("does not exist"));
    create_customer(&app, customer).await;
    cli(&["redrive", &id.to_string()]);
    wait_for("the redriven job to complete", Duration::from_secs(10), || async {
        job_status(&app, id).await == Some(JobStatus::Completed)
    })
    .await;
}

#[tokio::test]
async fn the_queue_gauges_agree_with_the_overview() {
    // No worker: the rows stay as written.
    let app = TestApp::api_only().await;
    sqlx::query(
        "INSERT INTO jobs (kind, args, status, run_at, attempts, finished_at) VALUES
             ('grant_credits', '{}', 'available', now() - interval '90 seconds', 0, NULL),
             ('grant_credits', '{}', 'available', now() + interval '1 hour', 0, NULL),
             ('grant_credits', '{}', 'retryable', now() + interval '1 hour', 1, NULL),
             ('grant_credits', '{}', 'retryable', now() - interval '10 seconds', 1, NULL),
             ('grant_credits', '{}', 'running', now(), 1, NULL),
             ('grant_credits', '{}', 'dead', now(), 3, now()),
             ('grant_credits', '{}', 'dead', now(), 3, now()),
             ('grant_credits', '{}', 'completed', now(), 1, now()),
             ('record_usage', '{}', 'dead', now(), 3, now())",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
    let kinds = ["grant_credits", "record_usage", "send_email_step"];
    let overview = queue::admin::overview(&app.db.pool, &kinds).await.unwrap();
    let gauges = queue::admin::gauges(&app.db.pool, &kinds).await.unwrap();
    assert_eq!(gauges.len(), kinds.len(), "one row per kind, empty queues included");
    for (o, g) in overview.iter().zip(&gauges) {
        assert_eq!(o.queue, g.queue);
        assert_eq!(g.depth, o.available + o.retryable, "{}", g.queue);
        assert_eq!(g.dead, o.dead, "{}", g.queue);
        assert!((g.oldest_waiting_seconds - o.oldest_waiting_seconds).abs() < 1.0, "{}", g.queue);
    }
    let grants = &gauges[0];
    assert_eq!((grants.depth, grants.dead), (3, 2));
    assert!(grants.oldest_waiting_seconds >= 90.0);
}

/// Signs in to the admin page; the session cookie (`name=value`) and the Set-Cookie line.
async fn sign_in(app: &TestApp, browser: &reqwest::Client) -> (String, String) {
    let answer = browser
        .post(app.url("/admin/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", app.address.clone())
        .header("sec-fetch-site", "same-origin")
        .body(format!("token={ADMIN_TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 303);
    let set_cookie = answer.headers()["set-cookie"].to_str().unwrap().to_owned();
    (set_cookie.split(';').next().unwrap().to_owned(), set_cookie)
}

#[tokio::test]
async fn admin_sessions_are_random_hashed_expiring_revocable_and_forms_need_their_csrf_token() {
    let app = app_with_admin().await;
    let (id, customer_id) = dead_grant(&app).await;
    // Its customer exists now: a redrive that happens completes the grant.
    create_customer(&app, customer_id).await;
    let browser = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let (cookie, set_cookie) = sign_in(&app, &browser).await;
    let (other, _) = sign_in(&app, &browser).await;
    assert_ne!(cookie, other, "every sign-in gets its own session");
    for attribute in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/admin", "Max-Age=28800"] {
        assert!(set_cookie.contains(attribute), "{attribute} in {set_cookie}");
    }
    let value = cookie.split_once('=').unwrap().1;
    let stored: String =
        sqlx::query_scalar("SELECT string_agg(token_hash, ' ') FROM sessions").fetch_one(&app.db.pool).await.unwrap();
    assert!(!stored.contains(value), "only the cookie's hash is stored");

    let overview = |cookie: String| {
        let browser = browser.clone();
        let url = app.url("/admin");
        async move { browser.get(url).header("cookie", cookie).send().await.unwrap() }
    };
    let page = overview(cookie.clone()).await;
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    let page = page.text().await.unwrap();
    let csrf = page.split("name=\"csrf\" value=\"").nth(1).and_then(|rest| rest.split('"').next()).unwrap().to_owned();
    assert!(csrf.len() >= 32);

    // A form without the token, with another session's token, or from another site:
    // refused, and the dead job stays dead.
    let redrive = |cookie: &str, body: String, origin: &str| {
        browser
            .post(app.url(&format!("/admin/jobs/{id}/redrive")))
            .header("cookie", cookie)
            .header("origin", origin)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    let own = app.address.clone();
    assert_eq!(redrive(&cookie, String::new(), &own).await.unwrap().status(), 403);
    let other_page = overview(other.clone()).await.text().await.unwrap();
    let other_csrf = other_page.split("name=\"csrf\" value=\"").nth(1).and_then(|r| r.split('"').next()).unwrap();
    assert_eq!(redrive(&cookie, format!("csrf={other_csrf}"), &own).await.unwrap().status(), 403);
    assert_eq!(redrive(&cookie, format!("csrf={csrf}"), "https://evil.example").await.unwrap().status(), 403);
    assert_eq!(job_status(&app, id).await, Some(JobStatus::Dead));
    let done = redrive(&cookie, format!("csrf={csrf}"), &own).await.unwrap();
    assert_eq!(done.status(), 303);
    // With its token the form works.
    queue::testing::wait_for_status(&app.db.pool, id, JobStatus::Completed, Duration::from_secs(10)).await;

    // Signing out ends that session only.
    let out = browser
        .post(app.url("/admin/logout"))
        .header("cookie", &cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}"))
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    assert_eq!(
        overview(cookie.clone()).await.headers()["location"],
        "/admin/login",
        "a signed-out cookie opens nothing"
    );
    assert_eq!(overview(other.clone()).await.status(), 200);
    // An expired session opens nothing either.
    sqlx::query("UPDATE sessions SET expires_at = now() - interval '1 second'").execute(&app.db.pool).await.unwrap();
    assert_eq!(overview(other).await.headers()["location"], "/admin/login");

    // A sign-in form posted from another site is refused (no login CSRF).
    let forged = browser
        .post(app.url("/admin/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("sec-fetch-site", "cross-site")
        .body(format!("token={ADMIN_TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    // Behind a proxy that rewrites Host, the public origin (PUBLIC_BASE_URL) is ours.
    let proxied = browser
        .post(app.url("/admin/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("host", "rsolv-api.internal:8080")
        .header("origin", app.address.clone())
        .body(format!("token={ADMIN_TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(proxied.status(), 303);
}

#[tokio::test]
async fn pages_send_a_csp_and_the_docs_page_loads_no_script() {
    let app = TestApp::api_only().await;
    let docs = app.client.get(app.url("/api/docs")).send().await.unwrap();
    assert_eq!(docs.status(), 200);
    assert!(docs.headers()["content-security-policy"].to_str().unwrap().contains("default-src 'none'"));
    assert_eq!(docs.headers()["x-content-type-options"], "nosniff");
    let html = docs.text().await.unwrap();
    assert!(!html.contains("<script"), "no script, from anywhere");
    assert!(html.contains("/api/v1/usage/fixes") && html.contains("NO_BILLING_INFO"), "the operations are listed");
}

#[tokio::test]
async fn api_metrics_can_need_a_token_and_move_to_an_address_of_their_own() {
    let guarded = TestApp::spawn(&[("METRICS_TOKEN", "scrape-token-0123456789")], false).await;
    assert_eq!(guarded.client.get(guarded.url("/metrics")).send().await.unwrap().status(), 401);
    let scraped =
        guarded.client.get(guarded.url("/metrics")).bearer_auth("scrape-token-0123456789").send().await.unwrap();
    assert_eq!(scraped.status(), 200);

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let own = format!("127.0.0.1:{port}");
    let apart = TestApp::spawn(&[("API_METRICS_ADDR", own.as_str())], false).await;
    assert_eq!(apart.client.get(apart.url("/metrics")).send().await.unwrap().status(), 404, "not on the public port");
    let url = format!("http://{own}/metrics");
    wait_for("the metrics listener", Duration::from_secs(10), || {
        let (client, url) = (apart.client.clone(), url.clone());
        async move { client.get(&url).send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
}

#[tokio::test]
async fn every_answer_names_its_request_keeping_a_sane_client_id_and_replacing_any_other() {
    let app = TestApp::api_only().await;
    let id_of = |response: &reqwest::Response| {
        response.headers().get("x-request-id").map(|v| v.to_str().unwrap().to_owned()).expect("x-request-id answered")
    };
    let generated = |id: &str| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit());

    let kept = app.client.get(app.url("/health")).header("x-request-id", "lb-7f3a:trace_01.b").send().await.unwrap();
    assert_eq!(id_of(&kept), "lb-7f3a:trace_01.b");
    let (first, second) = (
        app.client.get(app.url("/health")).send().await.unwrap(),
        app.client.get(app.url("/health")).send().await.unwrap(),
    );
    assert!(generated(&id_of(&first)) && id_of(&first) != id_of(&second), "each request gets a new id");
    for unsafe_id in ["two words", "<script>", &"a".repeat(65)] {
        let replaced = app.client.get(app.url("/health")).header("x-request-id", unsafe_id).send().await.unwrap();
        let id = id_of(&replaced);
        assert!(generated(&id), "{unsafe_id:?} is replaced by a new id, not echoed: {id}");
    }
    // Refused at the edge, unauthenticated, unknown route: the id is there all the same.
    for (path, status) in [("/api/v1/usage/fixes/%00", 400), ("/api/v1/customers/me", 401), ("/nowhere", 404)] {
        let refused = app.client.get(app.url(path)).header("x-request-id", "refused-1").send().await.unwrap();
        assert_eq!(refused.status(), status, "{path}");
        assert_eq!(id_of(&refused), "refused-1", "{path}");
    }
}

#[tokio::test]
async fn a_request_id_follows_the_request_into_its_jobs_and_the_jobs_they_enqueue() {
    // With Stripe, provisioning enqueues the Stripe customer's creation.
    let app = TestApp::with_billing().await;
    let response = app
        .client
        .post(app.url("/api/v1/customers/onboard"))
        .header("x-request-id", "signup-trace-42")
        .json(&serde_json::json!({ "name": "Traced", "email": "traced@example.com" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["x-request-id"], "signup-trace-42");
    // Provisioning was enqueued by the request; the Stripe customer and the onboarding
    // email by the provisioning job's run.
    let pool = app.db.pool.clone();
    wait_for("the provisioning job's own jobs", Duration::from_secs(20), || {
        let pool = pool.clone();
        async move {
            let jobs = testing::all_jobs(&pool).await;
            jobs.len() > 1 && jobs.iter().any(|job| job.kind == "create_stripe_customer")
        }
    })
    .await;
    let jobs: Vec<(String, Option<String>)> =
        testing::all_jobs(&app.db.pool).await.into_iter().map(|job| (job.kind, job.request_id)).collect();
    assert_eq!(jobs[0].0, "provision_customer");
    assert!(
        jobs.iter().all(|(_, request_id)| request_id.as_deref() == Some("signup-trace-42")),
        "every job of the signup names its request: {jobs:?}"
    );
    // A job enqueued outside any request (cron, operator, tests) names none.
    queue::enqueue(&app.db.pool, &grant(Uuid::new_v4(), "untraced", 1)).await.unwrap();
    let untraced = testing::all_jobs(&app.db.pool).await.pop().unwrap();
    assert_eq!(untraced.request_id, None);
}

/// The query KEDA scales the workers on, as `deploy/k8s/base/worker-autoscaling.yaml`
/// ships it: it counts exactly the due jobs and reads the claim index, not the table.
#[tokio::test]
async fn the_autoscalers_query_counts_due_jobs_from_the_claim_index() {
    let app = TestApp::api_only().await;
    let manifest = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/k8s/base/worker-autoscaling.yaml"),
    )
    .unwrap();
    let query = manifest
        .lines()
        .find_map(|line| line.trim().strip_prefix("query: "))
        .expect("the ScaledObject has a query")
        .trim_matches('"')
        .to_owned();
    let customer = Uuid::new_v4();
    for n in 0..3 {
        queue::enqueue(&app.db.pool, &grant(customer, &format!("due-{n}"), 1)).await.unwrap();
    }
    let later = EnqueueOptions { run_at: Some(chrono::Utc::now() + chrono::Duration::hours(1)), ..Default::default() };
    queue::enqueue_with(&app.db.pool, &grant(customer, "later", 1), later).await.unwrap();
    sqlx::query("UPDATE jobs SET status = 'completed', finished_at = now() WHERE unique_key = 'due-2'")
        .execute(&app.db.pool)
        .await
        .unwrap();
    let due: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(query.clone())).fetch_one(&app.db.pool).await.unwrap();
    assert_eq!(due, 2, "waiting and due only: not the scheduled one, not the finished one");

    // The index can serve it: with scanning the table priced out (as it is once the
    // table holds a history of finished jobs), the plan reads the partial index.
    let mut tx = app.db.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL enable_seqscan = off").execute(&mut *tx).await.unwrap();
    let plan: Vec<String> =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN {query}"))).fetch_all(&mut *tx).await.unwrap();
    assert!(plan.iter().any(|line| line.contains("jobs_claim")), "{plan:#?}");
}

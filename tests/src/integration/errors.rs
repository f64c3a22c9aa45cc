//! Bad input gets the documented error body and changes nothing.

use common::queue::testing;
use serde_json::{Value, json};

use crate::helpers::TestApp;

async fn assert_error(response: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(response.status().as_u16(), status);
    let body: Value = response.json().await.expect("error bodies are JSON");
    assert_eq!(body["error"]["code"], code, "body: {body}");
    let message = body["error"]["message"].as_str().expect("a message").to_owned();
    assert!(!message.is_empty());
    message
}

#[tokio::test]
async fn every_invalid_onboarding_is_refused_and_changes_nothing() {
    let app = TestApp::with_worker().await;
    let long_name = "n".repeat(101);
    let cases = [
        json!({ "name": "Ada" }),
        json!({ "email": "ada@example.com" }),
        json!({ "name": "Ada", "email": "" }),
        json!({ "name": "Ada", "email": "not-an-email" }),
        json!({ "name": "Ada", "email": "ada@localhost" }),
        json!({ "name": "Ada", "email": "ada@mailinator.com" }),
        json!({ "name": "", "email": "ada@example.com" }),
        json!({ "name": "   ", "email": "ada@example.com" }),
        json!({ "name": long_name, "email": "ada@example.com" }),
        json!({ "name": 42, "email": "ada@example.com" }),
        json!({ "name": "Ada", "email": ["ada@example.com"] }),
        json!({ "name": "Ada", "email": "ada@example.com", "source": 7 }),
        json!({ "name": "Ada", "email": "ada@example.com", "source": "s".repeat(101) }),
        json!([]),
        json!("ada@example.com"),
    ];
    for body in &cases {
        let response = app.post_json("/api/v1/customers/onboard", body).await;
        assert_eq!(response.status(), 422, "for {body}");
        assert_error(response, 422, "VALIDATION_FAILED").await;
    }
    assert_eq!(testing::count_all(&app.db.pool).await, 0);
    assert_eq!(app.count("SELECT count(*) FROM customers").await, 0);
}

#[tokio::test]
async fn malformed_bodies_get_the_error_body() {
    let app = TestApp::api_only().await;
    let url = app.url("/api/v1/customers/onboard");
    let send = |body: Vec<u8>, content_type: &'static str| {
        app.client.post(&url).header("content-type", content_type).body(body).send()
    };
    assert_error(send(b"{\"name\": ".to_vec(), "application/json").await.unwrap(), 400, "INVALID_JSON").await;
    assert_error(send(vec![0xff, 0xfe, b'{'], "application/json").await.unwrap(), 400, "INVALID_JSON").await;
    assert_error(send(b"{}".to_vec(), "text/plain").await.unwrap(), 415, "UNSUPPORTED_MEDIA_TYPE").await;
    let huge = format!("{{\"name\": \"{}\", \"email\": \"a@example.com\"}}", "x".repeat(100_000));
    assert_error(send(huge.into_bytes(), "application/json").await.unwrap(), 413, "PAYLOAD_TOO_LARGE").await;
    let charset =
        send(br#"{"name":"Ada","email":"ada@example.com"}"#.to_vec(), "application/json; charset=utf-8").await.unwrap();
    assert_eq!(charset.status(), 202, "a charset parameter is fine");
    assert_eq!(testing::count_all(&app.db.pool).await, 1);
}

#[tokio::test]
async fn unknown_routes_and_methods_get_the_error_body() {
    let app = TestApp::api_only().await;
    assert_error(app.client.get(app.url("/nope")).send().await.unwrap(), 404, "NOT_FOUND").await;
    assert_error(app.client.get(app.url("/api/v1/customers/onboard")).send().await.unwrap(), 405, "METHOD_NOT_ALLOWED")
        .await;
    assert_error(app.client.delete(app.url("/health")).send().await.unwrap(), 405, "METHOD_NOT_ALLOWED").await;
    assert_error(app.client.get(app.url("/api/v1/onboarding/not-a-uuid")).send().await.unwrap(), 404, "NOT_FOUND")
        .await;
    // A 405 names exactly the methods the path serves: the documented ones for the API
    // (one path, two handlers; a path with a parameter), a page's own for pages.
    let allow = |method: reqwest::Method, path: &'static str| {
        let request = app.client.request(method, app.url(path));
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 405, "{path}");
            let allow = response.headers().get("allow").map(|v| v.to_str().unwrap().to_owned());
            assert_error(response, 405, "METHOD_NOT_ALLOWED").await;
            allow.unwrap_or_default()
        }
    };
    assert_eq!(allow(reqwest::Method::GET, "/api/v1/customers/onboard").await, "POST");
    assert_eq!(allow(reqwest::Method::PUT, "/api/v1/api-keys").await, "GET, POST");
    assert_eq!(allow(reqwest::Method::PATCH, "/api/v1/billing/subscription").await, "POST, DELETE");
    assert_eq!(allow(reqwest::Method::GET, "/api/v1/api-keys/0e0b6c55-1d4e-4d7c-9a4c-5c5a3e9e4b11").await, "DELETE");
    assert_eq!(allow(reqwest::Method::GET, "/api/webhooks/stripe").await, "POST");
    // Without an ADMIN_TOKEN the admin API does not exist: not even a 405.
    assert_error(app.client.put(app.url("/admin/api/jobs/7")).send().await.unwrap(), 404, "NOT_FOUND").await;
    assert_eq!(allow(reqwest::Method::DELETE, "/admin/login").await, "GET, POST");
    assert_eq!(allow(reqwest::Method::POST, "/api/openapi.json").await, "GET");
}

#[tokio::test]
async fn authentication_errors_say_what_is_wrong() {
    let app = TestApp::with_worker().await;
    let (_, key) = app.onboarded_customer("auth@example.com").await;
    let missing = app.client.get(app.url("/api/v1/customers/me")).send().await.unwrap();
    assert_eq!(assert_error(missing, 401, "UNAUTHORIZED").await, "API key must be provided in x-api-key header");
    let forged = format!("rsolv_{}", "A".repeat(43));
    for bad in ["nonsense", forged.as_str(), &key[..key.len() - 1]] {
        let response = app.get_with_key("/api/v1/customers/me", bad).await;
        assert_eq!(assert_error(response, 401, "UNAUTHORIZED").await, "Invalid or expired API key");
    }
    sqlx::query("UPDATE api_keys SET revoked_at = now()").execute(&app.db.pool).await.unwrap();
    let revoked = app.get_with_key("/api/v1/customers/me", &key).await;
    assert_eq!(assert_error(revoked, 401, "UNAUTHORIZED").await, "Invalid or expired API key");
}

#[tokio::test]
async fn health_and_readiness() {
    let app = TestApp::api_only().await;
    let health = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = app.client.get(app.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    // A database missing its latest migration is not ready.
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = (SELECT max(version) FROM _sqlx_migrations)")
        .execute(&app.db.pool)
        .await
        .unwrap();
    assert_error(app.client.get(app.url("/ready")).send().await.unwrap(), 503, "SERVICE_UNAVAILABLE").await;
}

#[tokio::test]
async fn hostile_bodies_and_headers_get_an_answer_and_store_nothing() {
    let app = TestApp::with_worker_and_webhooks().await;
    let (_, key) = app.onboarded_customer("hostile@example.com").await;
    let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let posts = ["/api/v1/customers/onboard", "/api/v1/usage/fixes", "/api/v1/api-keys", "/api/webhooks/stripe"];
    let jobs_before = testing::count_all(&app.db.pool).await;
    for path in posts {
        let send = |body: Vec<u8>, content_type: &'static str| {
            app.client
                .post(app.url(path))
                .header("x-api-key", &key)
                .header("content-type", content_type)
                .body(body)
                .send()
        };
        let nested = send(deep.clone().into_bytes(), "application/json").await.unwrap();
        assert!([400, 413, 422].contains(&nested.status().as_u16()), "{path}: deep JSON got {}", nested.status());
        let body: Value = nested.json().await.unwrap();
        assert!(body["error"]["code"].is_string(), "{path}: the error body");
        let xml = send(b"<a/>".to_vec(), "application/xml").await.unwrap();
        assert_eq!(xml.status(), 415, "{path}");
        let binary = send(vec![0xc3, 0x28, 0xa0, 0xa1], "application/json").await.unwrap();
        assert_eq!(binary.status(), 400, "{path}: invalid UTF-8");
        // Over the API's limit and the webhook route's own (1 MiB).
        let huge = send(vec![b' '; 1_100_000], "application/json").await.unwrap();
        assert_eq!(huge.status(), 413, "{path}");
    }
    // Huge headers: refused or served, never a server error, and the server keeps serving.
    for size in [100_000, 1_000_000] {
        let huge_header = app.client.get(app.url("/health")).header("x-padding", "x".repeat(size)).send().await;
        assert!(huge_header.map(|r| !r.status().is_server_error()).unwrap_or(true), "{size} bytes of header");
    }
    // On a new connection: the server closes the one that carried the oversized header.
    assert_eq!(reqwest::Client::new().get(app.url("/health")).send().await.unwrap().status(), 200);
    assert_eq!(testing::count_all(&app.db.pool).await, jobs_before, "nothing enqueued");
    assert_eq!(app.count("SELECT count(*) FROM billing_events").await, 0);
}

#[tokio::test]
async fn nul_characters_are_refused_not_a_server_error() {
    let app = TestApp::with_worker().await;
    let (_, key) = app.onboarded_customer("nul@example.com").await;
    let jobs_before = testing::count_all(&app.db.pool).await;
    let fix = app
        .post_with_key(
            "/api/v1/usage/fixes",
            &key,
            &json!({ "fix_id": "f", "repo": "r", "metadata": { "note": "a\u{0}b" } }),
        )
        .await;
    assert_error(fix, 422, "VALIDATION_FAILED").await;
    let key_in_name = app
        .post_with_key("/api/v1/usage/fixes", &key, &json!({ "fix_id": "f", "repo": "r", "metadata": { "k\u{0}": 1 } }))
        .await;
    assert_error(key_in_name, 422, "VALIDATION_FAILED").await;
    let source = app
        .post_json(
            "/api/v1/customers/onboard",
            &json!({ "name": "Nul", "email": "nul2@example.com", "source": "ads\u{0}" }),
        )
        .await;
    assert_error(source, 422, "VALIDATION_FAILED").await;
    assert_eq!(testing::count_all(&app.db.pool).await, jobs_before);
}

#[tokio::test]
async fn control_characters_in_any_path_or_query_are_refused_at_the_edge() {
    let app = TestApp::spawn(&[("ADMIN_TOKEN", crate::ops::ADMIN_TOKEN)], true).await;
    let (_, key) = app.onboarded_customer("edge@example.com").await;
    let jobs_before = testing::count_all(&app.db.pool).await;
    let requests = [
        (reqwest::Method::GET, "/api/v1/usage/fixes/%00"),
        (reqwest::Method::GET, "/api/v1/usage/fixes/a%0Ab"),
        (reqwest::Method::GET, "/api/v1/onboarding/%00"),
        (reqwest::Method::GET, "/api/v1/billing/operations/%7F"),
        (reqwest::Method::DELETE, "/api/v1/api-keys/%00"),
        (reqwest::Method::DELETE, "/api/v1/billing/subscription?at_period_end=%00"),
        (reqwest::Method::GET, "/admin/api/jobs?queue=%00"),
        (reqwest::Method::GET, "/admin/api/jobs/%00"),
        (reqwest::Method::GET, "/email/unsubscribe?token=%00"),
        (reqwest::Method::GET, "/nowhere/%c2%85"),
    ];
    for (method, path) in requests {
        let response = app
            .client
            .request(method.clone(), app.url(path))
            .header("x-api-key", &key)
            .bearer_auth(crate::ops::ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_error(response, 400, "VALIDATION_FAILED").await;
    }
    assert_eq!(testing::count_all(&app.db.pool).await, jobs_before, "nothing enqueued");
    assert_eq!(app.count("SELECT count(*) FROM idempotency_keys").await, 0, "nothing claimed");
}

#[tokio::test]
async fn request_headers_over_the_documented_total_get_431() {
    let app = TestApp::spawn(&[("MAX_HEADER_BYTES", "4096")], false).await;
    let big = "x".repeat(2_500);
    let within = app.client.get(app.url("/health")).header("x-one", &big).send().await.unwrap();
    assert_eq!(within.status(), 200);
    let over = app.client.get(app.url("/health")).header("x-one", &big).header("x-two", &big).send().await.unwrap();
    assert_error(over, 431, "REQUEST_HEADERS_TOO_LARGE").await;
    // The default: 16 KiB.
    let default = TestApp::api_only().await;
    let response = default.client.get(default.url("/health")).header("x-big", "y".repeat(17 * 1024)).send().await;
    assert_error(response.unwrap(), 431, "REQUEST_HEADERS_TOO_LARGE").await;
}

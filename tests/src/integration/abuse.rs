//! Rate limits (the domain spec's defaults), shared across API processes.

use chrono::{DurationRound, TimeDelta, Utc};
use common::clock::Clock;
use common::queue::testing;
use serde_json::Value;

use crate::helpers::TestApp;

/// The API's clock held still 10 s into a minute: a test's burst is never split by a
/// window's end, whenever it runs.
pub(crate) fn still_clock() -> Clock {
    let minute = Utc::now().duration_trunc(TimeDelta::minutes(1)).unwrap();
    Clock::manual(minute + TimeDelta::seconds(10))
}

/// An API (and worker) whose rate-limit windows are [`still_clock`]'s.
pub(crate) async fn limited_app(overrides: &[(&str, &str)], worker: bool) -> TestApp {
    TestApp::spawn_with_clock(overrides, worker, still_clock()).await
}

fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response.headers().get(name).map(|v| v.to_str().unwrap().to_owned())
}

async fn assert_limited(response: reqwest::Response, limit: &str) {
    assert_eq!(response.status(), 429);
    assert_eq!(header(&response, "x-ratelimit-limit").as_deref(), Some(limit));
    assert_eq!(header(&response, "x-ratelimit-remaining").as_deref(), Some("0"));
    // The window ends 50 s after the still clock's time; Retry-After says so.
    let reset: i64 = header(&response, "x-ratelimit-reset").unwrap().parse().unwrap();
    assert_eq!(reset % 60, 0, "the window ends on a minute: {reset}");
    let retry: i64 = header(&response, "retry-after").unwrap().parse().unwrap();
    assert_eq!(retry, 50, "Retry-After {retry}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "RATE_LIMITED");
}

/// An onboarding as a proxy forwards it, with its `X-Forwarded-For`.
async fn onboard_forwarded(app: &TestApp, forwarded: &str, email: &str) -> reqwest::Response {
    app.client
        .post(app.url("/api/v1/customers/onboard"))
        .header("x-forwarded-for", forwarded)
        .json(&serde_json::json!({ "name": "Forwarded", "email": email }))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_eleventh_onboarding_from_one_address_in_a_minute_is_refused() {
    let app = limited_app(&[("RATE_LIMIT_ONBOARD_PER_MINUTE", "10"), ("TRUST_FORWARDED_FOR", "true")], false).await;
    for i in 0..10 {
        let response = app.onboard("Limited", &format!("limited{i}@example.com")).await;
        assert_eq!(response.status(), 202);
        assert_eq!(header(&response, "x-ratelimit-remaining"), Some((9 - i).to_string()));
    }
    assert_limited(app.onboard("Limited", "limited10@example.com").await, "10").await;
    assert_eq!(testing::count_all(&app.db.pool).await, 10, "the refused request enqueued nothing");
    // Behind one trusted proxy, the entry it appended (the rightmost) is the client.
    let other = onboard_forwarded(&app, "203.0.113.7", "elsewhere@example.com").await;
    assert_eq!(other.status(), 202);
    // A client that prepends entries of its own does not choose its bucket: the proxy
    // appended its real address, which has used its ten.
    for i in 0..9 {
        assert_eq!(onboard_forwarded(&app, "203.0.113.7", &format!("proxied{i}@example.com")).await.status(), 202);
    }
    let spoofed = onboard_forwarded(&app, "198.51.100.1, 203.0.113.7", "spoofed@example.com").await;
    assert_limited(spoofed, "10").await;
}

#[tokio::test]
async fn behind_two_trusted_proxies_the_client_is_two_entries_from_the_right() {
    let app = limited_app(
        &[("RATE_LIMIT_ONBOARD_PER_MINUTE", "1"), ("TRUST_FORWARDED_FOR", "true"), ("TRUSTED_PROXY_HOPS", "2")],
        false,
    )
    .await;
    // CDN saw the client 203.0.113.7 and appended it; the load balancer appended the CDN.
    assert_eq!(onboard_forwarded(&app, "203.0.113.7, 192.0.2.1", "hop1@example.com").await.status(), 202);
    let spoofed = onboard_forwarded(&app, "198.51.100.1, 203.0.113.7, 192.0.2.1", "hop2@example.com").await;
    assert_limited(spoofed, "1").await;
    assert_eq!(onboard_forwarded(&app, "203.0.113.8, 192.0.2.1", "hop3@example.com").await.status(), 202);
}

#[tokio::test]
async fn an_ipv6_client_has_one_budget_for_its_whole_64() {
    let app = limited_app(&[("RATE_LIMIT_ONBOARD_PER_MINUTE", "1"), ("TRUST_FORWARDED_FOR", "true")], false).await;
    assert_eq!(onboard_forwarded(&app, "2001:db8:1:2::1", "six1@example.com").await.status(), 202);
    // Another address of the same /64 is the same subscriber, and nothing was created.
    assert_limited(onboard_forwarded(&app, "2001:db8:1:2:9f3c::77", "six2@example.com").await, "1").await;
    let traces = "SELECT (SELECT count(*) FROM customers WHERE email = 'six2@example.com')
                       + (SELECT count(*) FROM jobs WHERE args::text LIKE '%six2@example.com%')";
    assert_eq!(app.count(traces).await, 0);
    // Another /64 has a budget of its own.
    assert_eq!(onboard_forwarded(&app, "2001:db8:1:3::1", "six3@example.com").await.status(), 202);
}

#[tokio::test]
async fn a_forwarded_for_header_is_ignored_unless_the_proxy_is_trusted() {
    let app = limited_app(&[("RATE_LIMIT_ONBOARD_PER_MINUTE", "1")], false).await;
    assert_eq!(app.onboard("One", "one@example.com").await.status(), 202);
    let spoofed = onboard_forwarded(&app, "198.51.100.9", "two@example.com").await;
    assert_limited(spoofed, "1").await;
}

#[tokio::test]
async fn the_501st_authenticated_request_and_the_101st_fix_are_refused() {
    let app = limited_app(&[("RATE_LIMIT_API_PER_MINUTE", "500"), ("RATE_LIMIT_USAGE_PER_MINUTE", "100")], true).await;
    let (_, key) = app.onboarded_customer("busy-client@example.com").await;
    for chunk in 0..10 {
        let responses =
            futures::future::join_all((0..50).map(|_| app.get_with_key("/api/v1/customers/me", &key))).await;
        assert!(responses.iter().all(|r| r.status() == 200), "chunk {chunk}");
    }
    assert_limited(app.get_with_key("/api/v1/customers/me", &key).await, "500").await;

    // Usage reports have their own budget.
    for i in 0..100 {
        let response = app
            .post_with_key("/api/v1/usage/fixes", &key, &serde_json::json!({ "fix_id": format!("f{i}"), "repo": "r" }))
            .await;
        assert_ne!(response.status(), 429, "report {i}");
    }
    let refused =
        app.post_with_key("/api/v1/usage/fixes", &key, &serde_json::json!({ "fix_id": "f100", "repo": "r" })).await;
    assert_limited(refused, "100").await;
}

#[tokio::test]
async fn two_api_processes_share_one_budget() {
    let app = limited_app(&[("RATE_LIMIT_API_PER_MINUTE", "20")], true).await;
    let second = app.second_api();
    let (_, key) = app.onboarded_customer("shared@example.com").await;
    for i in 0..20 {
        let base = if i % 2 == 0 { app.address.clone() } else { second.clone() };
        let response =
            app.client.get(format!("{base}/api/v1/customers/me")).header("x-api-key", &key).send().await.unwrap();
        assert_eq!(response.status(), 200, "request {i}");
    }
    let over = app.client.get(format!("{second}/api/v1/customers/me")).header("x-api-key", &key).send().await.unwrap();
    assert_limited(over, "20").await;
}

#[tokio::test]
async fn the_count_starts_again_when_the_window_ends() {
    let app = limited_app(&[("RATE_LIMIT_ONBOARD_PER_MINUTE", "1")], false).await;
    assert_eq!(app.onboard("First", "first@example.com").await.status(), 202);
    assert_limited(app.onboard("Second", "second@example.com").await, "1").await;
    app.clock.advance(TimeDelta::seconds(49));
    assert_eq!(app.onboard("Second", "second@example.com").await.status(), 429, "a second before the window ends");
    app.clock.advance(TimeDelta::seconds(1));
    let next = app.onboard("Second", "second@example.com").await;
    assert_eq!(next.status(), 202, "a new minute, a new count");
    assert_eq!(header(&next, "x-ratelimit-remaining").as_deref(), Some("0"));
}

#[tokio::test]
async fn a_limit_of_zero_is_off() {
    let app = TestApp::api_only().await;
    let response = app.onboard("Unlimited", "unlimited@example.com").await;
    assert_eq!(response.status(), 202);
    assert_eq!(header(&response, "x-ratelimit-limit"), None);
}

#[tokio::test]
async fn requests_without_a_live_key_are_limited_per_address() {
    let app = limited_app(
        &[
            ("RATE_LIMIT_ANONYMOUS_PER_MINUTE", "2"),
            ("RATE_LIMIT_WEBHOOKS_PER_MINUTE", "2"),
            ("ADMIN_TOKEN", "an-admin-token-for-tests"),
            ("STRIPE_WEBHOOK_SECRET", "whsec_limits"),
        ],
        false,
    )
    .await;
    let poll = || app.client.get(app.url("/api/v1/onboarding/00000000-0000-4000-8000-000000000000")).send();
    assert_eq!(poll().await.unwrap().status(), 404);
    assert_eq!(poll().await.unwrap().status(), 404);
    // A missing key counts against the same address as the status polls.
    let no_key = app.client.get(app.url("/api/v1/customers/me")).send().await.unwrap();
    assert_limited(no_key, "2").await;

    let sign_in = || {
        app.client
            .post(app.url("/admin/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("token=a-wrong-guess")
            .send()
    };
    assert_limited(sign_in().await.unwrap(), "2").await;

    let webhook = || {
        app.client.post(app.url("/api/webhooks/stripe")).header("content-type", "application/json").body("{}").send()
    };
    assert_eq!(webhook().await.unwrap().status(), 400, "unsigned");
    assert_eq!(webhook().await.unwrap().status(), 400);
    assert_limited(webhook().await.unwrap(), "2").await;
}

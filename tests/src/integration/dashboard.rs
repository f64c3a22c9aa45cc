//! The customer dashboard over HTTP: signing in by emailed link or API key, sessions
//! and CSRF, and the pages' contents. (The browser walk-through is `dashboard_browser`.)

use std::time::Duration;

use common::db;
use common::domain::Email;
use common::factories::{self, CustomerState, Seeded};
use common::jobs::{SendSignInLink, SignInLinkNotSent};
use common::queue::{JobStatus, testing};
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::{Response, StatusCode};

use crate::helpers::{MailSink, TestApp, wait_for_kind_finished};

/// A browser of the dashboard: follows no redirect (the tests read them), keeps the
/// session cookie it was given and the message a form left for the next page.
struct Browser<'a> {
    app: &'a TestApp,
    client: reqwest::Client,
    cookie: Option<String>,
    flash: Option<String>,
}

impl<'a> Browser<'a> {
    fn new(app: &'a TestApp) -> Self {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        Self { app, client, cookie: None, flash: None }
    }

    fn keep_cookie(&mut self, response: &Response) {
        for value in response.headers().get_all(SET_COOKIE) {
            let value = value.to_str().unwrap();
            if let Some(rest) = value.strip_prefix("rsolv_session=") {
                let token = rest.split(';').next().unwrap();
                self.cookie = (!token.is_empty()).then(|| format!("rsolv_session={token}"));
            }
            if let Some(rest) = value.strip_prefix("rsolv_flash=") {
                let text = rest.split(';').next().unwrap();
                self.flash = (!text.is_empty()).then(|| format!("rsolv_flash={text}"));
            }
        }
    }

    fn cookies(&self) -> Option<String> {
        let all: Vec<&str> = [&self.cookie, &self.flash].into_iter().flatten().map(String::as_str).collect();
        (!all.is_empty()).then(|| all.join("; "))
    }

    async fn get(&mut self, path: &str) -> Response {
        let mut request = self.client.get(self.app.url(path));
        if let Some(cookies) = self.cookies() {
            request = request.header(COOKIE, cookies);
        }
        let response = request.send().await.unwrap();
        self.keep_cookie(&response);
        response
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Response {
        let mut request = self.client.post(self.app.url(path)).form(form);
        if let Some(cookies) = self.cookies() {
            request = request.header(COOKIE, cookies);
        }
        let response = request.send().await.unwrap();
        self.keep_cookie(&response);
        response
    }

    async fn page(&mut self, path: &str) -> String {
        let response = self.get(path).await;
        assert_eq!(response.status(), 200, "{path}");
        response.text().await.unwrap()
    }

    /// The CSRF token of the forms on `path`.
    async fn csrf(&mut self, path: &str) -> String {
        let html = self.page(path).await;
        let marker = r#"name="csrf" value=""#;
        let at = html.find(marker).expect("a form with a CSRF token") + marker.len();
        html[at..at + 64].to_owned()
    }

    /// Signs in with an API key (the quick way in for tests about the pages).
    async fn sign_in_with_key(&mut self, key: &str) {
        let response = self.post("/dashboard/login/key", &[("api_key", key)]).await;
        assert_eq!(response.status(), 303);
        assert!(self.cookie.is_some(), "a session cookie");
    }
}

fn location(response: &Response) -> &str {
    response.headers().get(LOCATION).map(|v| v.to_str().unwrap()).unwrap_or_default()
}

async fn app_with_mail(sink: &MailSink, overrides: &[(&str, &str)]) -> TestApp {
    let url = sink.smtp_url();
    let mut all = vec![("SMTP_URL", url.as_str())];
    all.extend_from_slice(overrides);
    TestApp::spawn(&all, true).await
}

async fn customer(app: &TestApp, state: CustomerState, email: &str) -> Seeded {
    factories::create(&app.db.pool, &app.settings, state, Email::parse(email).unwrap()).await.unwrap()
}

/// The sign-in link in the `n`th sign-in email to `to`.
async fn link_for(sink: &MailSink, to: &str, n: usize) -> String {
    let to = to.to_owned();
    crate::helpers::wait_for("the sign-in email", Duration::from_secs(20), || {
        let to = to.clone();
        async move { sink.messages().iter().filter(|m| m.to.contains(&to)).count() >= n }
    })
    .await;
    let mail = sink.messages().into_iter().filter(|m| m.to.contains(to.as_str())).nth(n - 1).unwrap();
    assert_eq!(mail.subject, "Your RSOLV sign-in link");
    assert_eq!(mail.list_unsubscribe, None, "a sign-in email is not a list");
    let at = mail.text.find("/dashboard/login/").expect("a link in the email");
    let start = mail.text[..at].rfind("http").unwrap();
    mail.text[start..at + "/dashboard/login/".len() + 43].to_owned()
}

#[tokio::test]
async fn a_customer_signs_in_with_the_emailed_link_once_and_signing_out_ends_the_session() {
    let sink = MailSink::start().await;
    let app = app_with_mail(&sink, &[]).await;
    let ada = customer(&app, CustomerState::Trial, "ada@example.com").await;
    let mut browser = Browser::new(&app);

    let signed_out = browser.get("/dashboard").await;
    assert_eq!((signed_out.status(), location(&signed_out)), (StatusCode::SEE_OTHER, "/dashboard/login"));
    let asked = browser.post("/dashboard/login", &[("email", "ADA@example.com")]).await;
    assert_eq!(asked.status(), 200);
    assert!(asked.text().await.unwrap().contains("If an RSOLV account uses that address"));

    let link = link_for(&sink, "ada@example.com", 1).await;
    assert!(link.starts_with(&app.address), "the link leads to this dashboard: {link}");
    let path = link.strip_prefix(&app.address).unwrap().to_owned();
    // Fetching the link (as a mail scanner does) shows a button and spends nothing; the
    // page names the account it opens.
    for _ in 0..2 {
        let page = browser.page(&path).await;
        assert!(page.contains(&format!(r#"action="{path}""#)));
        assert!(page.contains(r#"<strong id="account">a…@example.com</strong>"#), "{page}");
    }
    // A second link asked for before this one is used is spent with it.
    let spare = db::sign_in_links::create(&app.db.pool, ada.customer_id).await.unwrap();
    let signed_in = browser.post(&path, &[]).await;
    assert_eq!((signed_in.status(), location(&signed_in)), (StatusCode::SEE_OTHER, "/dashboard"));
    let cookie = signed_in.headers().get(SET_COOKIE).unwrap().to_str().unwrap().to_owned();
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/dashboard", "Secure"] {
        assert!(cookie.contains(attribute), "{attribute} in {cookie}");
    }
    let overview = browser.page("/dashboard").await;
    assert!(overview.contains(&format!("Hello, {}", "Demo trial")), "{overview}");
    assert!(overview.contains(r#"<div class="value" id="balance">5</div>"#));

    // The link worked once, and the spare link with it.
    let mut other = Browser::new(&app);
    assert_eq!(other.get(&format!("/dashboard/login/{}", spare.expose())).await.status(), 404);
    let again = other.post(&path, &[]).await;
    assert_eq!(again.status(), 404);
    assert!(other.cookie.is_none());
    assert_eq!(other.get(&path).await.status(), 404);

    // Signing out needs the session's form token, and then the cookie opens nothing.
    let session = browser.cookie.clone().unwrap();
    assert_eq!(browser.post("/dashboard/logout", &[("csrf", "0")]).await.status(), 403);
    let csrf = browser.csrf("/dashboard").await;
    let out = browser.post("/dashboard/logout", &[("csrf", &csrf)]).await;
    assert_eq!((out.status(), location(&out).starts_with("/dashboard/login")), (StatusCode::SEE_OTHER, true));
    browser.cookie = Some(session);
    let after = browser.get("/dashboard").await;
    assert_eq!((after.status(), location(&after)), (StatusCode::SEE_OTHER, "/dashboard/login"));
}

#[tokio::test]
async fn links_that_are_forged_expired_unknown_or_over_the_limit_sign_no_one_in() {
    let sink = MailSink::start().await;
    let app = app_with_mail(&sink, &[("RATE_LIMIT_SIGN_IN_PER_EMAIL_PER_HOUR", "2")]).await;
    customer(&app, CustomerState::Pro, "bob@example.com").await;
    let eve = customer(&app, CustomerState::Trial, "eve@example.com").await;
    let mut browser = Browser::new(&app);

    // An address without an account gets the same answer after the same work (a job is
    // enqueued, so the answer takes as long as for an account), and nothing is sent.
    let unknown = browser.post("/dashboard/login", &[("email", "nobody@example.com")]).await;
    assert_eq!(unknown.status(), 200);
    assert!(unknown.text().await.unwrap().contains("If an RSOLV account uses that address"));
    testing::require_not_inserted::<SendSignInLink>(&app.db.pool).await;
    let asked = testing::require_inserted::<SignInLinkNotSent>(&app.db.pool).await;
    testing::wait_for_status(&app.db.pool, asked.id, JobStatus::Completed, Duration::from_secs(20)).await;
    let result: Option<serde_json::Value> = sqlx::query_scalar("SELECT result FROM jobs WHERE id = $1")
        .bind(asked.id)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(result, Some(serde_json::json!({ "delivery": "no account" })));
    let malformed = browser.post("/dashboard/login", &[("email", "not an address")]).await;
    assert_eq!(malformed.status(), 422);

    // Forged and malformed tokens.
    let forged = format!("/dashboard/login/{}", "A".repeat(43));
    assert_eq!(browser.get(&forged).await.status(), 404);
    assert_eq!(browser.post(&forged, &[]).await.status(), 404);
    assert_eq!(browser.post("/dashboard/login/short", &[]).await.status(), 404);
    assert!(browser.cookie.is_none());

    // An expired link.
    let token = db::sign_in_links::create(&app.db.pool, eve.customer_id).await.unwrap();
    sqlx::query("UPDATE sign_in_links SET expires_at = now() - interval '1 second'")
        .execute(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(browser.post(&format!("/dashboard/login/{}", token.expose()), &[]).await.status(), 404);
    assert!(browser.cookie.is_none());

    // A link signs in its own customer only.
    assert_eq!(browser.post("/dashboard/login", &[("email", "bob@example.com")]).await.status(), 200);
    let link = link_for(&sink, "bob@example.com", 1).await;
    let path = link.strip_prefix(&app.address).unwrap().to_owned();
    assert_eq!(browser.post(&path, &[]).await.status(), 303);
    let overview = browser.page("/dashboard").await;
    assert!(overview.contains("Hello, Demo pro") && !overview.contains("Demo trial"), "{overview}");

    // Two links an hour per address: the third request is refused before it is looked up.
    assert_eq!(browser.post("/dashboard/login", &[("email", "bob@example.com")]).await.status(), 200);
    assert_eq!(browser.post("/dashboard/login", &[("email", "bob@example.com")]).await.status(), 429);
    wait_for_kind_finished(&app.db.pool, "send_sign_in_link", Duration::from_secs(20)).await;
    assert_eq!(testing::count(&app.db.pool, Some("send_sign_in_link"), &[]).await, 2);
    assert!(sink.messages().iter().all(|mail| !mail.to.contains("nobody@example.com")));

    // A sign-in form posted from another site is refused.
    let cross = browser
        .client
        .post(app.url("/dashboard/login"))
        .header("origin", "https://evil.example")
        .form(&[("email", "bob@example.com")])
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), 403);
}

/// With email off no link can be sent: the page offers the API key only, a request for a
/// link says so, enqueueing nothing and counting against no limit, and the last live key
/// (the only way back in) cannot be revoked.
#[tokio::test]
async fn with_email_off_the_sign_in_page_offers_the_key_and_a_link_request_is_refused_without_a_job() {
    let app = TestApp::spawn(&[], false).await;
    let bob = customer(&app, CustomerState::Pro, "bob@example.com").await;
    let mut browser = Browser::new(&app);

    let form = browser.get("/dashboard/login").await;
    assert_eq!(form.status(), 200);
    let form = form.text().await.unwrap();
    assert!(form.contains("This server sends no email"), "{form}");
    assert!(!form.contains("action=\"/dashboard/login\""), "no link form: {form}");
    assert!(form.contains("action=\"/dashboard/login/key\""), "the key form stays: {form}");

    let asked = browser.post("/dashboard/login", &[("email", "bob@example.com")]).await;
    assert_eq!(asked.status(), 404, "no link sign-in here, and not a server failure");
    assert!(asked.text().await.unwrap().contains("cannot send sign-in links"));
    testing::require_not_inserted::<SendSignInLink>(&app.db.pool).await;
    testing::require_not_inserted::<SignInLinkNotSent>(&app.db.pool).await;
    let counted: i64 = sqlx::query_scalar("SELECT count(*) FROM rate_limit_windows WHERE bucket LIKE 'sign-in%'")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(counted, 0, "a refused request counts against no limit");

    // The key signs in; the last live key stays, confirmed or not.
    browser.sign_in_with_key(bob.api_key.expose()).await;
    let csrf = browser.csrf("/dashboard/keys").await;
    let last = first_key(&app, bob.customer_id).await;
    for form in [vec![("csrf", csrf.as_str())], vec![("csrf", csrf.as_str()), ("confirm", "yes")]] {
        let refused = browser.post(&format!("/dashboard/keys/{last}/revoke"), &form).await;
        assert_eq!((refused.status(), location(&refused)), (StatusCode::SEE_OTHER, "/dashboard/keys"));
        let page = browser.page("/dashboard/keys").await;
        assert!(page.contains("this server sends no email"), "{page}");
    }
    assert_eq!(app.get_with_key("/api/v1/customers/me", bob.api_key.expose()).await.status(), 200, "still live");
}

#[tokio::test]
async fn an_api_key_signs_in_and_a_revoked_or_made_up_one_does_not() {
    let app = TestApp::api_only().await;
    let carol = customer(&app, CustomerState::PayAsYouGo, "carol@example.com").await;
    let mut browser = Browser::new(&app);
    let made_up = browser.post("/dashboard/login/key", &[("api_key", "rsolv_not-a-key")]).await;
    assert_eq!(made_up.status(), 401);
    browser.sign_in_with_key(carol.api_key.expose()).await;
    assert!(browser.page("/dashboard").await.contains("Pay as you go"));

    db::api_keys::revoke(&app.db.pool, carol.customer_id, first_key(&app, carol.customer_id).await).await.unwrap();
    let after = browser.get("/dashboard").await;
    assert_eq!(
        (after.status(), location(&after)),
        (StatusCode::SEE_OTHER, "/dashboard/login"),
        "revoking the key ended the session opened with it"
    );
    let mut later = Browser::new(&app);
    assert_eq!(later.post("/dashboard/login/key", &[("api_key", carol.api_key.expose())]).await.status(), 401);
    assert!(later.cookie.is_none());
}

async fn first_key(app: &TestApp, customer_id: uuid::Uuid) -> uuid::Uuid {
    db::api_keys::list(&app.db.pool, customer_id).await.unwrap()[0].id
}

#[tokio::test]
async fn a_key_made_in_the_dashboard_is_shown_once_works_and_the_last_is_revoked_only_when_confirmed() {
    // Email on (nothing is sent here): the dashboard still opens by emailed link, so the
    // last key may go once confirmed.
    let app = TestApp::spawn(&[("SMTP_URL", "smtp://127.0.0.1:2525")], false).await;
    let dan = customer(&app, CustomerState::Trial, "dan@example.com").await;
    let mut browser = Browser::new(&app);
    browser.sign_in_with_key(dan.api_key.expose()).await;
    let csrf = browser.csrf("/dashboard/keys").await;

    // From another site, or without the form token: refused, nothing made.
    let cross = browser
        .client
        .post(app.url("/dashboard/keys"))
        .header(COOKIE, browser.cookie.clone().unwrap())
        .header("origin", "https://evil.example")
        .form(&[("csrf", csrf.as_str()), ("name", "ci")])
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), 403);
    assert_eq!(browser.post("/dashboard/keys", &[("name", "ci")]).await.status(), 403);
    assert_eq!(db::api_keys::list(&app.db.pool, dan.customer_id).await.unwrap().len(), 1);

    let created = browser.post("/dashboard/keys", &[("csrf", &csrf), ("name", "ci")]).await;
    assert_eq!(created.status(), 201);
    let html = created.text().await.unwrap();
    let marker = r#"<code id="new-key">"#;
    let at = html.find(marker).unwrap() + marker.len();
    let key = html[at..html[at..].find('<').unwrap() + at].to_owned();
    assert_eq!(app.get_with_key("/api/v1/customers/me", &key).await.status(), 200, "the new key works");
    let listed = browser.page("/dashboard/keys").await;
    assert!(!listed.contains(&key), "shown once only");
    assert!(listed.contains("ci") && listed.contains(&format!("<code>{}…</code>", &key[..10])), "{listed}");

    // Revoke the first key; the new one is then the last, revoked only when confirmed.
    let keys = db::api_keys::list(&app.db.pool, dan.customer_id).await.unwrap();
    let (newest, oldest) = (keys[0].id, keys[1].id);
    let revoked = browser.post(&format!("/dashboard/keys/{oldest}/revoke"), &[("csrf", &csrf)]).await;
    assert_eq!(revoked.status(), 303);
    assert_eq!(app.get_with_key("/api/v1/customers/me", dan.api_key.expose()).await.status(), 401);
    // This browser signed in with that key: its session ended with it.
    let ended = browser.get("/dashboard/keys").await;
    assert_eq!((ended.status(), location(&ended)), (StatusCode::SEE_OTHER, "/dashboard/login"));
    browser.sign_in_with_key(&key).await;
    let csrf = browser.csrf("/dashboard/keys").await;
    let warned = browser.post(&format!("/dashboard/keys/{newest}/revoke"), &[("csrf", &csrf)]).await;
    assert_eq!(warned.status(), 409);
    assert!(warned.text().await.unwrap().contains("is your last live key"));
    assert_eq!(app.get_with_key("/api/v1/customers/me", &key).await.status(), 200, "still live");
    let confirmed =
        browser.post(&format!("/dashboard/keys/{newest}/revoke"), &[("csrf", &csrf), ("confirm", "yes")]).await;
    assert_eq!(confirmed.status(), 303);
    assert_eq!(app.get_with_key("/api/v1/customers/me", &key).await.status(), 401);
    let key_list = db::api_keys::list(&app.db.pool, dan.customer_id).await.unwrap();
    assert!(key_list[0].last_used_at.is_some(), "the API's use of the key is on the list");
}

#[tokio::test]
async fn usage_is_paged_filtered_exported_and_charted() {
    let app = TestApp::api_only().await;
    let erin = customer(&app, CustomerState::ProPartlyUsed, "erin@example.com").await;
    for n in 0..40 {
        db::usage::record_refused(&app.db.pool, erin.customer_id, &format!("=cmd-{n}"), "org/other", "NO_BILLING_INFO")
            .await
            .unwrap();
    }
    let mut browser = Browser::new(&app);
    browser.sign_in_with_key(erin.api_key.expose()).await;

    // 25 consumed (the factory's) and 40 refused: a page of 50, then the rest.
    let first = browser.page("/dashboard/usage").await;
    assert_eq!(first.matches("<tr><td>").count(), 50);
    let marker = r#"id="next" href=""#;
    let at = first.find(marker).unwrap() + marker.len();
    let next = first[at..at + first[at..].find('"').unwrap()].replace("&amp;", "&");
    let second = browser.page(&next).await;
    assert_eq!(second.matches("<tr><td>").count(), 15);
    assert!(!second.contains(r#"id="next""#));

    let refused = browser.page("/dashboard/usage?outcome=refused&repo=org%2Fother").await;
    assert_eq!(refused.matches("NO_BILLING_INFO").count(), 40);
    let consumed = browser.page("/dashboard/usage?outcome=consumed").await;
    assert_eq!(consumed.matches("<tr><td>").count(), 25);
    assert_eq!(browser.get("/dashboard/usage?outcome=maybe").await.status(), 422);

    let csv = browser.get("/dashboard/usage.csv?repo=org%2Fother").await;
    assert_eq!(csv.status(), 200);
    assert!(csv.headers()["content-disposition"].to_str().unwrap().starts_with("attachment"));
    let body = csv.text().await.unwrap();
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines[0], r#""date","fix_id","repo","outcome","refusal_code","charged_cents""#);
    assert_eq!(lines.len(), 41);
    assert!(
        lines[1..]
            .iter()
            .all(|l| l.contains(r#","'=cmd-"#) && l.ends_with(r#","org/other","refused","NO_BILLING_INFO","""#)),
        "{lines:?}"
    );

    let overview = browser.page("/dashboard").await;
    assert!(overview.contains(r#"id="fixes-this-month">25<"#), "the factory's fixes are this month's");
    assert!(overview.contains(r#"<rect class="granted""#) && overview.contains(r#"<rect class="used""#));
    assert!(overview.contains("Pro"));
}

#[tokio::test]
async fn a_usage_export_of_several_pages_holds_every_fix_once_newest_first() {
    let app = TestApp::api_only().await;
    let fay = customer(&app, CustomerState::ProPartlyUsed, "fay@example.com").await;
    // More than two of the export's pages (a thousand rows each), two fixes to a second,
    // so that pages also break between fixes of the same time.
    sqlx::query(
        "INSERT INTO usage_fixes (customer_id, fix_id, repo, outcome, refusal_code, created_at)
         SELECT $1, 'bulk-' || lpad(g::text, 5, '0'), 'org/bulk', 'refused', 'NO_BILLING_INFO',
                now() - (g / 2) * interval '1 second'
         FROM generate_series(1, 2345) g",
    )
    .bind(fay.customer_id)
    .execute(&app.db.pool)
    .await
    .unwrap();
    let mut browser = Browser::new(&app);
    browser.sign_in_with_key(fay.api_key.expose()).await;

    let csv = browser.get("/dashboard/usage.csv?repo=org%2Fbulk").await;
    assert_eq!(csv.status(), 200);
    let body = csv.text().await.unwrap();
    let rows: Vec<(String, String)> = body
        .lines()
        .skip(1)
        .map(|line| {
            let fields: Vec<&str> = line.split(',').map(|f| f.trim_matches('"')).collect();
            (fields[0].to_owned(), fields[1].to_owned())
        })
        .collect();
    assert_eq!(rows.len(), 2345);
    let ids: std::collections::BTreeSet<&str> = rows.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(ids.len(), 2345, "every fix once");
    assert!(rows.windows(2).all(|pair| pair[0].0 >= pair[1].0), "newest first");
}

#[tokio::test]
async fn dashboard_pages_are_private_uncached_and_under_the_page_policy() {
    let app = TestApp::api_only().await;
    let fay = customer(&app, CustomerState::Trial, "fay@example.com").await;
    let mut browser = Browser::new(&app);
    // A link cannot put words on our pages: messages come only from our own forms.
    let planted = browser.page("/dashboard/login?flash=Security%20alert%3A%20call%20us").await;
    assert!(!planted.contains("Security alert"));
    for path in ["/dashboard", "/dashboard/usage", "/dashboard/usage.csv", "/dashboard/keys"] {
        let response = browser.get(path).await;
        assert_eq!((response.status(), location(&response)), (StatusCode::SEE_OTHER, "/dashboard/login"), "{path}");
    }
    browser.sign_in_with_key(fay.api_key.expose()).await;
    let page = browser.get("/dashboard").await;
    assert_eq!(page.headers()["cache-control"], "no-store");
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && !csp.contains("script-src"), "{csp}");
    assert_eq!(browser.client.delete(app.url("/dashboard")).send().await.unwrap().status(), 405);
}

#[tokio::test]
async fn billing_forms_enqueue_what_the_api_enqueues_and_refuse_what_it_refuses() {
    let app = TestApp::with_billing().await;
    let (id, key, _) = app.stripe_customer("gail@example.com").await;
    let mut browser = Browser::new(&app);
    browser.sign_in_with_key(&key).await;
    let billing = browser.page("/dashboard/billing").await;
    assert!(billing.contains("No card on file") && billing.contains(r#"id="subscribe" disabled"#), "{billing}");
    let csrf = browser.csrf("/dashboard/billing").await;

    // Pro needs a card: the API's refusal, read on the page; nothing enqueued.
    let refused = browser.post("/dashboard/billing/subscribe", &[("csrf", &csrf)]).await;
    assert_eq!((refused.status(), location(&refused)), (StatusCode::SEE_OTHER, "/dashboard/billing"));
    let told = browser.page("/dashboard/billing").await;
    assert!(told.contains("needs a payment method"), "the API's refusal, on the page: {told}");
    assert!(!browser.page("/dashboard/billing").await.contains("needs a payment method"), "shown once");
    assert_eq!(testing::count(&app.db.pool, Some("subscribe_pro"), &[]).await, 0);

    // A card without consent is refused; with it, added as the API adds one.
    let no_consent = browser
        .post("/dashboard/billing/payment-methods", &[("csrf", &csrf), ("payment_method_id", "pm_card_visa")])
        .await;
    assert_eq!(no_consent.status(), 303);
    assert!(browser.page("/dashboard/billing").await.contains("consent"));
    let added = browser
        .post(
            "/dashboard/billing/payment-methods",
            &[("csrf", &csrf), ("payment_method_id", "pm_card_visa"), ("consent", "yes")],
        )
        .await;
    assert_eq!(added.status(), 303);
    wait_for_kind_finished(&app.db.pool, "add_payment_method", Duration::from_secs(20)).await;
    assert!(app.customer(id).await.has_payment_method());
    let billing = browser.page("/dashboard/billing").await;
    assert!(billing.contains("ending in 4242"), "{billing}");

    // Subscribe twice at once: one operation, as through the API.
    let (first, second) = futures::join!(
        browser
            .client
            .post(app.url("/dashboard/billing/subscribe"))
            .header(COOKIE, browser.cookie.clone().unwrap())
            .form(&[("csrf", &csrf)])
            .send(),
        browser
            .client
            .post(app.url("/dashboard/billing/subscribe"))
            .header(COOKIE, browser.cookie.clone().unwrap())
            .form(&[("csrf", &csrf)])
            .send(),
    );
    assert_eq!((first.unwrap().status(), second.unwrap().status()), (StatusCode::SEE_OTHER, StatusCode::SEE_OTHER));
    wait_for_kind_finished(&app.db.pool, "subscribe_pro", Duration::from_secs(20)).await;
    assert_eq!(testing::count(&app.db.pool, Some("subscribe_pro"), &[]).await, 1);
    assert!(app.customer(id).await.stripe_subscription_id.is_some());

    // Cancel at the period's end: the banner; resume: gone.
    assert_eq!(
        browser.post("/dashboard/billing/cancel", &[("csrf", &csrf), ("when", "period_end")]).await.status(),
        303
    );
    wait_for_kind_finished(&app.db.pool, "cancel_subscription", Duration::from_secs(20)).await;
    assert!(browser.page("/dashboard/billing").await.contains(r#"id="cancel-banner""#));
    assert!(browser.page("/dashboard").await.contains("cancelled at the end of the current period"));
    assert_eq!(browser.post("/dashboard/billing/resume", &[("csrf", &csrf)]).await.status(), 303);
    wait_for_kind_finished(&app.db.pool, "resume_subscription", Duration::from_secs(20)).await;
    let billing = browser.page("/dashboard/billing").await;
    assert!(!billing.contains(r#"id="cancel-banner""#) && billing.contains(r#"id="cancel-later""#));

    // The card page: a SetupIntent's secret for Stripe.js, under a policy allowing it.
    let card = browser.get("/dashboard/billing/card").await;
    assert_eq!(card.status(), 200);
    let csp = card.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("script-src 'self' http://127.0.0.1"), "{csp}");
    let html = card.text().await.unwrap();
    assert!(html.contains(r#"data-client-secret="seti_"#) && html.contains("js.stripe.com"), "{html}");
}

#[tokio::test]
async fn a_sequence_switched_off_in_the_dashboard_is_skipped_and_unsubscribing_from_all_is_undone() {
    let sink = MailSink::start().await;
    let app = app_with_mail(&sink, &[]).await;
    let ivy = customer(&app, CustomerState::Trial, "ivy@example.com").await;
    let mut browser = Browser::new(&app);
    browser.sign_in_with_key(ivy.api_key.expose()).await;
    let page = browser.page("/dashboard/email").await;
    assert!(page.contains(r#"id="receive_re_engagement" name="receive_re_engagement" value="yes" checked"#));
    assert!(page.contains(r#"id="receive_dunning" name="receive_dunning" value="yes" checked disabled"#));
    let csrf = browser.csrf("/dashboard/email").await;

    // Keep onboarding, switch the rest off.
    let saved = browser.post("/dashboard/email", &[("csrf", &csrf), ("receive_onboarding", "yes")]).await;
    assert_eq!(saved.status(), 303);
    assert!(browser.page("/dashboard/email").await.contains(r#"name="receive_re_engagement" value="yes">"#));
    for (sequence, step) in [("re_engagement", "we_miss_you"), ("onboarding", "welcome")] {
        let job = common::jobs::SendEmailStep {
            customer_id: ivy.customer_id,
            sequence: sequence.into(),
            step: step.into(),
            occurrence: String::new(),
            vars: serde_json::Value::Null,
        };
        common::queue::enqueue(&app.db.pool, &job).await.unwrap();
    }
    wait_for_kind_finished(&app.db.pool, "send_email_step", Duration::from_secs(20)).await;
    let mails = sink.messages();
    assert_eq!(mails.iter().map(|m| m.subject.as_str()).collect::<Vec<_>>(), ["Welcome to RSOLV"]);
    let skipped: String = sqlx::query_scalar("SELECT status FROM email_deliveries WHERE sequence = 're_engagement'")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(skipped, "skipped");

    // Unsubscribe from all, then resubscribe: the switches are as they were.
    assert_eq!(browser.post("/dashboard/email/unsubscribe", &[("csrf", &csrf)]).await.status(), 303);
    assert_eq!(db::customers::unsubscribed(&app.db.pool, ivy.customer_id).await.unwrap(), Some(true));
    assert!(browser.page("/dashboard/email").await.contains(r#"id="unsubscribed""#));
    assert_eq!(browser.post("/dashboard/email/resubscribe", &[("csrf", "nope")]).await.status(), 403);
    assert_eq!(browser.post("/dashboard/email/resubscribe", &[("csrf", &csrf)]).await.status(), 303);
    assert_eq!(db::customers::unsubscribed(&app.db.pool, ivy.customer_id).await.unwrap(), Some(false));
    let page = browser.page("/dashboard/email").await;
    assert!(
        !page.contains(r#"id="unsubscribed""#) && page.contains(r#"name="receive_onboarding" value="yes" checked"#)
    );
}

/// A customer at Stripe with two cards added through the API: (customer id, API key,
/// Stripe customer, the first card, the second, which is the default).
async fn with_two_cards(app: &TestApp, email: &str) -> (uuid::Uuid, String, String, String, String) {
    let (id, key, stripe_id) = app.stripe_customer(email).await;
    app.add_card(&key, "pm_card_visa").await;
    let first = app.customer(id).await.stripe_payment_method_id.unwrap();
    app.add_card(&key, "pm_card_visa").await;
    let second = app.customer(id).await.stripe_payment_method_id.unwrap();
    assert_ne!(first, second, "the newest card is the default");
    (id, key, stripe_id, first, second)
}

#[tokio::test]
async fn cards_are_listed_made_default_and_removed_and_the_card_paying_for_pro_stays() {
    let app = TestApp::with_billing().await;
    let (id, key, stripe_id, first, second) = with_two_cards(&app, "jay@example.com").await;
    let ctx = app.job_context();
    let stripe = ctx.stripe().unwrap();
    let mut browser = Browser::new(&app);
    browser.sign_in_with_key(&key).await;
    let billing = browser.page("/dashboard/billing").await;
    assert_eq!(billing.matches(r#"<tr id="card-pm_"#).count(), 2, "{billing}");
    assert!(billing.contains(&format!(r#"action="/dashboard/billing/cards/{first}/default""#)));
    assert!(!billing.contains(&format!(r#"action="/dashboard/billing/cards/{second}/default""#)));
    let csrf = browser.csrf("/dashboard/billing").await;

    // The first card becomes the default again, at Stripe and here.
    assert_eq!(
        browser.post(&format!("/dashboard/billing/cards/{first}/default"), &[("csrf", &csrf)]).await.status(),
        303
    );
    wait_for_kind_finished(&app.db.pool, "set_default_payment_method", Duration::from_secs(20)).await;
    assert_eq!(app.customer(id).await.stripe_payment_method_id.as_deref(), Some(first.as_str()));
    assert_eq!(stripe.default_payment_method(&stripe_id).await.unwrap().as_deref(), Some(first.as_str()));

    // The other one is removed: detached at Stripe.
    assert_eq!(
        browser.post(&format!("/dashboard/billing/cards/{second}/remove"), &[("csrf", &csrf)]).await.status(),
        303
    );
    wait_for_kind_finished(&app.db.pool, "remove_payment_method", Duration::from_secs(20)).await;
    let left: Vec<String> = stripe.payment_methods(&stripe_id).await.unwrap().into_iter().map(|m| m.id).collect();
    assert_eq!(left, std::slice::from_ref(&first));
    assert_eq!(app.customer(id).await.stripe_payment_method_id.as_deref(), Some(first.as_str()));

    // With Pro, its only card stays: refused at once, nothing enqueued.
    let subscribed =
        app.client.post(app.url("/api/v1/billing/subscription")).header("x-api-key", &key).send().await.unwrap();
    app.finished_operation(&key, subscribed).await;
    let refused = browser.post(&format!("/dashboard/billing/cards/{first}/remove"), &[("csrf", &csrf)]).await;
    assert_eq!(refused.status(), 303);
    assert!(browser.page("/dashboard/billing").await.contains("this card pays for Pro"));
    assert_eq!(testing::count(&app.db.pool, Some("remove_payment_method"), &[]).await, 1);
    // And the job itself refuses it too, should a removal slip past the page.
    let slipped = common::jobs::RemovePaymentMethod {
        customer_id: id,
        payment_method_id: first.clone(),
        operation_id: uuid::Uuid::new_v4(),
    };
    let outcome = common::queue::Job::run(slipped, app.job_context()).await.unwrap();
    assert!(format!("{outcome:?}").contains("pays for Pro"), "{outcome:?}");
    // Another customer's card, or none at all: nothing happens to it.
    let (_, other_key, _) = app.stripe_customer("lee@example.com").await;
    app.add_card(&other_key, "pm_card_visa").await;
    let mut lee = Browser::new(&app);
    lee.sign_in_with_key(&other_key).await;
    let lee_csrf = lee.csrf("/dashboard/billing").await;
    assert_eq!(
        lee.post(&format!("/dashboard/billing/cards/{first}/remove"), &[("csrf", &lee_csrf)]).await.status(),
        303
    );
    assert_eq!(
        lee.post("/dashboard/billing/cards/pm_x%2F..%2Fcustomers/remove", &[("csrf", &lee_csrf)]).await.status(),
        303
    );
    wait_for_kind_finished(&app.db.pool, "remove_payment_method", Duration::from_secs(20)).await;
    assert_eq!(stripe.payment_methods(&stripe_id).await.unwrap().len(), 1, "Jay's card stays Jay's");
}

#[tokio::test]
async fn a_card_change_stopped_after_stripe_answered_finishes_on_its_next_run() {
    let app = TestApp::with_billing().await;
    let (id, _, stripe_id, first, second) = with_two_cards(&app, "kim@example.com").await;
    let ctx = app.job_context();
    let stripe = ctx.stripe().unwrap();

    // Made the default at Stripe, then stopped: ours lags until the run is repeated.
    let make_default = common::jobs::SetDefaultPaymentMethod {
        customer_id: id,
        payment_method_id: first.clone(),
        operation_id: uuid::Uuid::new_v4(),
    };
    fail::cfg("set_default_payment_method::after_stripe", "return").unwrap();
    assert!(common::queue::Job::run(make_default.clone(), app.job_context()).await.is_err());
    fail::remove("set_default_payment_method::after_stripe");
    assert_eq!(stripe.default_payment_method(&stripe_id).await.unwrap().as_deref(), Some(first.as_str()));
    assert_eq!(app.customer(id).await.stripe_payment_method_id.as_deref(), Some(second.as_str()));
    common::queue::Job::run(make_default, app.job_context()).await.unwrap();
    assert_eq!(app.customer(id).await.stripe_payment_method_id.as_deref(), Some(first.as_str()));

    // Removing the default card, stopped before the detach: the default has already
    // moved to the other card, at Stripe and here, so the card that stays can pay; the
    // next run detaches the removed one.
    let remove = common::jobs::RemovePaymentMethod {
        customer_id: id,
        payment_method_id: first.clone(),
        operation_id: uuid::Uuid::new_v4(),
    };
    fail::cfg("remove_payment_method::before_detach", "return").unwrap();
    assert!(common::queue::Job::run(remove.clone(), app.job_context()).await.is_err());
    fail::remove("remove_payment_method::before_detach");
    assert_eq!(app.customer(id).await.stripe_payment_method_id.as_deref(), Some(second.as_str()));
    assert_eq!(stripe.default_payment_method(&stripe_id).await.unwrap().as_deref(), Some(second.as_str()));
    assert_eq!(stripe.payment_methods(&stripe_id).await.unwrap().len(), 2, "not detached yet");
    common::queue::Job::run(remove.clone(), app.job_context()).await.unwrap();
    let left: Vec<String> = stripe.payment_methods(&stripe_id).await.unwrap().into_iter().map(|m| m.id).collect();
    assert_eq!(left, std::slice::from_ref(&second), "detached at Stripe");
    assert_eq!(app.customer(id).await.stripe_payment_method_id.as_deref(), Some(second.as_str()));
    // Once more, as a redrive would: nothing changes.
    common::queue::Job::run(remove, app.job_context()).await.unwrap();
    assert_eq!(app.customer(id).await.stripe_payment_method_id.as_deref(), Some(second.as_str()));
}

#[tokio::test]
async fn fix_charges_are_listed_with_their_amounts_a_page_at_a_time() {
    let app = TestApp::api_only().await;
    let max = customer(&app, CustomerState::PayAsYouGo, "max@example.com").await;
    for n in 0..30 {
        let mut tx = app.db.pool.begin().await.unwrap();
        db::charges::insert_pending(&mut tx, max.customer_id, &format!("paid-fix-{n:02}"), "max/app", 2_900, "usd")
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let mut browser = Browser::new(&app);
    browser.sign_in_with_key(max.api_key.expose()).await;
    let first = browser.page("/dashboard/billing").await;
    assert_eq!(first.matches("29.00 USD").count(), 25, "{first}");
    assert!(first.contains("paid-fix-29") && !first.contains("paid-fix-04"), "newest first");
    let marker = r#"<a href="/dashboard/billing?charges_before="#;
    let at = first.find(marker).expect("a link to older charges") + r#"<a href=""#.len();
    let next = first[at..at + first[at..].find('"').unwrap()].replace("&amp;", "&");
    let second = browser.page(&next).await;
    assert_eq!(second.matches("29.00 USD").count(), 5);
    assert!(second.contains("paid-fix-00") && !second.contains("paid-fix-29"));
}

//! The customer dashboard end to end in headless Chromium, against real Postgres, a
//! localstripe of its own (delivering its webhooks to this API) and the SMTP sink:
//! sign in with the link read from the sink → add a card through the Stripe.js form →
//! subscribe → the overview shows Pro, 70 credits and the invoice → fixes reported
//! through the API appear in usage and in the chart → cancel at period end → the
//! banner → resume → sign out, and the old cookie no longer works. Every page passes
//! axe-core with no serious violation, fits a phone's width, and is photographed into
//! `target/screenshots/` (the README shows copies from `docs/screenshots/`).

use std::path::PathBuf;
use std::time::Duration;

use common::queue::{JobStatus, testing};
use serde_json::{Value, json};

use crate::browser::Browser;
use crate::chaos::OwnStripe;
use crate::helpers::{MailSink, PRO_PRICE, STRIPE_KEY, TestApp, WEBHOOK_SECRET, wait_for, wait_for_kind_finished};

fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots")
}

/// A localstripe of this test's own: the Pro plan, and its events delivered to `app`.
async fn own_stripe() -> OwnStripe {
    let mut stripe = OwnStripe::reserved();
    stripe.up().await;
    let client = reqwest::Client::new();
    let plan = client
        .post(format!("{}v1/plans", stripe.base()))
        .basic_auth(STRIPE_KEY, Some(""))
        .form(&[
            ("id", PRO_PRICE),
            ("amount", "59900"),
            ("currency", "usd"),
            ("interval", "month"),
            ("product[name]", "RSOLV Pro"),
        ])
        .send()
        .await
        .unwrap();
    assert!(plan.status().is_success(), "the Pro plan at localstripe");
    stripe
}

async fn forward_webhooks(stripe: &OwnStripe, app: &TestApp) {
    let configured = reqwest::Client::new()
        .post(format!("{}_config/webhooks/rsolv", stripe.base()))
        .basic_auth(STRIPE_KEY, Some(""))
        .form(&[("url", app.url("/api/webhooks/stripe").as_str()), ("secret", WEBHOOK_SECRET)])
        .send()
        .await
        .unwrap();
    assert!(configured.status().is_success(), "localstripe forwards its events");
}

/// The page passes axe-core (no serious or critical violation) and fits 390 px.
async fn check_page(browser: &Browser, name: &str) {
    let axe = std::fs::read_to_string(std::env::var("TEST_AXE_JS").expect("TEST_AXE_JS is unset: run scripts/test"))
        .expect("axe-core is installed");
    browser.execute(&format!("{axe}\n;window.__axeLoaded = true; return true;")).await;
    let result = browser
        .execute_async(
            "const done = arguments[arguments.length - 1];
             axe.run(document, { resultTypes: ['violations'] })
                .then(r => done(r.violations.map(v => ({ id: v.id, impact: v.impact, nodes: v.nodes.length }))))
                .catch(e => done([{ id: 'axe-failed', impact: 'critical', nodes: String(e) }]));",
        )
        .await;
    let serious: Vec<&Value> = result
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| matches!(v["impact"].as_str(), Some("serious" | "critical")))
        .collect();
    assert!(serious.is_empty(), "{name}: accessibility violations {serious:?}");
    browser.resize(390, 844).await;
    let fits = browser.execute("return document.documentElement.scrollWidth <= window.innerWidth + 1;").await;
    assert_eq!(fits, json!(true), "{name} scrolls sideways at a phone's width");
    browser.screenshot(&screenshots().join(format!("{name}-phone.png"))).await;
    browser.resize(1280, 900).await;
    browser.screenshot(&screenshots().join(format!("{name}.png"))).await;
}

/// Loads `path` until its source contains `needle`.
async fn until_shown(browser: &Browser, app: &TestApp, path: &str, needle: &str) {
    let url = app.url(path);
    wait_for(&format!("{path} to show {needle}"), Duration::from_secs(30), || async {
        browser.goto(&url).await;
        browser.page().await.contains(needle)
    })
    .await;
}

#[tokio::test]
async fn a_customer_signs_in_adds_a_card_subscribes_uses_cancels_resumes_and_signs_out_in_a_browser() {
    let stripe = own_stripe().await;
    let sink = MailSink::start().await;
    let (base, smtp) = (stripe.base(), sink.smtp_url());
    let js = format!("{base}js.stripe.com/v3/");
    let app = TestApp::spawn(
        &[
            ("STRIPE_SECRET_KEY", STRIPE_KEY),
            ("STRIPE_API_BASE", base.as_str()),
            ("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET),
            ("STRIPE_PRO_PRICE_ID", PRO_PRICE),
            ("STRIPE_PUBLISHABLE_KEY", "pk_test_rsolv"),
            ("STRIPE_JS_URL", js.as_str()),
            ("SMTP_URL", smtp.as_str()),
            ("SESSION_COOKIE_SECURE", "false"),
        ],
        true,
    )
    .await;
    forward_webhooks(&stripe, &app).await;
    let (customer, key, _) = app.stripe_customer("hana@example.com").await;
    let browser = Browser::start().await;

    // Sign in with the link from the email.
    browser.goto(&app.url("/dashboard")).await;
    assert!(browser.url().await.ends_with("/dashboard/login"));
    check_page(&browser, "sign-in").await;
    browser.type_into("#email", "hana@example.com").await;
    browser.click("form[action='/dashboard/login'] button").await;
    wait_for("the sent page", Duration::from_secs(10), || async { browser.page().await.contains("id=\"sent\"") }).await;
    let mail = sink_link(&sink).await;
    browser.goto(&mail).await;
    browser.click("#sign-in").await;
    until_shown(&browser, &app, "/dashboard", "id=\"balance\">5<").await;
    check_page(&browser, "overview-trial").await;

    // A card through the Stripe.js form (localstripe's stand-in).
    browser.goto(&app.url("/dashboard/billing")).await;
    browser.click("#add-card").await;
    wait_for("the card inputs", Duration::from_secs(10), || async {
        browser.page().await.contains("placeholder=\"number\"")
    })
    .await;
    check_page(&browser, "add-card").await;
    for (field, value) in [
        ("number", "4242424242424242"),
        ("exp_month", "12"),
        ("exp_year", "34"),
        ("cvc", "123"),
        ("postal_code", "10115"),
    ] {
        browser.type_into(&format!("#card-element input[placeholder='{field}']"), value).await;
    }
    browser.click("#consent").await;
    browser.click("#save-card").await;
    wait_for("back on the billing page", Duration::from_secs(15), || async {
        browser.page().await.contains("Your card is being added")
    })
    .await;
    wait_for_kind_finished(&app.db.pool, "add_payment_method", Duration::from_secs(20)).await;
    until_shown(&browser, &app, "/dashboard/billing", "ending in 4242").await;
    assert_eq!(app.balance(customer).await, 10, "5 for the trial, 5 for the card");

    // Subscribe: Pro, and the paid invoice's 60 credits (delivered by localstripe).
    browser.click("#subscribe").await;
    until_shown(&browser, &app, "/dashboard", "id=\"balance\">70<").await;
    let overview = browser.page().await;
    assert!(overview.contains("id=\"plan\">Pro<"), "the overview shows Pro");
    check_page(&browser, "overview-pro").await;
    until_shown(&browser, &app, "/dashboard/billing", "599.00 USD").await;
    check_page(&browser, "billing").await;

    // Fixes reported through the API: in usage and in the chart.
    for n in 0..3 {
        let fix = json!({ "fix_id": format!("browser-fix-{n}"), "repo": "hana/app" });
        assert_eq!(app.post_with_key("/api/v1/usage/fixes", &key, &fix).await.status(), 202);
    }
    wait_for_kind_finished(&app.db.pool, "record_usage", Duration::from_secs(20)).await;
    until_shown(&browser, &app, "/dashboard/usage", "browser-fix-2").await;
    check_page(&browser, "usage").await;
    until_shown(&browser, &app, "/dashboard", "id=\"fixes-this-month\">3<").await;
    assert!(browser.page().await.contains("<rect class=\"used\""), "the chart shows the credits used");
    browser.goto(&app.url("/dashboard/keys")).await;
    check_page(&browser, "keys").await;
    browser.goto(&app.url("/dashboard/email")).await;
    check_page(&browser, "email").await;

    // Cancel at the period's end: the banner; resume: gone.
    browser.goto(&app.url("/dashboard/billing")).await;
    browser.click("#cancel-later").await;
    until_shown(&browser, &app, "/dashboard", "cancelled at the end of the current period").await;
    browser.goto(&app.url("/dashboard/billing")).await;
    browser.click("#resume").await;
    // The click may return before its form's request is served: wait for the resume job
    // to exist and finish, not merely for no such job to be unfinished.
    wait_for("the resume to be done", Duration::from_secs(20), || async {
        testing::count(&app.db.pool, Some("resume_subscription"), &[JobStatus::Completed]).await == 1
    })
    .await;
    browser.goto(&app.url("/dashboard")).await;
    assert!(!browser.page().await.contains("cancelled at the end of the current period"));

    // Sign out: the old cookie opens nothing.
    let cookie = browser.cookie("rsolv_session").await.expect("a session cookie");
    browser.click("header form button").await;
    wait_for("the sign-in page", Duration::from_secs(10), || async {
        browser.url().await.contains("/dashboard/login")
    })
    .await;
    let replayed = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(app.url("/dashboard"))
        .header("cookie", format!("rsolv_session={cookie}"))
        .send()
        .await
        .unwrap();
    assert_eq!(replayed.status(), 303, "the signed-out session is gone");
    browser.quit().await;
}

/// The sign-in link in the sink's sign-in email.
async fn sink_link(sink: &MailSink) -> String {
    wait_for("the sign-in email", Duration::from_secs(20), || async {
        sink.messages().iter().any(|m| m.subject == "Your RSOLV sign-in link")
    })
    .await;
    let mail = sink.messages().into_iter().find(|m| m.subject == "Your RSOLV sign-in link").unwrap();
    let at = mail.text.find("/dashboard/login/").unwrap();
    let start = mail.text[..at].rfind("http").unwrap();
    mail.text[start..at + "/dashboard/login/".len() + 43].to_owned()
}

//! Email sequences over a real SMTP server (aiosmtpd), read back from its Maildir.

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::domain::Email;
use common::factories::{self, CustomerState};
use common::jobs::SendEmailStep;
use common::queue::{self, Job, JobStatus, testing};
use common::stripe::events::Handled;
use common::stripe::simulated::Simulated;
use uuid::Uuid;

use crate::helpers::{MailSink, PRO_PRICE, TestApp, WEBHOOK_SECRET, wait_for_kind_finished};

/// The API alone (no worker), with email to `sink`.
async fn api_with_email(sink: &MailSink) -> TestApp {
    let url = sink.smtp_url();
    TestApp::spawn(&[("SMTP_URL", url.as_str())], false).await
}

async fn app_with_email(sink: &MailSink) -> TestApp {
    let url = sink.smtp_url();
    let secrets = WEBHOOK_SECRET.to_owned();
    TestApp::spawn(
        &[
            ("SMTP_URL", url.as_str()),
            ("EMAIL_FROM", "RSOLV <hello@rsolv.dev>"),
            ("EMAIL_UNSUBSCRIBE_SECRET", "test-unsubscribe-secret"),
            ("STRIPE_WEBHOOK_SECRET", secrets.as_str()),
            ("STRIPE_PRO_PRICE_ID", PRO_PRICE),
        ],
        true,
    )
    .await
}

/// The job sending `step` (of whatever sequence).
async fn step_job(pool: &sqlx::PgPool, step: &str) -> testing::InsertedJob<SendEmailStep> {
    let jobs = testing::inserted::<SendEmailStep>(pool).await;
    jobs.into_iter().find(|job| job.args.step == step).unwrap_or_else(|| panic!("no {step} job"))
}

async fn delivery_status(app: &TestApp, customer: Uuid, step: &str) -> Option<String> {
    sqlx::query_scalar("SELECT status FROM email_deliveries WHERE customer_id = $1 AND step = $2")
        .bind(customer)
        .bind(step)
        .fetch_optional(&app.db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn onboarding_sends_the_welcome_email_and_schedules_the_sequence() {
    let sink = MailSink::start().await;
    let app = app_with_email(&sink).await;
    let response = app
        .post_json(
            "/api/v1/customers/onboard",
            &serde_json::json!({ "name": "Ada Lovelace", "email": "ada@example.com" }),
        )
        .await;
    assert_eq!(response.status(), 202);
    let body: serde_json::Value = response.json().await.unwrap();
    let customer: Uuid = body["customer_id"].as_str().unwrap().parse().unwrap();

    let mails = sink.wait_for(1).await;
    let welcome = &mails[0];
    assert_eq!(welcome.to, "ada@example.com");
    assert_eq!(welcome.subject, "Welcome to RSOLV");
    assert!(welcome.text.contains("Hi Ada Lovelace,") && welcome.html.contains("Ada Lovelace"), "{}", welcome.text);
    assert!(welcome.text.contains(&format!("{}/dashboard", app.address)), "dashboard links lead to our pages");
    assert!(welcome.text.contains("https://rsolv.dev/docs"), "product links");
    let link = welcome.list_unsubscribe.as_deref().unwrap().trim_matches(|c| c == '<' || c == '>').to_owned();
    assert!(welcome.text.contains(&link), "the text carries the unsubscribe link: {}", welcome.text);
    assert!(welcome.html.contains(&link.replace('/', "&#x2f;")), "the HTML carries it: {}", welcome.html);
    assert_eq!(welcome.list_unsubscribe_post.as_deref(), Some("List-Unsubscribe=One-Click"));

    // The other steps wait in the queue at their days after signup.
    let mut scheduled = queue::testing::inserted::<SendEmailStep>(&app.db.pool).await;
    scheduled.retain(|job| job.args.customer_id == customer);
    scheduled.sort_by_key(|job| job.run_at);
    let start = scheduled[0].run_at;
    let plan: Vec<(&str, i64)> =
        scheduled.iter().map(|job| (job.args.step.as_str(), (job.run_at - start).num_seconds())).collect();
    let day = 86_400;
    assert_eq!(
        plan,
        vec![
            ("welcome", 0),
            ("getting_started", day),
            ("setup_verification", 3 * day),
            ("feature_deep_dive", 5 * day),
            ("feedback_request", 7 * day),
            ("success_checkin", 14 * day),
        ]
    );

    // The link works, and stops the remaining steps when they come due.
    let bad = app.client.get(app.url("/email/unsubscribe?token=nonsense")).send().await.unwrap();
    assert_eq!(bad.status(), 400, "a malformed link");
    let forged = format!("/email/unsubscribe?token={}.{}", uuid::Uuid::new_v4().simple(), "ab".repeat(32));
    let forged = app.client.post(app.url(&forged)).send().await.unwrap();
    assert_eq!(forged.status(), 404, "a well-formed link that is not ours");
    let is_unsubscribed = || async {
        sqlx::query_scalar::<_, bool>("SELECT unsubscribed_at IS NOT NULL FROM customers WHERE id = $1")
            .bind(customer)
            .fetch_one(&app.db.pool)
            .await
            .unwrap()
    };
    // Following the link (as a mail scanner does) only asks.
    let page = app.client.get(&link).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(page.contains("id=\"confirm-unsubscribe\"") && page.contains("method=\"post\""), "{page}");
    assert!(!is_unsubscribed().await, "a GET changes nothing");
    // The page's button posts the same URL.
    let action = page.split("action=\"").nth(1).and_then(|rest| rest.split('"').next()).unwrap().replace("&amp;", "&");
    let confirmed = app.client.post(app.url(&action)).header("accept", "text/html").send().await.unwrap();
    assert_eq!(confirmed.status(), 200);
    assert!(confirmed.text().await.unwrap().contains("You are unsubscribed"));
    assert!(app.customer(customer).await.credit_balance == 5);
    assert!(is_unsubscribed().await);
    sqlx::query("UPDATE jobs SET run_at = now() WHERE kind = 'send_email_step' AND args->>'step' = 'getting_started'")
        .execute(&app.db.pool)
        .await
        .unwrap();
    let pool = app.db.pool.clone();
    crate::helpers::wait_for("the next step to run", Duration::from_secs(10), || {
        let pool = pool.clone();
        async move { step_job(&pool, "getting_started").await.status == JobStatus::Completed }
    })
    .await;
    assert_eq!(delivery_status(&app, customer, "getting_started").await.as_deref(), Some("skipped"));
    assert_eq!(sink.messages().len(), 1, "nothing sent after unsubscribing");
}

#[tokio::test]
async fn a_step_run_twice_or_raced_sends_one_email() {
    let sink = MailSink::start().await;
    let app = app_with_email(&sink).await;
    let (customer, _) = app.onboarded_customer("twice@example.com").await;
    sink.wait_for(1).await;
    let step = |name: &str| SendEmailStep {
        customer_id: customer,
        sequence: "onboarding".into(),
        step: name.into(),
        occurrence: String::new(),
        vars: serde_json::Value::Null,
    };
    step("welcome").run(app.job_context()).await.unwrap();
    let raced = futures::future::join_all((0..5).map(|_| step("getting_started").run(app.job_context()))).await;
    // A run that finds another one mid-send snoozes instead of sending or giving up.
    for outcome in &raced {
        match outcome {
            Ok(common::queue::Outcome::Done { .. } | common::queue::Outcome::Snooze { .. }) => {}
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    step("getting_started").run(app.job_context()).await.unwrap();
    // Every run above has returned, so whatever they sent is in the sink already.
    let mut subjects: Vec<String> = sink.messages().into_iter().map(|m| m.subject).collect();
    subjects.sort();
    assert_eq!(subjects, ["Getting started with RSOLV", "Welcome to RSOLV"]);
    assert_eq!(delivery_status(&app, customer, "getting_started").await.as_deref(), Some("sent"));
}

#[tokio::test]
async fn while_smtp_is_down_the_step_retries_and_arrives_once_when_it_is_back() {
    let mut sink = MailSink::start().await;
    let app = app_with_email(&sink).await;
    sink.down();
    let (customer, _) = app.onboarded_customer("outage@example.com").await;
    let pool = app.db.pool.clone();
    crate::helpers::wait_for("a failed attempt", Duration::from_secs(15), || {
        let pool = pool.clone();
        async move { step_job(&pool, "welcome").await.attempts >= 2 }
    })
    .await;
    assert_eq!(delivery_status(&app, customer, "welcome").await.as_deref(), Some("failed"));
    let welcome = step_job(&app.db.pool, "welcome").await;
    assert!(welcome.status.is_unfinished(), "{}", welcome.status);
    assert!(welcome.run_at > Utc::now() - chrono::Duration::seconds(5));

    sink.up().await;
    let mails = sink.wait_for(1).await;
    assert_eq!(mails[0].subject, "Welcome to RSOLV");
    crate::helpers::wait_for("the delivery to be recorded", Duration::from_secs(10), || async {
        delivery_status(&app, customer, "welcome").await.as_deref() == Some("sent")
    })
    .await;
    crate::helpers::wait_for("the welcome job to complete", Duration::from_secs(10), || async {
        step_job(&app.db.pool, "welcome").await.status == JobStatus::Completed
    })
    .await;
    assert_eq!(sink.messages().len(), 1, "exactly once");
}

#[tokio::test]
async fn the_dunning_email_carries_the_amount_and_the_next_attempt_even_after_unsubscribing() {
    let sink = MailSink::start().await;
    let app = app_with_email(&sink).await;
    let email = Email::parse("dunning@example.com").unwrap();
    let seeded = factories::create(&app.db.pool, &app.settings, CustomerState::Pro, email).await.unwrap();
    sqlx::query("UPDATE customers SET unsubscribed_at = now() WHERE id = $1")
        .bind(seeded.customer_id)
        .execute(&app.db.pool)
        .await
        .unwrap();
    let customer = app.customer(seeded.customer_id).await;
    let mut failed = Simulated::new(
        customer.stripe_customer_id.as_deref().unwrap(),
        customer.stripe_subscription_id.as_deref().unwrap(),
        PRO_PRICE,
        59_900,
    );
    failed.created = DateTime::parse_from_rfc3339("2026-03-01T10:00:00Z").unwrap().timestamp();
    let event = failed.event(Handled::InvoicePaymentFailed);
    assert_eq!(app.deliver(&event, WEBHOOK_SECRET).await.status(), 200);

    let mails = sink.wait_for(1).await;
    let dunning = &mails[0];
    assert_eq!(dunning.subject, "Payment Failed - Action Required");
    assert_eq!(dunning.to, "dunning@example.com");
    assert!(dunning.text.contains("Your payment of $599.00 for RSOLV Pro failed."), "{}", dunning.text);
    assert!(dunning.text.contains("We will try again on March 4, 2026."), "{}", dunning.text);
    assert!(dunning.html.contains("$599.00"));

    // Redelivered: the same failed invoice sends no second dunning email.
    wait_for_kind_finished(&app.db.pool, "send_email_step", Duration::from_secs(10)).await;
    let mut again = event.clone();
    again["id"] = serde_json::json!("evt_redelivered_as_new");
    assert_eq!(app.deliver(&again, WEBHOOK_SECRET).await.status(), 200);
    wait_for_kind_finished(&app.db.pool, "process_stripe_event", Duration::from_secs(10)).await;
    wait_for_kind_finished(&app.db.pool, "send_email_step", Duration::from_secs(10)).await;
    assert_eq!(sink.messages().len(), 1);
}

#[tokio::test]
async fn one_click_unsubscribe_by_post() {
    let sink = MailSink::start().await;
    let app = app_with_email(&sink).await;
    let (customer, _) = app.onboarded_customer("oneclick@example.com").await;
    let mails = sink.wait_for(1).await;
    let link = mails[0].list_unsubscribe.as_deref().unwrap().trim_matches(|c| c == '<' || c == '>').to_owned();
    let response = app
        .client
        .post(&link)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let unsubscribed: bool = sqlx::query_scalar("SELECT unsubscribed_at IS NOT NULL FROM customers WHERE id = $1")
        .bind(customer)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert!(unsubscribed);
    let tampered = link.replace(&customer.simple().to_string(), &Uuid::new_v4().simple().to_string());
    assert_eq!(app.client.post(&tampered).send().await.unwrap().status(), 404, "well formed, but not genuine");
}

#[tokio::test]
async fn the_nudge_sweep_starts_each_nudge_once_per_customer_and_episode() {
    let sink = MailSink::start().await;
    let app = api_with_email(&sink).await;
    let low = customer(&app, CustomerState::TrialExhausted, "low@example.com").await;
    let carded = customer(&app, CustomerState::TrialWithBilling, "carded@example.com").await;
    let quiet = customer(&app, CustomerState::Pro, "quiet@example.com").await;
    // Quiet since 40 days ago (its sign-up; it never reported a fix); the others are new.
    sqlx::query("UPDATE customers SET created_at = now() - interval '40 days' WHERE id = $1")
        .bind(quiet.customer_id)
        .execute(&app.db.pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM usage_fixes WHERE customer_id = $1")
        .bind(quiet.customer_id)
        .execute(&app.db.pool)
        .await
        .unwrap();
    let sweep = |tick| common::jobs::NudgeSweep { tick }.run(app.job_context());
    sweep(1).await.unwrap();
    let started = || async {
        let mut jobs: Vec<(uuid::Uuid, String, String)> = testing::inserted::<SendEmailStep>(&app.db.pool)
            .await
            .into_iter()
            .map(|j| (j.args.customer_id, j.args.sequence, j.args.occurrence))
            .collect();
        jobs.dedup();
        jobs
    };
    let since = (chrono::Utc::now() - chrono::Duration::days(40)).format("%Y-%m-%d").to_string();
    let first = started().await;
    assert!(first.contains(&(low.customer_id, "expiring_trial".into(), String::new())), "{first:?}");
    assert!(first.contains(&(quiet.customer_id, "re_engagement".into(), since.clone())), "{first:?}");
    assert!(first.iter().all(|(c, ..)| *c != carded.customer_id), "a customer with a card is not nudged");
    let steps = testing::inserted::<SendEmailStep>(&app.db.pool).await.len();
    assert_eq!(steps, EXPIRING_STEPS + RE_ENGAGEMENT_STEPS);

    // Again: nothing new. A new stretch of quiet after a fix is a new episode.
    sweep(2).await.unwrap();
    assert_eq!(testing::inserted::<SendEmailStep>(&app.db.pool).await.len(), steps);
    common::db::usage::record_refused(&app.db.pool, quiet.customer_id, "late-fix", "r", "NO_BILLING_INFO")
        .await
        .unwrap();
    sqlx::query("UPDATE usage_fixes SET created_at = now() - interval '31 days' WHERE fix_id = 'late-fix'")
        .execute(&app.db.pool)
        .await
        .unwrap();
    sweep(3).await.unwrap();
    let again = (chrono::Utc::now() - chrono::Duration::days(31)).format("%Y-%m-%d").to_string();
    assert!(started().await.contains(&(quiet.customer_id, "re_engagement".into(), again)));
    assert_eq!(testing::inserted::<SendEmailStep>(&app.db.pool).await.len(), steps + RE_ENGAGEMENT_STEPS);

    // The first episode's steps, when their time comes: the customer came back since, so
    // they are skipped.
    let first_episode = SendEmailStep {
        customer_id: quiet.customer_id,
        sequence: "re_engagement".into(),
        step: "we_miss_you".into(),
        occurrence: since,
        vars: serde_json::Value::Null,
    };
    first_episode.run(app.job_context()).await.unwrap();
    let status: String =
        sqlx::query_scalar("SELECT status FROM email_deliveries WHERE customer_id = $1 AND sequence = 're_engagement'")
            .bind(quiet.customer_id)
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(status, "skipped");
    assert!(sink.messages().is_empty());
}

/// Found by simulation seed 1796238711: an hourly sweep that fell inside a run with email
/// off queued expiring-trial steps that no worker could send, and they died.
#[tokio::test]
async fn with_email_off_the_nudge_sweep_starts_nothing_and_the_customer_is_nudged_once_email_is_on() {
    let app = TestApp::spawn(&[], false).await;
    assert!(app.settings.email.is_none());
    let low = customer(&app, CustomerState::TrialExhausted, "low@example.com").await;
    let starts = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM email_sequence_starts WHERE customer_id = $1")
            .bind(low.customer_id)
            .fetch_one(&app.db.pool)
            .await
            .unwrap()
    };

    common::jobs::NudgeSweep { tick: 1 }.run(app.job_context()).await.unwrap();
    assert!(testing::inserted::<SendEmailStep>(&app.db.pool).await.is_empty(), "no step is queued with email off");
    assert_eq!(starts().await, 0, "and no start is recorded, so the nudge is still owed");

    // The same database, a worker with email on: the customer is nudged now.
    let sink = MailSink::start().await;
    let smtp = sink.smtp_url();
    let on = crate::helpers::settings(&app.db.url, &[("SMTP_URL", smtp.as_str())]);
    let ctx = common::jobs::JobContext::new(app.db.pool.clone(), std::sync::Arc::new(on)).unwrap();
    common::jobs::NudgeSweep { tick: 2 }.run(ctx).await.unwrap();
    let queued = testing::inserted::<SendEmailStep>(&app.db.pool).await;
    assert_eq!(queued.len(), EXPIRING_STEPS, "{queued:?}");
    assert!(queued.iter().all(|j| j.args.customer_id == low.customer_id && j.args.sequence == "expiring_trial"));
    assert_eq!(starts().await, 1);
}

/// A worker with email off does not run the email kinds: their jobs wait, unclaimed and
/// charged no attempt, for a worker that can send them (a mixed fleet, or email turned
/// off after they were scheduled), rather than dying.
#[tokio::test]
async fn a_worker_with_email_off_leaves_email_jobs_waiting_for_one_that_can_send_them() {
    let app = TestApp::spawn(&[], true).await;
    let trial = customer(&app, CustomerState::Trial, "t@example.com").await;
    let step = SendEmailStep {
        customer_id: trial.customer_id,
        sequence: "onboarding".into(),
        step: "welcome".into(),
        occurrence: String::new(),
        vars: serde_json::json!({}),
    };
    let queue::Enqueued::Inserted(id) = queue::enqueue(&app.db.pool, &step).await.unwrap() else { panic!("inserted") };
    let link = common::jobs::SendSignInLink { customer_id: trial.customer_id, request: Uuid::new_v4() };
    queue::enqueue(&app.db.pool, &link).await.unwrap();

    // Every other kind's worker is up (each registers before it claims anything)...
    let others = common::jobs::kinds().len() as i64 - 2;
    crate::helpers::wait_for("the other kinds' workers", Duration::from_secs(20), || async {
        sqlx::query_scalar::<_, i64>("SELECT count(DISTINCT kind) FROM job_workers")
            .fetch_one(&app.db.pool)
            .await
            .unwrap()
            >= others
    })
    .await;
    let email_kinds: i64 =
        sqlx::query_scalar("SELECT count(*) FROM job_workers WHERE kind IN ('send_email_step', 'send_sign_in_link')")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(email_kinds, 0, "no worker of an email kind runs where email is off");
    // ...and runs its jobs, while the email jobs wait untouched.
    let other = common::jobs::SignInLinkNotSent { request: Uuid::new_v4() };
    let queue::Enqueued::Inserted(other) = queue::enqueue(&app.db.pool, &other).await.unwrap() else { panic!() };
    testing::wait_for_status(&app.db.pool, other, JobStatus::Completed, Duration::from_secs(20)).await;
    for job in testing::all_jobs(&app.db.pool).await.into_iter().filter(|j| j.kind.starts_with("send_")) {
        assert_eq!((job.status, job.attempts, job.errors.len()), (JobStatus::Available, 0, 0), "{}", job.kind);
    }
    assert_eq!(testing::status_of(&app.db.pool, id).await, Some(JobStatus::Available));
}

/// A sign-in link asked for longer ago than a link lasts (it waited for a worker with
/// email) is not sent late: the run cancels it, and nothing is mailed or stored.
#[tokio::test]
async fn a_sign_in_link_asked_for_longer_ago_than_a_link_lasts_is_not_sent_late() {
    let sink = MailSink::start().await;
    let app = api_with_email(&sink).await;
    let ada = customer(&app, CustomerState::Pro, "ada@example.com").await;
    let late = common::jobs::SendSignInLink { customer_id: ada.customer_id, request: Uuid::new_v4() };
    let fresh = common::jobs::SendSignInLink { customer_id: ada.customer_id, request: Uuid::new_v4() };
    queue::enqueue(&app.db.pool, &late).await.unwrap();
    queue::enqueue(&app.db.pool, &fresh).await.unwrap();
    sqlx::query("UPDATE jobs SET created_at = now() - interval '16 minutes' WHERE unique_key = $1")
        .bind(late.request.to_string())
        .execute(&app.db.pool)
        .await
        .unwrap();

    let outcome = late.run(app.job_context()).await.unwrap();
    assert!(matches!(outcome, queue::Outcome::Cancel { .. }), "{outcome:?}");
    let links: i64 = sqlx::query_scalar("SELECT count(*) FROM sign_in_links").fetch_one(&app.db.pool).await.unwrap();
    assert_eq!(links, 0, "no link made");
    assert!(sink.messages().is_empty(), "nothing mailed");

    // One asked for just now is sent.
    fresh.run(app.job_context()).await.unwrap();
    assert_eq!(sink.wait_for(1).await[0].subject, "Your RSOLV sign-in link");
}

/// A customer in `state` with address `email`.
async fn customer(app: &TestApp, state: CustomerState, email: &str) -> factories::Seeded {
    factories::create(&app.db.pool, &app.settings, state, Email::parse(email).unwrap()).await.unwrap()
}

const EXPIRING_STEPS: usize = common::email::sequences::EXPIRING_TRIAL.steps.len();
const RE_ENGAGEMENT_STEPS: usize = common::email::sequences::RE_ENGAGEMENT.steps.len();

#[tokio::test]
async fn the_numbers_an_email_quotes_come_from_configuration() {
    let sink = MailSink::start().await;
    let url = sink.smtp_url();
    let app = TestApp::spawn(
        &[("SMTP_URL", url.as_str()), ("CREDITS_TRIAL_SIGNUP", "7"), ("PRICE_FIX_PAYG_CENTS", "3150")],
        true,
    )
    .await;
    app.onboarded_customer("numbers@example.com").await;
    let welcome = sink.wait_for(1).await.remove(0);
    assert!(welcome.text.contains("with 7 free credits"), "{}", welcome.text);
    let settings = &app.settings;
    let step = common::email::sequences::EXPIRING_TRIAL.step("credits_running_low").unwrap();
    let rendered =
        common::email::render(settings, step, uuid::Uuid::new_v4(), "Nia", &serde_json::Value::Null).unwrap();
    assert!(rendered.text.contains("31.50 USD per fix"), "{}", rendered.text);
    assert!(rendered.text.contains("Pro for 60 fixes a month at 599 USD a month"), "{}", rendered.text);
}

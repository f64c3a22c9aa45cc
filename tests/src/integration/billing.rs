//! Billing against localstripe through the real Stripe client, and Stripe webhooks
//! signed exactly as Stripe signs them.

use std::time::Duration;

use common::domain::Email;
use common::factories::{self, CustomerState};
use common::jobs::{AddPaymentMethod, ProcessStripeEvent, RecordUsage, RenewalSweep, SubscribePro};
use common::queue::JobStatus;
use common::queue::testing;
use common::queue::{self, Job, Outcome};
use common::stripe::events::Handled;
use common::stripe::simulated::Simulated;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{
    OLD_WEBHOOK_SECRET, PRO_PRICE, TestApp, WEBHOOK_SECRET, assert_ledger_consistent, localstripe, wait_for,
    wait_for_kind_finished,
};

async fn error_code(response: reqwest::Response, status: u16) -> String {
    assert_eq!(response.status().as_u16(), status);
    let body: Value = response.json().await.unwrap();
    body["error"]["code"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn onboarding_creates_the_stripe_customer_tagged_with_our_id() {
    let app = TestApp::with_billing().await;
    let (id, _, stripe_id) = app.stripe_customer("tagged@example.com").await;
    let at_stripe = localstripe(&format!("customers/{stripe_id}")).await;
    assert_eq!(at_stripe["metadata"]["rsolv_customer_id"], id.to_string());
    assert_eq!(at_stripe["email"], "tagged@example.com");
    // The job's acknowledgement is written just after its effect commits.
    wait_for_kind_finished(&app.db.pool, "create_stripe_customer", Duration::from_secs(10)).await;
    assert_eq!(testing::count(&app.db.pool, Some("create_stripe_customer"), &[JobStatus::Completed]).await, 1);
}

#[tokio::test]
async fn a_payment_method_needs_consent_and_grants_credits_once() {
    let app = TestApp::with_billing().await;
    let (id, key, stripe_id) = app.stripe_customer("card@example.com").await;

    for body in [
        json!({ "payment_method_id": "pm_card_visa" }),
        json!({ "payment_method_id": "pm_card_visa", "consent": false }),
    ] {
        let response = app.post_with_key("/api/v1/billing/payment-methods", &key, &body).await;
        assert_eq!(error_code(response, 422).await, "BILLING_CONSENT_REQUIRED");
    }
    let bad_id = app
        .post_with_key(
            "/api/v1/billing/payment-methods",
            &key,
            &json!({ "payment_method_id": "card", "consent": true }),
        )
        .await;
    assert_eq!(error_code(bad_id, 422).await, "VALIDATION_FAILED");
    queue::testing::require_not_inserted::<AddPaymentMethod>(&app.db.pool).await;
    assert_eq!(app.balance(id).await, 5);
    assert!(app.customer(id).await.stripe_payment_method_id.is_none());

    let first = app.add_card(&key, "pm_card_visa").await;
    assert_eq!(first["status"], "succeeded", "{first}");
    let customer = app.customer(id).await;
    assert_eq!(customer.subscription_type.as_str(), "pay_as_you_go");
    assert_eq!(customer.credit_balance, 10);
    let pm = customer.stripe_payment_method_id.unwrap();
    let at_stripe = localstripe(&format!("customers/{stripe_id}")).await;
    assert_eq!(at_stripe["invoice_settings"]["default_payment_method"], pm.as_str());

    let second = app.add_card(&key, "pm_card_visa").await;
    assert_eq!(second["status"], "succeeded", "{second}");
    assert_eq!(app.balance(id).await, 10, "a second card grants nothing");
    assert_eq!(app.count("SELECT count(*) FROM credit_ledger WHERE source = 'trial_billing_added'").await, 1);
    let me: Value = app.get_with_key("/api/v1/customers/me", &key).await.json().await.unwrap();
    assert_eq!(me["has_payment_method"], true);
    assert_ledger_consistent(&app.db.pool).await;
}

#[tokio::test]
async fn subscribing_to_pro_needs_a_card_and_grants_nothing_until_the_invoice_is_paid() {
    let app = TestApp::with_billing().await;
    let (id, key, _) = app.stripe_customer("pro@example.com").await;
    let refused =
        app.client.post(app.url("/api/v1/billing/subscription")).header("x-api-key", &key).send().await.unwrap();
    assert_eq!(error_code(refused, 422).await, "NO_PAYMENT_METHOD");
    queue::testing::require_not_inserted::<SubscribePro>(&app.db.pool).await;

    app.add_card(&key, "pm_card_visa").await;
    let accepted =
        app.client.post(app.url("/api/v1/billing/subscription")).header("x-api-key", &key).send().await.unwrap();
    let done = app.finished_operation(&key, accepted).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let customer = app.customer(id).await;
    assert_eq!(customer.subscription_type.as_str(), "pro");
    assert_eq!(customer.subscription_state.map(|s| s.as_str()), Some("active"));
    assert!(customer.stripe_subscription_id.is_some() && customer.subscription_period_end.is_some());
    assert_eq!(customer.credit_balance, 10, "no credits at subscription time");

    let again =
        app.client.post(app.url("/api/v1/billing/subscription")).header("x-api-key", &key).send().await.unwrap();
    assert_eq!(error_code(again, 409).await, "ALREADY_SUBSCRIBED");

    let invoices: Value = app.get_with_key("/api/v1/billing/invoices", &key).await.json().await.unwrap();
    let invoices = invoices["invoices"].as_array().unwrap();
    assert_eq!(invoices.len(), 1);
    assert_eq!(invoices[0]["amount_paid"], 59_900);
    assert_eq!(invoices[0]["status"], "paid");
}

#[tokio::test]
async fn a_paid_pro_invoice_grants_sixty_credits_once_however_often_it_is_delivered() {
    let app = TestApp::with_worker_and_webhooks().await;
    let seeded = seeded(&app, CustomerState::Pro, "invoice").await;
    let (stripe_customer, subscription) = stripe_ids(&app, seeded).await;
    let event =
        Simulated::new(&stripe_customer, &subscription, PRO_PRICE, 59_900).event(Handled::InvoicePaymentSucceeded);
    let before = app.balance(seeded).await;

    let mut duplicates = Vec::new();
    for _ in 0..3 {
        let response = app.deliver(&event, WEBHOOK_SECRET).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        duplicates.push(body["duplicate"].as_bool().unwrap());
    }
    assert_eq!(duplicates, [false, true, true], "a redelivery enqueues nothing new");
    wait_for_kind_finished(&app.db.pool, "process_stripe_event", Duration::from_secs(10)).await;
    assert_eq!(app.balance(seeded).await, before + 60);
    let invoice_id = event["data"]["object"]["id"].as_str().unwrap();
    let entries: Vec<(String, Value)> =
        sqlx::query_as("SELECT source, metadata FROM credit_ledger WHERE idempotency_key = $1")
            .bind(format!("pro_invoice:{invoice_id}"))
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].0, "pro_subscription_payment");
    assert_eq!(entries[0].1["invoice_id"], invoice_id);
    assert_eq!(entries[0].1["amount_paid"], 59_900);
    assert_eq!(app.count("SELECT count(*) FROM billing_events").await, 1);

    // Delivered again after processing, even as a new job: still once.
    let job = common::jobs::ProcessStripeEvent {
        event_id: event["id"].as_str().unwrap().into(),
        event_type: "invoice.payment_succeeded".into(),
        created: event["created"].as_i64().unwrap(),
        payload: event.clone(),
    };
    job.run(app.job_context()).await.unwrap();
    assert_eq!(app.balance(seeded).await, before + 60);
    assert_ledger_consistent(&app.db.pool).await;
}

#[tokio::test]
async fn a_failed_payment_makes_pro_past_due() {
    let app = TestApp::with_worker_and_webhooks().await;
    let seeded = seeded(&app, CustomerState::Pro, "failed").await;
    let (stripe_customer, subscription) = stripe_ids(&app, seeded).await;
    let event = Simulated::new(&stripe_customer, &subscription, PRO_PRICE, 59_900).event(Handled::InvoicePaymentFailed);
    assert_eq!(
        app.deliver(&event, OLD_WEBHOOK_SECRET).await.status(),
        200,
        "a secret being rotated out still verifies"
    );
    wait_for_kind_finished(&app.db.pool, "process_stripe_event", Duration::from_secs(10)).await;
    let customer = app.customer(seeded).await;
    assert_eq!(customer.subscription_state.map(|s| s.as_str()), Some("past_due"));
    assert_eq!(customer.subscription_type.as_str(), "pro");
}

#[tokio::test]
async fn subscription_deleted_makes_the_customer_pay_as_you_go_and_keeps_credits() {
    let app = TestApp::with_worker_and_webhooks().await;
    let seeded = seeded(&app, CustomerState::ProPartlyUsed, "deleted").await;
    let (stripe_customer, subscription) = stripe_ids(&app, seeded).await;
    let event = Simulated::new(&stripe_customer, &subscription, PRO_PRICE, 59_900).event(Handled::SubscriptionDeleted);
    assert_eq!(app.deliver(&event, WEBHOOK_SECRET).await.status(), 200);
    wait_for_kind_finished(&app.db.pool, "process_stripe_event", Duration::from_secs(10)).await;
    let customer = app.customer(seeded).await;
    assert_eq!(customer.subscription_type.as_str(), "pay_as_you_go");
    assert_eq!(customer.subscription_state, None);
    assert_eq!(customer.stripe_subscription_id, None);
    assert!(!customer.cancel_at_period_end);
    assert_eq!(customer.credit_balance, 45, "credits are kept");
}

#[tokio::test]
async fn cancelling_at_period_end_keeps_pro_and_cancelling_now_ends_it() {
    let app = TestApp::with_billing().await;
    let (id, key, _) = app.stripe_customer("cancel@example.com").await;
    let none =
        app.client.delete(app.url("/api/v1/billing/subscription")).header("x-api-key", &key).send().await.unwrap();
    assert_eq!(error_code(none, 404).await, "NO_ACTIVE_SUBSCRIPTION");

    app.add_card(&key, "pm_card_visa").await;
    let accepted =
        app.client.post(app.url("/api/v1/billing/subscription")).header("x-api-key", &key).send().await.unwrap();
    app.finished_operation(&key, accepted).await;

    let later = app
        .client
        .delete(app.url("/api/v1/billing/subscription?at_period_end=true"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(app.finished_operation(&key, later).await["status"], "succeeded");
    let customer = app.customer(id).await;
    assert_eq!((customer.subscription_type.as_str(), customer.cancel_at_period_end), ("pro", true));
    let me: Value = app.get_with_key("/api/v1/customers/me", &key).await.json().await.unwrap();
    assert_eq!(me["warnings"], json!(["CANCELLATION_SCHEDULED"]));

    let now = app
        .client
        .delete(app.url("/api/v1/billing/subscription?at_period_end=false"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(app.finished_operation(&key, now).await["status"], "succeeded");
    let customer = app.customer(id).await;
    assert_eq!(customer.subscription_type.as_str(), "pay_as_you_go");
    assert_eq!((customer.subscription_state, customer.stripe_subscription_id), (None, None));
    assert_eq!(customer.credit_balance, 10, "credits kept");

    let bad = app
        .client
        .delete(app.url("/api/v1/billing/subscription?at_period_end=maybe"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(bad, 422).await, "VALIDATION_FAILED");
}

async fn use_up_credits(app: &TestApp, key: &str, n: usize) {
    for i in 0..n {
        let response = app
            .post_with_key("/api/v1/usage/fixes", key, &json!({ "fix_id": format!("prepaid-{i}"), "repo": "org/repo" }))
            .await;
        assert_eq!(response.status(), 202);
    }
    wait_for_kind_finished(&app.db.pool, "record_usage", Duration::from_secs(20)).await;
}

async fn charges_for_fix(customer: &str, fix_id: &str) -> usize {
    crate::money::payment_intents(customer).await.iter().filter(|pi| pi["metadata"]["fix_id"] == fix_id).count()
}

#[tokio::test]
async fn a_fix_at_balance_zero_is_charged_once_even_when_its_job_runs_twice() {
    let app = TestApp::with_billing().await;
    let (id, key, stripe_id) = app.stripe_customer("payg@example.com").await;
    app.add_card(&key, "pm_card_visa").await;
    use_up_credits(&app, &key, 10).await;
    assert_eq!(app.balance(id).await, 0);

    let fix = json!({ "fix_id": "paid-fix", "repo": "org/repo" });
    assert_eq!(app.post_with_key("/api/v1/usage/fixes", &key, &fix).await.status(), 202);
    wait_for_kind_finished(&app.db.pool, "record_usage", Duration::from_secs(20)).await;
    let (outcome, cents): (String, Option<i64>) =
        sqlx::query_as("SELECT outcome, charged_cents FROM usage_fixes WHERE fix_id = 'paid-fix'")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!((outcome.as_str(), cents), ("consumed", Some(2_900)), "PAYG pays $29 per fix");
    assert_eq!(app.balance(id).await, 0, "+1 purchased, −1 fix_deployed");
    assert_eq!(app.count("SELECT count(*) FROM credit_ledger WHERE source = 'purchased'").await, 1);

    // The same job again (a retry after a lost acknowledgement): no second charge.
    let rerun =
        RecordUsage { customer_id: id, fix_id: "paid-fix".into(), repo: "org/repo".into(), metadata: Value::Null };
    let outcome = rerun.run(app.job_context()).await.unwrap();
    assert!(matches!(outcome, Outcome::Done { ref detail } if detail["duplicate"] == true), "{outcome:?}");
    assert_eq!(charges_for_fix(&stripe_id, "paid-fix").await, 1, "Stripe saw one charge");
    assert_eq!(app.count("SELECT count(*) FROM credit_ledger WHERE source = 'purchased'").await, 1);
    assert_ledger_consistent(&app.db.pool).await;
}

#[tokio::test]
async fn a_declined_card_refuses_the_fix_with_no_credit_change() {
    let app = TestApp::with_billing().await;
    let (id, key, _) = app.stripe_customer("declined@example.com").await;
    app.add_card(&key, "pm_card_chargeCustomerFail").await;
    use_up_credits(&app, &key, 10).await;
    let entries_before = app.count("SELECT count(*) FROM credit_ledger").await;

    assert_eq!(
        app.post_with_key("/api/v1/usage/fixes", &key, &json!({ "fix_id": "declined-fix", "repo": "r" }))
            .await
            .status(),
        202
    );
    wait_for_kind_finished(&app.db.pool, "record_usage", Duration::from_secs(20)).await;
    let status: Value = app.get_with_key("/api/v1/usage/fixes/declined-fix", &key).await.json().await.unwrap();
    assert_eq!(status["status"], "refused");
    assert_eq!(status["refusal_code"], "CARD_DECLINED");
    assert_eq!(app.balance(id).await, 0);
    assert_eq!(app.count("SELECT count(*) FROM credit_ledger").await, entries_before);
}

#[tokio::test]
async fn forged_stale_and_missing_signatures_are_refused_and_store_nothing() {
    let app = TestApp::with_worker_and_webhooks().await;
    let event = Simulated::new("cus_x", "sub_x", PRO_PRICE, 59_900).event(Handled::InvoicePaymentSucceeded);
    let body = serde_json::to_vec(&event).unwrap();
    let now = chrono::Utc::now().timestamp();
    let forged = common::stripe::signature::sign(&body, "whsec_attacker", now);
    let stale = common::stripe::signature::sign(&body, WEBHOOK_SECRET, now - 301);
    let tampered = common::stripe::signature::sign(b"{\"id\": \"evt_other\"}", WEBHOOK_SECRET, now);
    for header in [Some(forged.as_str()), Some(stale.as_str()), Some(tampered.as_str()), Some("t=1,v1=zz"), None] {
        let response = app.deliver_raw(body.clone(), header).await;
        assert_eq!(error_code(response, 400).await, "INVALID_SIGNATURE", "for {header:?}");
    }
    assert_eq!(testing::count_all(&app.db.pool).await, 0);
    assert_eq!(app.count("SELECT count(*) FROM billing_events").await, 0);
}

#[tokio::test]
async fn signed_events_we_cannot_store_are_refused_with_a_clear_error_and_store_nothing() {
    let app = TestApp::with_worker_and_webhooks().await;
    let event = Simulated::new("cus_x", "sub_x", PRO_PRICE, 59_900).event(Handled::InvoicePaymentSucceeded);
    let mut with_nul = event.clone();
    with_nul["data"]["object"]["description"] = json!("a\u{0}b");
    let mut not_an_event = event.clone();
    not_an_event["id"] = json!("not-an-event-id");
    let mut object_is_a_list = event.clone();
    object_is_a_list["data"]["object"] = json!([1, 2]);
    for (what, bad) in [("NUL", with_nul), ("id", not_an_event), ("object", object_is_a_list)] {
        assert_eq!(error_code(app.deliver(&bad, WEBHOOK_SECRET).await, 400).await, "INVALID_PAYLOAD", "{what}");
    }
    assert_eq!(testing::count_all(&app.db.pool).await, 0);
    // A type with digits is a Stripe type like any other.
    let mut digits = event;
    digits["type"] = json!("v1.billing.meter.error_report_triggered");
    assert_eq!(app.deliver(&digits, WEBHOOK_SECRET).await.status(), 200);
}

#[tokio::test]
async fn other_event_types_are_recorded_and_ignored_and_unknown_customers_retried() {
    let app = TestApp::with_worker_and_webhooks().await;
    let mut other = Simulated::new("cus_nobody", "sub_x", PRO_PRICE, 100).event(Handled::InvoicePaymentSucceeded);
    other["type"] = json!("charge.refunded");
    assert_eq!(app.deliver(&other, WEBHOOK_SECRET).await.status(), 200);
    let unknown = Simulated::new("cus_nobody", "sub_x", PRO_PRICE, 59_900).event(Handled::InvoicePaymentSucceeded);
    assert_eq!(app.deliver(&unknown, WEBHOOK_SECRET).await.status(), 200);

    let pool = app.db.pool.clone();
    // The two run concurrently: wait for both outcomes, in whichever order they land.
    wait_for("the unknown customer's event to fail an attempt, the other to finish", Duration::from_secs(10), || {
        let pool = pool.clone();
        async move {
            let jobs = testing::all_jobs(&pool).await;
            let retried = |job: &testing::JobRow| {
                job.status == JobStatus::Retryable && job.errors.iter().any(|e| e.error.contains("cus_nobody"))
            };
            let ignored = |job: &testing::JobRow| {
                job.status == JobStatus::Completed && job.args.to_string().contains("charge.refunded")
            };
            jobs.iter().any(retried) && jobs.iter().any(ignored)
        }
    })
    .await;
    let events: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT type, outcome FROM billing_events ORDER BY type").fetch_all(&app.db.pool).await.unwrap();
    assert_eq!(
        events,
        vec![("charge.refunded".into(), Some("ignored".into())), ("invoice.payment_succeeded".into(), None)],
        "both recorded; the unknown customer's waits for its retry"
    );
}

/// A subscription's life as events one second apart.
fn lifecycle(stripe_customer: &str, subscription: &str, ends_deleted: bool) -> Vec<Value> {
    let base = Simulated::new(stripe_customer, subscription, PRO_PRICE, 59_900);
    let step = |n: i64, kind: Handled, status: &str, cancel_later: bool| {
        let mut s = base.clone();
        s.event_id = format!("evt_{}_{n}", &subscription[4..]);
        s.created = base.created - 100 + n;
        s.status = status.into();
        s.cancel_at_period_end = cancel_later;
        s.event(kind)
    };
    let mut events = vec![
        step(0, Handled::SubscriptionCreated, "active", false),
        step(1, Handled::SubscriptionUpdated, "active", true),
        step(2, Handled::SubscriptionUpdated, "past_due", true),
        step(3, Handled::SubscriptionUpdated, "active", false),
    ];
    if ends_deleted {
        events.push(step(4, Handled::SubscriptionDeleted, "canceled", false));
    }
    events
}

fn state_of(c: &common::db::customers::Customer) -> (String, Option<String>, bool, Option<String>, i64) {
    (
        c.subscription_type.as_str().to_owned(),
        c.subscription_state.map(|s| s.as_str().to_owned()),
        c.cancel_at_period_end,
        c.stripe_subscription_id.clone(),
        c.credit_balance,
    )
}

#[tokio::test]
async fn shuffled_and_duplicated_events_converge_to_the_in_order_result() {
    let app = TestApp::with_worker_and_webhooks().await;
    for ends_deleted in [true, false] {
        let in_order = seeded(&app, CustomerState::PayAsYouGo, &format!("ordered-{ends_deleted}")).await;
        let (stripe_a, _) = stripe_ids(&app, in_order).await;
        let sub_a = format!("sub_order{}", ends_deleted as u8);
        for event in lifecycle(&stripe_a, &sub_a, ends_deleted) {
            assert_eq!(app.deliver(&event, WEBHOOK_SECRET).await.status(), 200);
            wait_for_kind_finished(&app.db.pool, "process_stripe_event", Duration::from_secs(10)).await;
        }
        let expected = app.customer(in_order).await;

        for seed in 0..3u64 {
            let shuffled = seeded(&app, CustomerState::PayAsYouGo, &format!("shuffled-{ends_deleted}-{seed}")).await;
            let (stripe_b, _) = stripe_ids(&app, shuffled).await;
            let sub_b = format!("sub_shuf{}{seed}", ends_deleted as u8);
            let mut events = lifecycle(&stripe_b, &sub_b, ends_deleted);
            events.extend(events.clone()); // every event delivered twice
            shuffle(&mut events, seed);
            let responses = futures::future::join_all(events.iter().map(|e| app.deliver(e, WEBHOOK_SECRET))).await;
            assert!(responses.iter().all(|r| r.status() == 200));
            wait_for_kind_finished(&app.db.pool, "process_stripe_event", Duration::from_secs(15)).await;
            let got = app.customer(shuffled).await;
            let mut want = state_of(&expected);
            want.3 = want.3.map(|_| sub_b.clone());
            assert_eq!(state_of(&got), want, "ends_deleted={ends_deleted} shuffle {seed}");
        }
    }
}

fn shuffle(items: &mut [Value], seed: u64) {
    // A small deterministic Fisher-Yates, so a failure reproduces.
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    for i in (1..items.len()).rev() {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        items.swap(i, (state >> 33) as usize % (i + 1));
    }
}

#[tokio::test]
async fn a_renewal_whose_invoice_webhook_never_came_grants_the_credits_once() {
    let app = TestApp::with_billing().await;
    let (id, key, _) = app.stripe_customer("renew@example.com").await;
    app.add_card(&key, "pm_card_visa").await;
    let accepted =
        app.client.post(app.url("/api/v1/billing/subscription")).header("x-api-key", &key).send().await.unwrap();
    app.finished_operation(&key, accepted).await;
    assert_eq!(app.balance(id).await, 10, "localstripe's paid invoice sent no webhook here");

    // The period has ended: two sweeps (two ticks) both find it.
    sqlx::query("UPDATE customers SET subscription_period_end = now() - interval '1 minute' WHERE id = $1")
        .bind(id)
        .execute(&app.db.pool)
        .await
        .unwrap();
    for tick in [1, 2] {
        queue::enqueue(&app.db.pool, &RenewalSweep { tick }).await.unwrap();
        wait_for_kind_finished(&app.db.pool, "renewal_sweep", Duration::from_secs(10)).await;
        wait_for_kind_finished(&app.db.pool, "renew_subscription", Duration::from_secs(15)).await;
    }
    assert_eq!(app.balance(id).await, 70, "+60 once for the paid invoice");
    let customer = app.customer(id).await;
    assert!(customer.subscription_period_end.unwrap() > chrono::Utc::now(), "the period was re-read from Stripe");

    // The late webhook for the same invoice grants nothing more.
    let invoices: Value = app.get_with_key("/api/v1/billing/invoices", &key).await.json().await.unwrap();
    let invoice_id = invoices["invoices"][0]["id"].as_str().unwrap().to_owned();
    let mut late = Simulated::new(
        customer.stripe_customer_id.as_deref().unwrap(),
        customer.stripe_subscription_id.as_deref().unwrap(),
        PRO_PRICE,
        59_900,
    );
    late.invoice_id = invoice_id;
    assert_eq!(app.deliver(&late.event(Handled::InvoicePaymentSucceeded), WEBHOOK_SECRET).await.status(), 200);
    wait_for_kind_finished(&app.db.pool, "process_stripe_event", Duration::from_secs(10)).await;
    assert_eq!(app.balance(id).await, 70);
    assert_ledger_consistent(&app.db.pool).await;
}

#[tokio::test]
async fn operations_are_visible_to_their_customer_only() {
    let app = TestApp::with_billing().await;
    let (_, key, _) = app.stripe_customer("mine@example.com").await;
    let (_, other_key) = app.onboarded_customer("theirs@example.com").await;
    let accepted = app
        .post_with_key(
            "/api/v1/billing/payment-methods",
            &key,
            &json!({ "payment_method_id": "pm_card_visa", "consent": true }),
        )
        .await;
    let body: Value = accepted.json().await.unwrap();
    let url = body["status_url"].as_str().unwrap();
    assert_eq!(app.get_with_key(url, &other_key).await.status(), 404);
    assert_eq!(app.get_with_key(url, &key).await.status(), 200);
}

#[tokio::test]
async fn the_factories_build_the_nine_states_of_the_domain() {
    let app = TestApp::api_only().await;
    let mut seen = Vec::new();
    for state in CustomerState::ALL {
        let id = seeded(&app, state, "factory").await;
        let c = app.customer(id).await;
        seen.push((
            state.name(),
            c.subscription_type.as_str().to_owned(),
            c.subscription_state.map(|s| s.as_str().to_owned()),
            c.cancel_at_period_end,
            c.credit_balance,
            c.stripe_payment_method_id.is_some(),
        ));
    }
    let want = |n: &'static str, t: &str, s: Option<&str>, later: bool, balance: i64, card: bool| {
        (n, t.to_owned(), s.map(str::to_owned), later, balance, card)
    };
    assert_eq!(
        seen,
        vec![
            want("trial", "trial", None, false, 5, false),
            want("trial-with-billing", "pay_as_you_go", None, false, 10, true),
            want("trial-exhausted", "trial", None, false, 0, false),
            want("payg", "pay_as_you_go", None, false, 0, true),
            want("pro", "pro", Some("active"), false, 60, true),
            want("pro-partly-used", "pro", Some("active"), false, 45, true),
            want("pro-past-due", "pro", Some("past_due"), false, 60, true),
            want("pro-cancellation-scheduled", "pro", Some("active"), true, 60, true),
            want("pro-cancelled", "pay_as_you_go", None, false, 60, true),
        ]
    );
    assert_ledger_consistent(&app.db.pool).await;
}

pub(crate) async fn seeded(app: &TestApp, state: CustomerState, tag: &str) -> Uuid {
    let email =
        Email::parse(&format!("{}-{tag}-{}@example.com", state.name(), &Uuid::new_v4().simple().to_string()[..6]))
            .unwrap();
    factories::create(&app.db.pool, &app.settings, state, email).await.unwrap().customer_id
}

pub(crate) async fn stripe_ids(app: &TestApp, id: Uuid) -> (String, String) {
    let c = app.customer(id).await;
    (c.stripe_customer_id.unwrap(), c.stripe_subscription_id.unwrap_or_else(|| "sub_none".into()))
}

#[tokio::test]
async fn webhooks_have_a_body_limit_of_their_own() {
    let secrets = format!("{WEBHOOK_SECRET},{OLD_WEBHOOK_SECRET}");
    let app = TestApp::spawn(
        &[
            ("STRIPE_WEBHOOK_SECRET", secrets.as_str()),
            ("STRIPE_PRO_PRICE_ID", PRO_PRICE),
            ("WEBHOOK_MAX_BODY_BYTES", "300000"),
        ],
        false,
    )
    .await;
    let mut event = Simulated::new("cus_big", "sub_big", PRO_PRICE, 59_900).event(Handled::InvoicePaymentSucceeded);
    // An event larger than any API request may be (64 KiB), as invoices with many lines are.
    event["data"]["object"]["description"] = json!("x".repeat(200_000));
    let big = app.deliver(&event, WEBHOOK_SECRET).await;
    assert_eq!(big.status(), 200, "{:?}", big.text().await);
    event["id"] = json!("evt_too_big");
    event["data"]["object"]["description"] = json!("x".repeat(400_000));
    let too_big = app.deliver(&event, WEBHOOK_SECRET).await;
    assert_eq!(error_code(too_big, 413).await, "PAYLOAD_TOO_LARGE");
    let accepted = queue::testing::require_inserted::<ProcessStripeEvent>(&app.db.pool).await;
    assert_ne!(accepted.args.event_id, "evt_too_big", "only the event within the limit was accepted");
    // The API's own routes keep their limit.
    let body = json!({ "name": "x".repeat(70_000), "email": "big@example.com" });
    assert_eq!(error_code(app.post_json("/api/v1/customers/onboard", &body).await, 413).await, "PAYLOAD_TOO_LARGE");
}

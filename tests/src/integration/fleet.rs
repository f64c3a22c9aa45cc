//! The platform as the deployment manifests run it: two API processes and four worker
//! processes on one Postgres, one of each killed (SIGKILL) in the middle of the load.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::domain::Email;
use common::factories::{self, CustomerState};
use common::queue::{JobStatus, testing};
use common::stripe::events::Handled;
use common::stripe::simulated::Simulated;
use serde_json::json;

use crate::helpers::{PRO_PRICE, Process, TestDb, WEBHOOK_SECRET, assert_ledger_consistent, our_command, wait_for};

/// Settings every process of the fleet shares: no rate limit in the way of the load, and a
/// small pool each, so six processes fit the tests' connection budget.
const FLEET_ENV: [(&str, &str); 8] = [
    ("RATE_LIMIT_ONBOARD_PER_MINUTE", "0"),
    ("RATE_LIMIT_USAGE_PER_MINUTE", "0"),
    ("RATE_LIMIT_API_PER_MINUTE", "0"),
    ("RATE_LIMIT_WEBHOOKS_PER_MINUTE", "0"),
    ("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET),
    ("STRIPE_PRO_PRICE_ID", PRO_PRICE),
    ("METRICS_ADDR", "off"),
    ("DATABASE_MAX_CONNECTIONS", "3"),
];

/// What the load sends: (path, body, extra header).
type Request = (&'static str, Vec<u8>, Option<(&'static str, String)>);

/// Sends `request` to one API and, if that process is gone (no answer), to the other, as
/// a load balancer retries; returns the status the request was finally answered with.
async fn send(client: &reqwest::Client, apis: &[String; 2], first: usize, request: &Request) -> u16 {
    for attempt in 0..2 {
        let base = &apis[(first + attempt) % 2];
        let (path, body, header) = request;
        let mut post =
            client.post(format!("{base}{path}")).header("content-type", "application/json").body(body.clone());
        if let Some((name, value)) = header {
            post = post.header(*name, value);
        }
        if let Ok(response) = post.send().await {
            return response.status().as_u16();
        }
    }
    panic!("neither API answered {}", request.0);
}

#[tokio::test]
async fn two_apis_and_four_workers_lose_nothing_when_one_of_each_is_killed_mid_load() {
    let db = TestDb::fresh().await;
    lose_nothing_when_one_api_and_one_worker_die(&db, [&db.url, &db.url], &[]).await;
}

/// The fleet's load and its checks, the APIs on `urls[0]` and the workers on `urls[1]`
/// (the test's database, or a pooler in front of it), with `env` after the fleet's
/// settings. Returns the processes left running (one API and three workers).
pub async fn lose_nothing_when_one_api_and_one_worker_die(
    db: &TestDb,
    urls: [&str; 2],
    env: &[(&str, &str)],
) -> Vec<Process> {
    let settings = crate::helpers::settings(&db.url, &[]);
    let mut payers = Vec::new();
    for n in 0..10 {
        let email = Email::parse(&format!("payer{n}@example.com")).unwrap();
        let seeded = factories::create(&db.pool, &settings, CustomerState::Pro, email).await.unwrap();
        let customer = common::db::customers::find(&db.pool, seeded.customer_id).await.unwrap().unwrap();
        payers.push((seeded.api_key.expose().to_owned(), customer));
    }
    let balances_before: i64 =
        sqlx::query_scalar("SELECT sum(credit_balance)::bigint FROM customers").fetch_one(&db.pool).await.unwrap();

    let mut apis: Vec<Process> = Vec::new();
    let mut addresses = Vec::new();
    for _ in 0..2 {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut command = our_command("rsolv-api", urls[0]);
        command.env("BIND_ADDR", format!("127.0.0.1:{port}")).envs(FLEET_ENV).envs(env.iter().copied());
        apis.push(Process::spawn(command.stdout(std::process::Stdio::null())));
        addresses.push(format!("http://127.0.0.1:{port}"));
    }
    let addresses: [String; 2] = addresses.try_into().unwrap();
    let worker_env: Vec<_> = FLEET_ENV.iter().chain(env).copied().collect();
    let mut workers: Vec<Process> = (0..4).map(|_| Process::worker(urls[1], &worker_env)).collect();
    let client = reqwest::Client::new();
    for base in &addresses {
        wait_for("an API to be ready", Duration::from_secs(20), || async {
            client.get(format!("{base}/ready")).send().await.is_ok_and(|r| r.status() == 200)
        })
        .await;
    }

    // 600 requests: 200 signups, 300 fix reports and 100 paid Pro invoices.
    let now = chrono::Utc::now().timestamp();
    let requests: Vec<Request> = (0..600)
        .map(|i| match i % 6 {
            0 | 3 => {
                let body = json!({ "name": "Fleet", "email": format!("fleet{i}@example.com") });
                ("/api/v1/customers/onboard", serde_json::to_vec(&body).unwrap(), None)
            }
            1 | 4 | 5 => {
                let (key, _) = &payers[i % payers.len()];
                let body = json!({ "fix_id": format!("fleet-fix-{i}"), "repo": "org/repo" });
                ("/api/v1/usage/fixes", serde_json::to_vec(&body).unwrap(), Some(("x-api-key", key.clone())))
            }
            _ => {
                let (_, customer) = &payers[i % payers.len()];
                let mut paid = Simulated::new(
                    customer.stripe_customer_id.as_deref().unwrap(),
                    customer.stripe_subscription_id.as_deref().unwrap(),
                    PRO_PRICE,
                    59_900,
                );
                paid.event_id = format!("evt_fleet_{i}");
                paid.invoice_id = format!("in_fleet_{i}");
                let body = serde_json::to_vec(&paid.event(Handled::InvoicePaymentSucceeded)).unwrap();
                let signature = common::stripe::signature::sign(&body, WEBHOOK_SECRET, now);
                ("/api/webhooks/stripe", body, Some(("stripe-signature", signature)))
            }
        })
        .collect();
    let requests = Arc::new(requests);
    let next = Arc::new(AtomicUsize::new(0));
    let senders: Vec<_> = (0..16)
        .map(|_| {
            let (client, requests, next, addresses) =
                (client.clone(), requests.clone(), next.clone(), addresses.clone());
            tokio::spawn(async move {
                let mut refused = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(request) = requests.get(i) else { return refused };
                    let status = send(&client, &addresses, i % 2, request).await;
                    // A retried signup whose first try committed is told the email is taken.
                    let accepted = matches!(status, 200 | 202) || (request.0.contains("onboard") && status == 409);
                    if !accepted {
                        refused.push((i, status));
                    }
                }
            })
        })
        .collect();

    // A third of the way in: one API and one worker die without warning.
    wait_for("a third of the load to be sent", Duration::from_secs(30), || async {
        next.load(Ordering::SeqCst) >= 200
    })
    .await;
    apis[0].kill();
    workers[0].kill();
    assert!(next.load(Ordering::SeqCst) < requests.len(), "the kills came while requests were still being sent");
    let mut refused = Vec::new();
    for sender in senders {
        refused.extend(sender.await.unwrap());
    }
    assert!(refused.is_empty(), "every request was accepted by one API or the other: {refused:?}");

    // The survivors finish everything, the killed worker's jobs included.
    let kinds = ["provision_customer", "record_usage", "process_stripe_event", "grant_credits"];
    let unfinished = [JobStatus::Available, JobStatus::Running, JobStatus::Retryable];
    wait_for("the money jobs to finish", Duration::from_secs(60), || async {
        let mut left = 0;
        for kind in kinds {
            left += testing::count(&db.pool, Some(kind), &unfinished).await;
        }
        left == 0
    })
    .await;
    for kind in kinds {
        assert_eq!(testing::count(&db.pool, Some(kind), &[JobStatus::Dead]).await, 0, "no {kind} job died");
    }

    let count = |sql: &'static str| {
        let pool = db.pool.clone();
        async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool).await.unwrap() }
    };
    assert_eq!(count("SELECT count(*) FROM customers WHERE email LIKE 'fleet%'").await, 200, "every signup, once");
    assert_eq!(count("SELECT count(*) FROM usage_fixes WHERE fix_id LIKE 'fleet-fix-%'").await, 300, "every fix");
    assert_eq!(
        count("SELECT count(*) FROM credit_ledger WHERE source = 'fix_deployed' AND metadata->>'fix_id' LIKE 'fleet-fix-%'")
            .await,
        300,
        "each fix debited once"
    );
    assert_eq!(
        count("SELECT count(*) FROM credit_ledger WHERE source = 'pro_subscription_payment' AND idempotency_key LIKE '%in_fleet_%'")
            .await,
        100,
        "each paid invoice granted once"
    );
    let payers_now: i64 = count("SELECT sum(credit_balance)::bigint FROM customers WHERE email LIKE 'payer%'").await;
    assert_eq!(payers_now, balances_before + 100 * 60 - 300, "the payers' balances moved by exactly that");
    assert_ledger_consistent(&db.pool).await;
    apis.into_iter().skip(1).chain(workers.into_iter().skip(1)).collect()
}

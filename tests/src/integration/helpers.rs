//! The test harness: fresh databases, the app on a random port, in-process and
//! out-of-process workers, and waiting on real conditions with a deadline.

use std::collections::HashMap;
use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::clock::Clock;
use common::config::Settings;
use common::domain::LedgerSource;
use common::jobs::{self, GrantCredits, JobContext};
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::oneshot;
use uuid::Uuid;

/// The server tests create their databases on (`TEST_DATABASE_URL`, default the local one).
pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub struct TestDb {
    pub url: String,
    pub pool: PgPool,
}

impl TestDb {
    pub async fn fresh() -> Self {
        Self::fresh_on(&admin_url()).await
    }

    pub async fn fresh_on(admin: &str) -> Self {
        let admin = admin.to_owned();
        let name = format!("rsolv_test_{}", Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&admin).await.expect("test Postgres reachable");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
        let url = format!("{base}/{name}");
        // Budget: the test's pool, the API's and the worker's two stay under 50 connections,
        // so two tests at once fit in a default Postgres (max_connections = 100); beyond
        // that, connecting fails as `PoolTimedOut` in whichever test asks next.
        let pool = PgPoolOptions::new().max_connections(8).connect(&url).await.expect("connect test database");
        common::db::migrate(&pool).await.expect("migrations apply");
        Self { url, pool }
    }
}

/// Settings for a test: fast polling and backoff so that waits are short.
pub fn settings(db_url: &str, overrides: &[(&str, &str)]) -> Settings {
    let mut env: HashMap<String, String> = [
        ("DATABASE_URL", db_url),
        ("JOB_POLL_INTERVAL_MS", "100"),
        ("JOB_HEARTBEAT_MS", "500"),
        ("JOB_ORPHAN_AFTER_MS", "2000"),
        ("JOB_BACKOFF_BASE_MS", "200"),
        ("JOB_SHUTDOWN_TIMEOUT_MS", "10000"),
        ("DATABASE_MAX_CONNECTIONS", MAX_CONNECTIONS),
        // Limits are off unless a test turns them on: most tests make many requests.
        ("RATE_LIMIT_ONBOARD_PER_MINUTE", "0"),
        ("RATE_LIMIT_USAGE_PER_MINUTE", "0"),
        ("RATE_LIMIT_API_PER_MINUTE", "0"),
        ("RATE_LIMIT_ANONYMOUS_PER_MINUTE", "0"),
        ("RATE_LIMIT_WEBHOOKS_PER_MINUTE", "0"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in overrides {
        env.insert(k.to_string(), v.to_string());
    }
    Settings::from_lookup(|k| env.get(k).cloned(), &common::jobs::kinds()).expect("test settings are valid")
}

/// The tests' HTTP client. It drops idle connections well before the server's
/// keep-alive (5 s) closes them: a request sent on a connection the server is closing
/// fails with "incomplete message", which is the client's race, not the API's answer.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().pool_idle_timeout(Duration::from_secs(2)).build().expect("an HTTP client")
}

pub struct TestApp {
    pub address: String,
    pub db: TestDb,
    pub client: reqwest::Client,
    pub settings: Arc<Settings>,
    /// The API's clock: the system's, unless the test set one.
    pub clock: Clock,
    worker: Option<InProcessWorker>,
}

impl TestApp {
    /// The API alone: jobs are enqueued but nothing runs them.
    pub async fn api_only() -> Self {
        Self::spawn(&[], false).await
    }

    /// The API and an in-process worker.
    pub async fn with_worker() -> Self {
        Self::spawn(&[], true).await
    }

    pub async fn spawn(overrides: &[(&str, &str)], worker: bool) -> Self {
        Self::spawn_on(TestDb::fresh().await, overrides, worker).await
    }

    /// As [`spawn`](Self::spawn), the API reading the time from `clock`.
    pub async fn spawn_with_clock(overrides: &[(&str, &str)], worker: bool, clock: Clock) -> Self {
        Self::spawn_with(TestDb::fresh().await, overrides, worker, clock).await
    }

    pub async fn spawn_on(db: TestDb, overrides: &[(&str, &str)], worker: bool) -> Self {
        Self::spawn_with(db, overrides, worker, Clock::system()).await
    }

    async fn spawn_with(db: TestDb, overrides: &[(&str, &str)], worker: bool, clock: Clock) -> Self {
        // Logs go to the test's captured output (shown when it fails); RUST_LOG filters.
        // The first test's subscriber serves the whole test process; nothing to flush.
        std::mem::forget(common::telemetry::init(common::config::LogFormat::Pretty, "rsolv-tests", None));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let mut overrides = overrides.to_vec();
        overrides.push(("PUBLIC_BASE_URL", address.as_str()));
        let settings = Arc::new(settings(&db.url, &overrides));
        let pool = common::db::pool(&settings).unwrap();
        let app = api::startup::Application::build_with_clock(listener, pool, settings.clone(), clock.clone()).unwrap();
        tokio::spawn(app.server());
        let worker = worker.then(|| InProcessWorker::start(&db.pool, &settings));
        Self { address, db, client: client(), settings, clock, worker }
    }

    /// A second API process on the same database and settings; returns its address.
    pub fn second_api(&self) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let pool = common::db::pool(&self.settings).unwrap();
        let app =
            api::startup::Application::build_with_clock(listener, pool, self.settings.clone(), self.clock.clone())
                .unwrap();
        let address = format!("http://127.0.0.1:{}", app.port());
        tokio::spawn(app.server());
        address
    }

    pub fn job_context(&self) -> JobContext {
        JobContext::new(self.db.pool.clone(), self.settings.clone()).unwrap()
    }

    /// Starts the in-process worker (again).
    pub fn start_worker(&mut self) {
        if self.worker.is_none() {
            self.worker = Some(InProcessWorker::start(&self.db.pool, &self.settings));
        }
    }

    pub async fn stop_worker(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.stop().await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client.post(self.url(path)).json(body).send().await.expect("request sent")
    }

    pub async fn onboard(&self, name: &str, email: &str) -> reqwest::Response {
        self.post_json("/api/v1/customers/onboard", &serde_json::json!({ "name": name, "email": email })).await
    }

    /// Onboards and waits until the customer is provisioned; returns (customer_id, api_key).
    pub async fn onboarded_customer(&self, email: &str) -> (Uuid, String) {
        let response = self.onboard("Test Customer", email).await;
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.unwrap();
        let id: Uuid = body["customer_id"].as_str().unwrap().parse().unwrap();
        let key = body["api_key"].as_str().unwrap().to_owned();
        let pool = self.db.pool.clone();
        wait_for("the customer to be provisioned", Duration::from_secs(10), || {
            let pool = pool.clone();
            async move { common::db::customers::exists(&pool, id).await.unwrap() }
        })
        .await;
        (id, key)
    }

    pub async fn get_with_key(&self, path: &str, key: &str) -> reqwest::Response {
        self.client.get(self.url(path)).header("x-api-key", key).send().await.unwrap()
    }

    pub async fn post_with_key(&self, path: &str, key: &str, body: &Value) -> reqwest::Response {
        self.client.post(self.url(path)).header("x-api-key", key).json(body).send().await.unwrap()
    }

    pub async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.db.pool).await.unwrap()
    }
}

struct InProcessWorker {
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<()>,
}

impl InProcessWorker {
    fn start(_: &PgPool, settings: &Arc<Settings>) -> Self {
        // The worker's own pool, as `rsolv-worker` makes it (statement timeout included).
        let ctx = JobContext::new(common::db::job_pool(settings).unwrap(), settings.clone()).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(async move {
            jobs::run_workers(ctx, async move {
                let _ = stopped.await;
            })
            .await
            .expect("workers run");
        });
        Self { stop, done }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(20), self.done).await.expect("workers drain").unwrap();
    }
}

/// Polls `condition` until it holds, failing the test with `what` after `deadline`.
pub async fn wait_for<F, Fut>(what: &str, deadline: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !condition().await {
        assert!(start.elapsed() < deadline, "timed out after {deadline:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// An adjustment grant of `amount` credits, posted once per `key`.
pub fn grant(customer_id: Uuid, key: &str, amount: i64) -> GrantCredits {
    GrantCredits {
        customer_id,
        amount,
        source: LedgerSource::AdminAdjustment,
        idempotency_key: key.to_owned(),
        metadata: Value::Null,
    }
}

/// A report of fix `fix_id` for `customer_id` (repo `org/repo`), as the usage job takes it.
pub fn fix(customer_id: Uuid, fix_id: &str) -> common::jobs::RecordUsage {
    common::jobs::RecordUsage { customer_id, fix_id: fix_id.into(), repo: "org/repo".into(), metadata: Value::Null }
}

/// Locks the customer's row in a transaction of its own: a job posting to the customer
/// blocks in the middle of its transaction until this one ends.
pub async fn hold_customer_row(pool: &PgPool, customer_id: Uuid) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut held = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM customers WHERE id = $1 FOR UPDATE")
        .bind(customer_id)
        .execute(&mut *held)
        .await
        .unwrap();
    held
}

/// Rolls `held` back after `delay`, while the caller awaits something that needs it gone.
pub fn release_after(held: sqlx::Transaction<'static, sqlx::Postgres>, delay: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        held.rollback().await.unwrap();
    })
}

/// Job assertions that read like the spec (River's "require inserted").
/// The values a `CHECK (column IN (...))` constraint allows, sorted.
pub async fn allowed_by_check(pool: &PgPool, constraint: &str) -> Vec<String> {
    let check: String = sqlx::query_scalar("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = $1")
        .bind(constraint)
        .fetch_one(pool)
        .await
        .unwrap();
    let mut values: Vec<String> = check.split('\'').skip(1).step_by(2).map(str::to_owned).collect();
    values.sort_unstable();
    values
}

pub use common::queue::testing::wait_for_kind_finished;

/// Asserts every money invariant (`rsolv-worker verify`'s checks): balance = sum of
/// entries and never negative, the ledger chain, plans and subscriptions, each Pro
/// invoice granted once, every paid charge ↔ one charged fix, no abandoned charge.
pub async fn assert_ledger_consistent(pool: &PgPool) {
    let violations = common::verify::money_invariants(pool, None).await.unwrap();
    assert!(violations.is_empty(), "money invariants broken: {violations:#?}");
}

/// A built project binary (the test command builds them before the tests run).
/// Connections each pool of a test's processes may open (API, the worker's two):
/// see [`TestDb::fresh_on`] for the budget.
pub const MAX_CONNECTIONS: &str = "12";

/// Queue timings short enough for a test to watch a retry or a rescue.
pub const FAST_JOBS: [(&str, &str); 4] = [
    ("JOB_POLL_INTERVAL_MS", "100"),
    ("JOB_HEARTBEAT_MS", "300"),
    ("JOB_ORPHAN_AFTER_MS", "1500"),
    ("JOB_BACKOFF_BASE_MS", "100"),
];

/// One of our binaries as a test runs it: on `db_url`, within the tests' connection
/// budget, logging warnings. Callers add their own settings (later ones win).
pub fn our_command(name: &str, db_url: &str) -> std::process::Command {
    let mut command = std::process::Command::new(binary(name));
    command.env("DATABASE_URL", db_url).env("DATABASE_MAX_CONNECTIONS", MAX_CONNECTIONS).env("RUST_LOG", "warn");
    command
}

/// A process of ours that a test started; killed (SIGKILL) and reaped when dropped, so a
/// failing test leaves nothing running.
pub struct Process(std::process::Child);

impl Process {
    pub fn spawn(command: &mut std::process::Command) -> Self {
        Self(command.spawn().expect("our binary starts"))
    }

    /// `rsolv-worker` with the fast queue timings, plus `env`.
    pub fn worker(db_url: &str, env: &[(&str, &str)]) -> Self {
        Self::spawn(
            our_command("rsolv-worker", db_url)
                .envs(FAST_JOBS)
                .envs(env.iter().copied())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::inherit()),
        )
    }

    /// SIGKILL, as a crash would; returns once the process is gone.
    pub fn kill(&mut self) {
        self.0.kill().expect("SIGKILL sent");
        self.0.wait().expect("the killed process is reaped");
    }

    /// Whether it has stopped by itself (reaping it if so).
    pub fn has_exited(&mut self) -> bool {
        self.0.try_wait().ok().flatten().is_some()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|deps| deps.parent()).expect("target dir");
    let path = dir.join(name);
    assert!(path.exists(), "{} is not built: run `cargo build --workspace --bins` first", path.display());
    path
}

/// localstripe, started by `scripts/test` (`TEST_STRIPE_API_BASE`).
pub fn stripe_base() -> String {
    std::env::var("TEST_STRIPE_API_BASE")
        .expect("TEST_STRIPE_API_BASE is unset: run the tests with scripts/test, which starts localstripe")
}

pub const STRIPE_KEY: &str = "sk_test_rsolv_local";

/// A GET of the test localstripe's API (`path` after `/v1/`), as JSON.
pub async fn localstripe(path: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{}v1/{path}", stripe_base()))
        .basic_auth(STRIPE_KEY, Some(""))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}
pub const WEBHOOK_SECRET: &str = "whsec_test_current";
pub const OLD_WEBHOOK_SECRET: &str = "whsec_test_previous";
pub const PRO_PRICE: &str = "price_rsolv_pro_monthly";

impl TestApp {
    /// The API and a worker, billing through localstripe.
    pub async fn with_billing() -> Self {
        Self::spawn_billing(&[], true).await
    }

    pub async fn spawn_billing(extra: &[(&str, &str)], worker: bool) -> Self {
        let base = stripe_base();
        let secrets = format!("{WEBHOOK_SECRET},{OLD_WEBHOOK_SECRET}");
        // The dashboard's card form loads localstripe's stand-in for Stripe.js.
        let js = format!("{base}js.stripe.com/v3/");
        let mut overrides = vec![
            ("STRIPE_SECRET_KEY", STRIPE_KEY),
            ("STRIPE_API_BASE", base.as_str()),
            ("STRIPE_WEBHOOK_SECRET", secrets.as_str()),
            ("STRIPE_PRO_PRICE_ID", PRO_PRICE),
            ("STRIPE_PUBLISHABLE_KEY", "pk_test_rsolv"),
            ("STRIPE_JS_URL", js.as_str()),
        ];
        overrides.extend_from_slice(extra);
        Self::spawn(&overrides, worker).await
    }

    /// Onboarded, with its Stripe customer created: (customer_id, api_key, stripe_customer_id).
    pub async fn stripe_customer(&self, email: &str) -> (Uuid, String, String) {
        let (id, key) = self.onboarded_customer(email).await;
        let pool = self.db.pool.clone();
        wait_for("the Stripe customer", Duration::from_secs(15), || {
            let pool = pool.clone();
            async move { common::db::customers::find(&pool, id).await.unwrap().unwrap().stripe_customer_id.is_some() }
        })
        .await;
        let stripe_id =
            common::db::customers::find(&self.db.pool, id).await.unwrap().unwrap().stripe_customer_id.unwrap();
        (id, key, stripe_id)
    }

    /// Follows an operation's status URL until it is no longer pending.
    pub async fn finished_operation(&self, key: &str, accepted: reqwest::Response) -> Value {
        assert_eq!(accepted.status(), 202, "operation accepted");
        let body: Value = accepted.json().await.unwrap();
        let url = body["status_url"].as_str().expect("a status URL").to_owned();
        let start = Instant::now();
        loop {
            let status: Value = self.get_with_key(&url, key).await.json().await.unwrap();
            if status["status"] != "pending" {
                return status;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "operation {url} still pending");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Adds a card with consent and waits for it.
    pub async fn add_card(&self, key: &str, payment_method: &str) -> Value {
        let body = serde_json::json!({ "payment_method_id": payment_method, "consent": true });
        let accepted = self.post_with_key("/api/v1/billing/payment-methods", key, &body).await;
        self.finished_operation(key, accepted).await
    }

    /// Posts an event signed as Stripe signs it.
    pub async fn deliver(&self, event: &Value, secret: &str) -> reqwest::Response {
        let body = serde_json::to_vec(event).unwrap();
        let header = common::stripe::signature::sign(&body, secret, chrono::Utc::now().timestamp());
        self.deliver_raw(body, Some(&header)).await
    }

    pub async fn deliver_raw(&self, body: Vec<u8>, signature: Option<&str>) -> reqwest::Response {
        let mut request = self.client.post(self.url("/api/webhooks/stripe")).header("content-type", "application/json");
        if let Some(signature) = signature {
            request = request.header("stripe-signature", signature);
        }
        request.body(body).send().await.unwrap()
    }

    pub async fn customer(&self, id: Uuid) -> common::db::customers::Customer {
        common::db::customers::find(&self.db.pool, id).await.unwrap().expect("customer exists")
    }

    pub async fn balance(&self, id: Uuid) -> i64 {
        self.customer(id).await.credit_balance
    }
}

impl TestApp {
    /// Webhooks verified and processed, with no Stripe API behind them (events only).
    pub async fn with_worker_and_webhooks() -> Self {
        let secrets = format!("{WEBHOOK_SECRET},{OLD_WEBHOOK_SECRET}");
        Self::spawn(&[("STRIPE_WEBHOOK_SECRET", secrets.as_str()), ("STRIPE_PRO_PRICE_ID", PRO_PRICE)], true).await
    }
}

/// A real SMTP server (aiosmtpd) keeping each accepted message as a file.
pub struct MailSink {
    pub port: u16,
    dir: PathBuf,
    child: Option<std::process::Child>,
}

impl MailSink {
    pub async fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = std::env::temp_dir().join(format!("rsolv-mail-{}", Uuid::new_v4().simple()));
        for sub in ["tmp", "new", "cur"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let mut sink = Self { port, dir, child: None };
        sink.up().await;
        sink
    }

    pub fn smtp_url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// (Re)starts the server on its port.
    pub async fn up(&mut self) {
        let python = std::env::var("TEST_PYTHON")
            .expect("TEST_PYTHON is unset: run the tests with scripts/test, which installs aiosmtpd");
        let child = std::process::Command::new(python)
            .args([
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &format!("127.0.0.1:{}", self.port),
                "-c",
                "aiosmtpd.handlers.Mailbox",
            ])
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("aiosmtpd starts");
        self.child = Some(child);
        let port = self.port;
        wait_for("the SMTP server to listen", Duration::from_secs(15), || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        })
        .await;
    }

    pub fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn messages(&self) -> Vec<Mail> {
        let mut files: Vec<_> = std::fs::read_dir(self.dir.join("new")).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        files.iter().map(|f| Mail::parse(&std::fs::read(f).unwrap())).collect()
    }

    /// Waits until `n` messages arrived, and checks no more come for a moment.
    pub async fn wait_for(&self, n: usize) -> Vec<Mail> {
        wait_for(&format!("{n} emails"), Duration::from_secs(20), || async { self.messages().len() >= n }).await;
        self.messages()
    }
}

impl Drop for MailSink {
    fn drop(&mut self) {
        self.down();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[derive(Debug, Clone)]
pub struct Mail {
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
    pub list_unsubscribe: Option<String>,
    pub list_unsubscribe_post: Option<String>,
}

impl Mail {
    fn parse(raw: &[u8]) -> Self {
        use mailparse::MailHeaderMap;
        let mail = mailparse::parse_mail(raw).expect("a parsable email");
        let header = |name: &str| mail.headers.get_first_value(name);
        let part = |mime: &str| {
            mail.subparts.iter().find(|p| p.ctype.mimetype == mime).map(|p| p.get_body().unwrap()).unwrap_or_default()
        };
        Self {
            to: header("To").unwrap_or_default(),
            subject: header("Subject").unwrap_or_default(),
            text: part("text/plain"),
            html: part("text/html"),
            list_unsubscribe: header("List-Unsubscribe"),
            list_unsubscribe_post: header("List-Unsubscribe-Post"),
        }
    }
}

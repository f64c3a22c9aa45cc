//! Every setting, read once from the environment (a `.env` file is honoured), typed,
//! with defaults and validation. The README's configuration table lists the same names.
//!
//! Reading goes through a lookup function so that tests build settings from a map
//! instead of mutating the process environment.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
#[error("configuration {name}: {message}")]
pub struct ConfigError {
    pub name: String,
    pub message: String,
}

/// How a kind runs and retries: attempts, concurrency, backoff, and how long one run
/// may take (River's `Timeout`). A run that overruns is stopped (its future dropped, so
/// an open transaction rolls back), counted as a failed attempt and retried after its
/// backoff; its slot is free at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: i32,
    /// Jobs of this kind run at once in one worker process.
    pub concurrency: usize,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// The longest one run may take (`JOB_<KIND>_TIMEOUT_MS` overrides it).
    pub timeout: Duration,
}

impl RetryPolicy {
    /// Five minutes a run, unless the kind says otherwise ([`RetryPolicy::timeout`]).
    pub const fn new(max_attempts: i32, concurrency: usize) -> Self {
        Self {
            max_attempts,
            concurrency,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(3600),
            timeout: Duration::from_secs(300),
        }
    }

    pub const fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::new(10, 10)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// Holds the database password: never printed (`Debug` redacts it).
    pub database_url: Secret,
    /// `DATABASE_DIRECT_URL`: set when `DATABASE_URL` points at a pooler in transaction
    /// mode (PgBouncer), to a direct connection to the same database. What needs a session
    /// of its own uses it: the workers' `LISTEN` and the migrations' advisory lock. Its
    /// presence also tells the pools not to set anything per session (startup options),
    /// which a transaction pooler cannot carry (`db` module guide).
    pub database_direct_url: Option<Secret>,
    pub database_max_connections: u32,
    /// How long a request waits for a database connection before it answers 503.
    pub database_acquire_timeout: Duration,
    pub bind_addr: SocketAddr,
    pub max_body_bytes: usize,
    /// Largest Stripe event the webhook route reads (`WEBHOOK_MAX_BODY_BYTES`): events
    /// can be far larger than any API request.
    pub webhook_max_body_bytes: usize,
    /// Request headers' total size above which a request is refused with 431.
    pub max_header_bytes: usize,
    pub log_format: LogFormat,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: the OpenTelemetry collector spans are exported to
    /// (OTLP/HTTP, e.g. `http://collector:4318`); none by default.
    pub otlp_endpoint: Option<String>,
    pub credits: CreditSettings,
    pub prices: PriceSettings,
    /// Absent when `STRIPE_SECRET_KEY` is unset: billing endpoints then answer 503.
    pub stripe: Option<StripeSettings>,
    /// `STRIPE_WEBHOOK_SECRET`, comma-separated during rotation; empty disables webhooks.
    pub webhook_secrets: Vec<Secret>,
    /// When the renewal sweep runs (`cron` syntax with seconds).
    pub renewal_schedule: cron::Schedule,
    /// When every customer is reconciled with Stripe (`RECONCILE_CRON`, nightly).
    pub reconcile_schedule: cron::Schedule,
    /// Absent when `SMTP_URL` is unset: no email is scheduled or sent.
    pub email: Option<EmailSettings>,
    /// Where this API is reachable from a customer's mail client (unsubscribe links).
    pub public_base_url: String,
    /// The product's site, linked from emails.
    pub product_url: String,
    /// Signs unsubscribe tokens (`EMAIL_UNSUBSCRIBE_SECRET`).
    pub unsubscribe_secret: Secret,
    /// Requests per minute; 0 turns a limit off.
    pub rate_limits: RateLimits,
    /// How long a claimed `Idempotency-Key` waits for its request's answer before a
    /// retry may take it over (`IDEMPOTENCY_LEASE_MS`).
    pub idempotency_lease: Duration,
    /// Take the client address from the first `X-Forwarded-For` entry (behind a
    /// trusted proxy only: otherwise clients choose their own address).
    pub trust_forwarded_for: bool,
    /// How many proxies of ours append to `X-Forwarded-For` (`TRUSTED_PROXY_HOPS`): the
    /// client is the entry that many from the right.
    pub trusted_proxy_hops: usize,
    /// Bearer token of the admin API and page; `None` disables them (404).
    pub admin_token: Option<Secret>,
    /// How long an admin page sign-in lasts (`ADMIN_SESSION_TTL_MINUTES`, 8 hours).
    pub admin_session_ttl: Duration,
    /// How long a customer's dashboard session lasts (`DASHBOARD_SESSION_TTL_MINUTES`, 12 h).
    pub dashboard_session_ttl: Duration,
    /// The nudge sequences that start by themselves (`jobs::NudgeSweep`).
    pub nudges: NudgeSettings,
    /// Session cookies carry `Secure` (`SESSION_COOKIE_SECURE`, on); only a local
    /// plain-http setup (`scripts/run`) turns it off.
    pub session_cookie_secure: bool,
    /// Where the worker serves `/metrics`; `None` (`METRICS_ADDR=off`) serves nothing.
    pub metrics_addr: Option<SocketAddr>,
    /// Where the API serves `/metrics` instead of its public port (`API_METRICS_ADDR`).
    pub api_metrics_addr: Option<SocketAddr>,
    /// The bearer token `/metrics` asks for (`METRICS_TOKEN`); `None`: open.
    pub metrics_token: Option<Secret>,
    pub jobs: JobSettings,
}

/// A secret setting: usable, but never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `given` is this secret: constant time, and (by hashing first) without
    /// revealing its length either.
    pub fn matches(&self, given: &str) -> bool {
        use sha2::{Digest, Sha256};
        use subtle::ConstantTimeEq;
        Sha256::digest(given.as_bytes()).ct_eq(&Sha256::digest(self.0.as_bytes())).into()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[derive(Debug, Clone)]
pub struct StripeSettings {
    pub secret_key: Secret,
    /// `https://api.stripe.com/` in production, localstripe's URL in tests and the demo.
    pub api_base: String,
    /// Each Stripe call's deadline (`STRIPE_TIMEOUT_MS`): a hung call fails, and the
    /// job retries it, instead of holding a worker slot (and a charge's lock) forever.
    pub timeout: std::time::Duration,
    /// `STRIPE_PUBLISHABLE_KEY`: what the dashboard's card form gives Stripe.js; without
    /// it the dashboard takes no card (the API still does).
    pub publishable_key: Option<String>,
    /// `STRIPE_JS_URL`: where the card form loads Stripe.js from (Stripe's own by
    /// default; localstripe serves a stand-in at `<its URL>/js.stripe.com/v3/`).
    pub js_url: String,
}

/// When the expiring-trial and re-engagement sequences start by themselves.
#[derive(Debug, Clone)]
pub struct NudgeSettings {
    /// `NUDGE_CRON`: when the sweep runs (hourly, at :15).
    pub schedule: cron::Schedule,
    /// `NUDGE_TRIAL_CREDITS`: a trial customer without a card with at most this many
    /// credits left is nudged (1).
    pub trial_credits: i64,
    /// `NUDGE_INACTIVE_DAYS`: a customer with no fix for this many days is nudged (30).
    pub inactive_days: i32,
}

#[derive(Debug, Clone)]
pub struct EmailSettings {
    /// lettre's URL form: `smtp://host:port` (no TLS), `smtp://…?tls=required`
    /// (STARTTLS), `smtps://…` (TLS), with `user:password@` for credentials.
    pub smtp_url: Secret,
    pub from: String,
    /// Pooled SMTP connections per worker process.
    pub pool_max: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// Onboarding, per client address.
    pub onboard: u32,
    /// Usage reports, per API key.
    pub usage: u32,
    /// Any other authenticated request, per API key.
    pub api: u32,
    /// Requests without a live API key (status polls, the admin sign-in, unknown or
    /// revoked keys), per client address.
    pub anonymous: u32,
    /// Stripe webhook deliveries, per client address (Stripe sends from a few).
    pub webhooks: u32,
    /// Dashboard sign-in links asked for, per email address, per hour.
    pub sign_in_per_email: u32,
    /// Dashboard sign-ins (links asked for, API keys tried), per client address, per hour.
    pub sign_in_per_address: u32,
}

/// The development fallback for `EMAIL_UNSUBSCRIBE_SECRET`; production must set its own.
pub const DEV_UNSUBSCRIBE_SECRET: &str = "rsolv-development-unsubscribe-secret";

/// Prices in integer cents; the Pro price itself lives in Stripe.
#[derive(Debug, Clone)]
pub struct PriceSettings {
    /// `STRIPE_PRO_PRICE_ID`: the Pro recurring price (a plan on localstripe), sent as
    /// the subscription item's `plan`; invoices billing it grant Pro credits.
    pub pro_price_id: String,
    pub currency: String,
    pub pro_monthly_cents: i64,
    pub fix_payg_cents: i64,
    pub fix_pro_overage_cents: i64,
}

#[derive(Debug, Clone)]
pub struct CreditSettings {
    pub trial_signup: i64,
    /// For the first payment method only.
    pub billing_added: i64,
    /// Per paid Pro invoice.
    pub pro_invoice: i64,
}

#[derive(Debug, Clone)]
pub struct JobSettings {
    /// How often an idle worker looks for due jobs when no notification came
    /// (scheduled jobs, retries whose backoff ended, a lost notification).
    pub poll_interval: Duration,
    /// How often a worker process records that it is alive.
    pub heartbeat_interval: Duration,
    /// A worker silent for this long is presumed dead and its running jobs are rescued.
    pub orphan_after: Duration,
    /// How long shutdown waits for running jobs before it gives up on them (they are
    /// then rescued as orphans by another worker).
    pub shutdown_timeout: Duration,
    /// First retry delay; each further attempt doubles it, up to `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// The most jobs one claim asks for (at least the kind's concurrency); a worker keeps
    /// claimed jobs waiting for `queue::HOLD_FOR` of its pace, from `queue::CLAIM_AHEAD`
    /// to `queue::MOST_AHEAD` per run slot (and at most two claims' worth), claiming more
    /// while the last ones run (released on shutdown, rescued if the process dies).
    pub fetch_batch: usize,
    /// The longest statement a job may run (`JOB_STATEMENT_TIMEOUT_MS`): see `db::job_pool`.
    pub statement_timeout: Duration,
    /// Whether claims, acknowledgements and heartbeats wait for their commit to reach
    /// disk. Off by default: see `queue::bookkeeping_pool` for why that loses no job.
    pub bookkeeping_sync_commit: bool,
    /// Whether grants and fix debits are settled in their claims, the jobs of one claim
    /// sharing a transaction and its commit (`JOB_BATCH_POSTINGS`, on by default): see
    /// `queue::settle` and `jobs::batch`.
    pub batch_postings: bool,
    /// Completed and cancelled jobs are deleted this long after they finished.
    pub retention_completed_hours: u32,
    /// Dead jobs are deleted this long after they died.
    pub retention_dead_hours: u32,
    /// Rows deleted per pruning statement.
    pub prune_batch: u32,
    /// When pruning runs (`cron` syntax with seconds).
    pub prune_schedule: cron::Schedule,
    kinds: HashMap<String, KindSettings>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindSettings {
    pub concurrency: usize,
    pub max_attempts: i32,
    pub timeout: Duration,
}

impl JobSettings {
    /// The queue settings of a job kind: its own environment overrides, else its defaults.
    pub fn kind(&self, kind: &str, policy: &RetryPolicy) -> KindSettings {
        self.kinds.get(kind).copied().unwrap_or(KindSettings {
            concurrency: policy.concurrency,
            max_attempts: policy.max_attempts,
            timeout: policy.timeout,
        })
    }

    pub fn retry_policy(&self, kind: &str, defaults: &RetryPolicy) -> RetryPolicy {
        let k = self.kind(kind, defaults);
        RetryPolicy {
            max_attempts: k.max_attempts,
            concurrency: k.concurrency,
            backoff_base: self.backoff_base,
            backoff_max: self.backoff_max,
            timeout: k.timeout,
        }
    }
}

impl Settings {
    /// Reads the process environment, after loading `.env` if there is one.
    /// `kinds`: every job kind with its defaults (`jobs::kinds()`), whose per-kind
    /// settings (`JOB_<KIND>_…`) are read.
    pub fn from_env(kinds: &[(&'static str, RetryPolicy)]) -> Result<Self, ConfigError> {
        let _ = dotenvy::dotenv();
        Self::from_lookup(|name| std::env::var(name).ok(), kinds)
    }

    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
        kinds: &[(&'static str, RetryPolicy)],
    ) -> Result<Self, ConfigError> {
        let r = Reader { lookup: &lookup };
        let database_url = r.string("DATABASE_URL").ok_or_else(|| ConfigError {
            name: "DATABASE_URL".into(),
            message: "must be set (scripts/run starts a local Postgres and sets it)".into(),
        })?;
        let settings = Self {
            database_url: Secret::new(database_url),
            database_direct_url: r.string("DATABASE_DIRECT_URL").map(Secret::new),
            database_max_connections: r.parse("DATABASE_MAX_CONNECTIONS", 20)?,
            database_acquire_timeout: r.millis("DATABASE_ACQUIRE_TIMEOUT_MS", 5_000)?,
            bind_addr: bind_addr(&r)?,
            max_body_bytes: r.parse("MAX_BODY_BYTES", 64 * 1024)?,
            max_header_bytes: r.parse("MAX_HEADER_BYTES", 16 * 1024)?,
            webhook_max_body_bytes: r.parse("WEBHOOK_MAX_BODY_BYTES", 1024 * 1024)?,
            log_format: LogFormat::read(&r)?,
            otlp_endpoint: r.string("OTEL_EXPORTER_OTLP_ENDPOINT"),
            credits: CreditSettings {
                trial_signup: r.parse("CREDITS_TRIAL_SIGNUP", 5)?,
                billing_added: r.parse("CREDITS_BILLING_ADDED", 5)?,
                pro_invoice: r.parse("CREDITS_PRO_INVOICE", 60)?,
            },
            prices: PriceSettings::read(&r)?,
            stripe: StripeSettings::read(&r)?,
            webhook_secrets: r
                .string("STRIPE_WEBHOOK_SECRET")
                .map(|list| list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(Secret::new).collect())
                .unwrap_or_default(),
            email: EmailSettings::read(&r)?,
            public_base_url: match r.string("PUBLIC_BASE_URL") {
                Some(url) => url.trim_end_matches('/').to_owned(),
                None => local_base_url(bind_addr(&r)?),
            },
            product_url: r
                .string("PRODUCT_URL")
                .unwrap_or_else(|| "https://rsolv.dev".into())
                .trim_end_matches('/')
                .to_owned(),
            unsubscribe_secret: Secret::new(
                r.string("EMAIL_UNSUBSCRIBE_SECRET").unwrap_or_else(|| DEV_UNSUBSCRIBE_SECRET.into()),
            ),
            rate_limits: RateLimits::read(&r)?,
            idempotency_lease: r.millis("IDEMPOTENCY_LEASE_MS", 60_000)?,
            trust_forwarded_for: r.parse("TRUST_FORWARDED_FOR", false)?,
            trusted_proxy_hops: r.parse("TRUSTED_PROXY_HOPS", 1usize)?.max(1),
            admin_token: r.string("ADMIN_TOKEN").map(Secret::new),
            admin_session_ttl: Duration::from_secs(60 * r.parse("ADMIN_SESSION_TTL_MINUTES", 8 * 60u64)?),
            dashboard_session_ttl: Duration::from_secs(60 * r.parse("DASHBOARD_SESSION_TTL_MINUTES", 12 * 60u64)?),
            nudges: NudgeSettings {
                schedule: r.parse("NUDGE_CRON", cron::Schedule::from_str("0 15 * * * *").expect("valid default"))?,
                trial_credits: r.parse("NUDGE_TRIAL_CREDITS", 1)?,
                inactive_days: r.parse("NUDGE_INACTIVE_DAYS", 30)?,
            },
            session_cookie_secure: r.parse("SESSION_COOKIE_SECURE", true)?,
            // The worker serves metrics unless told "off"; the API only when asked.
            metrics_addr: match r.string("METRICS_ADDR").as_deref() {
                Some("off") => None,
                _ => Some(r.parse("METRICS_ADDR", SocketAddr::from(([127, 0, 0, 1], 9091)))?),
            },
            api_metrics_addr: r.optional("API_METRICS_ADDR")?,
            metrics_token: r.string("METRICS_TOKEN").map(Secret::new),
            renewal_schedule: r
                .parse("RENEWAL_CRON", cron::Schedule::from_str("0 0 * * * *").expect("valid default"))?,
            reconcile_schedule: r
                .parse("RECONCILE_CRON", cron::Schedule::from_str("0 30 3 * * *").expect("valid default"))?,
            jobs: JobSettings::read(&r, kinds)?,
        };
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let fail = |name: &str, message: &str| Err(ConfigError { name: name.into(), message: message.into() });
        if self.database_max_connections < 2 {
            return fail("DATABASE_MAX_CONNECTIONS", "must be at least 2");
        }
        if self.nudges.inactive_days < 1 {
            return fail("NUDGE_INACTIVE_DAYS", "must be at least 1");
        }
        if self.jobs.orphan_after <= self.jobs.heartbeat_interval * 2 {
            return fail("JOB_ORPHAN_AFTER_MS", "must exceed two heartbeats (JOB_HEARTBEAT_MS)");
        }
        if self.admin_token.as_ref().is_some_and(|t| t.expose().len() < 16) {
            return fail("ADMIN_TOKEN", "must be at least 16 characters");
        }
        if self.idempotency_lease < Duration::from_secs(1) {
            return fail("IDEMPOTENCY_LEASE_MS", "must be at least 1000");
        }
        if self.admin_session_ttl.is_zero() {
            return fail("ADMIN_SESSION_TTL_MINUTES", "must be at least 1");
        }
        if self.dashboard_session_ttl.is_zero() {
            return fail("DASHBOARD_SESSION_TTL_MINUTES", "must be at least 1");
        }
        if self.metrics_token.as_ref().is_some_and(|t| t.expose().len() < 16) {
            return fail("METRICS_TOKEN", "must be at least 16 characters");
        }
        if self.jobs.prune_batch == 0 {
            return fail("JOB_PRUNE_BATCH", "must be at least 1");
        }
        if self.jobs.backoff_base.is_zero() || self.jobs.backoff_max < self.jobs.backoff_base {
            return fail("JOB_BACKOFF_BASE_MS", "must be positive and not above JOB_BACKOFF_MAX_MS");
        }
        if let Some(email) = &self.email {
            if email.from.parse::<lettre::message::Mailbox>().is_err() {
                return fail("EMAIL_FROM", "must be an address such as `RSOLV <hello@rsolv.dev>`");
            }
            if email.pool_max == 0 {
                return fail("SMTP_POOL_MAX", "must be at least 1");
            }
        }
        // Anyone can forge unsubscribe links signed with the public development secret:
        // it is for this machine only (a local mail sink, links to localhost). A process
        // that sends real email or serves real links needs a secret of its own.
        let real_email = self.email.as_ref().is_some_and(|e| !url_is_local(e.smtp_url.expose()));
        if self.unsubscribe_secret.expose() == DEV_UNSUBSCRIBE_SECRET
            && (real_email || !url_is_local(&self.public_base_url))
        {
            return fail(
                "EMAIL_UNSUBSCRIBE_SECRET",
                "must be set to a secret of your own when SMTP_URL or PUBLIC_BASE_URL is not on this machine",
            );
        }
        if self.unsubscribe_secret.expose().len() < 16 {
            return fail("EMAIL_UNSUBSCRIBE_SECRET", "must be at least 16 characters");
        }
        for (name, value) in [
            ("CREDITS_TRIAL_SIGNUP", self.credits.trial_signup),
            ("CREDITS_BILLING_ADDED", self.credits.billing_added),
            ("CREDITS_PRO_INVOICE", self.credits.pro_invoice),
        ] {
            if value < 0 {
                return fail(name, "must not be negative");
            }
        }
        for (name, value) in [
            ("PRICE_FIX_PAYG_CENTS", self.prices.fix_payg_cents),
            ("PRICE_FIX_PRO_OVERAGE_CENTS", self.prices.fix_pro_overage_cents),
            ("PRICE_PRO_MONTHLY_CENTS", self.prices.pro_monthly_cents),
        ] {
            if value <= 0 {
                return fail(name, "must be a positive number of cents");
            }
        }
        Ok(())
    }
}

/// Whether a URL (`smtp://user:pass@host:port`, `http://host:port/path`) points at this
/// machine: the local mail sink and demo of development and tests.
fn url_is_local(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let host = match host_port.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => host_port.split(':').next().unwrap_or_default(),
    };
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The Stripe client joins paths onto the base, which needs the trailing slash.
fn with_trailing_slash(url: String) -> String {
    if url.ends_with('/') { url } else { format!("{url}/") }
}

impl JobSettings {
    fn read(r: &Reader<'_>, kinds: &[(&'static str, RetryPolicy)]) -> Result<Self, ConfigError> {
        let settings = Self {
            poll_interval: r.millis("JOB_POLL_INTERVAL_MS", 1_000)?,
            heartbeat_interval: r.millis("JOB_HEARTBEAT_MS", 5_000)?,
            orphan_after: r.millis("JOB_ORPHAN_AFTER_MS", 30_000)?,
            shutdown_timeout: r.millis("JOB_SHUTDOWN_TIMEOUT_MS", 30_000)?,
            backoff_base: r.millis("JOB_BACKOFF_BASE_MS", 1_000)?,
            backoff_max: r.millis("JOB_BACKOFF_MAX_MS", 3_600_000)?,
            fetch_batch: r.parse("JOB_FETCH_BATCH", 500)?,
            statement_timeout: r.millis("JOB_STATEMENT_TIMEOUT_MS", 60_000)?,
            bookkeeping_sync_commit: r.parse("JOB_BOOKKEEPING_SYNC_COMMIT", false)?,
            batch_postings: r.parse("JOB_BATCH_POSTINGS", true)?,
            retention_completed_hours: r.parse("JOB_RETENTION_COMPLETED_HOURS", 7 * 24)?,
            retention_dead_hours: r.parse("JOB_RETENTION_DEAD_HOURS", 30 * 24)?,
            prune_batch: r.parse("JOB_PRUNE_BATCH", 10_000)?,
            prune_schedule: r
                .parse("PRUNE_CRON", cron::Schedule::from_str("0 */10 * * * *").expect("valid default"))?,
            kinds: Self::read_kinds(r, kinds)?,
        };
        // Zero would spin a polling loop, or stop heartbeats and rescue every running job.
        for (name, value) in [
            ("JOB_POLL_INTERVAL_MS", settings.poll_interval),
            ("JOB_HEARTBEAT_MS", settings.heartbeat_interval),
            ("JOB_ORPHAN_AFTER_MS", settings.orphan_after),
        ] {
            if value.is_zero() {
                return Err(ConfigError { name: name.into(), message: "must be above 0".into() });
            }
        }
        Ok(settings)
    }

    /// Each job kind's settings: its defaults, overridden by `JOB_<KIND>_*`.
    fn read_kinds(
        r: &Reader<'_>,
        known: &[(&'static str, RetryPolicy)],
    ) -> Result<HashMap<String, KindSettings>, ConfigError> {
        let mut kinds = HashMap::new();
        for &(kind, defaults) in known {
            let upper = kind.to_uppercase();
            let settings = KindSettings {
                concurrency: r.parse(&format!("JOB_{upper}_CONCURRENCY"), defaults.concurrency)?,
                max_attempts: r.parse(&format!("JOB_{upper}_MAX_ATTEMPTS"), defaults.max_attempts)?,
                timeout: r.millis(&format!("JOB_{upper}_TIMEOUT_MS"), defaults.timeout.as_millis() as u64)?,
            };
            if settings.concurrency == 0 || settings.max_attempts < 1 || settings.timeout.is_zero() {
                return Err(ConfigError {
                    name: format!("JOB_{upper}_*"),
                    message: "concurrency and max attempts must be at least 1, the timeout above 0".into(),
                });
            }
            kinds.insert(kind.to_owned(), settings);
        }
        Ok(kinds)
    }
}

/// `BIND_ADDR`; else, on a PaaS that names the port (`PORT`), every interface on it;
/// else 127.0.0.1:8080.
fn bind_addr(r: &Reader<'_>) -> Result<SocketAddr, ConfigError> {
    match (r.string("BIND_ADDR"), r.optional::<u16>("PORT")?) {
        (None, Some(port)) => Ok(SocketAddr::from(([0, 0, 0, 0], port))),
        _ => r.parse("BIND_ADDR", SocketAddr::from(([127, 0, 0, 1], 8080))),
    }
}

/// The address the API answers on, as a link on this machine: an every-interface bind
/// (`PORT` on a PaaS, `0.0.0.0:…`) is reached as `localhost`. Set `PUBLIC_BASE_URL` for
/// links that leave the machine.
fn local_base_url(bind: SocketAddr) -> String {
    match bind.ip().is_unspecified() {
        true => format!("http://localhost:{}", bind.port()),
        false => format!("http://{bind}"),
    }
}

impl LogFormat {
    fn read(r: &Reader<'_>) -> Result<Self, ConfigError> {
        match r.string("LOG_FORMAT").as_deref() {
            None | Some("pretty") => Ok(Self::Pretty),
            Some("json") => Ok(Self::Json),
            Some(other) => {
                Err(ConfigError { name: "LOG_FORMAT".into(), message: format!("{other:?} is not one of pretty, json") })
            }
        }
    }
}

impl StripeSettings {
    /// Stripe is off (billing jobs refuse) unless `STRIPE_SECRET_KEY` is set.
    fn read(r: &Reader<'_>) -> Result<Option<Self>, ConfigError> {
        let Some(key) = r.string("STRIPE_SECRET_KEY") else { return Ok(None) };
        Ok(Some(Self {
            secret_key: Secret::new(key),
            api_base: with_trailing_slash(
                r.string("STRIPE_API_BASE").unwrap_or_else(|| "https://api.stripe.com/".into()),
            ),
            timeout: r.millis("STRIPE_TIMEOUT_MS", 20_000)?,
            publishable_key: r.string("STRIPE_PUBLISHABLE_KEY"),
            js_url: r.string("STRIPE_JS_URL").unwrap_or_else(|| "https://js.stripe.com/v3/".into()),
        }))
    }
}

impl EmailSettings {
    /// Email is off (email steps wait) unless `SMTP_URL` is set.
    fn read(r: &Reader<'_>) -> Result<Option<Self>, ConfigError> {
        let Some(url) = r.string("SMTP_URL") else { return Ok(None) };
        Ok(Some(Self {
            smtp_url: Secret::new(url),
            from: r.string("EMAIL_FROM").unwrap_or_else(|| "RSOLV <hello@rsolv.dev>".into()),
            pool_max: r.parse("SMTP_POOL_MAX", 4)?,
        }))
    }
}

impl RateLimits {
    fn read(r: &Reader<'_>) -> Result<Self, ConfigError> {
        Ok(Self {
            onboard: r.parse("RATE_LIMIT_ONBOARD_PER_MINUTE", 10)?,
            usage: r.parse("RATE_LIMIT_USAGE_PER_MINUTE", 100)?,
            api: r.parse("RATE_LIMIT_API_PER_MINUTE", 500)?,
            anonymous: r.parse("RATE_LIMIT_ANONYMOUS_PER_MINUTE", 120)?,
            webhooks: r.parse("RATE_LIMIT_WEBHOOKS_PER_MINUTE", 10_000)?,
            sign_in_per_email: r.parse("RATE_LIMIT_SIGN_IN_PER_EMAIL_PER_HOUR", 5)?,
            sign_in_per_address: r.parse("RATE_LIMIT_SIGN_IN_PER_ADDRESS_PER_HOUR", 30)?,
        })
    }
}

impl PriceSettings {
    fn read(r: &Reader<'_>) -> Result<Self, ConfigError> {
        Ok(Self {
            pro_price_id: r.string("STRIPE_PRO_PRICE_ID").unwrap_or_else(|| "price_rsolv_pro_monthly".into()),
            currency: r.string("PRICE_CURRENCY").unwrap_or_else(|| "usd".into()).to_lowercase(),
            pro_monthly_cents: r.parse("PRICE_PRO_MONTHLY_CENTS", 59_900)?,
            fix_payg_cents: r.parse("PRICE_FIX_PAYG_CENTS", 2_900)?,
            fix_pro_overage_cents: r.parse("PRICE_FIX_PRO_OVERAGE_CENTS", 1_500)?,
        })
    }
}

struct Reader<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl Reader<'_> {
    fn string(&self, name: &str) -> Option<String> {
        (self.lookup)(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
    }

    fn parse<T: FromStr>(&self, name: &str, default: T) -> Result<T, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        Ok(self.optional(name)?.unwrap_or(default))
    }

    /// `None` when unset; otherwise it must parse.
    fn optional<T: FromStr>(&self, name: &str) -> Result<Option<T>, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        self.string(name)
            .map(|raw| {
                raw.parse()
                    .map_err(|e: T::Err| ConfigError { name: name.into(), message: format!("{raw:?} is invalid: {e}") })
            })
            .transpose()
    }

    fn millis(&self, name: &str, default: u64) -> Result<Duration, ConfigError> {
        self.parse(name, default).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        // Two kinds with their defaults, as `jobs::kinds()` lists every kind.
        let kinds = [
            ("record_usage", RetryPolicy::new(10, 10)),
            ("grant_credits", RetryPolicy::new(10, 10).timeout(Duration::from_secs(60))),
        ];
        Settings::from_lookup(|k| map.get(k).cloned(), &kinds)
    }

    #[test]
    fn defaults_apply_when_only_the_database_is_given() {
        let s = settings(&[("DATABASE_URL", "postgres://localhost/x")]).unwrap();
        assert_eq!(s.bind_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(s.credits.trial_signup, 5);
        assert_eq!(s.log_format, LogFormat::Pretty);
        assert_eq!((s.credits.billing_added, s.credits.pro_invoice), (5, 60));
        assert_eq!((s.prices.fix_payg_cents, s.prices.fix_pro_overage_cents), (2_900, 1_500));
        assert!(s.stripe.is_none() && s.webhook_secrets.is_empty());
    }

    #[test]
    fn a_worker_sending_real_email_needs_its_own_unsubscribe_secret() {
        let real = [("DATABASE_URL", "postgres://x"), ("SMTP_URL", "smtps://apikey:pw@smtp.example.com:465")];
        let error = settings(&real).unwrap_err();
        assert_eq!(error.name, "EMAIL_UNSUBSCRIBE_SECRET");
        let own = [real[0], real[1], ("EMAIL_UNSUBSCRIBE_SECRET", "a-long-random-secret-of-ours")];
        assert!(settings(&own).is_ok());
        for local in ["smtp://127.0.0.1:2525", "smtp://user:pw@localhost:25", "smtp://[::1]:2525"] {
            assert!(
                settings(&[real[0], ("SMTP_URL", local)]).is_ok(),
                "{local}: the local sink may use the dev secret"
            );
        }
        let short = [real[0], ("EMAIL_UNSUBSCRIBE_SECRET", "short")];
        assert_eq!(settings(&short).unwrap_err().name, "EMAIL_UNSUBSCRIBE_SECRET");
    }

    #[test]
    fn stripe_settings_and_rotating_webhook_secrets() {
        let s = settings(&[
            ("DATABASE_URL", "postgres://x"),
            ("STRIPE_SECRET_KEY", "sk_test_1"),
            ("STRIPE_API_BASE", "http://127.0.0.1:8420"),
            ("STRIPE_WEBHOOK_SECRET", "whsec_new, whsec_old"),
        ])
        .unwrap();
        let stripe = s.stripe.unwrap();
        assert_eq!(stripe.api_base, "http://127.0.0.1:8420/");
        assert_eq!(s.webhook_secrets, vec![Secret::new("whsec_new"), Secret::new("whsec_old")]);
        assert!(!format!("{stripe:?}").contains("sk_test_1"), "secrets stay out of Debug");
        let err = settings(&[("DATABASE_URL", "postgres://x"), ("RENEWAL_CRON", "every hour")]).unwrap_err();
        assert_eq!(err.name, "RENEWAL_CRON");
    }

    #[test]
    fn the_database_password_never_appears_in_a_debug_of_the_settings() {
        let settings = settings(&[
            ("DATABASE_URL", "postgres://app:hunter2-secret@pgbouncer.internal/rsolv"),
            ("DATABASE_DIRECT_URL", "postgres://app:hunter3-secret@db.internal/rsolv"),
        ])
        .unwrap();
        let printed = format!("{settings:?}");
        assert!(!printed.contains("hunter2-secret") && !printed.contains("hunter3-secret"), "{printed}");
        assert_eq!(settings.database_url.expose(), "postgres://app:hunter2-secret@pgbouncer.internal/rsolv");
        assert_eq!(settings.database_direct_url.unwrap().expose(), "postgres://app:hunter3-secret@db.internal/rsolv");
    }

    #[test]
    fn a_missing_database_url_is_a_clear_error() {
        let err = settings(&[]).unwrap_err();
        assert_eq!(err.name, "DATABASE_URL");
    }

    #[test]
    fn per_kind_overrides_and_bad_values_are_reported_by_name() {
        let s = settings(&[
            ("DATABASE_URL", "postgres://x"),
            ("JOB_RECORD_USAGE_CONCURRENCY", "3"),
            ("JOB_RECORD_USAGE_MAX_ATTEMPTS", "7"),
            ("JOB_RECORD_USAGE_TIMEOUT_MS", "4500"),
        ])
        .unwrap();
        let policy = RetryPolicy::default();
        assert_eq!(
            s.jobs.kind("record_usage", &policy),
            KindSettings { concurrency: 3, max_attempts: 7, timeout: Duration::from_millis(4500) }
        );
        let defaults = s.jobs.kind("grant_credits", &policy);
        assert_eq!(defaults.timeout, Duration::from_secs(60), "the kind's own run timeout");
        let err = settings(&[("DATABASE_URL", "postgres://x"), ("BIND_ADDR", "nowhere")]).unwrap_err();
        assert_eq!(err.name, "BIND_ADDR");
        let err = settings(&[("DATABASE_URL", "postgres://x"), ("JOB_GRANT_CREDITS_CONCURRENCY", "0")]).unwrap_err();
        assert!(err.name.starts_with("JOB_GRANT_CREDITS"));
    }

    #[test]
    fn a_paas_port_binds_every_interface_unless_bind_addr_says_otherwise() {
        let url = ("DATABASE_URL", "postgres://x");
        assert_eq!(settings(&[url]).unwrap().bind_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(settings(&[url, ("PORT", "5000")]).unwrap().bind_addr.to_string(), "0.0.0.0:5000");
        let both = settings(&[url, ("PORT", "5000"), ("BIND_ADDR", "127.0.0.1:9000")]).unwrap();
        assert_eq!(both.bind_addr.to_string(), "127.0.0.1:9000");
        assert_eq!(settings(&[url, ("PORT", "http")]).unwrap_err().name, "PORT");
        // Links follow the port unless PUBLIC_BASE_URL names the public address.
        assert_eq!(settings(&[url]).unwrap().public_base_url, "http://127.0.0.1:8080");
        assert_eq!(settings(&[url, ("PORT", "5000")]).unwrap().public_base_url, "http://localhost:5000");
        let secret = ("EMAIL_UNSUBSCRIBE_SECRET", "a-secret-of-our-own-0123");
        let public =
            settings(&[url, ("PORT", "5000"), ("PUBLIC_BASE_URL", "https://billing.example.com/"), secret]).unwrap();
        assert_eq!(public.public_base_url, "https://billing.example.com");
    }

    #[test]
    fn intervals_of_zero_are_refused_rather_than_spun_or_never_beaten() {
        for name in ["JOB_POLL_INTERVAL_MS", "JOB_HEARTBEAT_MS", "JOB_ORPHAN_AFTER_MS"] {
            let err = settings(&[("DATABASE_URL", "postgres://x"), (name, "0")]).unwrap_err();
            assert_eq!(err.name, name);
        }
    }
}

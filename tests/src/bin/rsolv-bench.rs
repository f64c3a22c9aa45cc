//! `rsolv-bench`: the platform's figures on this machine (see BENCHMARKS.md).
//!
//! ```text
//! cargo build --release --workspace --bins
//! target/release/rsolv-bench [--jobs N] [--concurrency 10,50] [--processes 1,2] [--runs 3]
//!                             [--finished 1000000] [--only throughput,ceiling,...] [--json]
//! ```
//!
//! Each figure is measured `--runs` times and reported as median, min and max. It uses a
//! database of its own (`rsolv_bench`, recreated) on `BENCH_DATABASE_URL`'s server
//! (default: the local Postgres), and starts worker processes (this binary in
//! `serve-noop` mode, and `rsolv-worker` / `rsolv-api` from the same directory).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::config::Settings;
use common::db;
use common::domain::{Email, LedgerSource};
use common::factories::{self, CustomerState};
use common::jobs::{GrantCredits, RecordUsage};
use common::ledger::{self, Posting};
use common::queue::{self, Job, JobError, JobKind, JobNotifier, Outcome, RetryPolicy};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// A job that does nothing but note when it started: the engine's own cost.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Noop {
    seq: i64,
}

impl JobKind for Noop {
    const KIND: &'static str = "bench_noop";
    const RETRY: RetryPolicy = RetryPolicy::new(3, 10);
}

impl Job for Noop {
    type Context = ();

    async fn run(self, _: ()) -> Result<Outcome, JobError> {
        Ok(Outcome::Done { detail: json!({ "at": now_micros(), "pid": std::process::id() }) })
    }
}

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

struct Options {
    jobs: i64,
    concurrency: Vec<usize>,
    processes: Vec<usize>,
    runs: usize,
    json: bool,
    /// Finished jobs left in the table for the "with finished rows" figure.
    finished: i64,
    /// The sections to run (`--only enqueue,throughput`); all when empty.
    only: Vec<String>,
}

impl Options {
    fn runs(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }
}

const SECTIONS: [&str; 10] =
    ["enqueue", "throughput", "finished", "latency", "ceiling", "ledger", "api", "webhooks", "metering", "scaleout"];

fn options(args: &[String]) -> Result<Options, Error> {
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let list = |flag: &str, default: &str| -> Result<Vec<usize>, Error> {
        Ok(value(flag)
            .unwrap_or_else(|| default.into())
            .split(',')
            .map(|v| v.trim().parse())
            .collect::<Result<_, _>>()?)
    };
    Ok(Options {
        jobs: value("--jobs").map(|v| v.parse()).transpose()?.unwrap_or(100_000),
        concurrency: list("--concurrency", "10,50")?,
        processes: list("--processes", "1,2")?,
        runs: value("--runs").map(|v| v.parse()).transpose()?.unwrap_or(3).max(1),
        json: args.iter().any(|a| a == "--json"),
        finished: value("--finished").map(|v| v.parse()).transpose()?.unwrap_or(1_000_000),
        only: match value("--only") {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|s| match SECTIONS.contains(&s.trim()) {
                    true => Ok(s.trim().to_owned()),
                    false => Err(format!("unknown section {s:?}; sections: {}", SECTIONS.join(", "))),
                })
                .collect::<Result<_, _>>()?,
        },
    })
}

/// One measured figure over its runs.
struct Figure {
    name: String,
    unit: &'static str,
    values: Vec<f64>,
}

impl Figure {
    fn stats(&self) -> (f64, f64, f64) {
        let mut v = self.values.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        (v[v.len() / 2], v[0], v[v.len() - 1])
    }
}

fn sibling(name: &str) -> PathBuf {
    std::env::current_exe().unwrap().with_file_name(name)
}

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(program: PathBuf, args: &[&str], env: &[(&str, &str)]) -> Process {
    Process(
        Command::new(&program)
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn")
            .env("METRICS_ADDR", "off")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("{} starts: {e}", program.display())),
    )
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap_or(0)
}

async fn wait_until(pool: &PgPool, sql: &'static str, target: i64, limit: Duration) -> Result<(), Error> {
    let start = Instant::now();
    while count(pool, sql).await < target {
        if start.elapsed() > limit {
            return Err(format!("timed out waiting for {sql} to reach {target}").into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Waits until no job waits or runs. It asks only whether one exists, which stops at
/// the first row of a partial index: counting them instead (a scan of every waiting row,
/// with a heap visit each while the rows churn) every 10 ms took a large share of the
/// CPU the workers were being measured on.
async fn wait_drained(pool: &PgPool, limit: Duration) -> Result<(), Error> {
    let start = Instant::now();
    loop {
        let busy: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE status IN ('available', 'retryable'))
                 OR EXISTS (SELECT 1 FROM jobs WHERE status = 'running')",
        )
        .fetch_one(pool)
        .await?;
        if !busy {
            return Ok(());
        }
        if start.elapsed() > limit {
            let left =
                count(pool, "SELECT count(*) FROM jobs WHERE status IN ('available', 'retryable', 'running')").await;
            return Err(format!("{left} jobs still waiting after {limit:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Jobs per second from the first claim to the last acknowledgement, by the database's
/// clock: the jobs were all waiting before the workers started, so neither inserting
/// them nor starting processes is measured, as for the Postgres-alone ceiling.
async fn sustained_rate(pool: &PgPool) -> Result<f64, Error> {
    let (jobs, seconds): (i64, f64) = sqlx::query_as(
        "SELECT count(*), extract(epoch FROM max(finished_at) - min(locked_at))::float8
         FROM jobs WHERE status = 'completed' AND kind = 'bench_noop' AND locked_at IS NOT NULL",
    )
    .fetch_one(pool)
    .await?;
    Ok(jobs as f64 / seconds)
}

/// Jobs of `kind` completed per second, from the first claim to the last completion by
/// the database's clock (as `sustained_rate`).
async fn rate_of(pool: &PgPool, kind: &str) -> Result<f64, Error> {
    let (jobs, seconds): (i64, f64) = sqlx::query_as(
        "SELECT count(*), extract(epoch FROM max(finished_at) - min(locked_at))::float8
         FROM jobs WHERE status = 'completed' AND kind = $1",
    )
    .bind(kind)
    .fetch_one(pool)
    .await?;
    Ok(jobs as f64 / seconds)
}

async fn bulk_noops(pool: &PgPool, n: i64) -> Result<Duration, Error> {
    let args: Vec<Value> = (0..n).map(|seq| json!({ "seq": seq })).collect();
    let started = Instant::now();
    for chunk in args.chunks(50_000) {
        sqlx::query("INSERT INTO jobs (kind, args) SELECT $1, a FROM UNNEST($2::jsonb[]) AS a")
            .bind(Noop::KIND)
            .bind(chunk)
            .execute(pool)
            .await?;
    }
    Ok(started.elapsed())
}

async fn clear(pool: &PgPool) -> Result<(), Error> {
    sqlx::query("TRUNCATE jobs").execute(pool).await?;
    sqlx::query("DELETE FROM job_workers").execute(pool).await?;
    Ok(())
}

async fn fresh_database() -> Result<(String, PgPool), Error> {
    let admin =
        std::env::var("BENCH_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let mut conn = PgConnection::connect(&admin).await?;
    sqlx::query("DROP DATABASE IF EXISTS rsolv_bench WITH (FORCE)").execute(&mut conn).await?;
    sqlx::query("CREATE DATABASE rsolv_bench").execute(&mut conn).await?;
    let url = format!("{}/rsolv_bench", admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin));
    let pool = PgPoolOptions::new().max_connections(16).connect(&url).await?;
    db::migrate(&pool).await?;
    Ok((url, pool))
}

/// `serve-noop URL CONCURRENCY`: a worker process running only no-op jobs.
async fn serve_noop(url: &str, concurrency: usize) -> Result<(), Error> {
    let settings = Settings::from_lookup(
        |k| match k {
            "DATABASE_URL" => Some(url.to_owned()),
            "JOB_POLL_INTERVAL_MS" => Some("100".into()),
            "JOB_FETCH_BATCH" | "JOB_BOOKKEEPING_SYNC_COMMIT" => std::env::var(k).ok(),
            _ => None,
        },
        &common::jobs::kinds(),
    )?;
    // The workers' warnings reach the bench's stderr (its spawner sets RUST_LOG=warn).
    let _telemetry = common::telemetry::init(settings.log_format, "rsolv-bench", None);
    let pool = PgPoolOptions::new().max_connections(concurrency as u32 + 4).connect(url).await?;
    let notifier = JobNotifier::listen(&pool).await?;
    let bookkeeping = queue::bookkeeping_pool(&pool, settings.jobs.bookkeeping_sync_commit);
    let mut policy = Noop::RETRY;
    policy.concurrency = concurrency;
    let instance = common::jobs::instance_name();
    let monitor = queue::register_with::<Noop>(
        apalis::prelude::Monitor::new(),
        &bookkeeping,
        &(),
        &notifier,
        &settings.jobs,
        policy,
        &instance,
    );
    monitor.run().await?;
    Ok(())
}

async fn wait_for_api(client: &reqwest::Client, base: &str) -> Result<(), Error> {
    let ready = Instant::now();
    while !client.get(format!("{base}/ready")).send().await.is_ok_and(|r| r.status() == 200) {
        if ready.elapsed() > Duration::from_secs(30) {
            return Err("the API did not start".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn peak_rss_mb(process: &Process) -> f64 {
    std::fs::read_to_string(format!("/proc/{}/status", process.0.id()))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Figures by name, in the order first measured.
#[derive(Default)]
struct Figures(Vec<Figure>);

impl Figures {
    fn record(&mut self, name: &str, unit: &'static str, value: f64) {
        match self.0.iter_mut().find(|f| f.name == name) {
            Some(figure) => figure.values.push(value),
            None => self.0.push(Figure { name: name.to_owned(), unit, values: vec![value] }),
        }
    }

    fn print(&self, opts: &Options) -> Result<(), Error> {
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
        if opts.json {
            let rows: Vec<Value> = self
                .0
                .iter()
                .map(|f| {
                    let (median, min, max) = f.stats();
                    json!({ "name": f.name, "unit": f.unit, "median": median, "min": min, "max": max, "runs": f.values.len() })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&json!({ "jobs": opts.jobs, "cpus": cpus, "figures": rows }))?);
        } else {
            println!("{} jobs per throughput run, {} runs, {cpus} CPUs", opts.jobs, opts.runs);
            println!("{:<58} {:>12} {:>12} {:>12}  unit", "figure", "median", "min", "max");
            for f in &self.0 {
                let (median, min, max) = f.stats();
                println!("{:<58} {:>12.1} {:>12.1} {:>12.1}  {}", f.name, median, min, max, f.unit);
            }
        }
        Ok(())
    }
}

/// One bench run's database, options and figures; a method per section.
struct Bench {
    url: String,
    pool: PgPool,
    opts: Options,
    figures: Figures,
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("serve-noop") {
        return serve_noop(&args[1], args[2].parse()?).await;
    }
    let opts = options(&args)?;
    let (url, pool) = fresh_database().await?;
    let mut bench = Bench { url, pool, opts, figures: Figures::default() };
    for run in 0..bench.opts.runs {
        eprintln!("run {}/{}", run + 1, bench.opts.runs);
        if bench.opts.runs("enqueue") {
            bench.enqueue().await?;
        }
        if bench.opts.runs("throughput") {
            bench.throughput().await?;
        }
        if bench.opts.runs("finished") {
            bench.finished().await?;
        }
        if bench.opts.runs("latency") {
            bench.latency().await?;
        }
        if bench.opts.runs("ceiling") {
            bench.ceiling().await?;
        }
        if bench.opts.runs("ledger") {
            bench.ledger(run).await?;
        }
        if bench.opts.runs("api") {
            bench.api_load(run).await?;
        }
        if bench.opts.runs("webhooks") {
            bench.webhooks(run).await?;
        }
        if bench.opts.runs("metering") {
            bench.metering(run).await?;
        }
        if bench.opts.runs("scaleout") {
            bench.scale_out().await?;
        }
    }
    bench.figures.print(&bench.opts)
}

impl Bench {
    /// Durable enqueue: one statement for many jobs, and one job per statement.
    async fn enqueue(&mut self) -> Result<(), Error> {
        // Enqueue.
        clear(&self.pool).await?;
        let took = bulk_noops(&self.pool, self.opts.jobs).await?;
        self.figures.record(
            "enqueue, bulk (one statement per 50k)",
            "jobs/s",
            self.opts.jobs as f64 / took.as_secs_f64(),
        );
        clear(&self.pool).await?;
        let rate = self.one_at_a_time().await?;
        self.figures.record("enqueue, one at a time", "jobs/s", rate);
        Ok(())
    }

    /// Durable commits one after another on one connection (one enqueue each): the base
    /// the batched figures are compared with, measured in the same run.
    async fn one_at_a_time(&mut self) -> Result<f64, Error> {
        let n = 2_000;
        let started = Instant::now();
        for seq in 0..n {
            queue::enqueue(&self.pool, &Noop { seq }).await?;
        }
        let rate = n as f64 / started.elapsed().as_secs_f64();
        sqlx::query("DELETE FROM jobs WHERE kind = $1").bind(Noop::KIND).execute(&self.pool).await?;
        Ok(rate)
    }

    /// Records `rate` and its ratio to a one-at-a-time commit rate measured just before.
    async fn record_with_ratio(&mut self, name: &str, unit: &'static str, rate: f64, base: f64) {
        self.figures.record(name, unit, rate);
        self.figures.record(&format!("{name}: × one-at-a-time commits"), "ratio", rate / base);
    }

    /// No-op jobs through `serve-noop` processes, per process count and concurrency.
    async fn throughput(&mut self) -> Result<(), Error> {
        // No-op throughput.
        for processes in self.opts.processes.clone() {
            for concurrency in self.opts.concurrency.clone() {
                clear(&self.pool).await?;
                bulk_noops(&self.pool, self.opts.jobs).await?;
                let workers: Vec<Process> = (0..processes)
                    .map(|_| {
                        spawn(
                            std::env::current_exe().unwrap(),
                            &["serve-noop", &self.url, &concurrency.to_string()],
                            &[],
                        )
                    })
                    .collect();
                wait_drained(&self.pool, Duration::from_secs(900)).await?;
                let name = format!("no-op jobs, {processes} process(es), concurrency {concurrency}");
                self.figures.record(&name, "jobs/s", sustained_rate(&self.pool).await?);
                drop(workers);
            }
        }
        Ok(())
    }

    /// No-op jobs with a long history of finished rows in the table.
    async fn finished(&mut self) -> Result<(), Error> {
        // The same with a large history of finished jobs in the table.
        clear(&self.pool).await?;
        sqlx::query(
            "INSERT INTO jobs (kind, args, status, finished_at)
             SELECT $1, jsonb_build_object('seq', g), 'completed', now() FROM generate_series(1, $2) g",
        )
        .bind(Noop::KIND)
        .bind(self.opts.finished)
        .execute(&self.pool)
        .await?;
        // A table that has lived with this history: vacuumed and checkpointed, so the
        // fill's own aftermath (insert-triggered autovacuum, a checkpoint) is not measured.
        sqlx::query("VACUUM (ANALYZE) jobs").execute(&self.pool).await?;
        sqlx::query("CHECKPOINT").execute(&self.pool).await?;
        bulk_noops(&self.pool, self.opts.jobs).await?;
        let worker = spawn(std::env::current_exe().unwrap(), &["serve-noop", &self.url, "50"], &[]);
        wait_drained(&self.pool, Duration::from_secs(900)).await?;
        let name = format!("no-op jobs, 1 process, concurrency 50, {} finished rows present", self.opts.finished);
        self.figures.record(&name, "jobs/s", sustained_rate(&self.pool).await?);
        drop(worker);
        Ok(())
    }

    /// How long an idle, listening worker takes to pick a job up.
    async fn latency(&mut self) -> Result<(), Error> {
        // Pickup latency: one job at a time to an idle worker.
        clear(&self.pool).await?;
        let worker = spawn(std::env::current_exe().unwrap(), &["serve-noop", &self.url, "10"], &[]);
        wait_until(&self.pool, "SELECT count(*) FROM job_workers", 1, Duration::from_secs(30)).await?;
        let samples = 300;
        let mut enqueued_at = Vec::with_capacity(samples);
        for seq in 0..samples as i64 {
            enqueued_at.push((seq, now_micros()));
            queue::enqueue(&self.pool, &Noop { seq }).await?;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        wait_until(
            &self.pool,
            "SELECT count(*) FROM jobs WHERE status = 'completed'",
            samples as i64,
            Duration::from_secs(60),
        )
        .await?;
        drop(worker);
        let started: Vec<(i64, i64)> =
            sqlx::query_as("SELECT (args->>'seq')::bigint, (result->>'at')::bigint FROM jobs")
                .fetch_all(&self.pool)
                .await?;
        let mut latencies: Vec<f64> = started
            .iter()
            .filter_map(|(seq, at)| enqueued_at.iter().find(|(s, _)| s == seq).map(|(_, t)| (*at - *t) as f64 / 1000.0))
            .collect();
        latencies.sort_by(|a, b| a.total_cmp(b));
        self.figures.record("pickup latency p50 (idle, listening worker)", "ms", percentile(&latencies, 0.50));
        self.figures.record("pickup latency p95", "ms", percentile(&latencies, 0.95));
        self.figures.record("pickup latency p99", "ms", percentile(&latencies, 0.99));
        Ok(())
    }

    /// Postgres alone claiming and deleting, then claiming and completing with our statements.
    async fn ceiling(&mut self) -> Result<(), Error> {
        // Postgres alone, on a table like ours.
        sqlx::query("DROP TABLE IF EXISTS bench_claim").execute(&self.pool).await?;
        sqlx::query("CREATE TABLE bench_claim (LIKE jobs INCLUDING DEFAULTS INCLUDING INDEXES INCLUDING IDENTITY)")
            .execute(&self.pool)
            .await?;
        sqlx::query("INSERT INTO bench_claim (kind, args) SELECT 'bench_noop', jsonb_build_object('seq', g) FROM generate_series(1, $1) g")
            .bind(self.opts.jobs)
            .execute(&self.pool)
            .await?;
        let started = Instant::now();
        let claimers: Vec<_> = (0..8)
            .map(|_| {
                let url = self.url.clone();
                tokio::spawn(async move {
                    let mut conn = PgConnection::connect(&url).await.unwrap();
                    loop {
                        let mut tx = conn.begin().await.unwrap();
                        let ids: Vec<i64> = sqlx::query_scalar(
                            "SELECT id FROM bench_claim WHERE kind = 'bench_noop' AND status IN ('available', 'retryable')
                               AND run_at <= now() ORDER BY run_at LIMIT 100 FOR UPDATE SKIP LOCKED",
                        )
                        .fetch_all(&mut *tx)
                        .await
                        .unwrap();
                        if ids.is_empty() {
                            break;
                        }
                        sqlx::query("DELETE FROM bench_claim WHERE id = ANY($1)").bind(&ids).execute(&mut *tx).await.unwrap();
                        tx.commit().await.unwrap();
                    }
                })
            })
            .collect();
        for claimer in claimers {
            claimer.await?;
        }
        self.figures.record(
            "Postgres alone: 8 connections claim 100 + delete",
            "jobs/s",
            self.opts.jobs as f64 / started.elapsed().as_secs_f64(),
        );

        self.ceiling_ours().await
    }

    /// The same with the worker's own claim and completion statements on `jobs`: what
    /// our SQL costs Postgres, without the worker's own work.
    async fn ceiling_ours(&mut self) -> Result<(), Error> {
        clear(&self.pool).await?;
        bulk_noops(&self.pool, self.opts.jobs).await?;
        let claimers: Vec<_> = (0..8)
            .map(|n| {
                let url = self.url.clone();
                tokio::spawn(async move {
                    let mut conn = PgConnection::connect(&url).await.unwrap();
                    // As the workers' bookkeeping pool has it.
                    if std::env::var("JOB_BOOKKEEPING_SYNC_COMMIT").as_deref() != Ok("true") {
                        sqlx::query("SET synchronous_commit = off").execute(&mut conn).await.unwrap();
                    }
                    let worker = format!("alone-{n}");
                    loop {
                        let claimed: Vec<(i64, Value, i32, chrono::DateTime<chrono::Utc>)> =
                            sqlx::query_as(queue::statements::CLAIM)
                                .bind(Noop::KIND)
                                .bind(100_i64)
                                .bind(&worker)
                                .fetch_all(&mut conn)
                                .await
                                .unwrap();
                        if claimed.is_empty() {
                            break;
                        }
                        let ids: Vec<i64> = claimed.iter().map(|c| c.0).collect();
                        let attempts: Vec<i32> = claimed.iter().map(|c| c.2).collect();
                        let claimed_at: Vec<_> = claimed.iter().map(|c| c.3).collect();
                        let results = vec![json!({"outcome": "done", "detail": null}); ids.len()];
                        sqlx::query(queue::statements::COMPLETE)
                            .bind(&ids)
                            .bind(&attempts)
                            .bind(&claimed_at)
                            .bind(&results)
                            .bind(&worker)
                            .execute(&mut conn)
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for claimer in claimers {
            claimer.await?;
        }
        self.figures.record(
            "Postgres alone, our statements: 8 connections claim 100 + complete",
            "jobs/s",
            sustained_rate(&self.pool).await?,
        );
        Ok(())
    }

    /// Ledger postings through the real worker (grant jobs over 50 customers), with the
    /// worker's batched postings and without, against one-at-a-time commits.
    async fn ledger(&mut self, run: usize) -> Result<(), Error> {
        clear(&self.pool).await?;
        let base = self.one_at_a_time().await?;
        self.figures.record("one durable commit at a time (ledger's base)", "commits/s", base);
        let settings = self.settings()?;
        let mut customers = Vec::new();
        for n in 0..50 {
            let email = Email::parse(&format!("bench-{run}-{n}@example.com"))?;
            customers.push(factories::create(&self.pool, &settings, CustomerState::Trial, email).await?.customer_id);
        }
        for batched in [true, false] {
            clear(&self.pool).await?;
            let grants: Vec<Value> = (0..20_000)
                .map(|i| {
                    serde_json::to_value(GrantCredits {
                        customer_id: customers[i % customers.len()],
                        amount: 1,
                        source: LedgerSource::AdminAdjustment,
                        idempotency_key: format!("bench-{run}-{batched}-{i}"),
                        metadata: Value::Null,
                    })
                    .unwrap()
                })
                .collect();
            sqlx::query("INSERT INTO jobs (kind, args) SELECT $1, a FROM UNNEST($2::jsonb[]) AS a")
                .bind(GrantCredits::KIND)
                .bind(&grants)
                .execute(&self.pool)
                .await?;
            let env = [
                ("DATABASE_URL", self.url.as_str()),
                ("JOB_BATCH_POSTINGS", if batched { "true" } else { "false" }),
                ("JOB_GRANT_CREDITS_CONCURRENCY", "100"),
                ("DATABASE_MAX_CONNECTIONS", "40"),
            ];
            let worker = spawn(sibling("rsolv-worker"), &[], &env);
            wait_drained(&self.pool, Duration::from_secs(600)).await?;
            drop(worker);
            let rate = rate_of(&self.pool, GrantCredits::KIND).await?;
            let name = match batched {
                true => "ledger postings (grant_credits jobs, batched)",
                false => "ledger postings (grant_credits jobs, one transaction each)",
            };
            self.record_with_ratio(name, "postings/s", rate, base).await;
        }
        Ok(())
    }

    fn settings(&self) -> Result<Arc<Settings>, Error> {
        Ok(Arc::new(Settings::from_lookup(
            |k| (k == "DATABASE_URL").then(|| self.url.clone()),
            &common::jobs::kinds(),
        )?))
    }

    /// Onboarding load through the API and the worker, with both processes' peak memory.
    async fn api_load(&mut self, run: usize) -> Result<(), Error> {
        // Peak memory of the API and the worker while onboarding traffic flows.
        clear(&self.pool).await?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let bind = format!("127.0.0.1:{port}");
        let env = [
            ("DATABASE_URL", self.url.as_str()),
            ("BIND_ADDR", bind.as_str()),
            ("RATE_LIMIT_ONBOARD_PER_MINUTE", "0"),
            ("RATE_LIMIT_WEBHOOKS_PER_MINUTE", "0"),
            ("RATE_LIMIT_ANONYMOUS_PER_MINUTE", "0"),
        ];
        let api = spawn(sibling("rsolv-api"), &[], &env);
        let worker = spawn(sibling("rsolv-worker"), &[], &env);
        let client = reqwest::Client::new();
        let base = format!("http://{bind}");
        wait_for_api(&client, &base).await?;
        let total = 5_000;
        let started = Instant::now();
        let mut next = 0;
        while next < total {
            let batch = (next..(next + 50).min(total)).map(|i| {
                client
                    .post(format!("{base}/api/v1/customers/onboard"))
                    .json(&json!({ "name": "Bench", "email": format!("load-{run}-{i}@example.com") }))
                    .send()
            });
            for response in futures::future::join_all(batch).await {
                if !response.is_ok_and(|r| r.status() == 202) {
                    return Err("an onboarding request failed during the load".into());
                }
            }
            next += 50;
        }
        self.figures.record(
            "onboarding requests (50 concurrent, bench client)",
            "req/s",
            total as f64 / started.elapsed().as_secs_f64(),
        );
        wait_until(
            &self.pool,
            "SELECT count(*) FROM customers WHERE email LIKE 'load-%'",
            total as i64,
            Duration::from_secs(120),
        )
        .await?;
        self.figures.record("API peak RSS under load", "MB", peak_rss_mb(&api));
        self.figures.record("worker peak RSS under load", "MB", peak_rss_mb(&worker));
        drop((api, worker));
        Ok(())
    }

    /// Signed webhook ingest (verify + durable enqueue) against the API alone.
    async fn webhooks(&mut self, run: usize) -> Result<(), Error> {
        // Signed webhook ingest (verify + durable enqueue) against the API alone: no
        // worker runs, so the figure is the API's and Postgres's, not the processing.
        clear(&self.pool).await?;
        let commit_rate = self.one_at_a_time().await?;
        let secret = "whsec_bench";
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let bind = format!("127.0.0.1:{port}");
        let env = [
            ("DATABASE_URL", self.url.as_str()),
            ("BIND_ADDR", bind.as_str()),
            ("STRIPE_WEBHOOK_SECRET", secret),
            // The ingest itself is measured, not Stripe's per-address budget.
            ("RATE_LIMIT_WEBHOOKS_PER_MINUTE", "0"),
        ];
        let api = spawn(sibling("rsolv-api"), &[], &env);
        let client = reqwest::Client::new();
        let base = format!("http://{bind}");
        wait_for_api(&client, &base).await?;
        let total = 20_000;
        let now = chrono::Utc::now().timestamp();
        let events: Vec<Request> = (0..total)
            .map(|i| {
                let body = serde_json::to_vec(&json!({
                    "id": format!("evt_bench_{run}_{i}"), "object": "event", "type": "invoice.payment_succeeded",
                    "created": now, "livemode": false, "api_version": "2024-06-20",
                    "data": { "object": {
                        "id": format!("in_bench_{run}_{i}"), "object": "invoice", "customer": "cus_bench",
                        "subscription": "sub_bench", "status": "paid", "amount_paid": 59900, "currency": "usd"
                    } }
                }))
                .unwrap();
                let signature = common::stripe::signature::sign(&body, secret, now);
                ("stripe-signature", signature, body)
            })
            .collect();
        let (took, latencies) = load(&client, &format!("{base}/api/webhooks/stripe"), events, 200).await?;
        let rate = total as f64 / took;
        self.record_with_ratio("webhook ingest, API alone (64 concurrent, bench client)", "req/s", rate, commit_rate)
            .await;
        self.figures.record("webhook ingest latency p50", "ms", percentile(&latencies, 0.50));
        self.figures.record("webhook ingest latency p99", "ms", percentile(&latencies, 0.99));
        let stored = count(&self.pool, "SELECT count(*) FROM jobs WHERE kind = 'process_stripe_event'").await;
        if stored != total as i64 {
            return Err(format!("{stored} of {total} accepted webhooks were enqueued").into());
        }
        drop(api);
        Ok(())
    }

    /// Usage metering end to end: fixes reported through the API (64 concurrent clients,
    /// most of them for a few hot customers) until every debit is posted by the worker.
    async fn metering(&mut self, run: usize) -> Result<(), Error> {
        clear(&self.pool).await?;
        let base = self.one_at_a_time().await?;
        self.figures.record("one durable commit at a time (metering's base)", "commits/s", base);
        let settings = self.settings()?;
        let (customers, keys) = self.customers_with_credits(&settings, run, 200, 1_000_000).await?;
        let balance_before: i64 =
            sqlx::query_scalar("SELECT sum(credit_balance)::bigint FROM customers WHERE id = ANY($1)")
                .bind(&customers)
                .fetch_one(&self.pool)
                .await?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let bind = format!("127.0.0.1:{port}");
        let url = self.url.clone();
        let env = [
            ("DATABASE_URL", url.as_str()),
            ("BIND_ADDR", bind.as_str()),
            ("RATE_LIMIT_API_PER_MINUTE", "0"),
            ("RATE_LIMIT_USAGE_PER_MINUTE", "0"),
            ("JOB_RECORD_USAGE_CONCURRENCY", "200"),
            ("DATABASE_MAX_CONNECTIONS", "12"),
        ];
        let api = spawn(sibling("rsolv-api"), &[], &env);
        let client = reqwest::Client::new();
        let base_url = format!("http://{bind}");
        wait_for_api(&client, &base_url).await?;
        let url = format!("{base_url}/api/v1/usage/fixes");
        let total = 40_000;
        // Four hot customers get 80 % of the fixes; the other 196 share the rest.
        let reports = |phase: &str| -> Vec<Request> {
            (0..total)
                .map(|i| {
                    let customer = if i % 5 == 4 { 4 + (i / 5) % (customers.len() - 4) } else { i % 4 };
                    let body = json!({ "fix_id": format!("r{run}-{phase}-f{i}"), "repo": "org/repo" });
                    ("x-api-key", keys[customer].clone(), serde_json::to_vec(&body).unwrap())
                })
                .collect()
        };

        // The API alone, then the worker alone on what it queued.
        let (took, _) = load(&client, &url, reports("a"), 202).await?;
        self.record_with_ratio("metering: API alone accepts (64 concurrent)", "fixes/s", total as f64 / took, base)
            .await;
        let worker = spawn(sibling("rsolv-worker"), &[], &env);
        wait_drained(&self.pool, Duration::from_secs(600)).await?;
        let rate = rate_of(&self.pool, RecordUsage::KIND).await?;
        self.record_with_ratio("metering: worker alone posts the queued debits", "fixes/s", rate, base).await;

        // Both at once: from the first report sent to the last debit posted.
        let started_db: chrono::DateTime<chrono::Utc> =
            sqlx::query_scalar("SELECT clock_timestamp()").fetch_one(&self.pool).await?;
        let (took, latencies) = load(&client, &url, reports("b"), 202).await?;
        self.figures.record("metering: fixes accepted with the worker running", "req/s", total as f64 / took);
        self.figures.record("metering: API answer p50", "ms", percentile(&latencies, 0.50));
        self.figures.record("metering: API answer p99", "ms", percentile(&latencies, 0.99));
        // Every job of this phase done, then this phase's fixes only (earlier runs' fix
        // ids share the pattern; a wait on their count was met before this run's were).
        wait_drained(&self.pool, Duration::from_secs(600)).await?;
        let (posted, seconds): (i64, f64) = sqlx::query_as(
            "SELECT count(*), extract(epoch FROM max(created_at) - $1)::float8 FROM usage_fixes
             WHERE outcome = 'consumed' AND fix_id LIKE $2",
        )
        .bind(started_db)
        .bind(format!("r{run}-b-f%"))
        .fetch_one(&self.pool)
        .await?;
        if posted != total as i64 {
            return Err(format!("{posted} of {total} fixes were posted").into());
        }
        self.record_with_ratio(
            "metering end to end: report sent → debit posted",
            "fixes/s",
            total as f64 / seconds,
            base,
        )
        .await;
        self.figures.record("metering: API peak RSS", "MB", peak_rss_mb(&api));
        self.figures.record("metering: worker peak RSS", "MB", peak_rss_mb(&worker));
        drop((api, worker));
        let after: i64 = sqlx::query_scalar("SELECT sum(credit_balance)::bigint FROM customers WHERE id = ANY($1)")
            .bind(&customers)
            .fetch_one(&self.pool)
            .await?;
        let spent = balance_before - after;
        if spent != 2 * total as i64 {
            return Err(format!("{total} fixes took {spent} credits").into());
        }
        Ok(())
    }

    /// `n` customers with an API key each and `credits` credits (one ledger posting each).
    async fn customers_with_credits(
        &self,
        settings: &Settings,
        run: usize,
        n: usize,
        credits: i64,
    ) -> Result<(Vec<uuid::Uuid>, Vec<String>), Error> {
        let mut customers = Vec::new();
        let mut keys = Vec::new();
        for i in 0..n {
            let email = Email::parse(&format!("meter-{run}-{i}@example.com"))?;
            let seeded = factories::create(&self.pool, settings, CustomerState::TrialExhausted, email).await?;
            customers.push(seeded.customer_id);
            keys.push(seeded.api_key.expose().to_owned());
        }
        let postings: Vec<Posting> = customers
            .iter()
            .map(|id| Posting {
                customer_id: *id,
                amount: credits,
                source: LedgerSource::AdminAdjustment,
                metadata: Value::Null,
                idempotency_key: format!("bench-credits-{run}-{id}"),
            })
            .collect();
        let mut tx = self.pool.begin().await?;
        ledger::post_many(&mut tx, &postings).await?;
        tx.commit().await?;
        Ok((customers, keys))
    }

    /// No-op jobs through 1, 2 and 4 worker processes (concurrency 50 each), and how
    /// evenly they share the work.
    async fn scale_out(&mut self) -> Result<(), Error> {
        for processes in [1, 2, 4] {
            clear(&self.pool).await?;
            bulk_noops(&self.pool, self.opts.jobs).await?;
            let workers: Vec<Process> = (0..processes)
                .map(|_| spawn(std::env::current_exe().unwrap(), &["serve-noop", &self.url, "50"], &[]))
                .collect();
            wait_drained(&self.pool, Duration::from_secs(900)).await?;
            drop(workers);
            self.figures.record(
                &format!("scale-out: no-op jobs, {processes} process(es)"),
                "jobs/s",
                sustained_rate(&self.pool).await?,
            );
            let shares: Vec<i64> = sqlx::query_scalar(
                "SELECT count(*) FROM jobs WHERE kind = $1 AND status = 'completed' GROUP BY result->>'pid'",
            )
            .bind(Noop::KIND)
            .fetch_all(&self.pool)
            .await?;
            let fair = self.opts.jobs as f64 / processes as f64;
            let worst = shares.iter().map(|n| (*n as f64 - fair).abs() / fair * 100.0).fold(0.0, f64::max);
            let worst = if shares.len() < processes { 100.0 } else { worst };
            self.figures.record(&format!("scale-out: {processes} process(es), largest share off equal"), "%", worst);
        }
        Ok(())
    }
}

/// A JSON POST of the load: one header (the API key, a signature) and the body.
type Request = (&'static str, String, Vec<u8>);

/// Sends every request with 64 clients at once; each must answer `expected`.
/// Returns the seconds it took and the sorted latencies (ms).
async fn load(
    client: &reqwest::Client,
    url: &str,
    requests: Vec<Request>,
    expected: u16,
) -> Result<(f64, Vec<f64>), Error> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let requests = Arc::new(requests);
    let started = Instant::now();
    let senders: Vec<_> = (0..64)
        .map(|_| {
            let (client, next, requests, url) = (client.clone(), next.clone(), requests.clone(), url.to_owned());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((header, value, body)) = requests.get(i) else { return Ok(latencies) };
                    let sent = Instant::now();
                    let response = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .header(*header, value)
                        .body(body.clone())
                        .send()
                        .await;
                    match response {
                        Ok(r) if r.status().as_u16() == expected => {}
                        Ok(r) => return Err(format!("a request answered {}", r.status())),
                        Err(e) => return Err(format!("a request failed: {e}")),
                    }
                    latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                }
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for sender in senders {
        latencies.extend(sender.await??);
    }
    let took = started.elapsed().as_secs_f64();
    latencies.sort_by(|a, b| a.total_cmp(b));
    Ok((took, latencies))
}

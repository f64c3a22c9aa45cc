//! The pool, migrations, and one module per table group; all SQL of a table lives in
//! its module (the job queue's SQL lives in `queue`).
//!
//! ## Behind a transaction pooler
//! With `DATABASE_DIRECT_URL` set, `DATABASE_URL` is taken to lead to PgBouncer in
//! transaction mode (1.21 or later, with `max_prepared_statements` above 0): each of our
//! transactions, and each statement outside one, may run in another server session.
//! - Nothing is set per session. The job pool's `statement_timeout` and the bookkeeping
//!   pool's `synchronous_commit = off` are startup options, which PgBouncer refuses: set
//!   the first where the pooler connects for the workers (PgBouncer's `connect_query` on
//!   their database entry, or their own role; the worker refuses to start without one:
//!   [`check_job_sessions`]); bookkeeping commits stay synchronous.
//! - What needs one session across statements takes a direct connection: the workers'
//!   `LISTEN` ([`listen_pool`]) and the migrations ([`apply_migrations`]: sqlx holds a
//!   session-level advisory lock while migrating, which through a pooler could be
//!   released in another session than took it, and stay held).
//! - The rest already fits: per-transaction settings are `SET LOCAL` or
//!   `set_config(…, true)`, advisory locks are `pg_advisory_xact_lock`, and PgBouncer
//!   itself carries sqlx's named prepared statements from server to server.

pub mod api_keys;
pub mod audit;
pub mod billing_events;
pub mod charges;
pub mod customers;
pub mod email_deliveries;
pub mod email_preferences;
pub mod idempotency;
pub mod rate_limits;
pub mod reconcile_drift;
pub mod sessions;
pub mod sign_in_links;
pub mod usage;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

use crate::config::Settings;

/// Our migrations, embedded in the binaries.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// How every pool connects to `DATABASE_URL`.
fn connect_options(settings: &Settings) -> Result<PgConnectOptions, sqlx::Error> {
    let options: PgConnectOptions = settings.database_url.expose().parse()?;
    // sqlx sends `extra_float_digits` at startup, a parameter PgBouncer refuses. Postgres
    // 12 and later print floats exactly without it, and our statements return binary.
    Ok(options.extra_float_digits(None))
}

/// The pool jobs run their own statements on: as [`pool`], with `statement_timeout`
/// (`JOB_STATEMENT_TIMEOUT_MS`, 60 s). A run that overruns its kind's timeout is dropped
/// by the worker, but Postgres would go on running (or waiting for a lock with) the
/// statement it was in, holding its locks; this ends such a statement on the server.
/// Behind a pooler it is set where the pooler connects (module guide).
pub fn job_pool(settings: &Settings) -> Result<PgPool, sqlx::Error> {
    let statement_timeout = settings.jobs.statement_timeout.as_millis().to_string();
    let options = connect_options(settings)?.application_name("rsolv-jobs");
    let options = match settings.database_direct_url {
        Some(_) => options,
        None => options.options([("statement_timeout", statement_timeout.as_str())]),
    };
    Ok(PgPoolOptions::new()
        .max_connections(settings.database_max_connections)
        .acquire_timeout(settings.database_acquire_timeout)
        .connect_lazy_with(options))
}

/// A pool whose connections are made lazily, so a process starts (and can answer
/// `/health`) while the database is still coming up.
pub fn pool(settings: &Settings) -> Result<PgPool, sqlx::Error> {
    Ok(PgPoolOptions::new()
        .max_connections(settings.database_max_connections)
        .acquire_timeout(settings.database_acquire_timeout)
        .connect_lazy_with(connect_options(settings)?.application_name("rsolv")))
}

/// Where a process `LISTEN`s: one connection of its own on `DATABASE_DIRECT_URL`, or,
/// without a pooler, `pool` itself.
pub fn listen_pool(settings: &Settings, pool: &PgPool) -> Result<PgPool, sqlx::Error> {
    let Some(direct) = &settings.database_direct_url else { return Ok(pool.clone()) };
    let options: PgConnectOptions = direct.expose().parse()?;
    Ok(PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(settings.database_acquire_timeout)
        .connect_lazy_with(options.application_name("rsolv-listen")))
}

/// Applies our migrations as the processes do at start: on one direct connection when
/// a pooler is in between (module guide), else on `pool`. The direct connection has no
/// `statement_timeout` (a role's, meant for jobs, must not cancel a long migration or the
/// wait for another process's migration lock) and is made within
/// `DATABASE_ACQUIRE_TIMEOUT_MS`, so an unreachable address fails the start clearly.
pub async fn apply_migrations(settings: &Settings, pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    let Some(direct) = &settings.database_direct_url else { return migrate(pool).await };
    let options: PgConnectOptions = direct.expose().parse()?;
    let options = options.application_name("rsolv-migrate").options([("statement_timeout", "0")]);
    let mut connection = tokio::time::timeout(settings.database_acquire_timeout, PgConnection::connect_with(&options))
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)??;
    MIGRATOR.run(&mut connection).await
}

/// Checks, as a worker starts, that jobs' statements run with a `statement_timeout`:
/// without a pooler, the one `JOB_STATEMENT_TIMEOUT_MS` asked for (else something in
/// between drops startup options: a pooler, which needs `DATABASE_DIRECT_URL`); behind
/// one, any but none (it is set where the pooler connects: README, "Behind PgBouncer").
pub async fn check_job_sessions(settings: &Settings, job_pool: &PgPool) -> Result<(), String> {
    let timeout_ms = sqlx::query_scalar!(
        r#"SELECT (extract(epoch FROM current_setting('statement_timeout')::interval) * 1000)::int8 AS "ms!""#
    )
    .fetch_one(job_pool)
    .await
    .map_err(|error| format!("could not read jobs' statement_timeout: {error}"))?;
    let asked = settings.jobs.statement_timeout.as_millis() as i64;
    match &settings.database_direct_url {
        None if timeout_ms != asked => Err(format!(
            "jobs' connections asked for statement_timeout = {asked} ms and have {timeout_ms} ms: something between \
             the worker and Postgres drops startup options. Behind a pooler, set DATABASE_DIRECT_URL \
             (README, \"Behind PgBouncer\")"
        )),
        Some(_) if timeout_ms == 0 => Err("behind a pooler, jobs' statements would run without a statement_timeout: \
             set one where the pooler connects for the workers (PgBouncer's connect_query on their database entry, \
             or their own role: README, \"Behind PgBouncer\")"
            .to_owned()),
        Some(_) => {
            tracing::info!(timeout_ms, "jobs' statement_timeout, as the pooler's sessions have it");
            Ok(())
        }
        None => Ok(()),
    }
}

/// Postgres's `lock_not_available` (55P03): a `NOWAIT` lock was held by another.
pub fn is_lock_not_available(error: &sqlx::Error) -> bool {
    error.as_database_error().and_then(|e| e.code()).is_some_and(|code| code == "55P03")
}

pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// Whether the database answers and holds every migration this build knows.
pub async fn is_ready(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let latest = MIGRATOR.iter().map(|m| m.version).max().unwrap_or_default();
    let applied: Option<i64> =
        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success").fetch_one(pool).await?;
    Ok(applied.is_some_and(|v| v >= latest))
}

/// Plans the transaction's next statements for their own arguments and the tables as
/// they are now, each key of a batch looked up by index, until [`cached_plans`].
///
/// For the statements that join a batch of keys (`unnest`, a few hundred at most)
/// against a table that grows (recorded fixes, charges, customers). Two plans read such
/// a table whole, and both were measured doing it:
///
/// - **A cached plan.** sqlx prepares each statement once per connection, and Postgres
///   keeps the generic plan it settles on at a statement's sixth run while the server
///   connection lives (sqlx replaces its connections after 30 minutes; behind PgBouncer,
///   its `server_lifetime`) and the table is not vacuumed, analyzed or altered. Chosen
///   while the table was nearly empty (a new deployment), it reads the whole table, and
///   keeps doing so as it grows: 15 ms a batch of postings at 80,000 recorded fixes.
///   Hence `plan_cache_mode = force_custom_plan`: planned at each run.
/// - **A hash join.** Planned for its arguments, a batch of 300 keys against 81,000
///   recorded fixes was still a hash of the whole table (33 ms, against 0.9 ms for 300
///   index probes): by the default `random_page_cost` each probe is priced as a read
///   from disk, though the pages a batch probes are in memory. A batch is far smaller
///   than the tables it probes, so hash and merge joins are off for these statements
///   (BENCHMARKS.md, "Batch lookups that hashed a whole table").
///
/// Planning a statement costs a fraction of a millisecond; use this around the few that
/// need it, not around statements run once per row (a trigger's), where planning each
/// run costs more than it saves.
pub async fn planned_for_arguments(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    // One round trip for the three (a multi-statement string, so not `query!`).
    sqlx::raw_sql(
        "SET LOCAL plan_cache_mode = force_custom_plan; SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off",
    )
    .execute(tx)
    .await?;
    Ok(())
}

/// Back to the session's own planner settings (those an operator set for the server,
/// role or database, or the connection's startup options) after
/// [`planned_for_arguments`]: settings the caller made for its transaction, or a `SET`
/// the session ran (PgBouncer's `connect_query`, say), are not restored.
pub async fn cached_plans(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(
        "SET LOCAL plan_cache_mode TO DEFAULT; SET LOCAL enable_hashjoin TO DEFAULT; SET LOCAL enable_mergejoin TO DEFAULT",
    )
    .execute(tx)
    .await?;
    Ok(())
}

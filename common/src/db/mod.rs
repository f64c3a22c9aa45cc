//! The pool, migrations, and one module per table group; all SQL of a table lives in
//! its module (the job queue's SQL lives in `queue`).

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

use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::config::Settings;

/// Our migrations, embedded in the binaries.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// A pool whose connections are made lazily, so a process starts (and can answer
/// `/health`) while the database is still coming up.
/// The pool jobs run their own statements on: as [`pool`], with `statement_timeout`
/// (`JOB_STATEMENT_TIMEOUT_MS`, 60 s). A run that overruns its kind's timeout is dropped
/// by the worker, but Postgres would go on running (or waiting for a lock with) the
/// statement it was in, holding its locks; this ends such a statement on the server.
pub fn job_pool(settings: &Settings) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = settings.database_url.expose().parse()?;
    let statement_timeout = settings.jobs.statement_timeout.as_millis().to_string();
    Ok(PgPoolOptions::new()
        .max_connections(settings.database_max_connections)
        .acquire_timeout(settings.database_acquire_timeout)
        .connect_lazy_with(
            options.application_name("rsolv-jobs").options([("statement_timeout", statement_timeout.as_str())]),
        ))
}

pub fn pool(settings: &Settings) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = settings.database_url.expose().parse()?;
    Ok(PgPoolOptions::new()
        .max_connections(settings.database_max_connections)
        .acquire_timeout(settings.database_acquire_timeout)
        .connect_lazy_with(options.application_name("rsolv")))
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

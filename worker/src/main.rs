//! `rsolv-worker`: applies migrations, runs every job kind's worker, and drains on
//! SIGTERM or SIGINT.

use std::sync::Arc;

use common::config::Settings;
use common::jobs::{self, JobContext};
use common::{db, telemetry};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let settings = Settings::from_env()?;
    telemetry::init(settings.log_format);
    let pool = db::pool(&settings)?;
    db::migrate(&pool).await?;
    let ctx = JobContext { pool, settings: Arc::new(settings) };
    jobs::run_workers(ctx, shutdown_signal()).await
}

async fn shutdown_signal() {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

//! `rsolv-api`: applies migrations, then serves the HTTP API on `BIND_ADDR`.

use std::net::TcpListener;
use std::sync::Arc;

use api::startup::Application;
use common::config::Settings;
use common::{db, telemetry};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    common::failpoints_from_env();
    let settings = Settings::from_env(&common::jobs::kinds())?;
    let _telemetry = telemetry::init(settings.log_format, "rsolv-api", settings.otlp_endpoint.as_deref());
    let pool = db::pool(&settings)?;
    db::apply_migrations(&settings, &pool).await?;
    let kinds = common::jobs::kinds().into_iter().map(|(kind, _)| kind).collect();
    common::queue::admin::spawn_gauges(pool.clone(), kinds, std::time::Duration::from_secs(5));
    let listener = TcpListener::bind(settings.bind_addr)?;
    let addr = settings.bind_addr;
    let app = Application::build(listener, pool, Arc::new(settings))?;
    tracing::info!(%addr, "rsolv-api listening");
    app.server().await?;
    Ok(())
}

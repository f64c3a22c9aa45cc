//! `rsolv-worker`: runs every job kind's worker and the cron schedules, and drains on
//! SIGTERM or SIGINT. A few subcommands serve people and tests:
//!
//! ```text
//! rsolv-worker                      run the workers (applies migrations first)
//! rsolv-worker migrate              apply migrations and exit
//! rsolv-worker seed                 create one demo customer per domain state, print their keys (*)
//! rsolv-worker simulate-webhook TYPE --customer EMAIL|ID [--url URL] [--status S]
//!                                   [--cancel-at-period-end] [--invoice ID] [--event-id ID]
//!                                   sign and post a realistic Stripe event, like `stripe trigger` (*)
//! rsolv-worker jobs queues | dead [QUEUE] | show ID | redrive ID | redrive-all QUEUE | discard ID | cancel ID
//!                                   inspect and steer the queues (as the admin API does)
//! rsolv-worker start-sequence NAME --customer EMAIL|ID
//!                                   schedule an email sequence (expiring_trial, re_engagement, …)
//! rsolv-worker credits grant|revoke --customer EMAIL|ID --amount N --reason TEXT [--key KEY]
//!                                   adjust credits through the ledger, on the audit log
//! rsolv-worker issue-key --customer EMAIL|ID --reason TEXT
//!                                   a new API key for a customer who lost theirs (printed once)
//! rsolv-worker audit                the newest operator actions
//! rsolv-worker reconcile [--customer EMAIL|ID]
//!                                   compare with Stripe now and heal (as the nightly job does)
//! rsolv-worker verify [--customer EMAIL|ID]
//!                                   check every money invariant; exits 1 naming each violation
//! ```
//!
//! (*) With the `demo` feature (on by default): they build customers and events through
//! `rsolv-common`'s `testing` feature. A production image can leave them out with
//! `--no-default-features`.

mod cli;
mod credits;
mod metrics_http;
mod ops;
#[cfg(feature = "demo")]
mod simulate;

use std::sync::Arc;

use common::config::Settings;
use common::jobs::{self, JobContext};
use common::{db, telemetry};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    common::failpoints_from_env();
    let settings = Settings::from_env(&jobs::kinds())?;
    let _telemetry = telemetry::init(settings.log_format, "rsolv-worker", settings.otlp_endpoint.as_deref());
    let pool = db::pool(&settings)?;
    db::apply_migrations(&settings, &pool).await?;
    match args.first().map(String::as_str) {
        None | Some("run") => {
            if let Some(addr) = settings.metrics_addr {
                match metrics_http::serve(addr, settings.metrics_token.clone()) {
                    Ok(()) => tracing::info!(%addr, "metrics at /metrics"),
                    Err(error) => tracing::warn!(%error, %addr, "metrics are not served"),
                }
            }
            let kinds = jobs::kinds().into_iter().map(|(kind, _)| kind).collect();
            common::queue::admin::spawn_gauges(pool.clone(), kinds, std::time::Duration::from_secs(5));
            let job_pool = db::job_pool(&settings)?;
            db::check_job_sessions(&settings, &job_pool).await?;
            let ctx = JobContext::new(job_pool, Arc::new(settings))?;
            jobs::run_workers(ctx, shutdown_signal()).await
        }
        Some("migrate") => {
            println!("migrations applied");
            Ok(())
        }
        #[cfg(feature = "demo")]
        Some("seed") => seed(&pool, &settings).await,
        #[cfg(feature = "demo")]
        Some("simulate-webhook") => simulate::run(&pool, &settings, &args[1..]).await,
        Some("start-sequence") => start_sequence(&pool, &settings, &args[1..]).await,
        Some("jobs") => ops::run(&pool, &args[1..]).await,
        Some("credits") => credits::run(&pool, &args[1..]).await,
        Some("issue-key") => credits::issue_key(&pool, &args[1..]).await,
        Some("audit") => credits::audit(&pool).await,
        Some("verify") => verify(&pool, &args[1..]).await,
        Some("reconcile") => reconcile(pool, settings, &args[1..]).await,
        Some(other) => Err(format!(
            "unknown command {other:?}: expected run, migrate, seed, simulate-webhook, start-sequence, jobs, \
             credits, issue-key, audit, reconcile or verify"
        )
        .into()),
    }
}

#[cfg(feature = "demo")]
async fn seed(pool: &sqlx::PgPool, settings: &Settings) -> Result<(), Error> {
    use common::domain::Email;
    use common::factories::{self, CustomerState};

    let run = &uuid::Uuid::new_v4().simple().to_string()[..6];
    println!("{:<28} {:<46} api key", "state", "email");
    for state in CustomerState::ALL {
        let email = Email::parse(&format!("{}-{run}@example.com", state.name()))?;
        let seeded = factories::create(pool, settings, state, email).await?;
        println!("{:<28} {:<46} {}", state.name(), seeded.email, seeded.api_key.expose());
    }
    Ok(())
}

async fn verify(pool: &sqlx::PgPool, args: &[String]) -> Result<(), Error> {
    let customer = match cli::flag(args, "--customer") {
        Some(who) => Some(cli::find_customer(pool, who).await?.id),
        None => None,
    };
    let violations = common::verify::money_invariants(pool, customer).await?;
    if violations.is_empty() {
        println!("every money invariant holds");
        return Ok(());
    }
    for violation in &violations {
        eprintln!("VIOLATION {violation}");
    }
    eprintln!("{} violation(s)", violations.len());
    std::process::exit(1);
}

async fn reconcile(pool: sqlx::PgPool, settings: Settings, args: &[String]) -> Result<(), Error> {
    let customers = match cli::flag(args, "--customer") {
        Some(who) => vec![cli::find_customer(&pool, who).await?.id],
        None => db::customers::with_stripe_customer(&pool).await?,
    };
    let ctx = JobContext::new(pool.clone(), Arc::new(settings))?;
    let actor = credits::actor();
    let mut found = 0;
    let mut failed = 0;
    for customer_id in customers {
        // One customer Stripe or the database cannot answer for now does not stop the rest.
        let report = match jobs::reconcile_customer(&ctx, customer_id).await {
            Ok(report) => report,
            Err(error) => {
                eprintln!("{customer_id} FAILED     {error}");
                failed += 1;
                continue;
            }
        };
        for drift in &report.drift {
            let state = if drift.healed { "healed" } else { "NOT HEALED" };
            println!("{customer_id} {state:<10} {:<32} {}", drift.kind, drift.detail);
        }
        found += report.drift.len();
        let detail = serde_json::json!({ "drift": report.drift.len() });
        db::audit::record(&pool, &actor, "reconcile", &format!("customer:{customer_id}"), None, &detail).await?;
    }
    println!("{found} finding(s)");
    if failed > 0 {
        return Err(format!("{failed} customer(s) could not be reconciled; run again").into());
    }
    Ok(())
}

async fn start_sequence(pool: &sqlx::PgPool, settings: &Settings, args: &[String]) -> Result<(), Error> {
    let names: Vec<_> = common::email::sequences::ALL.iter().map(|s| s.name).collect();
    let usage = format!("usage: start-sequence NAME --customer EMAIL|ID (NAME: {})", names.join(", "));
    let sequence = args.first().and_then(|n| common::email::sequences::find(n)).ok_or(usage.clone())?;
    let who = cli::flag(args, "--customer").ok_or(usage)?;
    if settings.email.is_none() {
        return Err("email is off (SMTP_URL is unset): nothing would send the steps; set SMTP_URL and run again".into());
    }
    let customer = cli::find_customer(pool, who).await?;
    let mut tx = pool.begin().await?;
    let occurrence = new_occurrence();
    common::jobs::SendEmailStep::schedule(
        &mut tx,
        customer.id,
        sequence,
        chrono::Utc::now(),
        &occurrence,
        serde_json::json!({}),
    )
    .await?;
    tx.commit().await?;
    println!("{} scheduled for {} ({} steps)", sequence.name, customer.email, sequence.steps.len());
    Ok(())
}

/// Each start of a sequence is its own occurrence, so a sequence can run again later.
fn new_occurrence() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

async fn shutdown_signal() {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

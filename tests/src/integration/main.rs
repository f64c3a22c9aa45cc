//! Integration tests: the real API on a random port, real workers, real Postgres, each
//! test on a fresh database of its own. One test binary, one module per area.

mod helpers;

mod abuse;
mod api_keys;
mod billing;
mod browser;
mod chaos;
mod dashboard;
mod dashboard_browser;
mod email;
mod errors;
mod fleet;
mod group_commit;
mod idempotency;
mod jobs;
mod money;
mod onboarding;
mod ops;
mod otel;
mod pgbouncer;
mod schema_fuzz;
mod simulation;
mod usage;
mod worker_processes;

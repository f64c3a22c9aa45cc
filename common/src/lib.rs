//! RSOLV's shared core: the domain, configuration, database access, the credit ledger,
//! the job backbone and the job kinds. `api` and `worker` are thin binaries over it.

pub mod clock;
pub mod coalesce;
pub mod config;
pub mod correlation;
pub mod db;
pub mod domain;
pub mod email;
#[cfg(feature = "testing")]
pub mod factories;
pub mod jobs;
pub mod ledger;
pub mod operator;
pub mod queue;
pub mod stripe;
pub mod telemetry;
pub mod verify;

/// Configures the failpoints named in `FAILPOINTS` (`name=action;…`), so crash tests can
/// stop a real process at a chosen step. Only builds with the `failpoints` feature
/// (the test suite's) have failpoints; elsewhere this does nothing.
pub fn failpoints_from_env() {
    #[cfg(feature = "failpoints")]
    std::mem::forget(fail::FailScenario::setup());
}

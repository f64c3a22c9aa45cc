//! RSOLV's shared core: the domain, configuration, database access, the credit ledger,
//! the job backbone and the job kinds. `api` and `worker` are thin binaries over it.

pub mod config;
pub mod db;
pub mod domain;
pub mod email;
pub mod factories;
pub mod jobs;
pub mod ledger;
pub mod operator;
pub mod queue;
pub mod stripe;
pub mod telemetry;
pub mod verify;

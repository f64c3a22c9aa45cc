//! The RSOLV HTTP API: parses, authenticates, enqueues, answers. No business rule
//! lives here; those are in `common`.

pub mod admin_auth;
pub mod auth;
pub mod browser;
pub mod dashboard_auth;
pub mod edge;
pub mod errors;
pub mod extract;
pub mod fields;
pub mod idempotency;
pub mod job_failure;
pub mod openapi;
pub mod rate_limit;
pub mod request_id;
pub mod routes;
pub mod security_headers;
pub mod startup;
pub mod url;

//! The RSOLV HTTP API: parses, authenticates, enqueues, answers. No business rule
//! lives here; those are in `common`.

pub mod auth;
pub mod errors;
pub mod extract;
pub mod routes;
pub mod startup;

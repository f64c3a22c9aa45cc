//! One file per resource.

pub mod admin;
pub mod admin_page;
pub mod api_keys;
pub mod billing;
pub mod customers;
pub mod email;
pub mod health;
pub mod metrics;
pub mod onboarding;
pub mod usage;
pub mod webhooks;

//! One file per resource.

pub mod billing;
pub mod customers;
pub mod email;
pub mod health;
pub mod onboarding;
pub mod usage;
pub mod webhooks;

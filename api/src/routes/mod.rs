//! One file per resource.

pub mod customers;
pub mod health;
pub mod onboarding;
pub mod usage;

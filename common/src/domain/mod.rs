//! The domain: plain types and rules, parsed at the edge so that the rest of the code
//! can only hold valid values ("parse, don't validate").
//!
//! This module imports nothing of ours and no I/O crate: no sqlx, actix, stripe or lettre.

mod api_key;
mod customer;
mod email;
mod error_code;
mod integer;
mod ledger;
pub mod text;

pub use api_key::{ApiKey, ApiKeyHash, MAX_LIVE_KEYS};
pub use customer::{CustomerName, SubscriptionState, SubscriptionType, Warning};
pub use email::Email;
pub use error_code::ErrorCode;
pub use integer::integral;
pub use ledger::LedgerSource;

/// A reason a value could not be parsed; the message is meant for the API client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

impl ParseError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

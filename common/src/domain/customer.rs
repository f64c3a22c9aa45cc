use serde::{Deserialize, Serialize};

use super::ParseError;

/// A customer's display name: a line of text of at most 100 characters
/// ([`super::text`]), stored trimmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CustomerName(String);

const NAME_MAX_CHARS: usize = 100;

impl CustomerName {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let trimmed = super::text::line(raw, NAME_MAX_CHARS).ok_or_else(|| {
            ParseError::new(format!(
                "name must be 1 to {NAME_MAX_CHARS} characters, not blank, without control or invisible characters"
            ))
        })?;
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for CustomerName {
    type Error = ParseError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<CustomerName> for String {
    fn from(value: CustomerName) -> Self {
        value.0
    }
}

/// The plan tier (`customers.subscription_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionType {
    Trial,
    PayAsYouGo,
    Pro,
}

impl SubscriptionType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trial => "trial",
            Self::PayAsYouGo => "pay_as_you_go",
            Self::Pro => "pro",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        match raw {
            "trial" => Ok(Self::Trial),
            "pay_as_you_go" => Ok(Self::PayAsYouGo),
            "pro" => Ok(Self::Pro),
            other => Err(ParseError::new(format!("unknown subscription type {other:?}"))),
        }
    }
}

/// Stripe's status of the Pro subscription (`customers.subscription_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionState {
    Incomplete,
    IncompleteExpired,
    Trialing,
    Active,
    PastDue,
    Canceled,
    Unpaid,
    Paused,
}

impl SubscriptionState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Incomplete => "incomplete",
            Self::IncompleteExpired => "incomplete_expired",
            Self::Trialing => "trialing",
            Self::Active => "active",
            Self::PastDue => "past_due",
            Self::Canceled => "canceled",
            Self::Unpaid => "unpaid",
            Self::Paused => "paused",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        Ok(match raw {
            "incomplete" => Self::Incomplete,
            "incomplete_expired" => Self::IncompleteExpired,
            "trialing" => Self::Trialing,
            "active" => Self::Active,
            "past_due" => Self::PastDue,
            "canceled" => Self::Canceled,
            "unpaid" => Self::Unpaid,
            "paused" => Self::Paused,
            other => {
                return Err(ParseError::new(format!("unknown subscription state {other:?}")));
            }
        })
    }
}

/// What the usage summary warns a customer about; all derived, none stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Warning {
    /// Balance 0 and no payment method: fixes are refused until a card is added.
    Blocked,
    /// One credit left and no payment method to pay for the next fix.
    LowBalance,
    /// The last Pro invoice failed.
    PaymentPastDue,
    /// Pro ends at the end of the current period.
    CancellationScheduled,
}

impl Warning {
    pub fn derive(
        balance: i64,
        has_payment_method: bool,
        state: Option<SubscriptionState>,
        cancel_at_period_end: bool,
    ) -> Vec<Warning> {
        let mut warnings = Vec::new();
        if !has_payment_method {
            match balance {
                0 => warnings.push(Warning::Blocked),
                1 => warnings.push(Warning::LowBalance),
                _ => {}
            }
        }
        if state == Some(SubscriptionState::PastDue) {
            warnings.push(Warning::PaymentPastDue);
        }
        if cancel_at_period_end {
            warnings.push(Warning::CancellationScheduled);
        }
        warnings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(CustomerName::parse("  Ada  ").unwrap().as_str(), "Ada");
        assert!(CustomerName::parse("   ").is_err());
        assert!(CustomerName::parse(&"x".repeat(101)).is_err());
        assert!(CustomerName::parse(&"é".repeat(100)).is_ok());
        assert!(CustomerName::parse("Ada\u{0}").is_err());
    }

    #[test]
    fn blocked_is_derived_from_balance_and_payment_method() {
        assert_eq!(Warning::derive(0, false, None, false), vec![Warning::Blocked]);
        assert_eq!(Warning::derive(0, true, None, false), vec![]);
        assert_eq!(Warning::derive(1, false, None, false), vec![Warning::LowBalance]);
        assert_eq!(
            Warning::derive(45, true, Some(SubscriptionState::PastDue), true),
            vec![Warning::PaymentPastDue, Warning::CancellationScheduled]
        );
    }

    #[test]
    fn states_round_trip_through_their_names() {
        for s in ["incomplete", "trialing", "active", "past_due", "canceled", "unpaid", "paused"] {
            assert_eq!(SubscriptionState::parse(s).unwrap().as_str(), s);
        }
        for t in ["trial", "pay_as_you_go", "pro"] {
            assert_eq!(SubscriptionType::parse(t).unwrap().as_str(), t);
        }
    }
}

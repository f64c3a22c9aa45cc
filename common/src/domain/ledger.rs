use serde::{Deserialize, Serialize};

use super::ParseError;

/// Why a ledger entry was posted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerSource {
    TrialSignup,
    TrialBillingAdded,
    ProSubscriptionPayment,
    Purchased,
    FixDeployed,
    /// An operator's grant or revoke, with a reason, on the audit log.
    AdminAdjustment,
}

impl LedgerSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TrialSignup => "trial_signup",
            Self::TrialBillingAdded => "trial_billing_added",
            Self::ProSubscriptionPayment => "pro_subscription_payment",
            Self::Purchased => "purchased",
            Self::FixDeployed => "fix_deployed",
            Self::AdminAdjustment => "admin_adjustment",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        Ok(match raw {
            "trial_signup" => Self::TrialSignup,
            "trial_billing_added" => Self::TrialBillingAdded,
            "pro_subscription_payment" => Self::ProSubscriptionPayment,
            "purchased" => Self::Purchased,
            "fix_deployed" => Self::FixDeployed,
            "admin_adjustment" => Self::AdminAdjustment,
            other => return Err(ParseError::new(format!("unknown ledger source {other:?}"))),
        })
    }
}

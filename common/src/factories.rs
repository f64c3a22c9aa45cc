//! The nine customer states of the domain spec, built through the same ledger and
//! customer writes the jobs use (so every invariant holds), for tests and `seed`.
//!
//! Stripe references are placeholders (`cus_seed_…`): these customers are for reading
//! and for flows that do not call Stripe.

use sqlx::PgPool;
use uuid::Uuid;

use crate::config::Settings;
use crate::db::{self, customers::Observed};
use crate::domain::{ApiKey, CustomerName, Email, LedgerSource, SubscriptionState};
use crate::ledger::{self, LedgerError, Posting};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CustomerState {
    Trial,
    TrialWithBilling,
    TrialExhausted,
    PayAsYouGo,
    Pro,
    ProPartlyUsed,
    ProPastDue,
    ProCancellationScheduled,
    ProCancelled,
}

impl CustomerState {
    pub const ALL: [CustomerState; 9] = [
        Self::Trial,
        Self::TrialWithBilling,
        Self::TrialExhausted,
        Self::PayAsYouGo,
        Self::Pro,
        Self::ProPartlyUsed,
        Self::ProPastDue,
        Self::ProCancellationScheduled,
        Self::ProCancelled,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Trial => "trial",
            Self::TrialWithBilling => "trial-with-billing",
            Self::TrialExhausted => "trial-exhausted",
            Self::PayAsYouGo => "payg",
            Self::Pro => "pro",
            Self::ProPartlyUsed => "pro-partly-used",
            Self::ProPastDue => "pro-past-due",
            Self::ProCancellationScheduled => "pro-cancellation-scheduled",
            Self::ProCancelled => "pro-cancelled",
        }
    }

    fn has_card(self) -> bool {
        !matches!(self, Self::Trial | Self::TrialExhausted)
    }

    fn is_pro(self) -> bool {
        matches!(
            self,
            Self::Pro | Self::ProPartlyUsed | Self::ProPastDue | Self::ProCancellationScheduled | Self::ProCancelled
        )
    }
}

#[derive(Debug)]
pub struct Seeded {
    pub customer_id: Uuid,
    pub email: Email,
    pub api_key: ApiKey,
    pub state: CustomerState,
}

#[derive(Debug, thiserror::Error)]
pub enum FactoryError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("email {0} is taken")]
    EmailTaken(Email),
}

pub async fn create(
    pool: &PgPool,
    settings: &Settings,
    state: CustomerState,
    email: Email,
) -> Result<Seeded, FactoryError> {
    let id = Uuid::new_v4();
    let tag = id.simple().to_string();
    let key = ApiKey::generate();
    let name = CustomerName::parse(&format!("Demo {}", state.name())).expect("a valid name");
    let credits = &settings.credits;
    let mut tx = pool.begin().await?;
    if !db::customers::insert_trial(&mut *tx, id, &name, &email, Some("seed")).await? {
        return Err(FactoryError::EmailTaken(email));
    }
    db::api_keys::insert(&mut *tx, id, "default", &key.hash(), &key.display_prefix()).await?;
    post_credits(&mut tx, id, credits.trial_signup, LedgerSource::TrialSignup, format!("trial_signup:{id}")).await?;

    if state.has_card() {
        add_card(&mut tx, id, &tag, settings).await?;
    }
    let to_use = match state {
        CustomerState::Trial | CustomerState::TrialWithBilling => 0,
        CustomerState::TrialExhausted => credits.trial_signup,
        _ => credits.trial_signup + credits.billing_added,
    };
    for n in 0..to_use {
        use_fix(&mut tx, id, &format!("seed-fix-{n}")).await?;
    }
    if state.is_pro() {
        subscribe_pro(&mut tx, id, &tag, state, settings).await?;
    }
    tx.commit().await?;
    Ok(Seeded { customer_id: id, email, api_key: key, state })
}

/// A Stripe customer and card (placeholders), and the credits adding billing grants.
async fn add_card(tx: &mut sqlx::PgConnection, id: Uuid, tag: &str, settings: &Settings) -> Result<(), FactoryError> {
    db::customers::set_stripe_customer(&mut *tx, id, &format!("cus_seed_{tag}")).await?;
    db::customers::set_payment_method(&mut *tx, id, &format!("pm_seed_{tag}"), chrono::Utc::now()).await?;
    let credits = settings.credits.billing_added;
    post_credits(tx, id, credits, LedgerSource::TrialBillingAdded, format!("trial_billing_added:{id}")).await
}

/// A Pro subscription with its first paid invoice, then the state's own turn: partly
/// used, past due, cancellation scheduled or ended.
async fn subscribe_pro(
    tx: &mut sqlx::PgConnection,
    id: Uuid,
    tag: &str,
    state: CustomerState,
    settings: &Settings,
) -> Result<(), FactoryError> {
    let subscription = format!("sub_seed_{tag}");
    let period_end = chrono::Utc::now().timestamp() + 30 * 86_400;
    let cancel_later = state == CustomerState::ProCancellationScheduled;
    db::customers::apply_subscription(
        &mut *tx,
        id,
        &subscription,
        SubscriptionState::Active,
        cancel_later,
        Some(period_end),
        Observed::now(1),
    )
    .await?;
    let invoice_key = format!("pro_invoice:in_seed_{tag}");
    post_credits(tx, id, settings.credits.pro_invoice, LedgerSource::ProSubscriptionPayment, invoice_key).await?;
    match state {
        CustomerState::ProPartlyUsed => {
            for n in 0..15 {
                use_fix(tx, id, &format!("seed-pro-fix-{n}")).await?;
            }
        }
        CustomerState::ProPastDue => {
            db::customers::apply_past_due(&mut *tx, id, Observed::now(2)).await?;
        }
        CustomerState::ProCancelled => {
            db::customers::apply_subscription_ended(&mut *tx, id, &subscription, Observed::now(3)).await?;
        }
        _ => {}
    }
    Ok(())
}

async fn post_credits(
    tx: &mut sqlx::PgConnection,
    customer_id: Uuid,
    amount: i64,
    source: LedgerSource,
    idempotency_key: String,
) -> Result<(), FactoryError> {
    if amount != 0 {
        let posting =
            Posting { customer_id, amount, source, metadata: serde_json::json!({ "seed": true }), idempotency_key };
        ledger::post(tx, &posting).await?;
    }
    Ok(())
}

async fn use_fix(tx: &mut sqlx::PgConnection, customer_id: Uuid, fix_id: &str) -> Result<(), FactoryError> {
    let posting = Posting {
        customer_id,
        amount: -1,
        source: LedgerSource::FixDeployed,
        metadata: serde_json::json!({ "fix_id": fix_id, "seed": true }),
        idempotency_key: crate::jobs::RecordUsage::debit_key(customer_id, fix_id),
    };
    if let ledger::Posted::Posted { entry_id, .. } = ledger::post(tx, &posting).await? {
        db::usage::record_consumed(&mut *tx, customer_id, fix_id, "demo/repo", entry_id).await?;
    }
    Ok(())
}

//! What operators do to money, on the record.
//!
//! An operator moves credits only through the ledger (source `admin_adjustment`), with
//! a reason, and the audit log line is written in the same transaction as the entry:
//! there is no adjustment without its audit line, nor the reverse. An adjustment posts
//! once per idempotency key, however often it is sent (the admin API passes the
//! request's `Idempotency-Key`), and never takes a balance below zero.
//!
//! Support also issues API keys: a customer whose only key was lost (the onboarding
//! answer that carried it never arrived) gets a new one, shown once to the operator,
//! within the same live-key cap, on the audit log.

use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::db;
use crate::domain::{ApiKey, LedgerSource, MAX_LIVE_KEYS};
use crate::ledger::{self, LedgerError, Posted, Posting};

/// The largest single adjustment: a typo should not mint a fortune.
pub const MAX_ADJUSTMENT: i64 = 1_000_000;
const REASON_MAX_CHARS: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Adjusted {
    pub entry_id: i64,
    pub amount: i64,
    pub balance_after: i64,
    /// The key had posted before: nothing moved now.
    pub duplicate: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AdjustError {
    #[error("{0}")]
    Invalid(String),
    #[error("no customer {0}")]
    CustomerNotFound(Uuid),
    #[error("the balance is {balance}: revoking {wanted} would take it below zero")]
    WouldGoNegative { balance: i64, wanted: i64 },
    #[error("this idempotency key adjusted by {posted} already, not {wanted}")]
    KeyReused { posted: i64, wanted: i64 },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Grants (`amount > 0`) or revokes (`amount < 0`) credits by an operator's hand.
pub async fn adjust_credits(
    pool: &PgPool,
    actor: &str,
    customer_id: Uuid,
    amount: i64,
    reason: &str,
    key: Option<&str>,
) -> Result<Adjusted, AdjustError> {
    if amount == 0 || amount.unsigned_abs() > MAX_ADJUSTMENT as u64 {
        return Err(AdjustError::Invalid(format!("amount must be non-zero and at most {MAX_ADJUSTMENT} either way")));
    }
    let Some(reason) = crate::domain::text::line(reason, REASON_MAX_CHARS) else {
        return Err(AdjustError::Invalid(format!("reason must be 1 to {REASON_MAX_CHARS} printable characters")));
    };
    let key = match key {
        Some(key) => format!("admin_adjustment:{customer_id}:{key}"),
        None => format!("admin_adjustment:{customer_id}:{}", Uuid::new_v4()),
    };
    let posting = Posting {
        customer_id,
        amount,
        source: LedgerSource::AdminAdjustment,
        metadata: json!({ "reason": reason, "actor": actor }),
        idempotency_key: key,
    };
    let mut tx = pool.begin().await?;
    let posted = ledger::post(&mut tx, &posting).await.map_err(|e| match e {
        LedgerError::CustomerNotFound(id) => AdjustError::CustomerNotFound(id),
        LedgerError::Database(e) => AdjustError::Database(e),
    })?;
    match posted {
        Posted::Posted { entry_id, balance_after } => {
            let detail = json!({ "amount": amount, "entry_id": entry_id, "balance_after": balance_after });
            let target = format!("customer:{customer_id}");
            db::audit::record(&mut *tx, actor, "adjust_credits", &target, Some(reason), &detail).await?;
            tx.commit().await?;
            tracing::info!(%customer_id, amount, entry_id, actor, "credits adjusted by an operator");
            Ok(Adjusted { entry_id, amount, balance_after, duplicate: false })
        }
        Posted::AlreadyPosted { entry_id } => {
            let entry = sqlx::query!("SELECT amount, balance_after FROM credit_ledger WHERE id = $1", entry_id)
                .fetch_one(&mut *tx)
                .await?;
            let (posted, balance_after) = (entry.amount, entry.balance_after);
            if posted != amount {
                return Err(AdjustError::KeyReused { posted, wanted: amount });
            }
            Ok(Adjusted { entry_id, amount, balance_after, duplicate: true })
        }
        Posted::InsufficientCredits { balance } => Err(AdjustError::WouldGoNegative { balance, wanted: amount }),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IssueKeyError {
    #[error("no customer {0}")]
    CustomerNotFound(Uuid),
    #[error("the customer has {MAX_LIVE_KEYS} live keys: revoke one first")]
    TooManyKeys,
    #[error("reason must be 1 to {REASON_MAX_CHARS} printable characters")]
    Invalid,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Issues a new API key to `customer_id` by an operator's hand; the raw key is in the
/// answer only (the database and the audit log hold its prefix).
pub async fn issue_api_key(
    pool: &PgPool,
    actor: &str,
    customer_id: Uuid,
    reason: &str,
) -> Result<(db::api_keys::KeyInfo, ApiKey), IssueKeyError> {
    let Some(reason) = crate::domain::text::line(reason, REASON_MAX_CHARS) else {
        return Err(IssueKeyError::Invalid);
    };
    let mut tx = pool.begin().await?;
    if !db::customers::exists(&mut *tx, customer_id).await? {
        return Err(IssueKeyError::CustomerNotFound(customer_id));
    }
    let key = ApiKey::generate();
    let created = db::api_keys::create(
        &mut tx,
        customer_id,
        "issued by support",
        &key.hash(),
        &key.display_prefix(),
        MAX_LIVE_KEYS,
        None,
    )
    .await?;
    let db::api_keys::KeyCreated::New(info) = created else { return Err(IssueKeyError::TooManyKeys) };
    let detail = json!({ "key_id": info.id, "prefix": info.prefix });
    db::audit::record(&mut *tx, actor, "issue_api_key", &format!("customer:{customer_id}"), Some(reason), &detail)
        .await?;
    tx.commit().await?;
    tracing::info!(%customer_id, key_id = %info.id, actor, "API key issued by an operator");
    Ok((info, key))
}

//! The only code that moves a credit balance.
//!
//! A posting is one ledger entry and one balance move, in the caller's transaction.
//! The customer row is locked first, so postings of one customer are serialized and a
//! posting sees every entry committed before it; the balance then moves by
//! `credit_balance + amount` (never from a value read earlier), only if no entry with
//! the idempotency key exists and only if the balance stays non-negative. The unique
//! index on the key and the CHECK on the balance stand behind that.

use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::LedgerSource;

#[derive(Debug, Clone)]
pub struct Posting {
    pub customer_id: Uuid,
    /// Signed: credits added (> 0) or consumed (< 0).
    pub amount: i64,
    pub source: LedgerSource,
    pub metadata: Value,
    /// Posts at most once, however often the posting is attempted.
    pub idempotency_key: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Posted {
    Posted {
        entry_id: i64,
        balance_after: i64,
    },
    /// An entry with this idempotency key exists; nothing moved.
    AlreadyPosted {
        entry_id: i64,
    },
    /// The balance would go negative; nothing moved.
    InsufficientCredits {
        balance: i64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("customer {0} does not exist")]
    CustomerNotFound(Uuid),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

pub async fn post(tx: &mut PgConnection, posting: &Posting) -> Result<Posted, LedgerError> {
    let locked: Option<i64> =
        sqlx::query_scalar!("SELECT credit_balance FROM customers WHERE id = $1 FOR UPDATE", posting.customer_id,)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(balance_under_lock) = locked else {
        return Err(LedgerError::CustomerNotFound(posting.customer_id));
    };
    let outcome = sqlx::query!(
        "WITH existing AS (
             SELECT id FROM credit_ledger WHERE idempotency_key = $4),
         moved AS (
             UPDATE customers SET credit_balance = credit_balance + $2, updated_at = now()
             WHERE id = $1 AND credit_balance + $2 >= 0 AND NOT EXISTS (SELECT 1 FROM existing)
             RETURNING credit_balance),
         entry AS (
             INSERT INTO credit_ledger (customer_id, amount, balance_after, source, metadata, idempotency_key)
             SELECT $1, $2, credit_balance, $3, $5, $4 FROM moved
             RETURNING id, balance_after)
         SELECT (SELECT id FROM entry) AS posted_id, (SELECT balance_after FROM entry) AS balance_after,
                (SELECT id FROM existing) AS existing_id",
        posting.customer_id,
        posting.amount,
        posting.source.as_str(),
        &posting.idempotency_key,
        &posting.metadata,
    )
    .fetch_one(&mut *tx)
    .await?;
    Ok(match (outcome.posted_id, outcome.balance_after, outcome.existing_id) {
        (Some(entry_id), Some(balance_after), _) => {
            metrics::counter!("rsolv_ledger_postings_total", "source" => posting.source.as_str()).increment(1);
            Posted::Posted { entry_id, balance_after }
        }
        (_, _, Some(entry_id)) => Posted::AlreadyPosted { entry_id },
        // The row is locked by us, so the balance read under the lock is still current.
        _ => Posted::InsufficientCredits { balance: balance_under_lock },
    })
}

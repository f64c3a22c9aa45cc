//! Charges for fixes paid at balance 0: written down (`pending`) in the transaction that
//! decides to charge, before Stripe is called, then resolved with what Stripe did.
//!
//! | status            | meaning                                                        |
//! |-------------------|----------------------------------------------------------------|
//! | `pending`         | decided; Stripe may or may not have been called yet            |
//! | `requires_action` | Stripe wants the customer to authenticate; nothing was taken   |
//! | `succeeded`       | paid: its PaymentIntent is recorded, the fix is consumed       |
//! | `failed`          | declined or refused; the fix is refused, nothing was taken     |

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum ChargeStatus {
    Pending,
    RequiresAction,
    Succeeded,
    Failed,
}

impl ChargeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::RequiresAction => "requires_action",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }

    pub const ALL: [Self; 4] = [Self::Pending, Self::RequiresAction, Self::Succeeded, Self::Failed];

    /// Whether Stripe still has to be asked what happened.
    pub fn is_unresolved(self) -> bool {
        matches!(self, Self::Pending | Self::RequiresAction)
    }
}

#[derive(Debug, Clone)]
pub struct Charge {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub fix_id: String,
    pub repo: String,
    pub amount_cents: i64,
    pub currency: String,
    pub idempotency_key: String,
    pub status: ChargeStatus,
    pub payment_intent_id: Option<String>,
    pub failure_code: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// A checked `SELECT` of [`Charge`]s, followed by the rest of the statement.
macro_rules! select_charges {
    ($rest:literal $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            Charge,
            "SELECT id, customer_id, fix_id, repo, amount_cents, currency, idempotency_key,
                    status AS \"status: ChargeStatus\", payment_intent_id, failure_code, created_at
             FROM charges " + $rest
            $(, $arg)*
        )
    };
}

/// The customer's charges for fixes (pay as you go, and Pro beyond its credits), newest
/// first, `limit` of them older than `before` (a charge's `created_at`).
pub async fn for_customer<'e>(
    db: impl PgExecutor<'e>,
    customer_id: Uuid,
    before: Option<DateTime<Utc>>,
    limit: i64,
) -> Result<Vec<Charge>, sqlx::Error> {
    select_charges!(
        "WHERE customer_id = $1 AND ($2::timestamptz IS NULL OR created_at < $2) ORDER BY created_at DESC LIMIT $3",
        customer_id,
        before,
        limit,
    )
    .fetch_all(db)
    .await
}

/// Writes a charge down; an existing charge of the same fix is returned instead (one
/// charge per fix, whoever decided first).
pub async fn insert_pending(
    tx: &mut sqlx::PgConnection,
    customer_id: Uuid,
    fix_id: &str,
    repo: &str,
    amount_cents: i64,
    currency: &str,
) -> Result<Charge, sqlx::Error> {
    let id = Uuid::new_v4();
    sqlx::query!(
        "INSERT INTO charges (id, customer_id, fix_id, repo, amount_cents, currency, idempotency_key)
         VALUES ($1, $2, $3, $4, $5, $6, 'rsolv-charge-' || $1::uuid::text)
         ON CONFLICT (customer_id, fix_id) DO NOTHING",
        id,
        customer_id,
        fix_id,
        repo,
        amount_cents,
        currency,
    )
    .execute(&mut *tx)
    .await?;
    // Read in a new statement: a conflicting row committed meanwhile is visible here.
    find_for_fix(&mut *tx, customer_id, fix_id).await?.ok_or(sqlx::Error::RowNotFound)
}

pub async fn find_for_fix<'e>(
    db: impl PgExecutor<'e>,
    customer_id: Uuid,
    fix_id: &str,
) -> Result<Option<Charge>, sqlx::Error> {
    select_charges!("WHERE customer_id = $1 AND fix_id = $2", customer_id, fix_id).fetch_optional(db).await
}

/// Which of `(customer_ids[i], fix_ids[i])` have a charge, whatever its state.
pub async fn fixes_with_charges<'e>(
    db: impl PgExecutor<'e>,
    customer_ids: &[Uuid],
    fix_ids: &[String],
) -> Result<Vec<(Uuid, String)>, sqlx::Error> {
    let rows = sqlx::query!(
        "SELECT c.customer_id, c.fix_id FROM charges c
         JOIN unnest($1::uuid[], $2::text[]) AS f(customer_id, fix_id)
           ON c.customer_id = f.customer_id AND c.fix_id = f.fix_id",
        customer_ids,
        fix_ids,
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.customer_id, r.fix_id)).collect())
}

/// The charge, locked for its settlement; fails at once with Postgres's
/// `lock_not_available` if another transaction holds it.
pub async fn lock_nowait<'e>(db: impl PgExecutor<'e>, id: Uuid) -> Result<Option<Charge>, sqlx::Error> {
    select_charges!("WHERE id = $1 FOR UPDATE NOWAIT", id).fetch_optional(db).await
}

/// Charges Stripe has not settled yet, oldest first (for reconciliation).
pub async fn unresolved<'e>(db: impl PgExecutor<'e>, customer_id: Option<Uuid>) -> Result<Vec<Charge>, sqlx::Error> {
    select_charges!(
        "WHERE status IN ('pending', 'requires_action') AND ($1::uuid IS NULL OR customer_id = $1)
         ORDER BY created_at",
        customer_id,
    )
    .fetch_all(db)
    .await
}

/// Records what Stripe did with a charge.
pub async fn resolve<'e>(
    db: impl PgExecutor<'e>,
    id: Uuid,
    status: ChargeStatus,
    payment_intent_id: Option<&str>,
    failure_code: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE charges SET status = $2, payment_intent_id = coalesce($3, payment_intent_id), failure_code = $4,
             resolved_at = CASE WHEN $2 IN ('succeeded', 'failed') THEN now() END
         WHERE id = $1",
        id,
        status as _,
        payment_intent_id,
        failure_code,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The PaymentIntents our charges are known by, of one customer.
pub async fn payment_intents<'e>(db: impl PgExecutor<'e>, customer_id: Uuid) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT payment_intent_id AS "payment_intent_id!" FROM charges WHERE customer_id = $1 AND payment_intent_id IS NOT NULL"#,
        customer_id,
    )
    .fetch_all(db)
    .await
}

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::domain::{CustomerName, Email};

/// Inserts a trial customer; `false` when the id or the email is already taken.
pub async fn insert_trial<'e>(
    db: impl PgExecutor<'e>,
    id: Uuid,
    name: &CustomerName,
    email: &Email,
    source: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO customers (id, name, email, source) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .bind(name.as_str())
    .bind(email.as_str())
    .bind(source)
    .execute(db)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

pub async fn exists<'e>(db: impl PgExecutor<'e>, id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM customers WHERE id = $1)")
        .bind(id)
        .fetch_one(db)
        .await
}

pub async fn email_taken<'e>(db: impl PgExecutor<'e>, email: &Email) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM customers WHERE lower(email) = $1)")
        .bind(email.as_str())
        .fetch_one(db)
        .await
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Customer {
    pub id: Uuid,
    pub name: String,
    pub email: String,
    pub subscription_type: String,
    pub subscription_state: Option<String>,
    pub cancel_at_period_end: bool,
    pub credit_balance: i64,
    pub stripe_payment_method_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl Customer {
    pub fn has_payment_method(&self) -> bool {
        self.stripe_payment_method_id.is_some()
    }
}

pub async fn find<'e>(db: impl PgExecutor<'e>, id: Uuid) -> Result<Option<Customer>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, name, email, subscription_type, subscription_state, cancel_at_period_end,
                credit_balance, stripe_payment_method_id, created_at
         FROM customers WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct LedgerEntry {
    pub id: i64,
    pub amount: i64,
    pub balance_after: i64,
    pub source: String,
    pub metadata: Value,
    pub created_at: DateTime<Utc>,
}

pub async fn recent_ledger<'e>(
    db: impl PgExecutor<'e>,
    customer_id: Uuid,
    limit: i64,
) -> Result<Vec<LedgerEntry>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, amount, balance_after, source, metadata, created_at FROM credit_ledger
         WHERE customer_id = $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(customer_id)
    .bind(limit)
    .fetch_all(db)
    .await
}

use sqlx::PgExecutor;
use uuid::Uuid;

use crate::domain::ApiKeyHash;

pub async fn insert<'e>(
    db: impl PgExecutor<'e>,
    customer_id: Uuid,
    name: &str,
    hash: &ApiKeyHash,
    prefix: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO api_keys (id, customer_id, name, key_hash, prefix) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (key_hash) DO NOTHING",
    )
    .bind(Uuid::new_v4())
    .bind(customer_id)
    .bind(name)
    .bind(hash.as_str())
    .bind(prefix)
    .execute(db)
    .await?;
    Ok(())
}

/// The customer a live (not revoked) key belongs to.
pub async fn customer_for<'e>(db: impl PgExecutor<'e>, hash: &ApiKeyHash) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT customer_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL")
        .bind(hash.as_str())
        .fetch_optional(db)
        .await
}

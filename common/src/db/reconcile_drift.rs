//! What reconciliation with Stripe found, healed or left for an operator.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct DriftRecord {
    pub id: i64,
    pub customer_id: Uuid,
    pub kind: String,
    pub detail: String,
    pub healed: bool,
    pub found_at: DateTime<Utc>,
}

pub async fn record<'e>(
    db: impl PgExecutor<'e>,
    customer_id: Uuid,
    kind: &str,
    detail: &str,
    healed: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO reconcile_drift (customer_id, kind, detail, healed) VALUES ($1, $2, $3, $4)",
        customer_id,
        kind,
        detail,
        healed,
    )
    .execute(db)
    .await?;
    Ok(())
}

pub async fn recent<'e>(db: impl PgExecutor<'e>, limit: i64) -> Result<Vec<DriftRecord>, sqlx::Error> {
    sqlx::query_as!(
        DriftRecord,
        "SELECT id, customer_id, kind, detail, healed, found_at FROM reconcile_drift ORDER BY id DESC LIMIT $1",
        limit,
    )
    .fetch_all(db)
    .await
}

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgExecutor;
use uuid::Uuid;

/// Records a Stripe event once by its id; `false` if it was recorded already.
pub async fn record<'e>(
    db: impl PgExecutor<'e>,
    event_id: &str,
    kind: &str,
    created: i64,
    payload: &Value,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query!(
        "INSERT INTO billing_events (event_id, type, stripe_created, payload)
         VALUES ($1, $2, to_timestamp($3::bigint), $4) ON CONFLICT (event_id) DO NOTHING",
        event_id,
        kind,
        created,
        payload,
    )
    .execute(db)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Locks the event's row; the time it was processed, if it was.
pub async fn lock<'e>(db: impl PgExecutor<'e>, event_id: &str) -> Result<Option<Option<DateTime<Utc>>>, sqlx::Error> {
    sqlx::query_scalar!("SELECT processed_at FROM billing_events WHERE event_id = $1 FOR UPDATE", event_id,)
        .fetch_optional(db)
        .await
}

pub async fn mark_processed<'e>(
    db: impl PgExecutor<'e>,
    event_id: &str,
    customer_id: Option<Uuid>,
    outcome: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE billing_events SET processed_at = now(), outcome = $3, customer_id = coalesce($2, customer_id)
         WHERE event_id = $1",
        event_id,
        customer_id,
        outcome,
    )
    .execute(db)
    .await?;
    Ok(())
}

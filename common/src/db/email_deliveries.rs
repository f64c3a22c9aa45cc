//! The delivery record of each email step: see `email` for the states and guarantee.

use sqlx::PgExecutor;
use uuid::Uuid;

#[derive(Debug, Clone, Copy)]
pub struct DeliveryKey<'a> {
    pub customer_id: Uuid,
    pub sequence: &'a str,
    pub step: &'a str,
    pub occurrence: &'a str,
}

/// Creates the step's record as `pending` if there is none; returns its status and
/// how many seconds ago it last changed.
pub async fn open(db: &sqlx::PgPool, key: DeliveryKey<'_>, recipient: &str) -> Result<(String, f64), sqlx::Error> {
    let created: Option<(String, f64)> = sqlx::query_as(
        "INSERT INTO email_deliveries (customer_id, sequence, step, occurrence, status, recipient)
         VALUES ($1, $2, $3, $4, 'pending', $5)
         ON CONFLICT DO NOTHING
         RETURNING status, 0::float8",
    )
    .bind(key.customer_id)
    .bind(key.sequence)
    .bind(key.step)
    .bind(key.occurrence)
    .bind(recipient)
    .fetch_optional(db)
    .await?;
    if let Some(status) = created {
        return Ok(status);
    }
    // A separate statement: one racing insert's row is invisible to the snapshot of
    // the statement that conflicted with it.
    sqlx::query_as(
        "SELECT status, extract(epoch FROM now() - updated_at)::float8 FROM email_deliveries
         WHERE customer_id = $1 AND sequence = $2 AND step = $3 AND occurrence = $4",
    )
    .bind(key.customer_id)
    .bind(key.sequence)
    .bind(key.step)
    .bind(key.occurrence)
    .fetch_one(db)
    .await
}

/// Moves the record from one of `from` to `to`; `false` if it was in another state
/// (another run holds it, or it is settled).
pub async fn transition<'e>(
    db: impl PgExecutor<'e>,
    key: DeliveryKey<'_>,
    from: &[&str],
    to: &str,
    message_id: Option<&str>,
    error: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let from: Vec<String> = from.iter().map(|s| s.to_string()).collect();
    let moved = sqlx::query(
        "UPDATE email_deliveries SET status = $6, updated_at = now(),
             message_id = coalesce($7, message_id),
             last_error = coalesce($8, last_error),
             attempts = attempts + CASE WHEN $6 = 'sending' THEN 1 ELSE 0 END,
             sent_at = CASE WHEN $6 = 'sent' THEN now() ELSE sent_at END
         WHERE customer_id = $1 AND sequence = $2 AND step = $3 AND occurrence = $4 AND status = ANY($5)",
    )
    .bind(key.customer_id)
    .bind(key.sequence)
    .bind(key.step)
    .bind(key.occurrence)
    .bind(&from)
    .bind(to)
    .bind(message_id)
    .bind(error)
    .execute(db)
    .await?
    .rows_affected();
    Ok(moved == 1)
}

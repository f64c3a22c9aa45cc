//! The delivery record of each email step: see `email` for the states and guarantee.

use sqlx::PgExecutor;
use uuid::Uuid;

/// Where one email step's delivery stands (`email_deliveries.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Recorded, not yet handed to SMTP.
    Pending,
    /// In the SMTP conversation (one run at a time).
    Sending,
    /// Accepted by the server.
    Sent,
    /// Not accepted; the step is retried.
    Failed,
    /// Refused for good.
    Rejected,
    /// A stop condition held (unsubscribed, upgraded).
    Skipped,
    /// The run stopped during the SMTP conversation: the server may have the message,
    /// so it is not sent again.
    Uncertain,
}

impl DeliveryStatus {
    pub const ALL: [Self; 7] =
        [Self::Pending, Self::Sending, Self::Sent, Self::Failed, Self::Rejected, Self::Skipped, Self::Uncertain];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Sending => "sending",
            Self::Sent => "sent",
            Self::Failed => "failed",
            Self::Rejected => "rejected",
            Self::Skipped => "skipped",
            Self::Uncertain => "uncertain",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct DeliveryKey<'a> {
    pub customer_id: Uuid,
    pub sequence: &'a str,
    pub step: &'a str,
    pub occurrence: &'a str,
}

/// Creates the step's record as `pending` if there is none; returns its status and
/// how many seconds ago it last changed.
pub async fn open(
    db: &sqlx::PgPool,
    key: DeliveryKey<'_>,
    recipient: &str,
) -> Result<(DeliveryStatus, f64), sqlx::Error> {
    let created = sqlx::query_scalar!(
        r#"INSERT INTO email_deliveries (customer_id, sequence, step, occurrence, status, recipient)
         VALUES ($1, $2, $3, $4, 'pending', $5)
         ON CONFLICT DO NOTHING
         RETURNING status AS "status: DeliveryStatus""#,
        key.customer_id,
        key.sequence,
        key.step,
        key.occurrence,
        recipient,
    )
    .fetch_optional(db)
    .await?;
    if let Some(status) = created {
        return Ok((status, 0.0));
    }
    // A separate statement: one racing insert's row is invisible to the snapshot of
    // the statement that conflicted with it.
    let existing = sqlx::query!(
        r#"SELECT status AS "status: DeliveryStatus", extract(epoch FROM now() - updated_at)::float8 AS "age!"
         FROM email_deliveries
         WHERE customer_id = $1 AND sequence = $2 AND step = $3 AND occurrence = $4"#,
        key.customer_id,
        key.sequence,
        key.step,
        key.occurrence,
    )
    .fetch_one(db)
    .await?;
    Ok((existing.status, existing.age))
}

/// Moves the record from one of `from` to `to`; `false` if it was in another state
/// (another run holds it, or it is settled).
pub async fn transition<'e>(
    db: impl PgExecutor<'e>,
    key: DeliveryKey<'_>,
    from: &[DeliveryStatus],
    to: DeliveryStatus,
    message_id: Option<&str>,
    error: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let moved = sqlx::query!(
        "UPDATE email_deliveries SET status = $6, updated_at = now(),
             message_id = coalesce($7, message_id),
             last_error = coalesce($8, last_error),
             attempts = attempts + CASE WHEN $6 = 'sending' THEN 1 ELSE 0 END,
             sent_at = CASE WHEN $6 = 'sent' THEN now() ELSE sent_at END
         WHERE customer_id = $1 AND sequence = $2 AND step = $3 AND occurrence = $4 AND status = ANY($5)",
        key.customer_id,
        key.sequence,
        key.step,
        key.occurrence,
        from as _,
        to as _,
        message_id,
        error,
    )
    .execute(db)
    .await?
    .rows_affected();
    Ok(moved == 1)
}

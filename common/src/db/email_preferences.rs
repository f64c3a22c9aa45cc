//! A customer's email preferences: the sequences they opted out of (`email_opt_outs`),
//! beside the unsubscribe from everything (`customers.unsubscribed_at`). Transactional
//! email (sign-in links, dunning) ignores both.

use sqlx::PgExecutor;
use uuid::Uuid;

/// The sequences the customer opted out of.
pub async fn opted_out<'e>(db: impl PgExecutor<'e>, customer_id: Uuid) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar!("SELECT sequence FROM email_opt_outs WHERE customer_id = $1 ORDER BY sequence", customer_id)
        .fetch_all(db)
        .await
}

/// Whether the customer opted out of `sequence`.
pub async fn is_opted_out<'e>(db: impl PgExecutor<'e>, customer_id: Uuid, sequence: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM email_opt_outs WHERE customer_id = $1 AND sequence = $2) AS "out!""#,
        customer_id,
        sequence,
    )
    .fetch_one(db)
    .await
}

/// Opts the customer out of `sequence` (`receive = false`) or back in.
pub async fn set<'e>(
    db: impl PgExecutor<'e>,
    customer_id: Uuid,
    sequence: &str,
    receive: bool,
) -> Result<(), sqlx::Error> {
    match receive {
        true => {
            sqlx::query!("DELETE FROM email_opt_outs WHERE customer_id = $1 AND sequence = $2", customer_id, sequence)
                .execute(db)
                .await?
        }
        false => {
            sqlx::query!(
                "INSERT INTO email_opt_outs (customer_id, sequence) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                customer_id,
                sequence,
            )
            .execute(db)
            .await?
        }
    };
    Ok(())
}

/// Records that `sequence` starts for the customer in this `occurrence` (episode);
/// `false` if it had started already, so it is not scheduled twice.
pub async fn start_sequence<'e>(
    db: impl PgExecutor<'e>,
    customer_id: Uuid,
    sequence: &str,
    occurrence: &str,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query!(
        "INSERT INTO email_sequence_starts (customer_id, sequence, occurrence) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING",
        customer_id,
        sequence,
        occurrence,
    )
    .execute(db)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Trial customers without a card whose balance is at most `credits`, still receiving
/// the expiring-trial nudge (not unsubscribed, not opted out), not nudged before.
pub async fn low_on_trial_credits<'e>(db: impl PgExecutor<'e>, credits: i64) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT c.id FROM customers c
          WHERE c.subscription_type = 'trial' AND c.stripe_payment_method_id IS NULL
            AND c.credit_balance <= $1 AND c.unsubscribed_at IS NULL
            AND NOT EXISTS (SELECT 1 FROM email_opt_outs o WHERE o.customer_id = c.id AND o.sequence = 'expiring_trial')
            AND NOT EXISTS (SELECT 1 FROM email_sequence_starts s WHERE s.customer_id = c.id AND s.sequence = 'expiring_trial')
          ORDER BY c.id LIMIT 1000",
        credits,
    )
    .fetch_all(db)
    .await
}

/// Customers whose last fix (or sign-up, before any) is more than `days` old, with the
/// day that inactivity began, still receiving re-engagement and not yet nudged for it.
pub async fn inactive_since<'e>(db: impl PgExecutor<'e>, days: i32) -> Result<Vec<(Uuid, String)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"WITH last AS (
             SELECT c.id, greatest(c.created_at, (SELECT max(f.created_at) FROM usage_fixes f WHERE f.customer_id = c.id)) AS at
               FROM customers c
              WHERE c.unsubscribed_at IS NULL
                AND NOT EXISTS (SELECT 1 FROM email_opt_outs o WHERE o.customer_id = c.id AND o.sequence = 're_engagement'))
           SELECT id AS "id!", to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS "since!" FROM last
            WHERE at < now() - make_interval(days => $1)
              AND NOT EXISTS (SELECT 1 FROM email_sequence_starts s
                               WHERE s.customer_id = last.id AND s.sequence = 're_engagement'
                                 AND s.occurrence = to_char(last.at AT TIME ZONE 'UTC', 'YYYY-MM-DD'))
            ORDER BY id LIMIT 1000"#,
        days,
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.id, r.since)).collect())
}

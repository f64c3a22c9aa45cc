//! Records of idempotent POSTs (`Idempotency-Key`): claimed under a lease before the
//! request runs, completed with its response, replayed for 24 hours.
//!
//! A claim whose request never finished (the process died, the connection dropped, the
//! answer could not be stored) is taken over by a retry once its lease has run out; the
//! retry runs the request again, which every idempotent route answers truthfully (the
//! effect exists once). The lease id fences the two: only the current holder stores
//! the answer.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub enum Claim {
    /// Ours, under `lease`: run the request, then `complete` or `release`.
    Claimed { lease: Uuid },
    /// Seen before with another request body.
    Mismatch,
    /// The first request with this key has not finished and its lease still runs.
    InFlight,
    /// The first request's response.
    Replay { status: u16, body: Vec<u8> },
}

/// Claims `key` in `scope` for a request fingerprinted `request_hash`: a new key, one
/// past its 24 hours, or one whose holder's lease ended (same request only).
pub async fn claim(
    pool: &PgPool,
    scope: &str,
    key: &str,
    request_hash: &str,
    lease_for: Duration,
) -> Result<Claim, sqlx::Error> {
    let lease = Uuid::new_v4();
    let claimed: Option<Uuid> = sqlx::query_scalar!(
        r#"INSERT INTO idempotency_keys (scope, key, request_hash, locked_until, lease)
         VALUES ($1, $2, $3, now() + $4 * interval '1 millisecond', $5)
         ON CONFLICT (scope, key) DO UPDATE SET
             request_hash = EXCLUDED.request_hash, locked_until = EXCLUDED.locked_until, lease = EXCLUDED.lease,
             response_status = NULL, response_body = NULL,
             created_at = CASE WHEN idempotency_keys.created_at < now() - interval '24 hours'
                               THEN now() ELSE idempotency_keys.created_at END
         WHERE idempotency_keys.created_at < now() - interval '24 hours'
            OR (idempotency_keys.response_status IS NULL
                AND idempotency_keys.request_hash = EXCLUDED.request_hash
                AND coalesce(idempotency_keys.locked_until, idempotency_keys.created_at) < now())
         RETURNING lease AS "lease!""#,
        scope,
        key,
        request_hash,
        lease_for.as_millis() as f64,
        lease,
    )
    .fetch_optional(pool)
    .await?;
    if claimed == Some(lease) {
        return Ok(Claim::Claimed { lease });
    }
    let existing = sqlx::query!(
        "SELECT request_hash, response_status, response_body FROM idempotency_keys WHERE scope = $1 AND key = $2",
        scope,
        key,
    )
    .fetch_optional(pool)
    .await?;
    Ok(match existing {
        // Released between our insert and this read: the caller may simply retry.
        None => Claim::InFlight,
        Some(row) if row.request_hash != request_hash => Claim::Mismatch,
        Some(row) => match row.response_status {
            None => Claim::InFlight,
            Some(status) => Claim::Replay { status: status as u16, body: row.response_body.unwrap_or_default() },
        },
    })
}

/// Stores the answer, if `lease` still holds the key; whether it did.
pub async fn complete(
    pool: &PgPool,
    scope: &str,
    key: &str,
    lease: Uuid,
    status: u16,
    body: &[u8],
) -> Result<bool, sqlx::Error> {
    fail::fail_point!("idempotency::before_complete");
    let stored = sqlx::query!(
        "UPDATE idempotency_keys SET response_status = $4, response_body = $5, locked_until = NULL
         WHERE scope = $1 AND key = $2 AND lease = $3 AND response_status IS NULL",
        scope,
        key,
        lease,
        status as i16,
        body,
    )
    .execute(pool)
    .await?
    .rows_affected();
    Ok(stored == 1)
}

/// Extends the lease of a request still running.
pub async fn renew(pool: &PgPool, scope: &str, key: &str, lease: Uuid, lease_for: Duration) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE idempotency_keys SET locked_until = now() + $4 * interval '1 millisecond'
         WHERE scope = $1 AND key = $2 AND lease = $3 AND response_status IS NULL",
        scope,
        key,
        lease,
        lease_for.as_millis() as f64,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Forgets a claim whose request did not run to an answer worth replaying (5xx, 429),
/// if `lease` still holds it.
pub async fn release(pool: &PgPool, scope: &str, key: &str, lease: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2 AND lease = $3 AND response_status IS NULL",
        scope,
        key,
        lease,
    )
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn prune(pool: &PgPool) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!("DELETE FROM idempotency_keys WHERE created_at < now() - interval '24 hours'")
        .execute(pool)
        .await?
        .rows_affected())
}

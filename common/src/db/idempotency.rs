//! Records of idempotent POSTs (`Idempotency-Key`): claimed before the request runs,
//! completed with its response, replayed for 24 hours.

use sqlx::PgPool;

#[derive(Debug, Clone)]
pub enum Claim {
    /// Ours: run the request, then `complete` or `release`.
    Claimed,
    /// Seen before with another request body.
    Mismatch,
    /// The first request with this key has not finished.
    InFlight,
    /// The first request's response.
    Replay { status: u16, body: Vec<u8> },
}

pub async fn claim(pool: &PgPool, scope: &str, key: &str, request_hash: &str) -> Result<Claim, sqlx::Error> {
    // Past its 24 hours a key is new again.
    sqlx::query(
        "DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2 AND created_at < now() - interval '24 hours'",
    )
    .bind(scope)
    .bind(key)
    .execute(pool)
    .await?;
    let claimed = sqlx::query(
        "INSERT INTO idempotency_keys (scope, key, request_hash) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(scope)
    .bind(key)
    .bind(request_hash)
    .execute(pool)
    .await?
    .rows_affected();
    if claimed == 1 {
        return Ok(Claim::Claimed);
    }
    let existing: Option<(String, Option<i16>, Option<Vec<u8>>)> = sqlx::query_as(
        "SELECT request_hash, response_status, response_body FROM idempotency_keys WHERE scope = $1 AND key = $2",
    )
    .bind(scope)
    .bind(key)
    .fetch_optional(pool)
    .await?;
    Ok(match existing {
        // Released between our insert and this read: the caller may simply retry.
        None => Claim::InFlight,
        Some((hash, _, _)) if hash != request_hash => Claim::Mismatch,
        Some((_, None, _)) => Claim::InFlight,
        Some((_, Some(status), body)) => Claim::Replay { status: status as u16, body: body.unwrap_or_default() },
    })
}

pub async fn complete(pool: &PgPool, scope: &str, key: &str, status: u16, body: &[u8]) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE idempotency_keys SET response_status = $3, response_body = $4 WHERE scope = $1 AND key = $2")
        .bind(scope)
        .bind(key)
        .bind(status as i16)
        .bind(body)
        .execute(pool)
        .await?;
    Ok(())
}

/// Forgets a claim whose request did not run to an answer worth replaying (5xx, 429).
pub async fn release(pool: &PgPool, scope: &str, key: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2")
        .bind(scope)
        .bind(key)
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn prune(pool: &PgPool) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM idempotency_keys WHERE created_at < now() - interval '24 hours'")
        .execute(pool)
        .await?
        .rows_affected())
}

use std::collections::HashMap;

use sqlx::{PgExecutor, PgPool};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::coalesce::Coalescer;
use crate::domain::ApiKeyHash;

pub async fn insert<'e>(
    db: impl PgExecutor<'e>,
    customer_id: Uuid,
    name: &str,
    hash: &ApiKeyHash,
    prefix: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO api_keys (id, customer_id, name, key_hash, prefix) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (key_hash) DO NOTHING",
        Uuid::new_v4(),
        customer_id,
        name,
        hash.as_str(),
        prefix,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// A live key's customer, and where its money stood when the key was checked.
#[derive(Debug, Clone)]
pub struct KeyOwner {
    pub customer_id: Uuid,
    pub credit_balance: i64,
    pub has_payment_method: bool,
}

/// The customer a live (not revoked) key belongs to, read with its balance in the same
/// statement (a usage report needs both, and one round trip is a large share of its
/// cost); notes the key as used now (at most one write a minute per key, so a busy
/// client does not write on every request; a request that finds the key's row being
/// written skips the write rather than wait, and the lock re-checks the minute, so
/// concurrent requests write once).
pub async fn owner_of<'e>(db: impl PgExecutor<'e>, hash: &ApiKeyHash) -> Result<Option<KeyOwner>, sqlx::Error> {
    let owners = owners_of(db, &[hash.as_str()]).await?;
    Ok(owners.into_iter().next().map(|(_, owner)| owner))
}

/// [`owner_of`] for many keys in one statement: each live key's hash with its owner;
/// unknown and revoked keys are left out.
pub async fn owners_of<'e>(db: impl PgExecutor<'e>, hashes: &[&str]) -> Result<Vec<(String, KeyOwner)>, sqlx::Error> {
    let hashes: Vec<String> = hashes.iter().map(|h| h.to_string()).collect();
    let rows = sqlx::query!(
        r#"WITH live AS (SELECT id, customer_id, key_hash FROM api_keys WHERE key_hash = ANY($1) AND revoked_at IS NULL),
                stale AS (SELECT k.id FROM api_keys k JOIN live ON k.id = live.id
                           WHERE k.last_used_at IS NULL OR k.last_used_at < now() - interval '1 minute'
                           FOR UPDATE OF k SKIP LOCKED),
                used AS (UPDATE api_keys k SET last_used_at = now() FROM stale WHERE k.id = stale.id)
           SELECT live.key_hash AS "key_hash!", c.id AS "customer_id!", c.credit_balance AS "credit_balance!",
                  (c.stripe_payment_method_id IS NOT NULL) AS "has_payment_method!"
           FROM live JOIN customers c ON c.id = live.customer_id"#,
        &hashes[..]
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let owner = KeyOwner {
                customer_id: r.customer_id,
                credit_balance: r.credit_balance,
                has_payment_method: r.has_payment_method,
            };
            (r.key_hash, owner)
        })
        .collect())
}

/// Lookups in flight at once.
const LOOKUP_FLUSHERS: usize = 2;
/// Keys in one lookup at most.
const MAX_LOOKUP: usize = 256;

struct PendingLookup {
    hash: String,
    answer: oneshot::Sender<Result<Option<KeyOwner>, sqlx::Error>>,
}

/// The API's key checks, coalesced (`crate::coalesce`): requests arriving while a lookup
/// is in flight are checked together in the next [`owners_of`]. Each lookup still starts
/// after its request arrived, so a key revoked before a request is refused as before:
/// nothing is cached. Cheap to clone.
#[derive(Clone)]
pub struct KeyLookups(Coalescer<PendingLookup>);

impl KeyLookups {
    /// Starts the lookup tasks on the current runtime.
    pub fn spawn(pool: PgPool) -> Self {
        Self(Coalescer::spawn("key lookup", LOOKUP_FLUSHERS, MAX_LOOKUP, 8 * MAX_LOOKUP, move |batch| {
            look_up(pool.clone(), batch)
        }))
    }

    /// As [`owner_of`], with the next lookup.
    pub async fn owner_of(&self, hash: &ApiKeyHash) -> Result<Option<KeyOwner>, sqlx::Error> {
        let (answer, answered) = oneshot::channel();
        let pending = PendingLookup { hash: hash.as_str().to_owned(), answer };
        self.0.offer(pending).map_err(|_| sqlx::Error::PoolTimedOut)?;
        answered.await.map_err(|_| sqlx::Error::PoolClosed)?
    }

    /// Lookups made since the start (each for one or more keys).
    pub fn lookups(&self) -> u64 {
        self.0.batches()
    }
}

async fn look_up(pool: PgPool, batch: Vec<PendingLookup>) {
    // A request whose client went away is owed nothing.
    let batch: Vec<PendingLookup> = batch.into_iter().filter(|p| !p.answer.is_closed()).collect();
    let mut hashes: Vec<&str> = batch.iter().map(|p| p.hash.as_str()).collect();
    hashes.sort_unstable();
    hashes.dedup();
    match owners_of(&pool, &hashes).await {
        Ok(owners) => {
            let owners: HashMap<String, KeyOwner> = owners.into_iter().collect();
            for pending in batch {
                let _ = pending.answer.send(Ok(owners.get(&pending.hash).cloned()));
            }
        }
        Err(error) => {
            tracing::error!(%error, keys = hashes.len(), "a grouped key lookup failed");
            for pending in batch {
                let _ = pending.answer.send(Err(crate::coalesce::same_kind_of(&error)));
            }
        }
    }
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct KeyInfo {
    pub id: Uuid,
    pub name: String,
    pub prefix: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// When it last authenticated a request (to the minute); never used: absent.
    pub last_used_at: Option<chrono::DateTime<chrono::Utc>>,
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A customer's keys, newest first; never the key itself.
pub async fn list<'e>(db: impl PgExecutor<'e>, customer_id: Uuid) -> Result<Vec<KeyInfo>, sqlx::Error> {
    sqlx::query_as!(
        KeyInfo,
        "SELECT id, name, prefix, created_at, last_used_at, revoked_at FROM api_keys WHERE customer_id = $1 ORDER BY created_at DESC, id",
        customer_id,
    )
    .fetch_all(db)
    .await
}

/// Adds a named key unless the customer already has `max_live` live keys. The count is
/// taken under the customer's row lock (its own statement, so it sees every key
/// committed before the lock was granted): concurrent creates take turns and the cap
/// holds.
/// What creating a key did.
#[derive(Debug)]
pub enum KeyCreated {
    New(KeyInfo),
    /// The request with this Idempotency-Key made this key before (its answer was lost).
    Earlier(KeyInfo),
    /// The customer has `max_live` live keys already.
    TooMany,
}

pub async fn create(
    tx: &mut sqlx::PgConnection,
    customer_id: Uuid,
    name: &str,
    hash: &ApiKeyHash,
    prefix: &str,
    max_live: i64,
    request_key: Option<&str>,
) -> Result<KeyCreated, sqlx::Error> {
    sqlx::query!("SELECT id FROM customers WHERE id = $1 FOR UPDATE", customer_id).fetch_optional(&mut *tx).await?;
    if let Some(request_key) = request_key {
        let earlier = sqlx::query_as!(
            KeyInfo,
            "SELECT id, name, prefix, created_at, last_used_at, revoked_at FROM api_keys WHERE customer_id = $1 AND request_key = $2",
            customer_id,
            request_key,
        )
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(earlier) = earlier {
            return Ok(KeyCreated::Earlier(earlier));
        }
    }
    let created = sqlx::query_as!(
        KeyInfo,
        "INSERT INTO api_keys (id, customer_id, name, key_hash, prefix, request_key)
         SELECT $1, $2, $3, $4, $5, $7
         WHERE (SELECT count(*) FROM api_keys WHERE customer_id = $2 AND revoked_at IS NULL) < $6
         RETURNING id, name, prefix, created_at, last_used_at, revoked_at",
        Uuid::new_v4(),
        customer_id,
        name,
        hash.as_str(),
        prefix,
        max_live,
        request_key,
    )
    .fetch_optional(&mut *tx)
    .await?;
    Ok(created.map_or(KeyCreated::TooMany, KeyCreated::New))
}

/// Revokes one of the customer's keys, ending the dashboard sessions opened with it;
/// `false` if there is no such live key.
pub async fn revoke<'e>(db: impl PgExecutor<'e>, customer_id: Uuid, id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"WITH revoked AS (UPDATE api_keys SET revoked_at = now()
                             WHERE id = $1 AND customer_id = $2 AND revoked_at IS NULL RETURNING id),
                ended AS (DELETE FROM sessions WHERE api_key_id IN (SELECT id FROM revoked))
           SELECT count(*) AS "revoked!" FROM revoked"#,
        id,
        customer_id,
    )
    .fetch_one(db)
    .await
    .map(|revoked| revoked == 1)
}

/// What [`revoke_unless_last`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    Revoked,
    /// No such live key of this customer.
    NotLive,
    /// The customer's last live key: left live.
    LastKey,
}

/// Serializes the revocations of one customer's keys (`$1`, the customer's id) for the
/// rest of the transaction; public so that a test can hold it.
pub const REVOCATIONS_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtextextended('api_keys:' || $1::text, 0))";

/// As [`revoke`], but never the customer's last live key: where email is off, a key is
/// the only way into the dashboard, and a customer without one is locked out. The lock
/// comes first and the count after it, in a statement of its own: two revocations at
/// once then cannot each count the other's key as live and leave none.
pub async fn revoke_unless_last(pool: &PgPool, customer_id: Uuid, id: Uuid) -> Result<Revocation, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(REVOCATIONS_LOCK).bind(customer_id).execute(&mut *tx).await?;
    let live =
        sqlx::query_scalar!("SELECT id FROM api_keys WHERE customer_id = $1 AND revoked_at IS NULL", customer_id)
            .fetch_all(&mut *tx)
            .await?;
    if !live.contains(&id) {
        return Ok(Revocation::NotLive);
    }
    if live.len() == 1 {
        return Ok(Revocation::LastKey);
    }
    let revoked = revoke(&mut *tx, customer_id, id).await?;
    tx.commit().await?;
    Ok(if revoked { Revocation::Revoked } else { Revocation::NotLive })
}

/// A live key's id and customer (signing in to the dashboard with it).
pub async fn live<'e>(db: impl PgExecutor<'e>, hash: &ApiKeyHash) -> Result<Option<(Uuid, Uuid)>, sqlx::Error> {
    let row =
        sqlx::query!("SELECT id, customer_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL", hash.as_str())
            .fetch_optional(db)
            .await?;
    Ok(row.map(|r| (r.id, r.customer_id)))
}

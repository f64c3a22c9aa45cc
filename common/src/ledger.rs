//! The only code that moves a credit balance.
//!
//! A posting is one ledger entry and one balance move, in the caller's transaction.
//! The customer row is locked first, so postings of one customer are serialized and a
//! posting sees every entry committed before it; the balance then moves by
//! `credit_balance + amount` (never from a value read earlier), only if no entry with
//! the idempotency key exists and only if the balance stays non-negative. The unique
//! index on the key and the CHECK on the balance stand behind that.

use std::collections::HashMap;

use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::LedgerSource;

#[derive(Debug, Clone)]
pub struct Posting {
    pub customer_id: Uuid,
    /// Signed: credits added (> 0) or consumed (< 0).
    pub amount: i64,
    pub source: LedgerSource,
    pub metadata: Value,
    /// Posts at most once, however often the posting is attempted.
    pub idempotency_key: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Posted {
    Posted {
        entry_id: i64,
        balance_after: i64,
    },
    /// An entry with this idempotency key exists; nothing moved.
    AlreadyPosted {
        entry_id: i64,
    },
    /// The balance would go negative; nothing moved.
    InsufficientCredits {
        balance: i64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("customer {0} does not exist")]
    CustomerNotFound(Uuid),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Counts a posting in `rsolv_ledger_postings_total` (by `post`; by `post_many`'s
/// caller once its transaction committed, so a failed batch is not counted).
pub fn count_posted(posting: &Posting) {
    metrics::counter!("rsolv_ledger_postings_total", "source" => posting.source.as_str()).increment(1);
}

pub async fn post(tx: &mut PgConnection, posting: &Posting) -> Result<Posted, LedgerError> {
    let locked: Option<i64> =
        sqlx::query_scalar!("SELECT credit_balance FROM customers WHERE id = $1 FOR UPDATE", posting.customer_id,)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(balance_under_lock) = locked else {
        return Err(LedgerError::CustomerNotFound(posting.customer_id));
    };
    let outcome = sqlx::query!(
        "WITH existing AS (
             SELECT id FROM credit_ledger WHERE idempotency_key = $4),
         moved AS (
             UPDATE customers SET credit_balance = credit_balance + $2, updated_at = now()
             WHERE id = $1 AND credit_balance + $2 >= 0 AND NOT EXISTS (SELECT 1 FROM existing)
             RETURNING credit_balance),
         entry AS (
             INSERT INTO credit_ledger (customer_id, amount, balance_after, source, metadata, idempotency_key)
             SELECT $1, $2, credit_balance, $3, $5, $4 FROM moved
             RETURNING id, balance_after)
         SELECT (SELECT id FROM entry) AS posted_id, (SELECT balance_after FROM entry) AS balance_after,
                (SELECT id FROM existing) AS existing_id",
        posting.customer_id,
        posting.amount,
        posting.source.as_str(),
        &posting.idempotency_key,
        &posting.metadata,
    )
    .fetch_one(&mut *tx)
    .await?;
    Ok(match (outcome.posted_id, outcome.balance_after, outcome.existing_id) {
        (Some(entry_id), Some(balance_after), _) => {
            count_posted(posting);
            Posted::Posted { entry_id, balance_after }
        }
        (_, _, Some(entry_id)) => Posted::AlreadyPosted { entry_id },
        // The row is locked by us, so the balance read under the lock is still current.
        _ => Posted::InsufficientCredits { balance: balance_under_lock },
    })
}

/// Many postings in the caller's transaction, answered as `post` would answer each of
/// them in turn, in order, with a few statements for the lot (the worker's batches).
///
/// The same rules, kept the same way: every customer named is locked first, in id order
/// (so two batches never wait on each other in a cycle), and nothing is read before its
/// lock; a posting whose key has an entry, or appeared earlier in `postings`, is
/// `AlreadyPosted`; one that would take its balance below zero moves nothing. Each
/// balance moves by the sum of its postings, `credit_balance + moved`, checked against
/// what the entries will say; then the entries go in one insert, in order, so each
/// continues its customer's chain (the `credit_ledger_entries_checked` trigger checks
/// every one, and each balance against its newest entry, when the insert ends).
/// A posting for a customer that does not exist answers `CustomerNotFound` alone.
/// Postings are not counted in the metric here: see [`count_posted`].
pub async fn post_many(
    tx: &mut PgConnection,
    postings: &[Posting],
) -> Result<Vec<Result<Posted, LedgerError>>, sqlx::Error> {
    let mut ids: Vec<Uuid> = postings.iter().map(|p| p.customer_id).collect();
    ids.sort_unstable();
    ids.dedup();
    let locked =
        sqlx::query!("SELECT id, credit_balance FROM customers WHERE id = ANY($1) ORDER BY id FOR UPDATE", &ids[..])
            .fetch_all(&mut *tx)
            .await?;
    let mut balances: HashMap<Uuid, i64> = locked.into_iter().map(|row| (row.id, row.credit_balance)).collect();
    let keys: Vec<&str> = postings.iter().map(|p| p.idempotency_key.as_str()).collect();
    let mut existing: HashMap<String, i64> =
        sqlx::query!("SELECT idempotency_key, id FROM credit_ledger WHERE idempotency_key = ANY($1)", &keys as &[&str])
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(|row| (row.idempotency_key, row.id))
            .collect();

    // Decided in order, as one posting after another would be.
    let mut decided = Vec::with_capacity(postings.len());
    let mut new_entries: Vec<(usize, i64)> = Vec::new(); // (posting, balance_after)
    let mut keys_in_batch: HashMap<&str, usize> = HashMap::new();
    for (index, posting) in postings.iter().enumerate() {
        let Some(balance) = balances.get_mut(&posting.customer_id) else {
            decided.push(Decided::Missing);
            continue;
        };
        if let Some(&entry_id) = existing.get(&posting.idempotency_key) {
            decided.push(Decided::Existing(entry_id));
        } else if let Some(&first) = keys_in_batch.get(posting.idempotency_key.as_str()) {
            decided.push(Decided::SameAs(first));
        } else if *balance + posting.amount >= 0 {
            *balance += posting.amount;
            keys_in_batch.insert(&posting.idempotency_key, index);
            new_entries.push((index, *balance));
            decided.push(Decided::New(*balance));
        } else {
            decided.push(Decided::Short(*balance));
        }
    }
    // The balances first: the entries' insert is checked against them when it ends
    // (`credit_ledger_entries_checked`: each customer's balance is its newest entry's).
    move_balances(tx, postings, &new_entries, &balances).await?;
    insert_entries(tx, postings, &new_entries, &mut existing).await?;

    Ok(decided
        .into_iter()
        .enumerate()
        .map(|(index, decision)| {
            let posting = &postings[index];
            Ok(match decision {
                Decided::Missing => return Err(LedgerError::CustomerNotFound(posting.customer_id)),
                Decided::Existing(entry_id) => Posted::AlreadyPosted { entry_id },
                Decided::SameAs(first) => {
                    Posted::AlreadyPosted { entry_id: existing[&postings[first].idempotency_key] }
                }
                Decided::Short(balance) => Posted::InsufficientCredits { balance },
                Decided::New(balance_after) => {
                    Posted::Posted { entry_id: existing[&posting.idempotency_key], balance_after }
                }
            })
        })
        .collect())
}

/// What `post_many` decided for one posting before writing anything.
enum Decided {
    Missing,
    Existing(i64),
    /// The key of an earlier posting of the same batch.
    SameAs(usize),
    Short(i64),
    /// Posted, leaving this balance.
    New(i64),
}

/// The new entries in one insert, in the batch's order; their ids are added to `ids`.
async fn insert_entries(
    tx: &mut PgConnection,
    postings: &[Posting],
    new_entries: &[(usize, i64)],
    ids: &mut HashMap<String, i64>,
) -> Result<(), sqlx::Error> {
    if new_entries.is_empty() {
        return Ok(());
    }
    let customers: Vec<Uuid> = new_entries.iter().map(|(i, _)| postings[*i].customer_id).collect();
    let amounts: Vec<i64> = new_entries.iter().map(|(i, _)| postings[*i].amount).collect();
    let balances_after: Vec<i64> = new_entries.iter().map(|(_, after)| *after).collect();
    let sources: Vec<&str> = new_entries.iter().map(|(i, _)| postings[*i].source.as_str()).collect();
    let metadata: Vec<Value> = new_entries.iter().map(|(i, _)| postings[*i].metadata.clone()).collect();
    let keys: Vec<&str> = new_entries.iter().map(|(i, _)| postings[*i].idempotency_key.as_str()).collect();
    let inserted = sqlx::query!(
        "INSERT INTO credit_ledger (customer_id, amount, balance_after, source, metadata, idempotency_key)
         SELECT customer_id, amount, balance_after, source, metadata, idempotency_key
         FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::text[], $5::jsonb[], $6::text[]) WITH ORDINALITY
             AS e(customer_id, amount, balance_after, source, metadata, idempotency_key, n)
         ORDER BY n
         RETURNING id, idempotency_key",
        &customers,
        &amounts,
        &balances_after,
        &sources as &[&str],
        &metadata,
        &keys as &[&str],
    )
    .fetch_all(&mut *tx)
    .await?;
    ids.extend(inserted.into_iter().map(|row| (row.idempotency_key, row.id)));
    Ok(())
}

/// Each customer's balance moves by what its new entries moved; the result must be what
/// the entries say, or nothing commits.
async fn move_balances(
    tx: &mut PgConnection,
    postings: &[Posting],
    new_entries: &[(usize, i64)],
    balances: &HashMap<Uuid, i64>,
) -> Result<(), sqlx::Error> {
    let mut moved: HashMap<Uuid, i64> = HashMap::new();
    for (index, _) in new_entries {
        *moved.entry(postings[*index].customer_id).or_default() += postings[*index].amount;
    }
    let (customers, deltas): (Vec<Uuid>, Vec<i64>) = moved.into_iter().filter(|(_, d)| *d != 0).unzip();
    if customers.is_empty() {
        return Ok(());
    }
    let expected: Vec<i64> = customers.iter().map(|id| balances[id]).collect();
    // Joins the batch's customers against the table: planned for them (see
    // `db::planned_for_arguments`), not by a plan cached while the table was small. The
    // transaction's statements after it run with the session's own planner settings.
    crate::db::planned_for_arguments(&mut *tx).await?;
    let drifted = sqlx::query_scalar!(
        "WITH moved AS (
             UPDATE customers c SET credit_balance = c.credit_balance + m.delta, updated_at = now()
             FROM unnest($1::uuid[], $2::bigint[], $3::bigint[]) AS m(id, delta, expected)
             WHERE c.id = m.id
             RETURNING c.credit_balance, m.expected)
         SELECT count(*) FILTER (WHERE credit_balance <> expected) AS \"drifted!\" FROM moved",
        &customers,
        &deltas,
        &expected,
    )
    .fetch_one(&mut *tx)
    .await?;
    crate::db::cached_plans(&mut *tx).await?;
    if drifted > 0 {
        return Err(sqlx::Error::Protocol(format!("{drifted} balances moved other than their entries say")));
    }
    Ok(())
}

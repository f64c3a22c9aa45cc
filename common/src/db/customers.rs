use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::domain::{CustomerName, Email, SubscriptionState, SubscriptionType};

/// Inserts a trial customer; `false` when the id or the email is already taken.
pub async fn insert_trial<'e>(
    db: impl PgExecutor<'e>,
    id: Uuid,
    name: &CustomerName,
    email: &Email,
    source: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query!(
        "INSERT INTO customers (id, name, email, source) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        id,
        name.as_str(),
        email.as_str(),
        source,
    )
    .execute(db)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

pub async fn exists<'e>(db: impl PgExecutor<'e>, id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(r#"SELECT EXISTS (SELECT 1 FROM customers WHERE id = $1) AS "exists!""#, id,)
        .fetch_one(db)
        .await
}

pub async fn email_taken<'e>(db: impl PgExecutor<'e>, email: &Email) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM customers WHERE lower(email) = $1) AS "exists!""#,
        email.as_str(),
    )
    .fetch_one(db)
    .await
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Customer {
    pub id: Uuid,
    pub name: String,
    pub email: String,
    pub subscription_type: SubscriptionType,
    pub subscription_state: Option<SubscriptionState>,
    pub cancel_at_period_end: bool,
    pub credit_balance: i64,
    pub stripe_customer_id: Option<String>,
    pub stripe_payment_method_id: Option<String>,
    pub stripe_subscription_id: Option<String>,
    pub subscription_period_end: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl Customer {
    pub fn has_payment_method(&self) -> bool {
        self.stripe_payment_method_id.is_some()
    }
}

/// A checked `SELECT` of [`Customer`]s, followed by the rest of the statement (sqlx's
/// macros take a literal, or literals joined by `+`, so the column list is written once
/// here as a macro).
macro_rules! select_customers {
    ($rest:literal $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            Customer,
            "SELECT id, name, email, subscription_type AS \"subscription_type: SubscriptionType\",
                    subscription_state AS \"subscription_state: SubscriptionState\", cancel_at_period_end,
                    credit_balance, stripe_customer_id, stripe_payment_method_id, stripe_subscription_id,
                    subscription_period_end, created_at
             FROM customers " + $rest
            $(, $arg)*
        )
    };
}

pub async fn find<'e>(db: impl PgExecutor<'e>, id: Uuid) -> Result<Option<Customer>, sqlx::Error> {
    select_customers!("WHERE id = $1", id).fetch_optional(db).await
}

/// The customer, its row locked until the transaction ends: every decision about its
/// money (postings, charges, subscription intents) is taken under this lock.
pub async fn lock<'e>(db: impl PgExecutor<'e>, id: Uuid) -> Result<Option<Customer>, sqlx::Error> {
    select_customers!("WHERE id = $1 FOR UPDATE", id).fetch_optional(db).await
}

/// The customers, their rows locked in id order (so two batches locking overlapping
/// sets never wait on each other in a cycle); missing ids are left out.
pub async fn lock_many<'e>(db: impl PgExecutor<'e>, ids: &[Uuid]) -> Result<Vec<Customer>, sqlx::Error> {
    select_customers!("WHERE id = ANY($1) ORDER BY id FOR UPDATE", ids).fetch_all(db).await
}

pub async fn find_by_email<'e>(db: impl PgExecutor<'e>, email: &Email) -> Result<Option<Customer>, sqlx::Error> {
    select_customers!("WHERE lower(email) = $1", email.as_str()).fetch_optional(db).await
}

/// A customer named the way operators name one: its id, or its email.
pub async fn find_by_id_or_email<'e>(db: impl PgExecutor<'e>, who: &str) -> Result<Option<Customer>, sqlx::Error> {
    let who = who.trim();
    match (who.parse::<Uuid>(), Email::parse(who)) {
        (Ok(id), _) => find(db, id).await,
        (_, Ok(email)) => find_by_email(db, &email).await,
        _ => Ok(None),
    }
}

pub async fn find_by_stripe_customer<'e>(
    db: impl PgExecutor<'e>,
    stripe_id: &str,
) -> Result<Option<Customer>, sqlx::Error> {
    select_customers!("WHERE stripe_customer_id = $1", stripe_id).fetch_optional(db).await
}

/// Records the Stripe customer unless one is recorded already; `false` if one was.
pub async fn set_stripe_customer<'e>(db: impl PgExecutor<'e>, id: Uuid, stripe_id: &str) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query!(
        "UPDATE customers SET stripe_customer_id = $2, updated_at = now() WHERE id = $1 AND stripe_customer_id IS NULL",
        id,
        stripe_id,
    )
    .execute(db)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// The default payment method and the consent given with it; a trial becomes
/// pay-as-you-go (a Pro customer stays Pro).
pub async fn set_payment_method<'e>(
    db: impl PgExecutor<'e>,
    id: Uuid,
    payment_method_id: &str,
    consent_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE customers SET stripe_payment_method_id = $2, billing_consent_given = true,
             billing_consent_at = $3, updated_at = now(),
             subscription_type = CASE WHEN subscription_type = 'trial' THEN 'pay_as_you_go' ELSE subscription_type END
         WHERE id = $1",
        id,
        payment_method_id,
        consent_at,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// When a subscription state was observed: the Stripe event's `created` and the stage's
/// rank for ties in one second; or `current`: read from Stripe just now, under
/// [`lock_stripe_state`], which orders it (the last to apply read last), so it
/// always applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    pub created: i64,
    pub rank: i16,
    pub current: bool,
}

impl Observed {
    /// As of an event's payload.
    pub fn event(created: i64, rank: i16) -> Self {
        Self { created, rank, current: false }
    }

    /// As of now, for a state not read under the lock (seeded demo data).
    pub fn now(rank: i16) -> Self {
        Self { created: Utc::now().timestamp(), rank, current: false }
    }

    /// Stripe's current state, read under the customer's Stripe-state lock.
    pub fn current() -> Self {
        Self { created: Utc::now().timestamp(), rank: i16::MAX, current: true }
    }
}

/// Takes the customer's Stripe-state lock for the transaction: everything that mirrors
/// state from Stripe (the subscription, the default payment method) takes it before it
/// reads or changes that state at Stripe, so mirrors take turns and a state read
/// earlier is never applied over one read later. It is an advisory lock, not the row's:
/// a slow Stripe call never holds up the customer's postings.
pub async fn lock_stripe_state(conn: &mut sqlx::PgConnection, id: Uuid) -> Result<(), sqlx::Error> {
    // A holder stuck on Stripe is bounded by STRIPE_TIMEOUT_MS; waiters give up after
    // this much (and their job retries) rather than queue up holding connections.
    sqlx::query!("SET LOCAL lock_timeout = '30s'").execute(&mut *conn).await?;
    sqlx::query!("SELECT pg_advisory_xact_lock(hashtextextended('rsolv-stripe-state:' || $1::uuid::text, 0))", id,)
        .execute(conn)
        .await?;
    Ok(())
}

/// Applies a live subscription (created, updated): Pro, with Stripe's status and
/// flag. Ignored, returning `false`, if a newer observation was applied already; the
/// subscription is recorded as the customer's either way.
pub async fn apply_subscription<'e>(
    db: impl PgExecutor<'e>,
    id: Uuid,
    subscription_id: &str,
    status: SubscriptionState,
    cancel_at_period_end: bool,
    period_end: Option<i64>,
    observed: Observed,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query!(
        "WITH known AS (INSERT INTO subscriptions (id, customer_id) VALUES ($2, $1) ON CONFLICT DO NOTHING)
         UPDATE customers SET stripe_subscription_id = $2, subscription_type = 'pro',
             subscription_state = $3, cancel_at_period_end = $4,
             subscription_period_end = to_timestamp($5::bigint),
             subscription_event_created = $6, subscription_event_rank = $7, updated_at = now()
         WHERE id = $1
           -- Never switches a customer from one subscription to another: a second live
           -- one is reconciliation's to report (different_subscription), not ours to adopt.
           AND (stripe_subscription_id IS NULL OR stripe_subscription_id = $2)
           AND ($8 OR subscription_event_created IS NULL
                OR (subscription_event_created, subscription_event_rank) <= ($6, $7))",
        id,
        subscription_id,
        status as _,
        cancel_at_period_end,
        period_end,
        observed.created,
        observed.rank,
        observed.current,
    )
    .execute(db)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// Applies the end of a subscription: pay-as-you-go, no state, no subscription, the
/// flag cleared; credits are kept. Only for the customer's current subscription (or
/// none), and only if no newer observation was applied.
pub async fn apply_subscription_ended<'e>(
    db: impl PgExecutor<'e>,
    id: Uuid,
    subscription_id: &str,
    observed: Observed,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query!(
        "WITH known AS (INSERT INTO subscriptions (id, customer_id) VALUES ($2, $1) ON CONFLICT DO NOTHING)
         UPDATE customers SET subscription_type = 'pay_as_you_go', subscription_state = NULL,
             stripe_subscription_id = NULL, cancel_at_period_end = false, subscription_period_end = NULL,
             subscription_event_created = $3, subscription_event_rank = $4, updated_at = now()
         WHERE id = $1
           AND (stripe_subscription_id = $2 OR stripe_subscription_id IS NULL)
           AND ($5 OR subscription_event_created IS NULL
                OR (subscription_event_created, subscription_event_rank) <= ($3, $4))",
        id,
        subscription_id,
        observed.created,
        observed.rank,
        observed.current,
    )
    .execute(db)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// A failed Pro payment: `past_due`, unless a newer observation was applied.
pub async fn apply_past_due<'e>(db: impl PgExecutor<'e>, id: Uuid, observed: Observed) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query!(
        "UPDATE customers SET subscription_state = 'past_due',
             subscription_event_created = $2, subscription_event_rank = $3, updated_at = now()
         WHERE id = $1 AND stripe_subscription_id IS NOT NULL
           AND ($4 OR subscription_event_created IS NULL
                OR (subscription_event_created, subscription_event_rank) <= ($2, $3))",
        id,
        observed.created,
        observed.rank,
        observed.current,
    )
    .execute(db)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// Whether `subscription_id` is one of the customer's subscriptions (applied to it at
/// some time): only those earn Pro credits.
pub async fn owns_subscription<'e>(
    db: impl PgExecutor<'e>,
    customer_id: Uuid,
    subscription_id: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM subscriptions WHERE id = $1 AND customer_id = $2) AS "exists!""#,
        subscription_id,
        customer_id,
    )
    .fetch_one(db)
    .await
}

/// Every customer Stripe knows: the reconciliation sweep's work list.
pub async fn with_stripe_customer<'e>(db: impl PgExecutor<'e>) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar!("SELECT id FROM customers WHERE stripe_customer_id IS NOT NULL ORDER BY id").fetch_all(db).await
}

/// Pro customers whose current period has ended: the renewal sweep's work list.
pub async fn due_for_renewal<'e>(db: impl PgExecutor<'e>) -> Result<Vec<(Uuid, DateTime<Utc>)>, sqlx::Error> {
    let due = sqlx::query!(
        r#"SELECT id, subscription_period_end AS "subscription_period_end!" FROM customers
         WHERE stripe_subscription_id IS NOT NULL AND subscription_period_end <= now()
         ORDER BY subscription_period_end"#,
    )
    .fetch_all(db)
    .await?;
    Ok(due.into_iter().map(|row| (row.id, row.subscription_period_end)).collect())
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct LedgerEntry {
    pub id: i64,
    pub amount: i64,
    pub balance_after: i64,
    pub source: String,
    pub metadata: Value,
    pub created_at: DateTime<Utc>,
}

pub async fn recent_ledger<'e>(
    db: impl PgExecutor<'e>,
    customer_id: Uuid,
    limit: i64,
) -> Result<Vec<LedgerEntry>, sqlx::Error> {
    sqlx::query_as!(
        LedgerEntry,
        "SELECT id, amount, balance_after, source, metadata, created_at FROM credit_ledger
         WHERE customer_id = $1 ORDER BY id DESC LIMIT $2",
        customer_id,
        limit,
    )
    .fetch_all(db)
    .await
}

/// Stops sequence email for a customer; `false` if already unsubscribed.
pub async fn unsubscribe<'e>(db: impl PgExecutor<'e>, id: Uuid) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query!(
        "UPDATE customers SET unsubscribed_at = now(), updated_at = now() WHERE id = $1 AND unsubscribed_at IS NULL",
        id,
    )
    .execute(db)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// Sequence email again (the dashboard's resubscribe); `false` if not unsubscribed.
pub async fn resubscribe<'e>(db: impl PgExecutor<'e>, id: Uuid) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query!(
        "UPDATE customers SET unsubscribed_at = NULL, updated_at = now() WHERE id = $1 AND unsubscribed_at IS NOT NULL",
        id,
    )
    .execute(db)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// Whether the customer exists and has unsubscribed; `None` if there is no such customer.
pub async fn unsubscribed<'e>(db: impl PgExecutor<'e>, id: Uuid) -> Result<Option<bool>, sqlx::Error> {
    sqlx::query_scalar!(r#"SELECT unsubscribed_at IS NOT NULL AS "unsubscribed!" FROM customers WHERE id = $1"#, id,)
        .fetch_optional(db)
        .await
}

/// Credits granted and used on one day (UTC), from the ledger.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CreditDay {
    pub day: chrono::NaiveDate,
    pub granted: i64,
    pub used: i64,
}

/// The last `days` days of the customer's ledger, one row per day, oldest first, days
/// without entries included (zeros).
pub async fn credits_per_day<'e>(
    db: impl PgExecutor<'e>,
    customer_id: Uuid,
    days: i32,
) -> Result<Vec<CreditDay>, sqlx::Error> {
    sqlx::query_as!(
        CreditDay,
        r#"SELECT d.day::date AS "day!",
                  coalesce(sum(l.amount) FILTER (WHERE l.amount > 0), 0)::bigint AS "granted!",
                  coalesce(-sum(l.amount) FILTER (WHERE l.amount < 0), 0)::bigint AS "used!"
             FROM generate_series((now() AT TIME ZONE 'UTC')::date - ($2 - 1), (now() AT TIME ZONE 'UTC')::date, interval '1 day') AS d(day)
             LEFT JOIN credit_ledger l
               ON l.customer_id = $1 AND (l.created_at AT TIME ZONE 'UTC')::date = d.day::date
              AND l.created_at >= ((now() AT TIME ZONE 'UTC')::date - $2) AT TIME ZONE 'UTC'
            GROUP BY d.day ORDER BY d.day"#,
        customer_id,
        days,
    )
    .fetch_all(db)
    .await
}

/// Records `payment_method_id` as the customer's default (already consented to when it
/// was added).
pub async fn set_default_payment_method<'e>(
    db: impl PgExecutor<'e>,
    id: Uuid,
    payment_method_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE customers SET stripe_payment_method_id = $2, updated_at = now() WHERE id = $1",
        id,
        payment_method_id,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Forgets the customer's default payment method if it is `payment_method_id` (removed).
pub async fn clear_payment_method<'e>(
    db: impl PgExecutor<'e>,
    id: Uuid,
    payment_method_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE customers SET stripe_payment_method_id = NULL, updated_at = now()
          WHERE id = $1 AND stripe_payment_method_id = $2",
        id,
        payment_method_id,
    )
    .execute(db)
    .await?;
    Ok(())
}

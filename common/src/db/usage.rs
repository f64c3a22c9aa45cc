use sqlx::PgExecutor;
use uuid::Uuid;

/// What became of a reported fix (`usage_fixes.outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum FixOutcome {
    /// Paid for: a credit debited, or a pay-as-you-go charge that succeeded.
    Consumed,
    /// Not paid for, with a refusal code (no credits and no card, a declined card, …).
    Refused,
}

impl FixOutcome {
    pub const ALL: [Self; 2] = [Self::Consumed, Self::Refused];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Consumed => "consumed",
            Self::Refused => "refused",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct FixRecord {
    pub outcome: FixOutcome,
    pub refusal_code: Option<String>,
}

pub async fn find<'e>(
    db: impl PgExecutor<'e>,
    customer_id: Uuid,
    fix_id: &str,
) -> Result<Option<FixRecord>, sqlx::Error> {
    sqlx::query_as!(
        FixRecord,
        r#"SELECT outcome AS "outcome: FixOutcome", refusal_code FROM usage_fixes WHERE customer_id = $1 AND fix_id = $2"#,
        customer_id,
        fix_id,
    )
    .fetch_optional(db)
    .await
}

pub async fn record_consumed<'e>(
    db: impl PgExecutor<'e>,
    customer_id: Uuid,
    fix_id: &str,
    repo: &str,
    ledger_entry_id: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO usage_fixes (customer_id, fix_id, repo, outcome, ledger_entry_id)
         VALUES ($1, $2, $3, 'consumed', $4)",
        customer_id,
        fix_id,
        repo,
        ledger_entry_id,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The fixes already recorded among `(customer_ids[i], fix_ids[i])`, with their records.
pub async fn find_many<'e>(
    db: impl PgExecutor<'e>,
    customer_ids: &[Uuid],
    fix_ids: &[String],
) -> Result<Vec<(Uuid, String, FixRecord)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT u.customer_id, u.fix_id, u.outcome AS "outcome: FixOutcome", u.refusal_code
           FROM usage_fixes u JOIN unnest($1::uuid[], $2::text[]) AS f(customer_id, fix_id)
             ON u.customer_id = f.customer_id AND u.fix_id = f.fix_id"#,
        customer_ids,
        fix_ids,
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.customer_id, r.fix_id, FixRecord { outcome: r.outcome, refusal_code: r.refusal_code }))
        .collect())
}

/// Several fixes paid for with a credit each, in one insert (`record_consumed`'s rows).
pub async fn record_consumed_many<'e>(
    db: impl PgExecutor<'e>,
    customer_ids: &[Uuid],
    fix_ids: &[String],
    repos: &[String],
    ledger_entry_ids: &[i64],
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO usage_fixes (customer_id, fix_id, repo, outcome, ledger_entry_id)
         SELECT customer_id, fix_id, repo, 'consumed', ledger_entry_id
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bigint[]) AS f(customer_id, fix_id, repo, ledger_entry_id)",
        customer_ids,
        fix_ids,
        repos,
        ledger_entry_ids,
    )
    .execute(db)
    .await?;
    Ok(())
}

pub async fn record_refused<'e>(
    db: impl PgExecutor<'e>,
    customer_id: Uuid,
    fix_id: &str,
    repo: &str,
    code: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO usage_fixes (customer_id, fix_id, repo, outcome, refusal_code)
         VALUES ($1, $2, $3, 'refused', $4)",
        customer_id,
        fix_id,
        repo,
        code,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// A fix paid for at balance 0: the purchase and the debit are posted by the caller.
pub async fn record_charged<'e>(
    db: impl PgExecutor<'e>,
    customer_id: Uuid,
    fix_id: &str,
    repo: &str,
    ledger_entry_id: i64,
    charged_cents: i64,
    payment_intent_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query!("INSERT INTO usage_fixes (customer_id, fix_id, repo, outcome, ledger_entry_id, charged_cents, payment_intent_id)
         VALUES ($1, $2, $3, 'consumed', $4, $5, $6)",
        customer_id,
        fix_id,
        repo,
        ledger_entry_id,
        charged_cents,
        payment_intent_id,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// A fix in the customer's history (the dashboard's usage page and its CSV).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FixHistoryRow {
    pub fix_id: String,
    pub repo: String,
    pub outcome: FixOutcome,
    pub refusal_code: Option<String>,
    pub charged_cents: Option<i64>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// Which fixes of a customer's history to show.
#[derive(Debug, Clone, Default)]
pub struct HistoryFilter {
    pub repo: Option<String>,
    pub outcome: Option<FixOutcome>,
    /// Older than this fix (`(created_at, fix_id)` of the last row of the page before).
    pub before: Option<(chrono::DateTime<chrono::Utc>, String)>,
    pub limit: i64,
}

/// A page of a customer's fixes, newest first.
pub async fn history<'e>(
    db: impl PgExecutor<'e>,
    customer_id: Uuid,
    filter: &HistoryFilter,
) -> Result<Vec<FixHistoryRow>, sqlx::Error> {
    let (before_at, before_fix) = filter.before.clone().unzip();
    sqlx::query_as!(
        FixHistoryRow,
        r#"SELECT fix_id, repo, outcome AS "outcome: FixOutcome", refusal_code, charged_cents, created_at
             FROM usage_fixes
            WHERE customer_id = $1
              AND ($2::text IS NULL OR repo = $2)
              AND ($3::text IS NULL OR outcome = $3)
              AND ($4::timestamptz IS NULL OR (created_at, fix_id) < ($4, $5))
            ORDER BY created_at DESC, fix_id DESC
            LIMIT $6"#,
        customer_id,
        filter.repo,
        filter.outcome.map(FixOutcome::as_str),
        before_at,
        before_fix,
        filter.limit,
    )
    .fetch_all(db)
    .await
}

/// The customer's repositories with fixes, for the usage page's filter.
pub async fn repos<'e>(db: impl PgExecutor<'e>, customer_id: Uuid) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT DISTINCT repo FROM usage_fixes WHERE customer_id = $1 ORDER BY repo LIMIT 500",
        customer_id,
    )
    .fetch_all(db)
    .await
}

/// Fixes consumed since the start of this calendar month (UTC).
pub async fn consumed_this_month<'e>(db: impl PgExecutor<'e>, customer_id: Uuid) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM usage_fixes
            WHERE customer_id = $1 AND outcome = 'consumed'
              AND created_at >= date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"#,
        customer_id,
    )
    .fetch_one(db)
    .await
}

/// Whether the customer reported a fix after the day `day` (`YYYY-MM-DD`, UTC); `false`
/// for anything that is not such a day.
pub async fn fixed_after_day<'e>(db: impl PgExecutor<'e>, customer_id: Uuid, day: &str) -> Result<bool, sqlx::Error> {
    let Ok(day) = chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d") else { return Ok(false) };
    sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM usage_fixes
                           WHERE customer_id = $1 AND created_at >= ($2::date + 1) AT TIME ZONE 'UTC') AS "fixed!""#,
        customer_id,
        day,
    )
    .fetch_one(db)
    .await
}

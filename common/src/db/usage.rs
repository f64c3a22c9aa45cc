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

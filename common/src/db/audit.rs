//! The audit log: every operator action that changes money or jobs, who did it, to
//! what, and why. Append-only (a trigger refuses edits and deletes).

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgExecutor;

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub reason: Option<String>,
    pub detail: Value,
    pub at: DateTime<Utc>,
}

pub async fn record<'e>(
    db: impl PgExecutor<'e>,
    actor: &str,
    action: &str,
    target: &str,
    reason: Option<&str>,
    detail: &Value,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO audit_log (actor, action, target, reason, detail) VALUES ($1, $2, $3, $4, $5)",
        actor,
        action,
        target,
        reason,
        detail,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The newest entries first, before `before_id` when paging.
pub async fn recent<'e>(
    db: impl PgExecutor<'e>,
    before_id: Option<i64>,
    limit: i64,
) -> Result<Vec<AuditEntry>, sqlx::Error> {
    sqlx::query_as!(
        AuditEntry,
        "SELECT id, actor, action, target, reason, detail, at FROM audit_log
         WHERE $1::bigint IS NULL OR id < $1 ORDER BY id DESC LIMIT $2",
        before_id,
        limit,
    )
    .fetch_all(db)
    .await
}

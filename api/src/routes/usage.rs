//! `POST /api/v1/usage/fixes` and `GET /api/v1/usage/fixes/{fix_id}`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use common::db::{self, charges::ChargeStatus};
use common::domain::{ErrorCode, Warning};
use common::jobs::RecordUsage;
use common::queue::{self, JobKind, JobWaker};
use serde::Deserialize;
use sqlx::PgPool;

use crate::auth::Authenticated;
use crate::errors::ApiError;
use crate::extract::JsonBody;

#[derive(Deserialize, utoipa::ToSchema)]
pub struct FixReport {
    fix_id: String,
    repo: String,
    #[serde(default)]
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

const ID_MAX_CHARS: usize = 200;

fn bounded(field: &str, value: &str) -> Result<String, ApiError> {
    let value = value.trim();
    if value.is_empty() || value.chars().count() > ID_MAX_CHARS || value.chars().any(char::is_control) {
        return Err(ApiError::validation(format!("{field} must be 1 to {ID_MAX_CHARS} printable characters")));
    }
    Ok(value.to_owned())
}

fn status_url(fix_id: &str) -> String {
    format!("/api/v1/usage/fixes/{}", crate::url::encode_component(fix_id))
}

#[utoipa::path(post, path = "/api/v1/usage/fixes", tag = "usage", security(("api_key" = [])), request_body = FixReport, responses((status = 202, description = "`{status: recorded, fix_id, duplicate, status_url}`"), (status = 402, description = "NO_BILLING_INFO", body = crate::openapi::ErrorBody), (status = 422, description = "VALIDATION_FAILED", body = crate::openapi::ErrorBody)))]
pub async fn report_fix(
    pool: web::Data<PgPool>,
    waker: web::Data<JobWaker>,
    auth: Authenticated,
    JsonBody(report): JsonBody<FixReport>,
) -> Result<HttpResponse, ApiError> {
    let fix_id = bounded("fix_id", &report.fix_id)?;
    let repo = bounded("repo", &report.repo)?;
    let customer = auth.customer(pool.get_ref()).await?;
    // A blocked customer is told at once; the job decides every other case under the
    // customer's lock.
    let blocked = Warning::derive(customer.credit_balance, customer.has_payment_method(), None, false)
        .contains(&Warning::Blocked);
    if blocked && db::usage::find(pool.get_ref(), customer.id, &fix_id).await?.is_none() {
        return Err(ApiError::new(
            StatusCode::PAYMENT_REQUIRED,
            ErrorCode::NoBillingInfo,
            "no credits left and no payment method on file",
        ));
    }
    let job = RecordUsage {
        customer_id: customer.id,
        fix_id: fix_id.clone(),
        repo,
        metadata: report.metadata.map(serde_json::Value::Object).unwrap_or_default(),
    };
    let enqueued = waker.enqueue(pool.get_ref(), &job).await?;
    Ok(HttpResponse::Accepted().json(serde_json::json!({
        "status": "recorded",
        "fix_id": fix_id,
        "duplicate": enqueued.is_duplicate(),
        "status_url": status_url(&fix_id),
    })))
}

#[utoipa::path(get, path = "/api/v1/usage/fixes/{fix_id}", tag = "usage", security(("api_key" = [])), params(("fix_id" = String, Path)), responses((status = 200, description = "`{status: pending | requires_action | consumed | refused | failed, refusal_code}`: `requires_action` means the fix's charge waits for the customer to authenticate the payment"), (status = 404, description = "NOT_FOUND", body = crate::openapi::ErrorBody)))]
pub async fn fix_status(
    pool: web::Data<PgPool>,
    auth: Authenticated,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let fix_id = path.into_inner();
    let answer = |status: &str, code: Option<&str>| {
        HttpResponse::Ok().json(serde_json::json!({ "fix_id": fix_id, "status": status, "refusal_code": code }))
    };
    if let Some(record) = db::usage::find(pool.get_ref(), auth.customer_id, &fix_id).await? {
        return Ok(answer(record.outcome.as_str(), record.refusal_code.as_deref()));
    }
    if let Some(charge) = db::charges::find_for_fix(pool.get_ref(), auth.customer_id, &fix_id).await? {
        // Being paid for (a settled charge is recorded with its fix, found above).
        let status = if charge.status == ChargeStatus::RequiresAction { "requires_action" } else { "pending" };
        return Ok(answer(status, None));
    }
    let key = RecordUsage::unique_key_for(auth.customer_id, &fix_id);
    match queue::by_unique_key(pool.get_ref(), RecordUsage::KIND, &key).await? {
        None => Err(ApiError::not_found("no fix reported with this id")),
        Some(job) if job.status.is_failed() => Ok(answer("failed", None)),
        Some(_) => Ok(answer("pending", None)),
    }
}

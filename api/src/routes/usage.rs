//! `POST /api/v1/usage/fixes` and `GET /api/v1/usage/fixes/{fix_id}`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, get, post, web};
use common::db::{self, charges::ChargeStatus, usage::FixOutcome};
use common::domain::{ErrorCode, Warning};
use common::jobs::RecordUsage;
use common::queue::{self, JobKind, JobWaker};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;

use crate::auth::Authenticated;
use crate::errors::ApiError;
use crate::extract::JsonBody;
use crate::fields::line;
use crate::openapi::ErrorBody;

#[derive(Deserialize, ToSchema)]
pub struct FixReport {
    /// The client's id of the fix: a second report of it is a duplicate, never a
    /// second charge. Used trimmed.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f\xad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]*[^\s\x00-\x1f\x7f-\x9f\xad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb][^\x00-\x1f\x7f-\x9f\xad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]*$"
    )]
    fix_id: String,
    /// The repository the fix was deployed to. Used trimmed.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f\xad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]*[^\s\x00-\x1f\x7f-\x9f\xad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb][^\x00-\x1f\x7f-\x9f\xad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]*$"
    )]
    repo: String,
    /// Anything the client wants kept with the fix.
    #[serde(default)]
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

const ID_MAX_CHARS: usize = 200;

#[derive(Serialize, ToSchema)]
pub struct FixRecorded {
    /// Always `recorded`: durably queued to be paid for.
    #[schema(example = "recorded")]
    status: &'static str,
    fix_id: String,
    /// This fix id was reported before: nothing new is charged.
    duplicate: bool,
    status_url: String,
}

/// Where a fix's payment stands.
#[derive(Serialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum FixState {
    Pending,
    /// The fix's charge waits for the customer to authenticate the payment.
    RequiresAction,
    Consumed,
    Refused,
    Failed,
}

#[derive(Serialize, ToSchema)]
pub struct FixStatus {
    fix_id: String,
    status: FixState,
    /// Why it was refused (`refused` only), e.g. `NO_BILLING_INFO`.
    refusal_code: Option<String>,
}

fn status_url(fix_id: &str) -> String {
    format!("/api/v1/usage/fixes/{}", crate::url::encode_component(fix_id))
}

/// Report a deployed fix: it is paid for with a credit, or by card when none is left.
#[utoipa::path(tag = "usage", security(("api_key" = [])), request_body = FixReport, responses((status = 202, description = "Recorded: follow `status_url`", body = FixRecorded), (status = 402, description = "NO_BILLING_INFO: no credits left and no payment method", body = ErrorBody), (status = 422, description = "VALIDATION_FAILED", body = ErrorBody)))]
#[post("/api/v1/usage/fixes")]
pub async fn report_fix(
    pool: web::Data<PgPool>,
    waker: web::Data<JobWaker>,
    auth: Authenticated,
    JsonBody(report): JsonBody<FixReport>,
) -> Result<HttpResponse, ApiError> {
    let fix_id = line("fix_id", &report.fix_id, ID_MAX_CHARS)?;
    let repo = line("repo", &report.repo, ID_MAX_CHARS)?;
    // A blocked customer is told at once (by the balance read with the key); the job
    // decides every other case under the customer's lock.
    let blocked =
        Warning::derive(auth.credit_balance, auth.has_payment_method, None, false).contains(&Warning::Blocked);
    if blocked && db::usage::find(pool.get_ref(), auth.customer_id, &fix_id).await?.is_none() {
        return Err(ApiError::new(
            StatusCode::PAYMENT_REQUIRED,
            ErrorCode::NoBillingInfo,
            "no credits left and no payment method on file",
        ));
    }
    let job = RecordUsage {
        customer_id: auth.customer_id,
        fix_id: fix_id.clone(),
        repo,
        metadata: report.metadata.map(serde_json::Value::Object).unwrap_or_default(),
    };
    let enqueued = waker.enqueue(&job).await?;
    Ok(HttpResponse::Accepted().json(FixRecorded {
        status: "recorded",
        status_url: status_url(&fix_id),
        fix_id,
        duplicate: enqueued.is_duplicate(),
    }))
}

/// Where a reported fix's payment stands.
#[utoipa::path(tag = "usage", security(("api_key" = [])), params(("fix_id" = String, Path, description = "As reported", max_length = 200, pattern = r"^[^\x00-\x1f\x7f-\x9f]+$")), responses((status = 200, description = "Pending, requires_action, consumed, refused or failed", body = FixStatus), (status = 404, description = "NOT_FOUND: no fix reported with this id", body = ErrorBody)))]
#[get("/api/v1/usage/fixes/{fix_id}")]
pub async fn fix_status(
    pool: web::Data<PgPool>,
    auth: Authenticated,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let fix_id = path.into_inner();
    let answer = |status: FixState, refusal_code: Option<String>| {
        HttpResponse::Ok().json(FixStatus { fix_id: fix_id.clone(), status, refusal_code })
    };
    if let Some(record) = db::usage::find(pool.get_ref(), auth.customer_id, &fix_id).await? {
        let state = match record.outcome {
            FixOutcome::Consumed => FixState::Consumed,
            FixOutcome::Refused => FixState::Refused,
        };
        return Ok(answer(state, record.refusal_code));
    }
    if let Some(charge) = db::charges::find_for_fix(pool.get_ref(), auth.customer_id, &fix_id).await? {
        // Being paid for (a settled charge is recorded with its fix, found above).
        let status =
            if charge.status == ChargeStatus::RequiresAction { FixState::RequiresAction } else { FixState::Pending };
        return Ok(answer(status, None));
    }
    let key = RecordUsage::unique_key_for(auth.customer_id, &fix_id);
    match queue::by_unique_key(pool.get_ref(), RecordUsage::KIND, &key).await? {
        None => Err(ApiError::not_found("no fix reported with this id")),
        Some(job) if job.status.is_failed() => Ok(answer(FixState::Failed, None)),
        Some(_) => Ok(answer(FixState::Pending, None)),
    }
}

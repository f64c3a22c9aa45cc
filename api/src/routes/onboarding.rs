//! `POST /api/v1/customers/onboard` and `GET /api/v1/onboarding/{customer_id}`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use common::db;
use common::domain::{ApiKey, CustomerName, Email, ErrorCode};
use common::jobs::ProvisionCustomer;
use common::queue::{self, JobKind, JobWaker};
use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::errors::ApiError;
use crate::extract::JsonBody;

#[derive(Deserialize, utoipa::ToSchema)]
pub struct OnboardRequest {
    name: String,
    email: String,
    source: Option<String>,
}

const SOURCE_MAX_CHARS: usize = 100;

fn email_taken() -> ApiError {
    ApiError::new(StatusCode::CONFLICT, ErrorCode::EmailTaken, "a customer with this email already exists")
}

#[utoipa::path(post, path = "/api/v1/customers/onboard", tag = "onboarding", request_body = OnboardRequest, responses((status = 202, description = "Accepted: `{customer_id, api_key, status_url}`; the API key is shown only here"), (status = 422, description = "VALIDATION_FAILED", body = crate::openapi::ErrorBody), (status = 409, description = "EMAIL_TAKEN", body = crate::openapi::ErrorBody)))]
pub async fn onboard(
    pool: web::Data<PgPool>,
    waker: web::Data<JobWaker>,
    JsonBody(body): JsonBody<OnboardRequest>,
) -> Result<HttpResponse, ApiError> {
    let email = Email::parse(&body.email).map_err(|e| ApiError::validation(e.0))?;
    let name = CustomerName::parse(&body.name).map_err(|e| ApiError::validation(e.0))?;
    let source = body.source.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    if source.as_ref().is_some_and(|s| s.chars().count() > SOURCE_MAX_CHARS || s.chars().any(char::is_control)) {
        return Err(ApiError::validation(format!("source must be at most {SOURCE_MAX_CHARS} printable characters")));
    }
    if db::customers::email_taken(pool.get_ref(), &email).await? {
        return Err(email_taken());
    }
    let customer_id = Uuid::new_v4();
    let key = ApiKey::generate();
    let job = ProvisionCustomer {
        customer_id,
        name,
        email,
        source,
        api_key_hash: key.hash(),
        api_key_prefix: key.display_prefix(),
    };
    // The provision job's unique key is the email: a concurrent or repeated submission
    // finds it taken and is refused, so exactly one customer is provisioned.
    if waker.enqueue(pool.get_ref(), &job).await?.is_duplicate() {
        return Err(email_taken());
    }
    tracing::info!(%customer_id, "onboarding accepted");
    Ok(HttpResponse::Accepted().json(serde_json::json!({
        "customer_id": customer_id,
        "api_key": key.expose(),
        "status_url": format!("/api/v1/onboarding/{customer_id}"),
    })))
}

#[utoipa::path(get, path = "/api/v1/onboarding/{customer_id}", tag = "onboarding", params(("customer_id" = String, Path, description = "From the onboarding response")), responses((status = 200, description = "`{status: pending | provisioned | failed}`"), (status = 404, description = "NOT_FOUND", body = crate::openapi::ErrorBody)))]
pub async fn status(pool: web::Data<PgPool>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let customer_id = Uuid::parse_str(&path).map_err(|_| ApiError::not_found("no onboarding with this id"))?;
    let answer = |status: &str, error: Option<serde_json::Value>| {
        HttpResponse::Ok().json(serde_json::json!({ "customer_id": customer_id, "status": status, "error": error }))
    };
    if db::customers::exists(pool.get_ref(), customer_id).await? {
        return Ok(answer("provisioned", None));
    }
    let job = queue::latest_for_customer(pool.get_ref(), ProvisionCustomer::KIND, customer_id).await?;
    match job {
        None => Err(ApiError::not_found("no onboarding with this id")),
        Some(job) if job.status.is_failed() => Ok(answer("failed", Some(crate::job_failure::describe(&job)))),
        // Completed without a customer row cannot happen in one transaction; everything
        // else is on its way.
        Some(_) => Ok(answer("pending", None)),
    }
}

//! `POST /api/v1/customers/onboard` and `GET /api/v1/onboarding/{customer_id}`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, get, post, web};
use common::db;
use common::domain::{ApiKey, CustomerName, Email, ErrorCode};
use common::jobs::ProvisionCustomer;
use common::queue::{self, JobKind, JobWaker};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::errors::ApiError;
use crate::extract::JsonBody;
use crate::openapi::{ErrorBody, ErrorDetail};

#[derive(Deserialize, ToSchema)]
pub struct OnboardRequest {
    /// The customer's name; stored trimmed.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\x00-\x1f\x7f-\x9f\xad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]*[^\s\x00-\x1f\x7f-\x9f\xad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb][^\x00-\x1f\x7f-\x9f\xad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]*$"
    )]
    name: String,
    /// A routable mailbox (a dotted domain, no disposable provider); stored lower-case.
    #[schema(format = Email, min_length = 3, max_length = 254)]
    email: String,
    /// Where the customer came from, e.g. `github-marketplace`; blank is none.
    #[schema(
        max_length = 100,
        pattern = r"^[^\x00-\x1f\x7f-\x9f\xad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]*$"
    )]
    source: Option<String>,
}

const SOURCE_MAX_CHARS: usize = 100;

/// The onboarding answer: the only time the API key is shown.
#[derive(Serialize, ToSchema)]
pub struct Onboarded {
    customer_id: Uuid,
    /// Shown only here: store it now.
    api_key: String,
    /// Where to follow the provisioning.
    status_url: String,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Provisioning {
    Pending,
    Provisioned,
    Failed,
}

#[derive(Serialize, ToSchema)]
pub struct OnboardingStatus {
    customer_id: Uuid,
    status: Provisioning,
    /// Why provisioning failed (`failed` only).
    error: Option<ErrorDetail>,
}

fn email_taken() -> ApiError {
    ApiError::new(StatusCode::CONFLICT, ErrorCode::EmailTaken, "a customer with this email already exists")
}

/// Onboard a customer: provisioning is a job; the API key is shown once, here.
#[utoipa::path(tag = "onboarding", request_body = OnboardRequest, responses((status = 202, description = "Accepted: follow `status_url`", body = Onboarded), (status = 422, description = "VALIDATION_FAILED", body = ErrorBody), (status = 409, description = "EMAIL_TAKEN", body = ErrorBody)))]
#[post("/api/v1/customers/onboard")]
pub async fn onboard(
    pool: web::Data<PgPool>,
    waker: web::Data<JobWaker>,
    JsonBody(body): JsonBody<OnboardRequest>,
) -> Result<HttpResponse, ApiError> {
    let email = Email::parse(&body.email).map_err(|e| ApiError::validation(e.0))?;
    let name = CustomerName::parse(&body.name).map_err(|e| ApiError::validation(e.0))?;
    let source = crate::fields::optional_line("source", body.source.as_deref(), SOURCE_MAX_CHARS)?;
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
    if waker.enqueue(&job).await?.is_duplicate() {
        return Err(email_taken());
    }
    tracing::info!(%customer_id, "onboarding accepted");
    Ok(HttpResponse::Accepted().json(Onboarded {
        customer_id,
        api_key: key.expose().to_owned(),
        status_url: format!("/api/v1/onboarding/{customer_id}"),
    }))
}

/// Where an onboarding stands.
#[utoipa::path(operation_id = "onboarding_status", tag = "onboarding", params(("customer_id" = Uuid, Path, description = "From the onboarding answer")), responses((status = 200, description = "Pending, provisioned or failed", body = OnboardingStatus), (status = 404, description = "NOT_FOUND", body = ErrorBody)))]
#[get("/api/v1/onboarding/{customer_id}")]
pub async fn status(pool: web::Data<PgPool>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let customer_id = Uuid::parse_str(&path).map_err(|_| ApiError::not_found("no onboarding with this id"))?;
    let answer = |status: Provisioning, error: Option<ErrorDetail>| {
        HttpResponse::Ok().json(OnboardingStatus { customer_id, status, error })
    };
    if db::customers::exists(pool.get_ref(), customer_id).await? {
        return Ok(answer(Provisioning::Provisioned, None));
    }
    let job = queue::latest_for_customer(pool.get_ref(), ProvisionCustomer::KIND, customer_id).await?;
    match job {
        None => Err(ApiError::not_found("no onboarding with this id")),
        Some(job) if job.status.is_failed() => {
            Ok(answer(Provisioning::Failed, Some(crate::job_failure::describe(&job))))
        }
        // Completed without a customer row cannot happen in one transaction; everything
        // else is on its way.
        Some(_) => Ok(answer(Provisioning::Pending, None)),
    }
}

//! Billing under `/api/v1/billing`: payment methods, the Pro subscription, invoices,
//! and the status of each billing operation. Each write is a job: 202 with a status URL.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, delete, get, post, web};
use chrono::Utc;

use common::db::{self, customers::Customer};
use common::domain::ErrorCode;
use common::jobs::{AddPaymentMethod, CancelSubscription, ResumeSubscription, SubscribePro};
use common::queue::{self, Enqueued, JobKind, JobStatus, JobWaker};
use common::stripe::StripeApi;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Authenticated;
use crate::errors::ApiError;
use crate::extract::JsonBody;
use crate::openapi::{ErrorBody, ErrorDetail};

/// `202` for a billing write: follow `status_url`.
#[derive(Serialize, ToSchema)]
pub struct OperationAccepted {
    /// Always `pending`.
    #[schema(example = "pending")]
    status: &'static str,
    /// What is being done, e.g. `subscribe_pro`.
    operation: &'static str,
    /// Absent only when an identical request is already queued under its unique key.
    #[serde(skip_serializing_if = "Option::is_none")]
    operation_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_url: Option<String>,
}

fn billing_disabled() -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::ServiceUnavailable, "billing is not configured")
}

pub fn require_billing(stripe: &Option<StripeApi>) -> Result<&StripeApi, ApiError> {
    stripe.as_ref().ok_or_else(billing_disabled)
}

/// 202 with where to follow the operation.
fn accepted<J: JobKind>(enqueued: Enqueued) -> HttpResponse {
    let operation_id = match enqueued {
        Enqueued::Inserted(id) => Some(id),
        Enqueued::Duplicate => None,
    };
    HttpResponse::Accepted().json(OperationAccepted {
        status: "pending",
        operation: J::KIND,
        operation_id,
        status_url: operation_id.map(|id| format!("/api/v1/billing/operations/{id}")),
    })
}

#[derive(Deserialize, ToSchema)]
pub struct PaymentMethodRequest {
    /// A Stripe payment method id, from Stripe.js.
    #[schema(pattern = "^pm_[A-Za-z0-9_]{1,100}$")]
    payment_method_id: String,
    /// The customer's consent to be billed with this payment method: must be `true`.
    #[serde(default)]
    #[schema(schema_with = must_be_true, required = true)]
    consent: Option<bool>,
}

fn must_be_true() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new().schema_type(utoipa::openapi::Type::Boolean).enum_values(Some([true])).build()
}

fn valid_payment_method_id(id: &str) -> bool {
    id.strip_prefix("pm_").is_some_and(|rest| {
        !rest.is_empty() && rest.len() <= 100 && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    })
}

/// Add a payment method (the customer's consent required); the first one grants 5 credits.
#[utoipa::path(tag = "billing", security(("api_key" = [])), request_body = PaymentMethodRequest, responses((status = 202, description = "Accepted: poll `status_url`", body = OperationAccepted), (status = 422, description = "BILLING_CONSENT_REQUIRED or VALIDATION_FAILED", body = ErrorBody), (status = 503, description = "SERVICE_UNAVAILABLE: billing is not configured", body = ErrorBody)))]
#[post("/api/v1/billing/payment-methods")]
pub async fn add_payment_method(
    waker: web::Data<JobWaker>,
    stripe: web::Data<Option<StripeApi>>,
    auth: Authenticated,
    JsonBody(body): JsonBody<PaymentMethodRequest>,
) -> Result<HttpResponse, ApiError> {
    require_billing(&stripe)?;
    let enqueued = add_payment_method_for(&waker, auth.customer_id, body.payment_method_id, body.consent).await?;
    Ok(accepted::<AddPaymentMethod>(enqueued))
}

/// Adds a payment method for the customer, with their consent (the API's and the
/// dashboard's way alike).
pub async fn add_payment_method_for(
    waker: &JobWaker,
    customer_id: Uuid,
    payment_method_id: String,
    consent: Option<bool>,
) -> Result<Enqueued, ApiError> {
    if consent != Some(true) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::BillingConsentRequired,
            "adding a payment method needs the customer's consent to be billed: send \"consent\": true",
        ));
    }
    if !valid_payment_method_id(&payment_method_id) {
        return Err(ApiError::validation("payment_method_id must be a Stripe payment method id (pm_…)"));
    }
    let job = AddPaymentMethod { customer_id, payment_method_id, operation_id: Uuid::new_v4(), consent_at: Utc::now() };
    Ok(waker.enqueue(&job).await?)
}

/// A customer-level intent (subscribe, cancel, resume), decided under the customer's row
/// lock: however many requests race (a double click, a client retry without an
/// `Idempotency-Key`, two devices), one such operation is unfinished at a time, and a
/// request that finds one is answered with it (202, the same `operation_id`). `same`
/// picks the pending jobs that carry this intent (a subset of their args); `decide`
/// refuses or builds the job from the locked customer.
async fn intend<J: JobKind>(
    pool: &PgPool,
    customer_id: Uuid,
    same: serde_json::Value,
    decide: impl FnOnce(&Customer) -> Result<J, ApiError>,
) -> Result<Enqueued, ApiError> {
    let mut tx = pool.begin().await?;
    let Some(customer) = db::customers::lock(&mut *tx, customer_id).await? else {
        return Err(ApiError::unauthorized("Invalid or expired API key"));
    };
    if let Some(pending) = queue::unfinished_for_customer(&mut *tx, J::KIND, customer_id, &same).await? {
        return Ok(Enqueued::Inserted(pending));
    }
    let job = decide(&customer)?;
    // In the deciding transaction, so the next request under the lock sees this job.
    let enqueued = queue::enqueue(&mut *tx, &job).await?;
    tx.commit().await?;
    Ok(enqueued)
}

fn no_active_subscription() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NoActiveSubscription, "no active subscription")
}

/// Subscribe to Pro (one subscription per customer).
#[utoipa::path(operation_id = "subscribe", tag = "billing", security(("api_key" = [])), responses((status = 202, description = "Accepted: poll `status_url`. While a subscribe is pending, every further subscribe answers this same operation.", body = OperationAccepted), (status = 422, description = "NO_PAYMENT_METHOD", body = ErrorBody), (status = 409, description = "ALREADY_SUBSCRIBED", body = ErrorBody), (status = 503, description = "SERVICE_UNAVAILABLE: billing is not configured", body = ErrorBody)))]
#[post("/api/v1/billing/subscription")]
pub async fn subscribe(
    pool: web::Data<PgPool>,
    stripe: web::Data<Option<StripeApi>>,
    auth: Authenticated,
) -> Result<HttpResponse, ApiError> {
    require_billing(&stripe)?;
    Ok(accepted::<SubscribePro>(subscribe_for(&pool, auth.customer_id).await?))
}

/// Subscribes the customer to Pro (the API's and the dashboard's way alike).
pub async fn subscribe_for(pool: &PgPool, customer_id: Uuid) -> Result<Enqueued, ApiError> {
    intend(pool, customer_id, serde_json::json!({}), |customer| {
        if customer.stripe_subscription_id.is_some() {
            return Err(ApiError::new(StatusCode::CONFLICT, ErrorCode::AlreadySubscribed, "already subscribed to Pro"));
        }
        if !customer.has_payment_method() {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::NoPaymentMethod,
                "subscribing to Pro needs a payment method: add one first",
            ));
        }
        Ok(SubscribePro { customer_id: customer.id, operation_id: Uuid::new_v4() })
    })
    .await
}

#[derive(Deserialize)]
pub struct CancelQuery {
    at_period_end: Option<bool>,
}

/// Cancel Pro, at the end of the paid period (default) or now.
#[utoipa::path(operation_id = "cancel_subscription", tag = "billing", security(("api_key" = [])), params(("at_period_end" = Option<bool>, Query, description = "Default true: keep Pro until the paid period ends")), responses((status = 202, description = "Accepted: poll `status_url`. While the same cancellation is pending, a repeat answers that operation.", body = OperationAccepted), (status = 404, description = "NO_ACTIVE_SUBSCRIPTION", body = ErrorBody), (status = 503, description = "SERVICE_UNAVAILABLE: billing is not configured", body = ErrorBody)))]
#[delete("/api/v1/billing/subscription")]
pub async fn cancel(
    req: HttpRequest,
    pool: web::Data<PgPool>,
    stripe: web::Data<Option<StripeApi>>,
    auth: Authenticated,
) -> Result<HttpResponse, ApiError> {
    require_billing(&stripe)?;
    let query = web::Query::<CancelQuery>::from_query(req.query_string())
        .map_err(|_| ApiError::validation("at_period_end must be true or false"))?;
    // The default keeps what the customer has paid for until the period ends.
    let at_period_end = query.at_period_end.unwrap_or(true);
    Ok(accepted::<CancelSubscription>(cancel_for(&pool, auth.customer_id, at_period_end).await?))
}

/// Cancels the customer's Pro, now or at the period's end (the API's and the
/// dashboard's way alike).
pub async fn cancel_for(pool: &PgPool, customer_id: Uuid, at_period_end: bool) -> Result<Enqueued, ApiError> {
    intend(pool, customer_id, serde_json::json!({ "at_period_end": at_period_end }), |customer| {
        if customer.stripe_subscription_id.is_none() {
            return Err(no_active_subscription());
        }
        Ok(CancelSubscription { customer_id: customer.id, operation_id: Uuid::new_v4(), at_period_end })
    })
    .await
}

/// Withdraw a cancellation scheduled for the period's end.
#[utoipa::path(operation_id = "resume_subscription", tag = "billing", security(("api_key" = [])), responses((status = 202, description = "Accepted: the scheduled cancellation is being withdrawn; poll `status_url`", body = OperationAccepted), (status = 404, description = "NO_ACTIVE_SUBSCRIPTION", body = ErrorBody), (status = 409, description = "NO_SCHEDULED_CANCELLATION", body = ErrorBody), (status = 503, description = "SERVICE_UNAVAILABLE: billing is not configured", body = ErrorBody)))]
#[post("/api/v1/billing/subscription/resume")]
pub async fn resume(
    pool: web::Data<PgPool>,
    stripe: web::Data<Option<StripeApi>>,
    auth: Authenticated,
) -> Result<HttpResponse, ApiError> {
    require_billing(&stripe)?;
    Ok(accepted::<ResumeSubscription>(resume_for(&pool, auth.customer_id).await?))
}

/// Withdraws the customer's scheduled cancellation (the API's and the dashboard's way alike).
pub async fn resume_for(pool: &PgPool, customer_id: Uuid) -> Result<Enqueued, ApiError> {
    intend(pool, customer_id, serde_json::json!({}), |customer| {
        if customer.stripe_subscription_id.is_none() {
            return Err(no_active_subscription());
        }
        if !customer.cancel_at_period_end {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::NoScheduledCancellation,
                "no cancellation is scheduled: the subscription renews already",
            ));
        }
        Ok(ResumeSubscription { customer_id: customer.id, operation_id: Uuid::new_v4() })
    })
    .await
}

#[derive(Serialize, ToSchema)]
pub struct Invoice {
    id: String,
    /// Stripe's invoice status, e.g. `paid`, `open`.
    status: Option<String>,
    /// In the currency's smallest unit (cents).
    amount_due: i64,
    amount_paid: i64,
    currency: Option<String>,
    /// Unix seconds.
    period_start: Option<i64>,
    period_end: Option<i64>,
    hosted_invoice_url: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct InvoiceList {
    invoices: Vec<Invoice>,
}

/// The customer's invoices at Stripe, newest first.
#[utoipa::path(operation_id = "list_invoices", tag = "billing", security(("api_key" = [])), responses((status = 200, description = "The invoices", body = InvoiceList), (status = 503, description = "SERVICE_UNAVAILABLE: billing is not configured or Stripe is unreachable", body = ErrorBody)))]
#[get("/api/v1/billing/invoices")]
pub async fn invoices(
    pool: web::Data<PgPool>,
    stripe: web::Data<Option<StripeApi>>,
    auth: Authenticated,
) -> Result<HttpResponse, ApiError> {
    let stripe = require_billing(&stripe)?;
    let customer = auth.customer(&pool).await?;
    let Some(stripe_customer) = customer.stripe_customer_id else {
        return Ok(HttpResponse::Ok().json(InvoiceList { invoices: Vec::new() }));
    };
    let invoices = stripe.invoices(&stripe_customer, None).await.map_err(|error| {
        tracing::warn!(customer_id = %customer.id, %error, "listing invoices failed");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::ServiceUnavailable,
            "invoices are unavailable, retry shortly",
        )
    })?;
    let invoices = invoices
        .iter()
        .map(|i| Invoice {
            id: i.id.clone(),
            status: i.status.clone(),
            amount_due: i.amount_due,
            amount_paid: i.amount_paid,
            currency: i.currency.clone(),
            period_start: i.period_start,
            period_end: i.period_end,
            hosted_invoice_url: i.hosted_invoice_url.clone(),
        })
        .collect();
    Ok(HttpResponse::Ok().json(InvoiceList { invoices }))
}

#[derive(Serialize, ToSchema, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OperationState {
    Pending,
    Succeeded,
    Failed,
}

#[derive(Serialize, ToSchema)]
pub struct OperationStatus {
    operation_id: i64,
    /// What is being done, e.g. `subscribe_pro`.
    operation: String,
    status: OperationState,
    /// What the operation produced (`succeeded` only).
    result: Option<serde_json::Value>,
    /// Why it failed (`failed` only).
    error: Option<ErrorDetail>,
}

/// Where a billing operation stands.
#[utoipa::path(operation_id = "show_operation", tag = "billing", security(("api_key" = [])), params(("operation_id" = i64, Path, minimum = 1)), responses((status = 200, description = "Pending, succeeded or failed", body = OperationStatus), (status = 404, description = "NOT_FOUND: no such operation of this customer", body = ErrorBody)))]
#[get("/api/v1/billing/operations/{operation_id}")]
pub async fn operation(
    pool: web::Data<PgPool>,
    auth: Authenticated,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let Some((kind, job)) = queue::for_customer(pool.get_ref(), path.into_inner(), auth.customer_id).await? else {
        return Err(ApiError::not_found("no such operation"));
    };
    let state = match job.status {
        JobStatus::Completed => OperationState::Succeeded,
        status if status.is_failed() => OperationState::Failed,
        _ => OperationState::Pending,
    };
    let error = (state == OperationState::Failed).then(|| crate::job_failure::describe(&job));
    Ok(HttpResponse::Ok().json(OperationStatus {
        operation_id: job.id,
        operation: kind,
        status: state,
        result: job.result.filter(|_| state == OperationState::Succeeded),
        error,
    }))
}

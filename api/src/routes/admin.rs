//! The admin API under `/admin/api` (bearer `ADMIN_TOKEN`): queues, jobs, and
//! redrive, discard and cancel; credit adjustments; the audit log. Every action is
//! appended to the audit log with the actor `admin-api`.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use common::db;
use common::domain::ErrorCode;
use common::jobs;
use common::operator::{self, AdjustError};
use common::queue::JobStatus;
use common::queue::admin::{self, AdminError, JobFilter};
use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::admin_auth::AdminApi;
use crate::errors::ApiError;

impl From<AdminError> for ApiError {
    fn from(error: AdminError) -> Self {
        match error {
            AdminError::NotFound(_) => ApiError::not_found(error.to_string()),
            AdminError::WrongState { .. } | AdminError::KeyTaken(_) => {
                ApiError::new(StatusCode::CONFLICT, ErrorCode::Conflict, error.to_string())
            }
            AdminError::Database(_) => {
                tracing::error!(%error, "admin operation failed");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::InternalError, "internal error")
            }
        }
    }
}

/// Who the audit log names for actions taken through this API.
const ACTOR: &str = "admin-api";

impl From<AdjustError> for ApiError {
    fn from(error: AdjustError) -> Self {
        match error {
            AdjustError::Invalid(message) => ApiError::validation(message),
            AdjustError::CustomerNotFound(_) => ApiError::not_found(error.to_string()),
            AdjustError::WouldGoNegative { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::InsufficientCredits, error.to_string())
            }
            AdjustError::KeyReused { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::IdempotencyKeyReused, error.to_string())
            }
            AdjustError::Database(e) => e.into(),
        }
    }
}

pub fn kinds() -> Vec<&'static str> {
    jobs::kinds().into_iter().map(|(kind, _)| kind).collect()
}

pub async fn queues(_: AdminApi, pool: web::Data<PgPool>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(serde_json::json!({ "queues": admin::overview(pool.get_ref(), &kinds()).await? })))
}

#[derive(Deserialize)]
pub struct ListQuery {
    queue: Option<String>,
    state: Option<String>,
    customer_id: Option<Uuid>,
    before: Option<i64>,
    limit: Option<i64>,
}

pub async fn list(_: AdminApi, req: HttpRequest, pool: web::Data<PgPool>) -> Result<HttpResponse, ApiError> {
    let query = web::Query::<ListQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::validation(format!("query: {e}")))?
        .into_inner();
    let status = match query.state.as_deref().map(|state| JobStatus::parse(state).ok_or(state)) {
        None => None,
        Some(Ok(status)) => Some(status),
        Some(Err(_)) => {
            let states: Vec<_> = JobStatus::ALL.iter().map(|status| status.as_str()).collect();
            return Err(ApiError::validation(format!("state must be one of {}", states.join(", "))));
        }
    };
    let limit = query.limit.unwrap_or(50).clamp(1, 500);
    let filter =
        JobFilter { queue: query.queue, status, customer_id: query.customer_id, before_id: query.before, limit };
    let jobs = admin::list(pool.get_ref(), &filter).await?;
    let next = (jobs.len() as i64 == limit).then(|| jobs.last().map(|j| j.id)).flatten();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "jobs": jobs, "next_before": next })))
}

pub async fn detail(_: AdminApi, pool: web::Data<PgPool>, id: web::Path<i64>) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let job = admin::detail(pool.get_ref(), id).await?.ok_or(AdminError::NotFound(id))?;
    Ok(HttpResponse::Ok().json(job))
}

pub async fn redrive(_: AdminApi, pool: web::Data<PgPool>, id: web::Path<i64>) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    admin::redrive(pool.get_ref(), id, ACTOR).await?;
    tracing::info!(job_id = id, "job redriven by an operator");
    Ok(HttpResponse::Ok().json(serde_json::json!({ "id": id, "status": "available" })))
}

pub async fn redrive_queue(
    _: AdminApi,
    pool: web::Data<PgPool>,
    queue: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let queue = queue.into_inner();
    if !kinds().contains(&queue.as_str()) {
        return Err(ApiError::not_found(format!("no queue {queue}")));
    }
    let redriven = admin::redrive_all(pool.get_ref(), &queue, ACTOR).await?;
    tracing::info!(%queue, redriven, "dead jobs redriven by an operator");
    Ok(HttpResponse::Ok().json(serde_json::json!({ "queue": queue, "redriven": redriven })))
}

pub async fn discard(_: AdminApi, pool: web::Data<PgPool>, id: web::Path<i64>) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    admin::discard(pool.get_ref(), id, ACTOR).await?;
    tracing::info!(job_id = id, "job discarded by an operator");
    Ok(HttpResponse::Ok().json(serde_json::json!({ "id": id, "discarded": true })))
}

pub async fn cancel(_: AdminApi, pool: web::Data<PgPool>, id: web::Path<i64>) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    admin::cancel(pool.get_ref(), id, ACTOR).await?;
    tracing::info!(job_id = id, "job cancelled by an operator");
    Ok(HttpResponse::Ok().json(serde_json::json!({ "id": id, "status": "cancelled" })))
}

#[derive(Deserialize)]
pub struct CreditAdjustment {
    amount: i64,
    reason: String,
}

/// `POST /admin/api/customers/{id}/credits` `{amount, reason}`: a grant (> 0) or a revoke
/// (< 0) through the ledger, never below zero; an `Idempotency-Key` posts it once.
pub async fn adjust_credits(
    _: AdminApi,
    req: HttpRequest,
    pool: web::Data<PgPool>,
    customer: web::Path<Uuid>,
    body: crate::extract::JsonBody<CreditAdjustment>,
) -> Result<HttpResponse, ApiError> {
    let key = match req.headers().get("idempotency-key") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .map(str::trim)
                .filter(|k| !k.is_empty() && k.len() <= 255)
                .ok_or_else(|| ApiError::validation("Idempotency-Key must be 1 to 255 visible ASCII characters"))?,
        ),
    };
    let body = body.0;
    let adjusted =
        operator::adjust_credits(pool.get_ref(), ACTOR, customer.into_inner(), body.amount, &body.reason, key).await?;
    let status = if adjusted.duplicate { StatusCode::OK } else { StatusCode::CREATED };
    Ok(HttpResponse::build(status).json(adjusted))
}

#[derive(Deserialize)]
pub struct AuditQuery {
    before: Option<i64>,
    limit: Option<i64>,
}

/// `GET /admin/api/audit`: the audit log, newest first (`before` pages on).
pub async fn audit(_: AdminApi, req: HttpRequest, pool: web::Data<PgPool>) -> Result<HttpResponse, ApiError> {
    let query = web::Query::<AuditQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::validation(format!("query: {e}")))?
        .into_inner();
    let limit = query.limit.unwrap_or(50).clamp(1, 500);
    let entries = db::audit::recent(pool.get_ref(), query.before, limit).await?;
    let next = (entries.len() as i64 == limit).then(|| entries.last().map(|e| e.id)).flatten();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "entries": entries, "next_before": next })))
}

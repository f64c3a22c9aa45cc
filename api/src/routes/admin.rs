//! The admin API under `/admin/api` (bearer `ADMIN_TOKEN`): queues, jobs, and
//! redrive, discard and cancel; credit adjustments; the audit log. Every action is
//! appended to the audit log with the actor `admin-api`.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, delete, get, post, web};
use common::db;
use common::db::audit::AuditEntry;
use common::domain::ErrorCode;
use common::jobs;
use common::operator::Adjusted;
use common::operator::{self, AdjustError};
use common::queue::JobStatus;
use common::queue::admin::{self, AdminError, JobDetail, JobFilter, JobSummary, QueueStats};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::admin_auth::AdminApi;
use crate::errors::ApiError;
use crate::openapi::ErrorBody;

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

/// The shape of a job kind (`^[a-z0-9_]{1,64}$`, as the document says).
fn is_kind_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

pub fn kinds() -> Vec<&'static str> {
    jobs::kinds().into_iter().map(|(kind, _)| kind).collect()
}

#[derive(Serialize, ToSchema)]
pub struct Queues {
    /// One per job kind this build runs, empty ones included.
    queues: Vec<QueueStats>,
}

/// Every queue's counts by state, and how long its oldest due job has waited.
#[utoipa::path(operation_id = "list_queues", tag = "admin", security(("admin_token" = [])), responses((status = 200, description = "The queues", body = Queues), (status = 404, description = "NOT_FOUND: admin is off (no `ADMIN_TOKEN`)", body = ErrorBody)))]
#[get("/admin/api/queues")]
pub async fn queues(_: AdminApi, pool: web::Data<PgPool>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(Queues { queues: admin::overview(pool.get_ref(), &kinds()).await? }))
}

#[derive(Deserialize)]
pub struct ListQuery {
    queue: Option<String>,
    state: Option<String>,
    customer_id: Option<Uuid>,
    before: Option<i64>,
    limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct JobList {
    /// Newest first.
    jobs: Vec<JobSummary>,
    /// Pass as `before` for the next page; none on the last.
    next_before: Option<i64>,
}

/// Jobs, newest first, filtered by queue, state and customer.
#[utoipa::path(operation_id = "list_jobs", tag = "admin", security(("admin_token" = [])),
    params(
        ("queue" = Option<String>, Query, description = "A job kind, e.g. `grant_credits`", pattern = "^[a-z0-9_]{1,64}$"),
        ("state" = Option<JobStatus>, Query),
        ("customer_id" = Option<Uuid>, Query),
        ("before" = Option<i64>, Query, description = "Jobs with a smaller id (the previous page's `next_before`)"),
        ("limit" = Option<i64>, Query, description = "1 to 500 (default 50; others are clamped)"),
    ),
    responses((status = 200, description = "A page of jobs", body = JobList), (status = 404, description = "NOT_FOUND: admin is off", body = ErrorBody)))]
#[get("/admin/api/jobs")]
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
    if query.queue.as_deref().is_some_and(|queue| !is_kind_name(queue)) {
        return Err(ApiError::validation("queue must be a job kind: 1 to 64 of a-z, 0-9 and _"));
    }
    let limit = query.limit.unwrap_or(50).clamp(1, 500);
    let filter =
        JobFilter { queue: query.queue, status, customer_id: query.customer_id, before_id: query.before, limit };
    let jobs = admin::list(pool.get_ref(), &filter).await?;
    let next = (jobs.len() as i64 == limit).then(|| jobs.last().map(|j| j.id)).flatten();
    Ok(HttpResponse::Ok().json(JobList { jobs, next_before: next }))
}

/// One job: its arguments (secrets redacted), result, every failed attempt.
#[utoipa::path(operation_id = "show_job", tag = "admin", security(("admin_token" = [])), params(("id" = i64, Path)), responses((status = 200, description = "The job", body = JobDetail), (status = 404, description = "NOT_FOUND: no such job, or admin is off", body = ErrorBody)))]
#[get("/admin/api/jobs/{id}")]
pub async fn detail(_: AdminApi, pool: web::Data<PgPool>, id: web::Path<i64>) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let job = admin::detail(pool.get_ref(), id).await?.ok_or(AdminError::NotFound(id))?;
    Ok(HttpResponse::Ok().json(job))
}

#[derive(Serialize, ToSchema)]
pub struct JobMoved {
    id: i64,
    /// Where the job is now.
    status: JobStatus,
}

/// Run a dead, cancelled or retrying job again, now, with a fresh attempt budget.
#[utoipa::path(operation_id = "redrive_job", tag = "admin", security(("admin_token" = [])), params(("id" = i64, Path)), responses((status = 200, description = "Redriven", body = JobMoved), (status = 404, description = "NOT_FOUND: no such job, or admin is off", body = ErrorBody), (status = 409, description = "CONFLICT: the job is not in a state that can be redriven, or its unique key is taken", body = ErrorBody)))]
#[post("/admin/api/jobs/{id}/redrive")]
pub async fn redrive(_: AdminApi, pool: web::Data<PgPool>, id: web::Path<i64>) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    admin::redrive(pool.get_ref(), id, ACTOR).await?;
    tracing::info!(job_id = id, "job redriven by an operator");
    Ok(HttpResponse::Ok().json(JobMoved { id, status: JobStatus::Available }))
}

#[derive(Serialize, ToSchema)]
pub struct QueueRedriven {
    queue: String,
    /// How many dead jobs were redriven.
    redriven: u64,
}

/// Redrive every dead job of a queue.
#[utoipa::path(operation_id = "redrive_queue", tag = "admin", security(("admin_token" = [])), params(("queue" = String, Path, description = "A job kind", pattern = "^[a-z0-9_]{1,64}$")), responses((status = 200, description = "Redriven", body = QueueRedriven), (status = 404, description = "NOT_FOUND: no such queue, or admin is off", body = ErrorBody)))]
#[post("/admin/api/queues/{queue}/redrive")]
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
    Ok(HttpResponse::Ok().json(QueueRedriven { queue, redriven }))
}

#[derive(Serialize, ToSchema)]
pub struct JobDiscarded {
    id: i64,
    discarded: bool,
}

async fn discard_job(pool: &PgPool, id: i64) -> Result<HttpResponse, ApiError> {
    admin::discard(pool, id, ACTOR).await?;
    tracing::info!(job_id = id, "job discarded by an operator");
    Ok(HttpResponse::Ok().json(JobDiscarded { id, discarded: true }))
}

/// Delete a finished job (dead, cancelled or completed) from the history.
#[utoipa::path(operation_id = "discard_job", tag = "admin", security(("admin_token" = [])), params(("id" = i64, Path)), responses((status = 200, description = "Discarded", body = JobDiscarded), (status = 404, description = "NOT_FOUND: no such job, or admin is off", body = ErrorBody), (status = 409, description = "CONFLICT: the job is not finished", body = ErrorBody)))]
#[delete("/admin/api/jobs/{id}")]
pub async fn discard(_: AdminApi, pool: web::Data<PgPool>, id: web::Path<i64>) -> Result<HttpResponse, ApiError> {
    discard_job(pool.get_ref(), id.into_inner()).await
}

/// The same as `DELETE /admin/api/jobs/{id}`, for clients that only `POST`.
#[utoipa::path(operation_id = "discard_job_by_post", tag = "admin", security(("admin_token" = [])), params(("id" = i64, Path)), responses((status = 200, description = "Discarded", body = JobDiscarded), (status = 404, description = "NOT_FOUND: no such job, or admin is off", body = ErrorBody), (status = 409, description = "CONFLICT: the job is not finished", body = ErrorBody)))]
#[post("/admin/api/jobs/{id}/discard")]
pub async fn discard_by_post(
    _: AdminApi,
    pool: web::Data<PgPool>,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    discard_job(pool.get_ref(), id.into_inner()).await
}

/// Stop a job that has not finished: it will not run again.
#[utoipa::path(operation_id = "cancel_job", tag = "admin", security(("admin_token" = [])), params(("id" = i64, Path)), responses((status = 200, description = "Cancelled", body = JobMoved), (status = 404, description = "NOT_FOUND: no such job, or admin is off", body = ErrorBody), (status = 409, description = "CONFLICT: the job has finished", body = ErrorBody)))]
#[post("/admin/api/jobs/{id}/cancel")]
pub async fn cancel(_: AdminApi, pool: web::Data<PgPool>, id: web::Path<i64>) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    admin::cancel(pool.get_ref(), id, ACTOR).await?;
    tracing::info!(job_id = id, "job cancelled by an operator");
    Ok(HttpResponse::Ok().json(JobMoved { id, status: JobStatus::Cancelled }))
}

#[derive(Deserialize, ToSchema)]
pub struct CreditAdjustment {
    /// A grant (> 0) or a revoke (< 0), at most 1,000,000 either way.
    #[schema(schema_with = adjustment_amount)]
    #[serde(deserialize_with = "common::domain::integral")]
    amount: i64,
    /// Why, for the audit log.
    #[schema(
        min_length = 1,
        max_length = 500,
        pattern = r"^[^\x00-\x1f\x7f-\x9f\xad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]*[^\s\x00-\x1f\x7f-\x9f\xad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb][^\x00-\x1f\x7f-\x9f\xad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]*$"
    )]
    reason: String,
}

fn adjustment_amount() -> utoipa::openapi::Schema {
    use utoipa::openapi::{ObjectBuilder, Type};
    let range = |low: i64, high: i64| {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::Int64)))
            .minimum(Some(low))
            .maximum(Some(high))
    };
    utoipa::openapi::schema::OneOfBuilder::new()
        .item(range(-common::operator::MAX_ADJUSTMENT, -1))
        .item(range(1, common::operator::MAX_ADJUSTMENT))
        .build()
        .into()
}

/// A grant or a revoke through the ledger, never below zero; an `Idempotency-Key` posts
/// it once.
#[utoipa::path(operation_id = "adjust_credits", tag = "admin", security(("admin_token" = [])), request_body = CreditAdjustment,
    params(("id" = Uuid, Path, description = "The customer"), ("Idempotency-Key" = Option<String>, Header, description = "Posts the adjustment once: a repeat answers 200 with the first entry", min_length = 1, max_length = 255, pattern = "^[!-~]+$")),
    responses((status = 201, description = "Posted", body = Adjusted), (status = 200, description = "Posted before under this Idempotency-Key: nothing moved now", body = Adjusted), (status = 404, description = "NOT_FOUND: no such customer, or admin is off", body = ErrorBody), (status = 422, description = "VALIDATION_FAILED, INSUFFICIENT_CREDITS or IDEMPOTENCY_KEY_REUSED", body = ErrorBody)))]
#[post("/admin/api/customers/{id}/credits")]
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
                .filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()))
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

#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    /// Newest first.
    entries: Vec<AuditEntry>,
    /// Pass as `before` for the next page; none on the last.
    next_before: Option<i64>,
}

/// The audit log, newest first.
#[utoipa::path(operation_id = "list_audit_entries", tag = "admin", security(("admin_token" = [])),
    params(
        ("before" = Option<i64>, Query, description = "Entries with a smaller id (the previous page's `next_before`)"),
        ("limit" = Option<i64>, Query, description = "1 to 500 (default 50; others are clamped)"),
    ),
    responses((status = 200, description = "A page of the audit log", body = AuditPage), (status = 404, description = "NOT_FOUND: admin is off", body = ErrorBody)))]
#[get("/admin/api/audit")]
pub async fn audit(_: AdminApi, req: HttpRequest, pool: web::Data<PgPool>) -> Result<HttpResponse, ApiError> {
    let query = web::Query::<AuditQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::validation(format!("query: {e}")))?
        .into_inner();
    let limit = query.limit.unwrap_or(50).clamp(1, 500);
    let entries = db::audit::recent(pool.get_ref(), query.before, limit).await?;
    let next = (entries.len() as i64 == limit).then(|| entries.last().map(|e| e.id)).flatten();
    Ok(HttpResponse::Ok().json(AuditPage { entries, next_before: next }))
}

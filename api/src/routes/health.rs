//! `GET /health` and `GET /ready`, for load balancers and orchestrators.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, get, web};
use common::db;
use common::domain::ErrorCode;
use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;

use crate::errors::ApiError;

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok` (alive) or `ready` (serving).
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// The process is alive.
#[utoipa::path(tag = "health", responses((status = 200, description = "The process is alive", body = Health)))]
#[get("/health")]
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok" })
}

/// The database answers and every migration is applied.
#[utoipa::path(tag = "health", responses((status = 200, description = "Database reachable, migrations applied", body = Health), (status = 503, description = "SERVICE_UNAVAILABLE: not ready", body = crate::openapi::ErrorBody)))]
#[get("/ready")]
pub async fn ready(pool: web::Data<PgPool>) -> Result<HttpResponse, ApiError> {
    let unavailable =
        |message: &str| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::ServiceUnavailable, message);
    match db::is_ready(&pool).await {
        Ok(true) => Ok(HttpResponse::Ok().json(Health { status: "ready" })),
        Ok(false) => Err(unavailable("database migrations are not applied")),
        Err(error) => {
            tracing::warn!(%error, "readiness check failed");
            Err(unavailable("database unreachable"))
        }
    }
}

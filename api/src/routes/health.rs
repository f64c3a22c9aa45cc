use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use common::db;
use common::domain::ErrorCode;
use sqlx::PgPool;

use crate::errors::ApiError;

/// `GET /health`: the process is alive.
#[utoipa::path(get, path = "/health", tag = "health", responses((status = 200, description = "The process is alive")))]
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

/// `GET /ready`: the database answers and every migration is applied.
#[utoipa::path(get, path = "/ready", tag = "health", responses((status = 200, description = "Database reachable, migrations applied"), (status = 503, description = "Not ready", body = crate::openapi::ErrorBody)))]
pub async fn ready(pool: web::Data<PgPool>) -> Result<HttpResponse, ApiError> {
    let unavailable =
        |message: &str| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::ServiceUnavailable, message);
    match db::is_ready(&pool).await {
        Ok(true) => Ok(HttpResponse::Ok().json(serde_json::json!({ "status": "ready" }))),
        Ok(false) => Err(unavailable("database migrations are not applied")),
        Err(error) => {
            tracing::warn!(%error, "readiness check failed");
            Err(unavailable("database unreachable"))
        }
    }
}

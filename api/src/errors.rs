//! The one error body: `{"error": {"message": "...", "code": "..."}}`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use common::domain::ErrorCode;

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }

    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::ValidationFailed, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    /// The body the OpenAPI document describes (`openapi::ErrorBody`), so the two agree.
    fn error_response(&self) -> HttpResponse {
        let detail = crate::openapi::ErrorDetail { message: self.message.clone(), code: self.code };
        HttpResponse::build(self.status).json(crate::openapi::ErrorBody { error: detail })
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        match error {
            // No connection in time, or it broke: the database is down or saturated. Say
            // so quickly rather than hang; clients retry.
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed | sqlx::Error::Protocol(_) => {
                unavailable(&error)
            }
            // Connection exceptions (08) and operator intervention (57: shutdown, restart).
            sqlx::Error::Database(ref e) if e.code().is_some_and(|c| c.starts_with("08") || c.starts_with("57")) => {
                unavailable(&error)
            }
            error => {
                tracing::error!(%error, "database error");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::InternalError, "internal error")
            }
        }
    }
}

fn unavailable(error: &sqlx::Error) -> ApiError {
    tracing::warn!(%error, "database unavailable");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::ServiceUnavailable,
        "the service is temporarily unavailable, retry shortly",
    )
}

/// For unknown paths.
pub async fn not_found() -> HttpResponse {
    ApiError::not_found("no such route").error_response()
}

/// For a known path with a method it does not serve; `allow` names the ones it does.
pub fn method_not_allowed(allow: &str) -> HttpResponse {
    let mut response =
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, ErrorCode::MethodNotAllowed, "method not allowed on this route")
            .error_response();
    if let Ok(value) = actix_web::http::header::HeaderValue::from_str(allow) {
        response.headers_mut().insert(actix_web::http::header::ALLOW, value);
    }
    response
}

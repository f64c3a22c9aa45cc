//! `GET /email/unsubscribe?token=…` (the link in every email) and the one-click
//! `POST` of the same URL that mail clients send for `List-Unsubscribe-Post` (RFC 8058).

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use common::config::Settings;
use common::db;
use common::domain::ErrorCode;
use common::email::unsubscribe;
use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::errors::ApiError;

#[derive(Deserialize)]
struct TokenQuery {
    token: String,
}

fn bad_token() -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::ValidationFailed, "the unsubscribe link is invalid")
}

async fn unsubscribe_from(req: &HttpRequest, pool: &PgPool, settings: &Settings) -> Result<Uuid, ApiError> {
    let query = web::Query::<TokenQuery>::from_query(req.query_string()).map_err(|_| bad_token())?;
    let customer_id = unsubscribe::verify(&settings.unsubscribe_secret, &query.token).ok_or_else(bad_token)?;
    if db::customers::unsubscribed(pool, customer_id).await?.is_none() {
        return Err(bad_token());
    }
    if db::customers::unsubscribe(pool, customer_id).await? {
        tracing::info!(%customer_id, "customer unsubscribed from email");
    }
    Ok(customer_id)
}

#[utoipa::path(get, path = "/email/unsubscribe", tag = "email", params(("token" = String, Query)), responses((status = 200, description = "HTML confirmation"), (status = 400, description = "Invalid token", body = crate::openapi::ErrorBody)))]
pub async fn unsubscribe_page(
    req: HttpRequest,
    pool: web::Data<PgPool>,
    settings: web::Data<Settings>,
) -> Result<HttpResponse, ApiError> {
    unsubscribe_from(&req, &pool, &settings).await?;
    Ok(HttpResponse::Ok().content_type("text/html; charset=utf-8").body(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Unsubscribed</title></head>\
         <body style=\"font-family:sans-serif;max-width:32rem;margin:4rem auto\"><h1>You are unsubscribed</h1>\
         <p>RSOLV will send you no more onboarding or reminder emails. Billing notices about failed payments \
         still reach you.</p></body></html>",
    ))
}

#[utoipa::path(post, path = "/email/unsubscribe", tag = "email", params(("token" = String, Query)), responses((status = 200, description = "One-click unsubscribe (RFC 8058)"), (status = 400, description = "Invalid token", body = crate::openapi::ErrorBody)))]
pub async fn unsubscribe_one_click(
    req: HttpRequest,
    pool: web::Data<PgPool>,
    settings: web::Data<Settings>,
) -> Result<HttpResponse, ApiError> {
    let customer_id = unsubscribe_from(&req, &pool, &settings).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "customer_id": customer_id, "unsubscribed": true })))
}

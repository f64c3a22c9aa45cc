//! `GET /email/unsubscribe?token=…` (the link in every email) shows a confirmation
//! page and changes nothing: mail scanners and link previews follow links. Only a
//! `POST` of the same URL unsubscribes: the page's button, or the one-click `POST` mail
//! clients send for `List-Unsubscribe-Post` (RFC 8058).

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

/// The customer a link's token names, if it is valid and the customer exists.
async fn customer_of(req: &HttpRequest, pool: &PgPool, settings: &Settings) -> Result<Uuid, ApiError> {
    let query = web::Query::<TokenQuery>::from_query(req.query_string()).map_err(|_| bad_token())?;
    let customer_id = unsubscribe::verify(&settings.unsubscribe_secret, &query.token).ok_or_else(bad_token)?;
    if db::customers::unsubscribed(pool, customer_id).await?.is_none() {
        return Err(bad_token());
    }
    Ok(customer_id)
}

fn page(title: &str, body: &str) -> HttpResponse {
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
         <title>{title}</title></head><body style=\"font-family:sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem\">\
         <h1>{title}</h1>{body}</body></html>"
    ))
}

#[utoipa::path(get, path = "/email/unsubscribe", tag = "email", params(("token" = String, Query)), responses((status = 200, description = "HTML page asking to confirm; changes nothing"), (status = 400, description = "Invalid token", body = crate::openapi::ErrorBody)))]
pub async fn unsubscribe_page(
    req: HttpRequest,
    pool: web::Data<PgPool>,
    settings: web::Data<Settings>,
) -> Result<HttpResponse, ApiError> {
    let customer_id = customer_of(&req, &pool, &settings).await?;
    // Our own rendering of the token (hex and a UUID), not the text the link carried.
    let token = unsubscribe::token(&settings.unsubscribe_secret, customer_id);
    Ok(page(
        "Unsubscribe from RSOLV emails?",
        &format!(
            "<p>You will get no more onboarding or reminder emails. Billing notices about failed payments \
             still reach you.</p><form method=\"post\" action=\"/email/unsubscribe?token={token}\">\
             <button type=\"submit\" id=\"confirm-unsubscribe\">Unsubscribe</button></form>"
        ),
    ))
}

#[utoipa::path(post, path = "/email/unsubscribe", tag = "email", params(("token" = String, Query)), responses((status = 200, description = "Unsubscribed: an HTML page for browsers, `{customer_id, unsubscribed: true}` otherwise (one-click, RFC 8058)"), (status = 400, description = "Invalid token", body = crate::openapi::ErrorBody)))]
pub async fn unsubscribe_one_click(
    req: HttpRequest,
    pool: web::Data<PgPool>,
    settings: web::Data<Settings>,
) -> Result<HttpResponse, ApiError> {
    let customer_id = customer_of(&req, &pool, &settings).await?;
    if db::customers::unsubscribe(pool.get_ref(), customer_id).await? {
        tracing::info!(%customer_id, "customer unsubscribed from email");
    }
    let browser = req.headers().get("accept").and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/html"));
    if browser {
        return Ok(page(
            "You are unsubscribed",
            "<p>RSOLV will send you no more onboarding or reminder emails. Billing notices about failed \
             payments still reach you.</p>",
        ));
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({ "customer_id": customer_id, "unsubscribed": true })))
}

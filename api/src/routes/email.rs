//! `GET /email/unsubscribe?token=…` (the link in every email) shows a confirmation
//! page and changes nothing: mail scanners and link previews follow links. Only a
//! `POST` of the same URL unsubscribes: the page's button, or the one-click `POST` mail
//! clients send for `List-Unsubscribe-Post` (RFC 8058).

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use common::config::Settings;
use common::db;
use common::domain::ErrorCode;
use common::email::unsubscribe;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::errors::ApiError;
use crate::openapi::ErrorBody;

#[derive(Serialize, ToSchema)]
pub struct Unsubscribed {
    customer_id: Uuid,
    unsubscribed: bool,
}

#[derive(Deserialize)]
struct TokenQuery {
    token: String,
}

fn malformed_token() -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::ValidationFailed, "the unsubscribe link is malformed")
}

/// Well formed, but not ours or for no customer: the link is wrong, not the request.
fn unknown_token() -> ApiError {
    ApiError::not_found("the unsubscribe link is not valid")
}

/// The token's shape: the customer id (32 hex digits), a dot, its MAC (64 hex digits);
/// either case, as a mail gateway may rewrite it.
fn well_formed(token: &str) -> bool {
    token.split_once('.').is_some_and(|(id, mac)| {
        id.len() == 32 && mac.len() == 64 && id.bytes().chain(mac.bytes()).all(|b| b.is_ascii_hexdigit())
    })
}

/// The customer a link's token names, if it is valid and the customer exists.
async fn customer_of(req: &HttpRequest, pool: &PgPool, settings: &Settings) -> Result<Uuid, ApiError> {
    let query = web::Query::<TokenQuery>::from_query(req.query_string()).map_err(|_| malformed_token())?;
    if !well_formed(&query.token) {
        return Err(malformed_token());
    }
    let customer_id = unsubscribe::verify(&settings.unsubscribe_secret, &query.token).ok_or_else(unknown_token)?;
    if db::customers::unsubscribed(pool, customer_id).await?.is_none() {
        return Err(unknown_token());
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

/// The page an email's unsubscribe link opens: it asks to confirm and changes nothing.
#[utoipa::path(tag = "email", params(("token" = String, Query, pattern = "^[0-9a-fA-F]{32}\\.[0-9a-fA-F]{64}$", description = "From the email's link")), responses((status = 200, description = "HTML page asking to confirm", content_type = "text/html"), (status = 400, description = "VALIDATION_FAILED: the link is malformed", body = ErrorBody), (status = 404, description = "NOT_FOUND: the link is not valid", body = ErrorBody)))]
#[get("/email/unsubscribe")]
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

/// Unsubscribe: the confirmation page's button, or a mail client's one-click `POST` (RFC 8058).
#[utoipa::path(tag = "email", params(("token" = String, Query, pattern = "^[0-9a-fA-F]{32}\\.[0-9a-fA-F]{64}$", description = "From the email's link")), responses((status = 200, description = "Unsubscribed: an HTML page for browsers (`Accept: text/html`), JSON otherwise", content((Unsubscribed = "application/json"), (String = "text/html"))), (status = 400, description = "VALIDATION_FAILED: the link is malformed", body = ErrorBody), (status = 404, description = "NOT_FOUND: the link is not valid", body = ErrorBody)))]
#[post("/email/unsubscribe")]
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
    Ok(HttpResponse::Ok().json(Unsubscribed { customer_id, unsubscribed: true }))
}

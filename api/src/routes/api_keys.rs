//! `/api/v1/api-keys`: a customer's own keys. A new key is shown once, in the response
//! that creates it; listings never show a key; a revoked key is refused at once.

use actix_web::http::StatusCode;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use common::db;
use common::db::api_keys::KeyCreated;
use common::domain::{ApiKey, ErrorCode, MAX_LIVE_KEYS};
use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::auth::Authenticated;
use crate::errors::ApiError;
use crate::extract::JsonBody;
use crate::idempotency::RequestKey;

#[derive(Deserialize, utoipa::ToSchema)]
pub struct NewKey {
    /// What the key is for, e.g. "ci".
    name: String,
}

#[utoipa::path(post, path = "/api/v1/api-keys", tag = "api keys", security(("api_key" = [])), request_body = NewKey,
    responses((status = 201, description = "`{id, name, prefix, created_at, api_key}`: the key is shown only here"),
              (status = 422, description = "VALIDATION_FAILED", body = crate::openapi::ErrorBody),
              (status = 409, description = "TOO_MANY_KEYS", body = crate::openapi::ErrorBody)))]
pub async fn create(
    req: HttpRequest,
    pool: web::Data<PgPool>,
    auth: Authenticated,
    JsonBody(body): JsonBody<NewKey>,
) -> Result<HttpResponse, ApiError> {
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(ApiError::validation("name must be 1 to 100 printable characters"));
    }
    let key = ApiKey::generate();
    // The request's Idempotency-Key goes on the row: re-run after its answer was lost,
    // this request finds the key it made rather than making a second one.
    let request_key = req.extensions().get::<RequestKey>().map(|k| k.0.clone());
    let mut tx = pool.begin().await?;
    let created = db::api_keys::create(
        &mut tx,
        auth.customer_id,
        name,
        &key.hash(),
        &key.display_prefix(),
        MAX_LIVE_KEYS,
        request_key.as_deref(),
    )
    .await?;
    tx.commit().await?;
    match created {
        KeyCreated::New(created) => {
            tracing::info!(customer_id = %auth.customer_id, key_id = %created.id, "API key created");
            let mut body = serde_json::to_value(&created).unwrap_or_default();
            body["api_key"] = serde_json::Value::from(key.expose());
            Ok(HttpResponse::Created().json(body))
        }
        // As a replay answers: everything but the key, which was shown once (or lost).
        KeyCreated::Earlier(earlier) => Ok(HttpResponse::Created().json(earlier)),
        KeyCreated::TooMany => Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::TooManyKeys,
            format!("at most {MAX_LIVE_KEYS} live keys: revoke one first"),
        )),
    }
}

#[utoipa::path(get, path = "/api/v1/api-keys", tag = "api keys", security(("api_key" = [])),
    responses((status = 200, description = "`{api_keys: [{id, name, prefix, created_at, revoked_at}]}`")))]
pub async fn list(pool: web::Data<PgPool>, auth: Authenticated) -> Result<HttpResponse, ApiError> {
    let keys = db::api_keys::list(pool.get_ref(), auth.customer_id).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "api_keys": keys })))
}

#[utoipa::path(delete, path = "/api/v1/api-keys/{key_id}", tag = "api keys", security(("api_key" = [])),
    params(("key_id" = String, Path)),
    responses((status = 200, description = "`{id, revoked: true}`"), (status = 404, description = "NOT_FOUND", body = crate::openapi::ErrorBody)))]
pub async fn revoke(
    pool: web::Data<PgPool>,
    auth: Authenticated,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::not_found("no such key"))?;
    if !db::api_keys::revoke(pool.get_ref(), auth.customer_id, id).await? {
        return Err(ApiError::not_found("no such key"));
    }
    tracing::info!(customer_id = %auth.customer_id, key_id = %id, "API key revoked");
    Ok(HttpResponse::Ok().json(serde_json::json!({ "id": id, "revoked": true })))
}

//! `/api/v1/api-keys`: a customer's own keys. A new key is shown once, in the response
//! that creates it; listings never show a key; a revoked key is refused at once.

use actix_web::http::StatusCode;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, delete, get, post, web};
use common::config::Settings;
use common::db;
use common::db::api_keys::{KeyCreated, KeyInfo, Revocation};
use common::domain::{ApiKey, ErrorCode, MAX_LIVE_KEYS};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Authenticated;
use crate::errors::ApiError;
use crate::extract::JsonBody;
use crate::idempotency::RequestKey;
use crate::openapi::ErrorBody;

#[derive(Deserialize, ToSchema)]
pub struct NewKey {
    /// What the key is for, e.g. "ci". Used trimmed.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\x00-\x1f\x7f-\x9f\xad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]*[^\s\x00-\x1f\x7f-\x9f\xad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb][^\x00-\x1f\x7f-\x9f\xad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]*$"
    )]
    name: String,
}

const NAME_MAX_CHARS: usize = 100;

/// A key just made.
#[derive(Serialize, ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    key: KeyInfo,
    /// The key itself, shown only in the answer that made it: absent when the answer is
    /// a replay (`Idempotency-Key`).
    #[serde(skip_serializing_if = "Option::is_none")]
    api_key: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct KeyList {
    /// Newest first; never the keys themselves.
    api_keys: Vec<KeyInfo>,
}

#[derive(Serialize, ToSchema)]
pub struct RevokedKey {
    id: Uuid,
    revoked: bool,
}

/// Make an API key (at most 10 live ones).
#[utoipa::path(operation_id = "create_api_key", tag = "api keys", security(("api_key" = [])), request_body = NewKey,
    responses((status = 201, description = "Created: the key is shown only here", body = CreatedKey),
              (status = 422, description = "VALIDATION_FAILED", body = ErrorBody),
              (status = 409, description = "TOO_MANY_KEYS: revoke one first", body = ErrorBody)))]
#[post("/api/v1/api-keys")]
pub async fn create(
    req: HttpRequest,
    pool: web::Data<PgPool>,
    auth: Authenticated,
    JsonBody(body): JsonBody<NewKey>,
) -> Result<HttpResponse, ApiError> {
    let name = crate::fields::line("name", &body.name, NAME_MAX_CHARS)?;
    let key = ApiKey::generate();
    // The request's Idempotency-Key goes on the row: re-run after its answer was lost,
    // this request finds the key it made rather than making a second one.
    let request_key = req.extensions().get::<RequestKey>().map(|k| k.0.clone());
    let mut tx = pool.begin().await?;
    let created = db::api_keys::create(
        &mut tx,
        auth.customer_id,
        &name,
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
            Ok(HttpResponse::Created().json(CreatedKey { key: created, api_key: Some(key.expose().to_owned()) }))
        }
        // As a replay answers: everything but the key, which was shown once (or lost).
        KeyCreated::Earlier(earlier) => Ok(HttpResponse::Created().json(CreatedKey { key: earlier, api_key: None })),
        KeyCreated::TooMany => Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::TooManyKeys,
            format!("at most {MAX_LIVE_KEYS} live keys: revoke one first"),
        )),
    }
}

/// The customer's keys, revoked ones included.
#[utoipa::path(operation_id = "list_api_keys", tag = "api keys", security(("api_key" = [])), responses((status = 200, description = "The keys", body = KeyList)))]
#[get("/api/v1/api-keys")]
pub async fn list(pool: web::Data<PgPool>, auth: Authenticated) -> Result<HttpResponse, ApiError> {
    let api_keys = db::api_keys::list(pool.get_ref(), auth.customer_id).await?;
    Ok(HttpResponse::Ok().json(KeyList { api_keys }))
}

/// Revoke a key: refused at once, everywhere. Where the server sends no email, the last
/// live key is not revoked: it is the customer's only way into the dashboard.
#[utoipa::path(operation_id = "revoke_api_key", tag = "api keys", security(("api_key" = [])),
    params(("key_id" = Uuid, Path)),
    responses((status = 200, description = "Revoked", body = RevokedKey), (status = 404, description = "NOT_FOUND: no such live key of this customer", body = ErrorBody),
        (status = 409, description = "LAST_KEY: the customer's last live key, on a server that sends no email (create another first)", body = ErrorBody)))]
#[delete("/api/v1/api-keys/{key_id}")]
pub async fn revoke(
    pool: web::Data<PgPool>,
    settings: web::Data<Settings>,
    auth: Authenticated,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::not_found("no such key"))?;
    let revoked = match settings.email {
        Some(_) => db::api_keys::revoke(pool.get_ref(), auth.customer_id, id).await?,
        None => match db::api_keys::revoke_unless_last(pool.get_ref(), auth.customer_id, id).await? {
            Revocation::Revoked => true,
            Revocation::NotLive => false,
            Revocation::LastKey => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    ErrorCode::LastKey,
                    "the last live key: this server sends no email, so it is the only way into the dashboard; \
                     create another key first",
                ));
            }
        },
    };
    if !revoked {
        return Err(ApiError::not_found("no such key"));
    }
    tracing::info!(customer_id = %auth.customer_id, key_id = %id, "API key revoked");
    Ok(HttpResponse::Ok().json(RevokedKey { id, revoked: true }))
}

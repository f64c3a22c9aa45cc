//! `Idempotency-Key` on every POST of the public API, as Stripe's API does: the same key
//! with the same request within 24 hours replays the first response (with
//! `Idempotent-Replayed: true`) and has no second effect; the same key with another
//! request is 422 `IDEMPOTENCY_KEY_REUSED`; while the first is still running, another
//! request with the key is 409. Keys are stored in Postgres, so they hold across API
//! processes.
//!
//! The key is authenticated before anything is claimed or replayed: keys belong to the
//! customer (any of its live API keys shares them), onboarding's to the client address;
//! a request with an unknown or revoked API key claims nothing and is never answered
//! from the store (the handler refuses it with 401).
//!
//! A claim holds a lease (`IDEMPOTENCY_LEASE_MS`, 60 s): if its request never finishes
//! (the process dies, the answer cannot be stored), a retry after the lease takes the
//! key over and runs the request again. Every route that takes the header is itself
//! idempotent (intents, unique jobs, fix ids), so the re-run answers with the one effect
//! that exists.
//!
//! Responses that carry a secret shown once (a new API key) are stored without it: a
//! replay returns everything but the key.

use actix_web::body::{self, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header::{CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, HttpResponse, ResponseError, web};
use common::config::Settings;
use common::db::idempotency::{self, Claim};
use common::domain::ErrorCode;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::errors::ApiError;
use crate::extract::BodyLimit;

const HEADER: &str = "idempotency-key";

/// The `Idempotency-Key` of the request being run (in its extensions), for routes that
/// record it with their effect (API key creation).
#[derive(Debug, Clone)]
pub struct RequestKey(pub String);
/// The one route that takes the header without an API key.
const ONBOARD_PATH: &str = "/api/v1/customers/onboard";

fn reject(req: ServiceRequest, error: ApiError) -> Result<ServiceResponse, Error> {
    Ok(req.into_response(error.error_response()))
}

/// A stored copy of a response body, without secrets shown once.
fn storable(body: &[u8]) -> Vec<u8> {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(mut map)) if map.contains_key("api_key") => {
            map.remove("api_key");
            serde_json::to_vec(&map).unwrap_or_default()
        }
        _ => body.to_vec(),
    }
}

pub async fn guard(mut req: ServiceRequest, next: Next<impl MessageBody + 'static>) -> Result<ServiceResponse, Error> {
    let applies = req.method() == Method::POST && req.path().starts_with("/api/v1/");
    let key = req.headers().get(HEADER).map(|v| v.to_str().map(str::to_owned));
    let (Some(key), true) = (key, applies) else {
        return next.call(req).await.map(ServiceResponse::map_into_boxed_body);
    };
    let key = match key {
        Ok(k) if !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()) => k,
        _ => return reject(req, ApiError::validation("Idempotency-Key must be 1 to 255 printable ASCII characters")),
    };
    let (Some(pool), Some(settings)) =
        (req.app_data::<web::Data<PgPool>>().cloned(), req.app_data::<web::Data<Settings>>().cloned())
    else {
        return next.call(req).await.map(ServiceResponse::map_into_boxed_body);
    };
    let scope = if crate::auth::presents_key(req.request()) {
        match crate::auth::identify(req.request()).await {
            Ok(Some(known)) => format!("customer:{}", known.customer_id),
            // Refused by the handler's authentication; nothing is claimed or replayed.
            Ok(None) => return next.call(req).await.map(ServiceResponse::map_into_boxed_body),
            Err(error) => return reject(req, ApiError::from(error)),
        }
    } else if req.path() == ONBOARD_PATH {
        format!("addr:{}", crate::rate_limit::client_address(req.request(), &settings))
    } else {
        // Every other route needs a key: the handler answers 401.
        return next.call(req).await.map(ServiceResponse::map_into_boxed_body);
    };

    // Read the body to fingerprint the request, then hand it on unchanged.
    let limit = req.app_data::<web::Data<BodyLimit>>().map_or(64 * 1024, |l| l.0);
    let mut payload = req.take_payload();
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk: web::Bytes = chunk?;
        body.extend_from_slice(&chunk);
        if body.len() > limit {
            break; // the body extractor answers 413; no fingerprint needed
        }
    }
    let body = body.freeze();
    let mut fingerprint = Sha256::new();
    fingerprint.update(req.method().as_str());
    fingerprint.update(b" ");
    fingerprint.update(req.uri().to_string());
    fingerprint.update(b"\n");
    fingerprint.update(&body);
    let request_hash = hex::encode(fingerprint.finalize());
    let replay_body = body.clone();
    req.set_payload(Payload::from(futures::stream::once(async move { Ok(replay_body) }).boxed_local()));

    let claim = match idempotency::claim(&pool, &scope, &key, &request_hash, settings.idempotency_lease).await {
        Ok(claim) => claim,
        Err(error) => return reject(req, ApiError::from(error)),
    };
    match claim {
        Claim::Mismatch => reject(
            req,
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::IdempotencyKeyReused,
                "this Idempotency-Key was used with another request",
            ),
        ),
        Claim::InFlight => {
            let mut response = ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::Conflict,
                "a request with this Idempotency-Key is in progress; retry shortly",
            )
            .error_response();
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
            Ok(req.into_response(response))
        }
        Claim::Replay { status, body } => {
            let mut response = HttpResponse::build(StatusCode::from_u16(status).unwrap_or(StatusCode::OK));
            response.insert_header((CONTENT_TYPE, "application/json"));
            response.insert_header((HeaderName::from_static("idempotent-replayed"), HeaderValue::from_static("true")));
            Ok(req.into_response(response.body(body)))
        }
        Claim::Claimed { lease } => {
            req.extensions_mut().insert(RequestKey(key.clone()));
            // The lease is renewed while the request runs: only a request that stopped
            // (its process died) loses its key to a retry, not a slow one.
            let lease_for = settings.idempotency_lease;
            let renew = async {
                loop {
                    tokio::time::sleep(lease_for / 3).await;
                    if let Err(error) = idempotency::renew(&pool, &scope, &key, lease, lease_for).await {
                        tracing::warn!(%error, "idempotency lease not renewed");
                    }
                }
            };
            let ran = tokio::select! {
                ran = next.call(req) => ran,
                never = renew => never,
            };
            let response = match ran {
                Ok(response) => response,
                Err(error) => {
                    forget(&pool, &scope, &key, lease).await;
                    return Err(error);
                }
            };
            let status = response.status();
            let (request, response) = response.into_parts();
            let (head, body) = response.into_parts();
            let bytes = match body::to_bytes(body).await {
                Ok(bytes) => bytes,
                Err(error) => {
                    forget(&pool, &scope, &key, lease).await;
                    return Err(actix_web::error::ErrorInternalServerError(error.into()));
                }
            };
            let stored = if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                idempotency::release(&pool, &scope, &key, lease).await.map(|()| true)
            } else {
                idempotency::complete(&pool, &scope, &key, lease, status.as_u16(), &storable(&bytes)).await
            };
            match stored {
                Ok(true) => {}
                // Taken over meanwhile (its renewals failed): the retry answers for it.
                Ok(false) => tracing::warn!(status = status.as_u16(), "idempotency lease lost before the answer"),
                Err(error) => tracing::error!(%error, "idempotency record not saved; a retry after the lease re-runs"),
            }
            Ok(ServiceResponse::new(request, head.set_body(bytes).map_into_boxed_body()))
        }
    }
}

/// Gives the key back after a request that ended without an answer.
async fn forget(pool: &PgPool, scope: &str, key: &str, lease: uuid::Uuid) {
    if let Err(error) = idempotency::release(pool, scope, key, lease).await {
        tracing::warn!(%error, "idempotency claim not released; it frees itself when its lease ends");
    }
}

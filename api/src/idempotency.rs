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
    let key = match request_key(&req) {
        None => return next.call(req).await.map(ServiceResponse::map_into_boxed_body),
        Some(Err(error)) => return reject(req, error),
        Some(Ok(key)) => key,
    };
    let (Some(pool), Some(settings)) =
        (req.app_data::<web::Data<PgPool>>().cloned(), req.app_data::<web::Data<Settings>>().cloned())
    else {
        return next.call(req).await.map(ServiceResponse::map_into_boxed_body);
    };
    let scope = match scope_of(&req, &settings).await {
        Err(error) => return reject(req, error),
        // Refused by the handler's authentication; nothing is claimed or replayed.
        Ok(None) => return next.call(req).await.map(ServiceResponse::map_into_boxed_body),
        Ok(Some(scope)) => scope,
    };
    let request_hash = fingerprint(&mut req).await?;
    let claim = match idempotency::claim(&pool, &scope, &key, &request_hash, settings.idempotency_lease).await {
        Ok(claim) => claim,
        Err(error) => return reject(req, ApiError::from(error)),
    };
    let lease = match claim {
        Claim::Claimed { lease } => lease,
        refused => return Ok(req.into_response(answer_without_running(refused))),
    };
    req.extensions_mut().insert(RequestKey(key.clone()));
    let claimed =
        Claimed { pool: pool.get_ref(), scope: &scope, key: &key, lease, lease_for: settings.idempotency_lease };
    claimed.run(req, next).await
}

/// The request's `Idempotency-Key`, if the guard applies to it (a POST of the public
/// API carrying one); an error for a key that is not 1 to 255 printable ASCII.
fn request_key(req: &ServiceRequest) -> Option<Result<String, ApiError>> {
    if req.method() != Method::POST || !req.path().starts_with("/api/v1/") {
        return None;
    }
    let key = req.headers().get(HEADER)?;
    Some(match key.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()) => Ok(k.to_owned()),
        _ => Err(ApiError::validation("Idempotency-Key must be 1 to 255 printable ASCII characters")),
    })
}

/// Whose keys these are: the live API key's customer, or for onboarding the client
/// address. `None` when the request has no owner (the handler answers 401).
async fn scope_of(req: &ServiceRequest, settings: &Settings) -> Result<Option<String>, ApiError> {
    if crate::auth::presents_key(req.request()) {
        let known = crate::auth::identify(req.request()).await?;
        return Ok(known.map(|known| format!("customer:{}", known.customer_id)));
    }
    if req.path() == ONBOARD_PATH {
        return Ok(Some(format!("addr:{}", crate::rate_limit::client_address(req.request(), settings))));
    }
    Ok(None)
}

/// The request's fingerprint (method, URI, body); the body is read and handed on
/// unchanged.
async fn fingerprint(req: &mut ServiceRequest) -> Result<String, Error> {
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
    req.set_payload(Payload::from(futures::stream::once(async move { Ok(body) }).boxed_local()));
    Ok(hex::encode(fingerprint.finalize()))
}

/// The answer to a request whose key it may not run under: reused with another request
/// (422), still running (409), or answered before (the stored answer, replayed).
fn answer_without_running(claim: Claim) -> HttpResponse {
    match claim {
        Claim::Mismatch => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::IdempotencyKeyReused,
            "this Idempotency-Key was used with another request",
        )
        .error_response(),
        Claim::Replay { status, body } => {
            let mut response = HttpResponse::build(StatusCode::from_u16(status).unwrap_or(StatusCode::OK));
            response.insert_header((CONTENT_TYPE, "application/json"));
            response.insert_header((HeaderName::from_static("idempotent-replayed"), HeaderValue::from_static("true")));
            response.body(body)
        }
        Claim::InFlight | Claim::Claimed { .. } => {
            let mut response = ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::Conflict,
                "a request with this Idempotency-Key is in progress; retry shortly",
            )
            .error_response();
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
    }
}

/// A key this request holds: it runs, and its answer is stored under the key.
struct Claimed<'a> {
    pool: &'a PgPool,
    scope: &'a str,
    key: &'a str,
    lease: uuid::Uuid,
    lease_for: std::time::Duration,
}

impl Claimed<'_> {
    async fn run(&self, req: ServiceRequest, next: Next<impl MessageBody + 'static>) -> Result<ServiceResponse, Error> {
        // The lease is renewed while the request runs: only a request that stopped
        // (its process died) loses its key to a retry, not a slow one.
        let renew = async {
            loop {
                tokio::time::sleep(self.lease_for / 3).await;
                if let Err(error) =
                    idempotency::renew(self.pool, self.scope, self.key, self.lease, self.lease_for).await
                {
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
                forget(self.pool, self.scope, self.key, self.lease).await;
                return Err(error);
            }
        };
        let status = response.status();
        let (request, response) = response.into_parts();
        let (head, body) = response.into_parts();
        let bytes = match body::to_bytes(body).await {
            Ok(bytes) => bytes,
            Err(error) => {
                forget(self.pool, self.scope, self.key, self.lease).await;
                return Err(actix_web::error::ErrorInternalServerError(error.into()));
            }
        };
        self.store(status, &bytes).await;
        Ok(ServiceResponse::new(request, head.set_body(bytes).map_into_boxed_body()))
    }

    /// Stores the answer under the key; a server error or 429 gives the key back
    /// instead, so a retry runs again.
    async fn store(&self, status: StatusCode, bytes: &[u8]) {
        let (pool, scope, key, lease) = (self.pool, self.scope, self.key, self.lease);
        let stored = if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            idempotency::release(pool, scope, key, lease).await.map(|()| true)
        } else {
            idempotency::complete(pool, scope, key, lease, status.as_u16(), &storable(bytes)).await
        };
        match stored {
            Ok(true) => {}
            // Taken over meanwhile (its renewals failed): the retry answers for it.
            Ok(false) => tracing::warn!(status = status.as_u16(), "idempotency lease lost before the answer"),
            Err(error) => tracing::error!(%error, "idempotency record not saved; a retry after the lease re-runs"),
        }
    }
}

/// Gives the key back after a request that ended without an answer.
async fn forget(pool: &PgPool, scope: &str, key: &str, lease: uuid::Uuid) {
    if let Err(error) = idempotency::release(pool, scope, key, lease).await {
        tracing::warn!(%error, "idempotency claim not released; it frees itself when its lease ends");
    }
}

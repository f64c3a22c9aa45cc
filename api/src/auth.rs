//! API key authentication: `x-api-key` → SHA-256 → a live key's customer.
//!
//! The key is looked up once per request ([`identify`]; concurrent requests' lookups
//! share a statement, `db::api_keys::KeyLookups`) and the answer kept in the
//! request's extensions: the rate limiter (which bucket), the idempotency guard (whose
//! key, and whether a stored answer may be replayed at all) and the handler's
//! [`Authenticated`] extractor all read the same answer, so a revoked key is refused
//! everywhere at once and an unknown one gets neither a bucket nor idempotency rows.

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpMessage, HttpRequest, web};
use common::db;
use common::db::api_keys::KeyLookups;
use common::domain::ApiKey;
use futures::future::LocalBoxFuture;
use sqlx::PgPool;
use uuid::Uuid;

use crate::errors::ApiError;

pub const HEADER: &str = "x-api-key";
const MISSING: &str = "API key must be provided in x-api-key header";
const INVALID: &str = "Invalid or expired API key";

/// The customer whose valid API key came with the request.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub customer_id: Uuid,
    /// The key's hash (hex): rate limits count per key.
    pub key_hash: String,
    /// The customer's balance and card as the key's check read them: good for an
    /// early answer (a blocked customer told at once), never for moving money, which
    /// is decided under the customer's lock.
    pub credit_balance: i64,
    pub has_payment_method: bool,
}

impl Authenticated {
    /// The key's customer; gone since the key was checked is as good as a bad key.
    pub async fn customer(&self, pool: &PgPool) -> Result<db::customers::Customer, ApiError> {
        db::customers::find(pool, self.customer_id).await?.ok_or_else(|| ApiError::unauthorized(INVALID))
    }
}

/// The answer of [`identify`], cached for the rest of the request: a failed lookup too,
/// so that the rate limiter, the idempotency guard and the handler all see the same
/// answer (a request the limiter could not count is not served either).
#[derive(Clone)]
struct Identified(Result<Option<Authenticated>, Failed>);

/// A lookup's failure, kept in a form each reader can be answered with.
struct Failed(sqlx::Error);

impl Clone for Failed {
    fn clone(&self) -> Self {
        Self(common::coalesce::same_kind_of(&self.0))
    }
}

/// Whether the request carries an `x-api-key` header at all.
pub fn presents_key(req: &HttpRequest) -> bool {
    req.headers().contains_key(HEADER)
}

/// The live API key the request presents, if any: `None` for no key, a malformed one,
/// an unknown one or a revoked one. Looked up once per request.
pub async fn identify(req: &HttpRequest) -> Result<Option<Authenticated>, sqlx::Error> {
    if let Some(Identified(known)) = req.extensions().get::<Identified>() {
        return known.clone().map_err(|Failed(error)| error);
    }
    let key = req.headers().get(HEADER).and_then(|v| v.to_str().ok()).and_then(|raw| ApiKey::parse(raw.trim()).ok());
    let known = match key {
        Some(key) => look_up(req, key).await,
        None => Ok(None),
    };
    let identified = Identified(known.map_err(Failed));
    req.extensions_mut().insert(identified.clone());
    identified.0.map_err(|Failed(error)| error)
}

async fn look_up(req: &HttpRequest, key: ApiKey) -> Result<Option<Authenticated>, sqlx::Error> {
    let lookups = req
        .app_data::<web::Data<KeyLookups>>()
        .ok_or_else(|| sqlx::Error::Configuration("the app has no key lookups registered".into()))?;
    let hash = key.hash();
    Ok(lookups.owner_of(&hash).await?.map(|owner| Authenticated {
        customer_id: owner.customer_id,
        key_hash: hash.as_str().to_owned(),
        credit_balance: owner.credit_balance,
        has_payment_method: owner.has_payment_method,
    }))
}

impl FromRequest for Authenticated {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            if !presents_key(&req) {
                return Err(ApiError::unauthorized(MISSING));
            }
            identify(&req).await?.ok_or_else(|| ApiError::unauthorized(INVALID))
        })
    }
}

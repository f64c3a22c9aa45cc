//! API key authentication: `x-api-key` → SHA-256 → a live key's customer.

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, web};
use common::db;
use common::domain::ApiKey;
use futures::future::LocalBoxFuture;
use sqlx::PgPool;
use uuid::Uuid;

use crate::errors::ApiError;

pub const HEADER: &str = "x-api-key";
const MISSING: &str = "API key must be provided in x-api-key header";
const INVALID: &str = "Invalid or expired API key";

/// The customer whose valid API key came with the request.
#[derive(Debug, Clone, Copy)]
pub struct Authenticated {
    pub customer_id: Uuid,
}

impl Authenticated {
    /// The key's customer; gone since the key was checked is as good as a bad key.
    pub async fn customer(&self, pool: &PgPool) -> Result<db::customers::Customer, ApiError> {
        db::customers::find(pool, self.customer_id).await?.ok_or_else(|| ApiError::unauthorized(INVALID))
    }
}

impl FromRequest for Authenticated {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let raw = req.headers().get(HEADER).map(|v| v.to_str().map(str::to_owned));
        let pool = req.app_data::<web::Data<PgPool>>().cloned();
        Box::pin(async move {
            let raw = match raw {
                None => return Err(ApiError::unauthorized(MISSING)),
                Some(Ok(raw)) if !raw.trim().is_empty() => raw,
                Some(_) => return Err(ApiError::unauthorized(INVALID)),
            };
            let key = ApiKey::parse(raw.trim()).map_err(|_| ApiError::unauthorized(INVALID))?;
            let pool = pool.expect("the pool is registered as app data");
            match db::api_keys::customer_for(pool.get_ref(), &key.hash()).await? {
                Some(customer_id) => Ok(Self { customer_id }),
                None => Err(ApiError::unauthorized(INVALID)),
            }
        })
    }
}

//! Body extractors that answer every way a body can be wrong with the error body:
//! wrong content type (415), too large (413), not JSON (400), JSON of the wrong shape
//! or types (422).

use actix_web::dev::Payload;
use actix_web::http::{StatusCode, header};
use actix_web::{FromRequest, HttpRequest, web};
use common::domain::ErrorCode;
use futures::StreamExt;
use futures::future::LocalBoxFuture;
use serde::de::DeserializeOwned;

use crate::errors::ApiError;

/// The largest body accepted, in bytes (`MAX_BODY_BYTES`).
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// The exact bytes of a JSON request (for webhooks, whose signature covers them).
pub struct RawJsonBody(pub web::Bytes);

/// A JSON request body decoded as `T`.
pub struct JsonBody<T>(pub T);

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::PayloadTooLarge,
        format!("request body is larger than {limit} bytes"),
    )
}

impl FromRequest for RawJsonBody {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let limit = req.app_data::<web::Data<BodyLimit>>().map_or(64 * 1024, |l| l.0);
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<mime::Mime>().ok())
            .is_some_and(|m| m.type_() == mime::APPLICATION && m.subtype() == mime::JSON);
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let mut payload = payload.take();
        Box::pin(async move {
            if !is_json {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    ErrorCode::UnsupportedMediaType,
                    "Content-Type must be application/json",
                ));
            }
            if declared.is_some_and(|n| n > limit) {
                return Err(too_large(limit));
            }
            let mut body = web::BytesMut::new();
            while let Some(chunk) = payload.next().await {
                let chunk =
                    chunk.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidJson, e.to_string()))?;
                if body.len() + chunk.len() > limit {
                    return Err(too_large(limit));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(RawJsonBody(body.freeze()))
        })
    }
}

/// Whether a JSON value holds a NUL character in any string or key: Postgres stores
/// neither in `text` nor in `jsonb`, so such input is refused up front.
pub fn holds_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(holds_nul),
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for JsonBody<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let raw = RawJsonBody::from_request(req, payload);
        Box::pin(async move {
            let RawJsonBody(body) = raw.await?;
            let value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| match e.classify() {
                serde_json::error::Category::Data => ApiError::validation(e.to_string()),
                _ => ApiError::new(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::InvalidJson,
                    format!("body is not valid JSON: {e}"),
                ),
            })?;
            if holds_nul(&value) {
                return Err(ApiError::validation("strings must not contain NUL characters"));
            }
            T::deserialize(value).map(JsonBody).map_err(|e| ApiError::validation(e.to_string()))
        })
    }
}

//! One rule at the edge for what no route should ever see, checked before routing, rate
//! limits, idempotency and any handler:
//!
//! - request headers larger in total than `MAX_HEADER_BYTES` (16 KiB): 431
//!   `REQUEST_HEADERS_TOO_LARGE`;
//! - a control character (NUL, newline, DEL, C1, …) in the path or the query, raw or
//!   percent-encoded: 400 `VALIDATION_FAILED`. Postgres cannot store NUL in text, and no
//!   id, filter or token of ours holds a control character, so such a request could only
//!   fail deeper down, as a 500.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::{Error, ResponseError, web};
use common::config::Settings;
use common::domain::ErrorCode;

use crate::errors::ApiError;

/// The headers' size as sent: each name, value and the `": "` and CRLF around them.
fn header_bytes(req: &ServiceRequest) -> usize {
    req.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum()
}

/// Percent-decodes `raw` (`+` is left alone: it is no control character either way).
fn decoded(raw: &str) -> Vec<u8> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) =
                (bytes.get(i + 1).and_then(|b| hex(*b)), bytes.get(i + 2).and_then(|b| hex(*b)))
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// Whether a path or query holds a control character once decoded.
pub fn holds_control_character(raw: &str) -> bool {
    String::from_utf8_lossy(&decoded(raw)).chars().any(char::is_control)
}

pub async fn guard(req: ServiceRequest, next: Next<impl MessageBody + 'static>) -> Result<ServiceResponse, Error> {
    let limit = req.app_data::<web::Data<Settings>>().map_or(16 * 1024, |s| s.max_header_bytes);
    let refusal = if header_bytes(&req) > limit {
        Some(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorCode::RequestHeadersTooLarge,
            format!("request headers are larger than {limit} bytes"),
        ))
    } else if holds_control_character(req.uri().path()) || req.uri().query().is_some_and(holds_control_character) {
        Some(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::ValidationFailed,
            "the path or query holds a control character",
        ))
    } else {
        None
    };
    match refusal {
        Some(error) => Ok(req.into_response(error.error_response())),
        None => next.call(req).await.map(ServiceResponse::map_into_boxed_body),
    }
}

#[cfg(test)]
mod tests {
    use super::holds_control_character;

    #[test]
    fn control_characters_are_found_raw_or_percent_encoded() {
        for bad in ["/api/v1/usage/fixes/%00", "queue=%00", "a=%0a", "a=%7F", "a=%c2%85", "/x/%0D%0A"] {
            assert!(holds_control_character(bad), "{bad}");
        }
        for good in
            ["/api/v1/usage/fixes/fix-1", "queue=grant_credits&state=dead", "a=%20b", "a=100%", "a=%zz", "%e2%9c%93"]
        {
            assert!(!holds_control_character(good), "{good}");
        }
    }
}

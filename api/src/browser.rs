//! What every page that a browser posts forms to shares (the admin page, the customer
//! dashboard): requests another site sent are refused, and a form must carry its
//! session's CSRF token (`db::sessions::SessionToken::csrf_token`), compared in
//! constant time.

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, web};
use common::config::Settings;
use common::domain::ErrorCode;
use subtle::ConstantTimeEq;

use crate::errors::ApiError;

pub fn forbidden(message: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, message)
}

/// The origin (`scheme://host[:port]`) of a URL.
pub fn origin_of(url: &str) -> &str {
    match url.split_once("://") {
        Some((scheme, rest)) => &url[..scheme.len() + 3 + rest.find('/').unwrap_or(rest.len())],
        None => url,
    }
}

/// Refuses a request a browser marks as sent by another site: `Sec-Fetch-Site` other
/// than same-origin, or an `Origin` that is neither `PUBLIC_BASE_URL`'s nor the host
/// the request was sent to (behind a proxy that rewrites `Host`, set `PUBLIC_BASE_URL`).
pub fn same_site(req: &HttpRequest) -> Result<(), ApiError> {
    let cross_site = req
        .headers()
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|site| !matches!(site, "same-origin" | "none"));
    let foreign_origin = req.headers().get(header::ORIGIN).and_then(|v| v.to_str().ok()).is_some_and(|origin| {
        let public = req.app_data::<web::Data<Settings>>().map(|s| origin_of(&s.public_base_url).to_owned());
        let ours = public.is_some_and(|public| origin.eq_ignore_ascii_case(&public));
        let info = req.connection_info();
        let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        let same_host = origin_host.eq_ignore_ascii_case(info.host());
        origin == "null" || !(ours || same_host)
    });
    if cross_site || foreign_origin {
        tracing::warn!("cross-site form refused");
        return Err(forbidden("cross-site requests are refused"));
    }
    Ok(())
}

/// A form without its session's token: refused, and the answer says what to do.
pub fn stale_form() -> ApiError {
    forbidden("the form is stale or not from this site: reload the page and try again")
}

/// Checks a state-changing form: same-site, and carrying `expected` (a live session's
/// CSRF token; empty when there is none, which nothing matches).
pub fn check_form(req: &HttpRequest, expected: &str, given: &str) -> Result<(), ApiError> {
    same_site(req)?;
    if expected.is_empty() || !bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        tracing::warn!("form without its session's CSRF token refused");
        return Err(stale_form());
    }
    Ok(())
}

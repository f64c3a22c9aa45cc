//! The domain's rate limits, per minute: onboarding per client address, usage reports
//! and every other authenticated request per API key, webhooks and everything without a
//! live API key (status polls, the admin sign-in, unknown keys) per client address (an
//! IPv6 client per /64: [`client_network`]). Counted in Postgres, so two API
//! processes share one budget. Limited routes carry `x-ratelimit-limit`,
//! `x-ratelimit-remaining` and `x-ratelimit-reset` (unix seconds); over the limit is 429
//! with `Retry-After`.
//!
//! If the counter cannot be reached the request is let through (fail open) and a
//! warning is logged: the limiter lives in the same database the request needs, so such
//! a request fails with 503 on its own, and a limiter hiccup never refuses traffic the
//! database could serve.

use std::net::{IpAddr, Ipv6Addr};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{Error, ResponseError, web};
use chrono::Utc;
use common::clock::Clock;
use common::config::Settings;
use common::db::rate_limits::{self, Quota};
use common::domain::ErrorCode;
use sqlx::PgPool;

use crate::errors::ApiError;

/// The client's address: behind trusted proxies, the `X-Forwarded-For` entry the
/// nearest of them saw, which is `TRUSTED_PROXY_HOPS` from the right (every proxy
/// appends the address it received from; entries to the left of it were written by the
/// client and choose nothing); else the peer.
pub fn client_address(req: &actix_web::HttpRequest, settings: &Settings) -> String {
    let forwarded = settings
        .trust_forwarded_for
        .then(|| {
            let header = req.headers().get_all("x-forwarded-for").filter_map(|v| v.to_str().ok()).collect::<Vec<_>>();
            let entries: Vec<&str> =
                header.iter().flat_map(|v| v.split(',')).map(str::trim).filter(|s| !s.is_empty()).collect();
            let index = entries.len().saturating_sub(settings.trusted_proxy_hops);
            entries.get(index).map(|s| (*s).to_owned())
        })
        .flatten();
    forwarded.unwrap_or_else(|| req.peer_addr().map(|a| a.ip().to_string()).unwrap_or_else(|| "unknown".into()))
}

/// The budget a client address counts against ([`client_address`]): an IPv4 address
/// itself, an IPv6 address its /64. A /64 is the least one subscriber is given (RFC
/// 6177), and one host may use any address in it: counted per address, it could take a
/// fresh budget with every request. An IPv6 address that carries an IPv4 one (IPv4-mapped,
/// from a dual-stack socket, or the NAT64 well-known prefix `64:ff9b::/96`) counts as
/// that IPv4 address. A port or zone a proxy wrote with the address is left out (else each
/// connection would have a budget of its own), and an entry that is no address at all
/// counts in one bucket shared by all such entries, with a warning: a proxy writing
/// something else is misconfigured, and that must not lift the limits.
pub fn client_network(req: &actix_web::HttpRequest, settings: &Settings) -> String {
    network_of(&client_address(req, settings))
}

fn network_of(address: &str) -> String {
    match parse_address(address) {
        Some(IpAddr::V4(v4)) => v4.to_string(),
        Some(IpAddr::V6(v6)) => match embedded_ipv4(v6) {
            Some(v4) => v4.to_string(),
            None => {
                let [a, b, c, d, ..] = v6.segments();
                format!("{}/64", Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
            }
        },
        None if address == "unknown" => address.to_owned(),
        None => {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!("a client address is not an IP address (X-Forwarded-For from a misconfigured proxy?); such requests share one rate-limit budget");
            });
            "unparsed".to_owned()
        }
    }
}

/// An address as proxies write it: bare, with a port (`1.2.3.4:5`, `[::1]:5`), in
/// brackets, or with a zone (`fe80::1%eth0`).
fn parse_address(text: &str) -> Option<IpAddr> {
    if let Ok(address) = text.parse::<IpAddr>() {
        return Some(address);
    }
    if let Ok(socket) = text.parse::<std::net::SocketAddr>() {
        return Some(socket.ip());
    }
    let bare = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')).unwrap_or(text);
    bare.split_once('%').map_or(bare, |(address, _zone)| address).parse().ok()
}

fn embedded_ipv4(v6: Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let [a, b, c, d, e, f, ..] = v6.segments();
    let [.., w, x, y, z] = v6.octets();
    ([a, b, c, d, e, f] == [0x64, 0xff9b, 0, 0, 0, 0]).then(|| std::net::Ipv4Addr::new(w, x, y, z))
}

/// The bucket and limit of a request, if it is limited. Only a live API key has a
/// bucket of its own: without one (no key, a malformed, unknown or revoked one) the
/// request counts against its client address, so made-up keys cannot mint fresh budgets.
async fn bucket(req: &ServiceRequest, settings: &Settings) -> Result<Option<(String, u32)>, sqlx::Error> {
    let path = req.path();
    let limits = settings.rate_limits;
    let address = || client_network(req.request(), settings);
    if path == "/api/v1/customers/onboard" {
        return Ok(Some((format!("onboard:{}", address()), limits.onboard)));
    }
    if path == "/api/webhooks/stripe" {
        return Ok(Some((format!("webhook:{}", address()), limits.webhooks)));
    }
    // Sign-in forms, counted against their address before anything is looked up (the
    // dashboard's also have hourly limits of their own, per address and per email).
    if (path == "/admin/login" || path.starts_with("/dashboard/login")) && req.method() == Method::POST {
        return Ok(Some((format!("anon:{}", address()), limits.anonymous)));
    }
    if !path.starts_with("/api/v1/") {
        return Ok(None);
    }
    let known =
        if crate::auth::presents_key(req.request()) { crate::auth::identify(req.request()).await? } else { None };
    Ok(Some(match known {
        Some(known) if path == "/api/v1/usage/fixes" && req.method() == Method::POST => {
            (format!("usage:{}", known.key_hash), limits.usage)
        }
        Some(known) => (format!("api:{}", known.key_hash), limits.api),
        None => (format!("anon:{}", address()), limits.anonymous),
    }))
}

fn headers(quota: &Quota) -> [(HeaderName, HeaderValue); 3] {
    [
        (HeaderName::from_static("x-ratelimit-limit"), HeaderValue::from(quota.limit)),
        (HeaderName::from_static("x-ratelimit-remaining"), HeaderValue::from(quota.remaining())),
        (HeaderName::from_static("x-ratelimit-reset"), HeaderValue::from(quota.resets_at.timestamp())),
    ]
}

pub async fn enforce(req: ServiceRequest, next: Next<impl MessageBody + 'static>) -> Result<ServiceResponse, Error> {
    let settings = req.app_data::<web::Data<Settings>>().cloned();
    let pool = req.app_data::<web::Data<PgPool>>().cloned();
    let limited = match (&settings, &pool) {
        (Some(settings), Some(_)) => match bucket(&req, settings).await {
            Ok(bucket) => bucket.filter(|(_, limit)| *limit > 0),
            Err(error) => {
                tracing::warn!(%error, "API key lookup failed; request not rate limited");
                None
            }
        },
        _ => None,
    };
    let Some((bucket, limit)) = limited else {
        return next.call(req).await.map(ServiceResponse::map_into_boxed_body);
    };
    let now = req.app_data::<web::Data<Clock>>().map_or_else(Utc::now, |clock| clock.now());
    let quota = match rate_limits::hit(pool.expect("checked above").get_ref(), &bucket, limit, now).await {
        Ok(quota) => quota,
        Err(error) => {
            tracing::warn!(%error, "rate limiter unavailable; request let through");
            return next.call(req).await.map(ServiceResponse::map_into_boxed_body);
        }
    };
    if !quota.allowed() {
        let retry_after = (quota.resets_at - now).num_seconds().max(1);
        let mut response = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            format!("rate limit of {limit} requests per minute exceeded; retry in {retry_after} s"),
        )
        .error_response();
        for (name, value) in headers(&quota) {
            response.headers_mut().insert(name, value);
        }
        response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(retry_after));
        return Ok(req.into_response(response));
    }
    let mut response = next.call(req).await?.map_into_boxed_body();
    for (name, value) in headers(&quota) {
        response.headers_mut().insert(name, value);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::network_of;

    #[test]
    fn an_ipv6_client_counts_as_its_64_and_an_ipv4_one_as_itself() {
        assert_eq!(network_of("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(network_of("2001:db8:1:2:ffff:ffff:ffff:ffff"), "2001:db8:1:2::/64");
        assert_ne!(network_of("2001:db8:1:3::1"), network_of("2001:db8:1:2::1"));
        assert_eq!(network_of("::ffff:203.0.113.7"), "203.0.113.7");
        assert_eq!(network_of("64:ff9b::203.0.113.7"), "203.0.113.7");
        assert_eq!(network_of("203.0.113.7"), "203.0.113.7");
    }

    #[test]
    fn ports_brackets_and_zones_choose_no_bucket_and_non_addresses_share_one() {
        assert_eq!(network_of("203.0.113.7:51234"), "203.0.113.7");
        assert_eq!(network_of("[2001:db8:1:2::1]:51234"), "2001:db8:1:2::/64");
        assert_eq!(network_of("[2001:db8:1:2::1]"), "2001:db8:1:2::/64");
        assert_eq!(network_of("fe80::1%eth0"), "fe80::/64");
        assert_eq!(network_of("not-an-address-1"), network_of("not-an-address-2"));
        assert_eq!(network_of("unknown"), "unknown");
    }
}

//! Admin authentication. The API takes `Authorization: Bearer <ADMIN_TOKEN>`. The page
//! signs in with the token once and then holds a server-side session (`db::sessions`):
//! a random cookie value stored hashed, `HttpOnly`, `SameSite=Strict`, `Secure` (unless
//! `SESSION_COOKIE_SECURE=false` for local plain http), ending after
//! `ADMIN_SESSION_TTL_MINUTES`, at sign-out, or when `ADMIN_TOKEN` changes.
//!
//! Every state-changing form carries the session's CSRF token, and a request whose
//! `Origin` is another site or whose `Sec-Fetch-Site` says cross-site is refused before
//! the token is even read (the sign-in form too: no login CSRF).
//!
//! With no `ADMIN_TOKEN` configured, admin does not exist (404). Comparisons are
//! constant-time.

use actix_web::cookie::{Cookie, SameSite};
use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};
use common::config::{Secret, Settings};
use common::db::sessions::{self, SessionToken};
use futures::future::{LocalBoxFuture, Ready, ready};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::errors::ApiError;

pub const SESSION_COOKIE: &str = "rsolv_admin";
const REALM: &str = "admin";

/// Equal without revealing where they differ, nor their lengths ([`Secret::matches`]).
pub fn same_secret(given: &str, expected: &Secret) -> bool {
    expected.matches(given)
}

/// Which admin token a session was opened with: a new token ends the sessions of the
/// old one. Two bytes only: enough to tell a rotation (1 in 65,536 would slip), too few
/// to test guesses of the token against a copy of the sessions table.
fn fingerprint(token: &Secret) -> String {
    hex::encode(&Sha256::digest([b"rsolv-admin-session\0".as_slice(), token.expose().as_bytes()].concat())[..2])
}

fn configured(req: &HttpRequest) -> Result<Secret, ApiError> {
    req.app_data::<web::Data<Settings>>()
        .and_then(|s| s.admin_token.clone())
        .ok_or_else(|| ApiError::not_found("no such route"))
}

/// A request to the admin API with the right bearer token.
pub struct AdminApi;

impl FromRequest for AdminApi {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(configured(req).and_then(|token| {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .ok_or_else(|| ApiError::unauthorized("admin token required: Authorization: Bearer <ADMIN_TOKEN>"))?;
            if same_secret(given.trim(), &token) {
                Ok(AdminApi)
            } else {
                Err(ApiError::unauthorized("invalid admin token"))
            }
        }))
    }
}

/// Whether admin exists, and whether this browser holds a live session.
pub enum AdminPage {
    SignedIn(SessionToken),
    SignedOut,
}

impl AdminPage {
    /// The CSRF token forms of this session carry (empty when signed out).
    pub fn csrf_token(&self) -> String {
        match self {
            AdminPage::SignedIn(session) => session.csrf_token(),
            AdminPage::SignedOut => String::new(),
        }
    }

    /// Checks a state-changing form: same-site, and carrying this session's token.
    pub fn check_form(&self, req: &HttpRequest, csrf: &str) -> Result<(), ApiError> {
        crate::browser::check_form(req, &self.csrf_token(), csrf)
    }
}

impl FromRequest for AdminPage {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let configured = configured(req);
        let cookie = req.cookie(SESSION_COOKIE).map(|c| SessionToken::from_cookie(c.value()));
        let pool = req.app_data::<web::Data<PgPool>>().cloned();
        Box::pin(async move {
            let token = configured?;
            let (Some(session), Some(pool)) = (cookie, pool) else { return Ok(AdminPage::SignedOut) };
            match sessions::find(pool.get_ref(), REALM, &session).await? {
                Some(subject) if subject == fingerprint(&token) => Ok(AdminPage::SignedIn(session)),
                _ => Ok(AdminPage::SignedOut),
            }
        })
    }
}

/// Opens a session for a sign-in with the right token; its cookie.
pub async fn sign_in(pool: &PgPool, settings: &Settings, token: &Secret) -> Result<Cookie<'static>, sqlx::Error> {
    let session = sessions::create(pool, REALM, &fingerprint(token), settings.admin_session_ttl, None).await?;
    Ok(Cookie::build(SESSION_COOKIE, session.expose().to_owned())
        .path("/admin")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(settings.session_cookie_secure)
        .max_age(actix_web::cookie::time::Duration::seconds(settings.admin_session_ttl.as_secs() as i64))
        .finish())
}

/// Ends the session (if any) and returns the cookie that clears it.
pub async fn sign_out(pool: &PgPool, page: &AdminPage) -> Result<Cookie<'static>, sqlx::Error> {
    if let AdminPage::SignedIn(session) = page {
        sessions::revoke(pool, session).await?;
    }
    let mut cookie = Cookie::build(SESSION_COOKIE, "").path("/admin").finish();
    cookie.make_removal();
    Ok(cookie)
}

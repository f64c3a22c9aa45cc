//! Customer dashboard sessions. A customer signs in with a one-time emailed link
//! (`db::sign_in_links`) or one of their API keys, and then holds a server-side session
//! (`db::sessions`, realm `customer`, the customer id as its subject): a random cookie
//! value stored hashed, `HttpOnly`, `Secure` (unless `SESSION_COOKIE_SECURE=false`),
//! ending after `DASHBOARD_SESSION_TTL_MINUTES`, or at sign-out.
//!
//! The cookie is `SameSite=Lax`, not `Strict` as the admin one: the dashboard is
//! reached from links in our emails, a navigation from another site, which a `Strict`
//! cookie would not accompany. What Lax lets through is navigation (GET) only, and
//! every form that changes something carries the session's CSRF token and is refused
//! when another site sent it (`browser::check_form`).

use actix_web::cookie::{Cookie, SameSite};
use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, web};
use common::config::Settings;
use common::db::sessions::{self, SessionToken};
use futures::future::LocalBoxFuture;
use sqlx::PgPool;
use uuid::Uuid;

use crate::errors::ApiError;

pub const SESSION_COOKIE: &str = "rsolv_session";
const REALM: &str = "customer";

/// A dashboard request: signed in (whose session, which customer) or not.
pub enum Dashboard {
    SignedIn { session: SessionToken, customer_id: Uuid },
    SignedOut,
}

impl Dashboard {
    /// Checks a state-changing form against this session's CSRF token.
    pub fn check_form(&self, req: &HttpRequest, csrf: &str) -> Result<(), ApiError> {
        let expected = match self {
            Dashboard::SignedIn { session, .. } => session.csrf_token(),
            Dashboard::SignedOut => String::new(),
        };
        crate::browser::check_form(req, &expected, csrf)
    }
}

impl FromRequest for Dashboard {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let cookie = req.cookie(SESSION_COOKIE).map(|c| SessionToken::from_cookie(c.value()));
        let pool = req.app_data::<web::Data<PgPool>>().cloned();
        Box::pin(async move {
            let (Some(session), Some(pool)) = (cookie, pool) else { return Ok(Dashboard::SignedOut) };
            let subject = sessions::find(pool.get_ref(), REALM, &session).await?;
            let Some(customer_id) = subject.and_then(|s| Uuid::parse_str(&s).ok()) else {
                return Ok(Dashboard::SignedOut);
            };
            // A session outlives nothing: its customer gone, it opens nothing either.
            if !common::db::customers::exists(pool.get_ref(), customer_id).await? {
                return Ok(Dashboard::SignedOut);
            }
            Ok(Dashboard::SignedIn { session, customer_id })
        })
    }
}

/// Opens a session for `customer_id`; its cookie. `api_key_id`: the key the customer
/// signed in with (revoking it ends the session), or `None` for an emailed link.
pub async fn sign_in(
    pool: &PgPool,
    settings: &Settings,
    customer_id: Uuid,
    api_key_id: Option<Uuid>,
) -> Result<Cookie<'static>, sqlx::Error> {
    let ttl = settings.dashboard_session_ttl;
    let session = sessions::create(pool, REALM, &customer_id.to_string(), ttl, api_key_id).await?;
    Ok(Cookie::build(SESSION_COOKIE, session.expose().to_owned())
        .path("/dashboard")
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(settings.session_cookie_secure)
        .max_age(actix_web::cookie::time::Duration::seconds(ttl.as_secs() as i64))
        .finish())
}

/// Ends the session (if any) and returns the cookie that clears it.
pub async fn sign_out(pool: &PgPool, dashboard: &Dashboard) -> Result<Cookie<'static>, sqlx::Error> {
    if let Dashboard::SignedIn { session, .. } = dashboard {
        sessions::revoke(pool, session).await?;
    }
    let mut cookie = Cookie::build(SESSION_COOKIE, "").path("/dashboard").finish();
    cookie.make_removal();
    Ok(cookie)
}

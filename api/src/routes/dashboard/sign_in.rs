//! Signing in to the dashboard: by a one-time link emailed on request, or with an API
//! key; and signing out.
//!
//! Asking for a link answers the same page whether or not the address has an account,
//! and is limited per address asked for and per client address (hourly), before the
//! address is looked up. The link's page shows a button rather than signing in on
//! GET: mail scanners fetch links, and a fetch must not spend the link.
//!
//! With email off (`SMTP_URL` unset) no link can be sent: the page offers only the API
//! key, and the link request does not exist (404, as the admin API without its token),
//! answered with a page that says why, enqueueing nothing and counting against no limit.
//! Not a 5xx: anyone can post it, and it must not read as the server failing.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::TimeDelta;
use common::clock::Clock;
use common::config::Settings;
use common::db::{self, rate_limits, sign_in_links::SignInToken};
use common::domain::{ApiKey, Email};
use common::jobs::{SendSignInLink, SignInLinkNotSent};
use common::queue;
use minijinja::context;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use super::{CsrfForm, Flash, page, see_other};
use crate::dashboard_auth::{self, Dashboard};
use crate::errors::ApiError;

/// The page for a link that is not (or no longer) one: forged, used and expired look
/// the same.
const DEAD_LINK: &str = "This sign-in link has expired or was already used. Ask for a new one below.";
const DEAD_LINK_EMAIL_OFF: &str = "This sign-in link has expired or was already used. Sign in with an API key.";

pub async fn form(dashboard: Dashboard, flash: Flash, settings: web::Data<Settings>) -> HttpResponse {
    if let Dashboard::SignedIn { .. } = dashboard {
        return see_other("/dashboard");
    }
    login_page(StatusCode::OK, &settings, flash.text().as_deref())
}

/// The sign-in page, with `flash` above its forms; the link form only where email is on.
fn login_page(status: StatusCode, settings: &Settings, flash: Option<&str>) -> HttpResponse {
    page(status, "login.html", context! { flash => flash, email_off => settings.email.is_none() })
}

const EMAIL_OFF: &str = "This server sends no email, so it cannot send sign-in links. Sign in with an API key.";

#[derive(Deserialize)]
pub struct LinkRequest {
    #[serde(default)]
    email: String,
}

/// Counts a sign-in attempt against `bucket` (hourly); `false` once over `limit`
/// (0: unlimited).
async fn within_limit(pool: &PgPool, clock: &Clock, bucket: &str, limit: u32) -> Result<bool, ApiError> {
    if limit == 0 {
        return Ok(true);
    }
    let quota = rate_limits::hit_in(pool, bucket, limit, clock.now(), TimeDelta::hours(1)).await?;
    Ok(quota.allowed())
}

fn too_many(settings: &Settings) -> HttpResponse {
    let flash = "Too many sign-in attempts. Try again in an hour.";
    login_page(StatusCode::TOO_MANY_REQUESTS, settings, Some(flash))
}

/// `POST /dashboard/login`: emails a sign-in link to the address, if it has an account.
pub async fn request_link(
    req: HttpRequest,
    pool: web::Data<PgPool>,
    settings: web::Data<Settings>,
    clock: web::Data<Clock>,
    form: web::Form<LinkRequest>,
) -> Result<HttpResponse, ApiError> {
    crate::browser::same_site(&req)?;
    if settings.email.is_none() {
        return Ok(login_page(StatusCode::NOT_FOUND, &settings, Some(EMAIL_OFF)));
    }
    let Ok(email) = Email::parse(&form.email) else {
        let flash = "Enter the email address of your RSOLV account.";
        return Ok(login_page(StatusCode::UNPROCESSABLE_ENTITY, &settings, Some(flash)));
    };
    let limits = settings.rate_limits;
    let address = crate::rate_limit::client_network(&req, &settings);
    // The address asked for is hashed, with a server secret, into its bucket: the table
    // holds no email, and a list of addresses does not reverse it.
    let keyed = [settings.unsubscribe_secret.expose().as_bytes(), b"\0sign-in\0", email.as_str().as_bytes()].concat();
    let email_bucket = format!("sign-in-email:{}", hex::encode(Sha256::digest(keyed)));
    if !within_limit(&pool, &clock, &format!("sign-in-address:{address}"), limits.sign_in_per_address).await?
        || !within_limit(&pool, &clock, &email_bucket, limits.sign_in_per_email).await?
    {
        return Ok(too_many(&settings));
    }
    // A job either way (one that sends nothing without an account): the same work, so
    // the answer's time does not tell whether the address has one.
    let request = uuid::Uuid::new_v4();
    let customer_id = db::customers::find_by_email(pool.get_ref(), &email).await?.map(|customer| customer.id);
    match customer_id {
        Some(customer_id) => queue::enqueue(pool.get_ref(), &SendSignInLink { customer_id, request }).await?,
        None => queue::enqueue(pool.get_ref(), &SignInLinkNotSent { request }).await?,
    };
    tracing::info!(customer_id = ?customer_id, "sign-in link requested");
    Ok(page(StatusCode::OK, "link.html", context! { sent => true }))
}

/// A link's token as it can be: 43 base64url characters (32 random bytes).
fn token_of(raw: &str) -> Option<SignInToken> {
    let well_formed = raw.len() == 43 && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    well_formed.then(|| SignInToken::from_link(raw))
}

/// Signed in: to the overview, with the session's cookie.
fn into_dashboard(session: actix_web::cookie::Cookie<'static>) -> HttpResponse {
    HttpResponse::SeeOther().cookie(session).insert_header((actix_web::http::header::LOCATION, "/dashboard")).finish()
}

fn dead_link(settings: &Settings) -> HttpResponse {
    let flash = match settings.email {
        Some(_) => DEAD_LINK,
        None => DEAD_LINK_EMAIL_OFF,
    };
    login_page(StatusCode::NOT_FOUND, settings, Some(flash))
}

/// `a…@example.com`: enough to recognise one's own address, not to read someone else's.
fn masked(email: &str) -> String {
    match email.split_once('@') {
        Some((local, domain)) => format!("{}…@{domain}", local.chars().next().unwrap_or('?')),
        None => "…".to_owned(),
    }
}

/// `GET /dashboard/login/{token}`: the link's page, naming the account it opens, with
/// the button that signs in.
pub async fn link(
    pool: web::Data<PgPool>,
    settings: web::Data<Settings>,
    token: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let Some(token) = token_of(&token) else { return Ok(dead_link(&settings)) };
    let Some(email) = db::sign_in_links::live_for(pool.get_ref(), &token).await? else {
        return Ok(dead_link(&settings));
    };
    Ok(page(StatusCode::OK, "link.html", context! { token => token.expose(), account => masked(&email) }))
}

/// `POST /dashboard/login/{token}`: spends the link and opens a session.
pub async fn redeem(
    req: HttpRequest,
    pool: web::Data<PgPool>,
    settings: web::Data<Settings>,
    token: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    crate::browser::same_site(&req)?;
    let Some(token) = token_of(&token) else { return Ok(dead_link(&settings)) };
    let Some(customer_id) = db::sign_in_links::redeem(pool.get_ref(), &token).await? else {
        tracing::warn!("a dead sign-in link was used");
        return Ok(dead_link(&settings));
    };
    let cookie = dashboard_auth::sign_in(pool.get_ref(), &settings, customer_id, None).await?;
    tracing::info!(%customer_id, "signed in to the dashboard by email link");
    Ok(into_dashboard(cookie))
}

#[derive(Deserialize)]
pub struct KeySignIn {
    #[serde(default)]
    api_key: String,
}

/// `POST /dashboard/login/key`: signs in with one of the customer's live API keys.
pub async fn with_key(
    req: HttpRequest,
    pool: web::Data<PgPool>,
    settings: web::Data<Settings>,
    clock: web::Data<Clock>,
    form: web::Form<KeySignIn>,
) -> Result<HttpResponse, ApiError> {
    crate::browser::same_site(&req)?;
    let address = crate::rate_limit::client_network(&req, &settings);
    let limit = settings.rate_limits.sign_in_per_address;
    if !within_limit(&pool, &clock, &format!("sign-in-address:{address}"), limit).await? {
        return Ok(too_many(&settings));
    }
    let live = match ApiKey::parse(form.api_key.trim()) {
        Ok(key) => db::api_keys::live(pool.get_ref(), &key.hash()).await?,
        Err(_) => None,
    };
    let Some((key_id, customer_id)) = live else {
        tracing::warn!("dashboard sign-in with a key that is not live");
        let flash = "That API key does not sign in: it is mistyped or revoked.";
        return Ok(login_page(StatusCode::UNAUTHORIZED, &settings, Some(flash)));
    };
    // Revoking this key ends the session.
    let cookie = dashboard_auth::sign_in(pool.get_ref(), &settings, customer_id, Some(key_id)).await?;
    tracing::info!(%customer_id, %key_id, "signed in to the dashboard with an API key");
    Ok(into_dashboard(cookie))
}

/// `POST /dashboard/logout`: ends the session; its cookie opens nothing any more.
pub async fn logout(
    dashboard: Dashboard,
    req: HttpRequest,
    pool: web::Data<PgPool>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, ApiError> {
    if let Dashboard::SignedOut = dashboard {
        return Ok(super::to_sign_in());
    }
    dashboard.check_form(&req, &form.csrf)?;
    let cookie = dashboard_auth::sign_out(pool.get_ref(), &dashboard).await?;
    let mut response = super::back("/dashboard/login", "You are signed out.");
    response.add_cookie(&cookie).map_err(|e| {
        tracing::error!(error = %e, "the sign-out cookie");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, common::domain::ErrorCode::InternalError, "internal error")
    })?;
    Ok(response)
}

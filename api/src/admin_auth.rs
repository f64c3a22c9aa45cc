//! Admin authentication: the API takes `Authorization: Bearer <ADMIN_TOKEN>`; the page
//! takes a session cookie derived from the token (HMAC), set by signing in with it.
//! With no `ADMIN_TOKEN` configured, admin does not exist (404). Comparisons are
//! constant-time.

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};
use common::config::{Secret, Settings};
use futures::future::{Ready, ready};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::errors::ApiError;

pub const SESSION_COOKIE: &str = "rsolv_admin";

/// Equal without revealing where they differ, nor (by hashing first) their lengths.
pub fn same_secret(given: &str, expected: &Secret) -> bool {
    Sha256::digest(given.as_bytes()).ct_eq(&Sha256::digest(expected.expose().as_bytes())).into()
}

/// The cookie value that proves a sign-in with the token.
pub fn session_value(token: &Secret) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(token.expose().as_bytes()).expect("any key length");
    mac.update(b"rsolv-admin-session");
    hex::encode(mac.finalize().into_bytes())
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

/// Whether admin exists, and whether this browser is signed in.
pub enum AdminPage {
    SignedIn,
    SignedOut,
}

impl FromRequest for AdminPage {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(configured(req).map(|token| {
            let signed_in = req
                .cookie(SESSION_COOKIE)
                .is_some_and(|c| bool::from(c.value().as_bytes().ct_eq(session_value(&token).as_bytes())));
            if signed_in { AdminPage::SignedIn } else { AdminPage::SignedOut }
        }))
    }
}

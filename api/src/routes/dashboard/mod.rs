//! The customer dashboard at `/dashboard`: a customer's own side of the product, as
//! server-rendered pages (minijinja, no script) over the same domain code the API uses.
//! Reads use the API's queries; writes are the API's writes (an API key is created and
//! revoked by `db::api_keys` with the same limit).
//!
//! # Guide
//!
//! - `sign_in`: the email link (`/dashboard/login`, a job emails a one-time link; the
//!   link's page asks for a click, which redeems it, so a mail scanner that fetches the
//!   link signs no one in), signing in with an API key, and sign-out.
//! - `overview`: balance, plan, warnings, fixes this month, a 30-day chart of credits
//!   used and granted, drawn on the server as SVG.
//! - `usage`: the fix history, paged and filtered by repository and outcome, and CSV.
//! - `keys`: create (shown once), list, revoke (the last live key only when confirmed).
//! - `billing`: plan, card, subscribe, cancel, resume, invoices and charges; the card
//!   form through Stripe.js.
//! - `email`: which sequences the customer receives; unsubscribe and resubscribe.
//!
//! Sessions and CSRF: `dashboard_auth`. Every page is `Cache-Control: no-store`: they
//! show a customer's own data (and, once, a new API key).

pub mod billing;
mod chart;
pub mod email;
pub mod keys;
pub mod overview;
pub mod sign_in;
pub mod usage;

use std::sync::OnceLock;

use actix_web::HttpResponse;
use actix_web::cookie::Cookie;
use actix_web::http::{StatusCode, header};
use minijinja::Environment;

use crate::dashboard_auth::Dashboard;

fn templates() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        for (name, source) in [
            ("layout.html", include_str!("../../templates/dashboard/layout.html")),
            ("login.html", include_str!("../../templates/dashboard/login.html")),
            ("link.html", include_str!("../../templates/dashboard/link.html")),
            ("overview.html", include_str!("../../templates/dashboard/overview.html")),
            ("usage.html", include_str!("../../templates/dashboard/usage.html")),
            ("keys.html", include_str!("../../templates/dashboard/keys.html")),
            ("billing.html", include_str!("../../templates/dashboard/billing.html")),
            ("card.html", include_str!("../../templates/dashboard/card.html")),
            ("email.html", include_str!("../../templates/dashboard/email.html")),
        ] {
            env.add_template(name, source).expect("dashboard templates parse");
        }
        env
    })
}

/// The cookie carrying a message to the page a form leads back to (see [`Flash`]).
const FLASH_COOKIE: &str = "rsolv_flash";

/// A rendered page, never cached; it has shown the flash message, so the cookie goes.
fn page(status: StatusCode, template: &str, ctx: minijinja::Value) -> HttpResponse {
    match templates().get_template(template).and_then(|t| t.render(ctx)) {
        Ok(html) => {
            let mut spent = Cookie::build(FLASH_COOKIE, "").path("/dashboard").finish();
            spent.make_removal();
            HttpResponse::build(status)
                .content_type("text/html; charset=utf-8")
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .cookie(spent)
                .body(html)
        }
        Err(error) => {
            tracing::error!(%error, template, "dashboard page failed to render");
            HttpResponse::InternalServerError().body("the page failed to render")
        }
    }
}

/// Where a signed-out browser goes.
fn to_sign_in() -> HttpResponse {
    see_other("/dashboard/login")
}

fn see_other(location: &str) -> HttpResponse {
    HttpResponse::SeeOther().insert_header((header::LOCATION, location.to_owned())).finish()
}

/// Back to `path` with a message shown once on top of it. The message travels in a
/// cookie only this site sets, not in the URL: a link cannot put words on our pages.
fn back(path: &str, flash: &str) -> HttpResponse {
    let cookie = Cookie::build(FLASH_COOKIE, crate::url::encode_component(flash))
        .path("/dashboard")
        .http_only(true)
        .same_site(actix_web::cookie::SameSite::Strict)
        .max_age(actix_web::cookie::time::Duration::seconds(60))
        .finish();
    HttpResponse::SeeOther().insert_header((header::LOCATION, path.to_owned())).cookie(cookie).finish()
}

/// The customer behind a state-changing form that passed its checks (sent by this site,
/// carrying its session's CSRF token); `None` when signed out.
fn form_customer(
    dashboard: &Dashboard,
    req: &actix_web::HttpRequest,
    csrf: &str,
) -> Result<Option<uuid::Uuid>, crate::errors::ApiError> {
    let Some((customer_id, _)) = signed_in(dashboard) else { return Ok(None) };
    dashboard.check_form(req, csrf)?;
    Ok(Some(customer_id))
}

/// The signed-in customer and the CSRF token of their forms, or `None` (signed out).
fn signed_in(dashboard: &Dashboard) -> Option<(uuid::Uuid, String)> {
    match dashboard {
        Dashboard::SignedIn { session, customer_id } => Some((*customer_id, session.csrf_token())),
        Dashboard::SignedOut => None,
    }
}

/// The message a form left for the page it led back to (`back`), shown once.
pub struct Flash(Option<String>);

impl Flash {
    fn text(&self) -> Option<String> {
        self.0.clone()
    }
}

impl actix_web::FromRequest for Flash {
    type Error = actix_web::Error;
    type Future = std::future::Ready<Result<Self, Self::Error>>;

    fn from_request(req: &actix_web::HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let text = req.cookie(FLASH_COOKIE).map(|c| {
            let decoded = crate::url::decode_component(c.value());
            decoded.chars().filter(|c| !c.is_control()).take(300).collect()
        });
        std::future::ready(Ok(Flash(text.filter(|t: &String| !t.is_empty()))))
    }
}

/// The CSRF token every state-changing form carries.
#[derive(serde::Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

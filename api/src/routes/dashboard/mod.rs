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

/// A rendered page, never cached.
fn page(status: StatusCode, template: &str, ctx: minijinja::Value) -> HttpResponse {
    match templates().get_template(template).and_then(|t| t.render(ctx)) {
        Ok(html) => HttpResponse::build(status)
            .content_type("text/html; charset=utf-8")
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .body(html),
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

/// Back to `path` with a message shown once on top of it.
fn back(path: &str, flash: &str) -> HttpResponse {
    see_other(&format!("{path}?flash={}", crate::url::encode_component(flash)))
}

/// The signed-in customer and the CSRF token of their forms, or `None` (signed out).
fn signed_in(dashboard: &Dashboard) -> Option<(uuid::Uuid, String)> {
    match dashboard {
        Dashboard::SignedIn { session, customer_id } => Some((*customer_id, session.csrf_token())),
        Dashboard::SignedOut => None,
    }
}

/// A message shown once on top of a page (`?flash=`), bounded so a crafted link cannot
/// fill the page.
#[derive(serde::Deserialize)]
pub struct Flash {
    flash: Option<String>,
}

impl Flash {
    fn text(&self) -> Option<String> {
        self.flash.as_deref().map(|f| f.chars().take(200).collect())
    }
}

/// The CSRF token every state-changing form carries.
#[derive(serde::Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

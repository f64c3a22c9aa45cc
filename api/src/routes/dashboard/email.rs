//! `/dashboard/email`: which sequences the customer receives. Each sequence that can be
//! stopped can be switched off or on; "unsubscribe from all" is the same unsubscribe as
//! the emails' link (and resubscribing undoes it). Transactional email (sign-in links,
//! failed payments) is listed as always sent.

use std::collections::HashMap;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use common::db;
use common::email::sequences;
use minijinja::context;
use serde::Serialize;
use sqlx::PgPool;

use super::{CsrfForm, Flash, back, form_customer, page, signed_in, to_sign_in};
use crate::dashboard_auth::Dashboard;
use crate::errors::ApiError;

#[derive(Serialize)]
struct SequenceRow {
    name: &'static str,
    about: &'static str,
    /// Transactional: always sent, no switch.
    always: bool,
    receive: bool,
}

pub async fn show(dashboard: Dashboard, pool: web::Data<PgPool>, flash: Flash) -> Result<HttpResponse, ApiError> {
    let Some((customer_id, csrf)) = signed_in(&dashboard) else { return Ok(to_sign_in()) };
    let pool = pool.get_ref();
    let Some(customer) = db::customers::find(pool, customer_id).await? else { return Ok(to_sign_in()) };
    let unsubscribed = db::customers::unsubscribed(pool, customer_id).await?.unwrap_or(false);
    let opted_out = db::email_preferences::opted_out(pool, customer_id).await?;
    let rows: Vec<SequenceRow> = sequences::ALL
        .iter()
        .map(|s| SequenceRow {
            name: s.name,
            about: s.about,
            always: s.stop.is_none(),
            receive: s.stop.is_none() || !opted_out.iter().any(|o| o == s.name),
        })
        .collect();
    Ok(page(
        StatusCode::OK,
        "email.html",
        context! {
            nav => "email",
            csrf => csrf,
            flash => flash.text(),
            customer_name => &customer.name,
            email => &customer.email,
            unsubscribed => unsubscribed,
            sequences => minijinja::value::Serde(rows),
        },
    ))
}

/// The switches: `receive_<sequence>=yes` for each sequence to receive; a sequence
/// the form does not name as received is switched off.
pub async fn save(
    dashboard: Dashboard,
    req: HttpRequest,
    pool: web::Data<PgPool>,
    form: web::Form<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let csrf = form.get("csrf").map(String::as_str).unwrap_or_default();
    let Some(customer_id) = form_customer(&dashboard, &req, csrf)? else { return Ok(to_sign_in()) };
    let mut tx = pool.begin().await?;
    for sequence in sequences::ALL.iter().filter(|s| s.stop.is_some()) {
        let receive = form.get(&format!("receive_{}", sequence.name)).is_some_and(|v| v == "yes");
        db::email_preferences::set(&mut *tx, customer_id, sequence.name, receive).await?;
    }
    tx.commit().await?;
    tracing::info!(%customer_id, "email preferences saved");
    Ok(back("/dashboard/email", "Your email preferences are saved."))
}

pub async fn unsubscribe(
    dashboard: Dashboard,
    req: HttpRequest,
    pool: web::Data<PgPool>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, ApiError> {
    let Some(customer_id) = form_customer(&dashboard, &req, &form.csrf)? else { return Ok(to_sign_in()) };
    db::customers::unsubscribe(pool.get_ref(), customer_id).await?;
    Ok(back("/dashboard/email", "You are unsubscribed: only email about your account will come."))
}

pub async fn resubscribe(
    dashboard: Dashboard,
    req: HttpRequest,
    pool: web::Data<PgPool>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, ApiError> {
    let Some(customer_id) = form_customer(&dashboard, &req, &form.csrf)? else { return Ok(to_sign_in()) };
    db::customers::resubscribe(pool.get_ref(), customer_id).await?;
    Ok(back("/dashboard/email", "You are subscribed again to the email you chose below."))
}

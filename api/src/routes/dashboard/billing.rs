//! `/dashboard/billing`: the plan and its state, the card on file, subscribe, cancel
//! (now or at the period's end) and resume, Stripe's invoices and the fixes charged one
//! by one. Every form enqueues exactly what the API's billing routes enqueue, through
//! the same functions (`routes::billing::*_for`), so the rules (one pending operation
//! per intent, a card before Pro, nothing to resume without a scheduled cancellation)
//! are written once.
//!
//! The card form (`/dashboard/billing/card`) is the one page with script: Stripe.js
//! (from `STRIPE_JS_URL`) and ours (`/dashboard/assets/card.js`) confirm a SetupIntent
//! with the card, so the card's number reaches Stripe only; the page then posts the
//! payment method's id, with the customer's consent, as the API's clients do. Its CSP
//! allows exactly those two scripts and Stripe's origins.

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use common::db;
use common::jobs::{RemovePaymentMethod, SetDefaultPaymentMethod, removal_refused};
use common::queue::JobWaker;
use common::stripe::StripeApi;
use minijinja::context;
use minijinja::value::Serde;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use super::{Flash, back, form_customer, page, signed_in, to_sign_in};
use crate::dashboard_auth::Dashboard;
use crate::errors::ApiError;
use crate::routes::billing as api;

const CHARGES_PAGE: i64 = 25;

#[derive(Serialize)]
struct InvoiceRow {
    id: String,
    status: Option<String>,
    amount: String,
    period: Option<String>,
    url: Option<String>,
}

#[derive(Serialize)]
struct ChargeRow {
    fix_id: String,
    repo: String,
    amount: String,
    status: &'static str,
    created_at: String,
}

/// An amount in a currency's smallest unit, as people read it (`5.99 USD`).
fn money(cents: i64, currency: &str) -> String {
    format!("{}.{:02} {}", cents / 100, (cents % 100).abs(), currency.to_uppercase())
}

fn date(unix: i64) -> Option<String> {
    DateTime::from_timestamp(unix, 0).map(|t| t.format("%Y-%m-%d").to_string())
}

#[derive(Deserialize)]
pub struct BillingQuery {
    /// The page of charges older than this (`created_at`, RFC 3339).
    charges_before: Option<String>,
    /// The page of invoices after this one (Stripe's id).
    invoices_after: Option<String>,
}

#[derive(Serialize)]
struct CardRow {
    id: String,
    brand: String,
    last4: String,
    expires: Option<String>,
    default: bool,
}

/// The customer's cards at Stripe, the default first; `None` when Stripe cannot say now.
async fn card_rows(stripe: Option<&StripeApi>, customer: &db::customers::Customer) -> Option<Vec<CardRow>> {
    let (Some(stripe), Some(stripe_customer)) = (stripe, customer.stripe_customer_id.as_deref()) else {
        return Some(Vec::new());
    };
    let methods = match stripe.payment_methods(stripe_customer).await {
        Ok(methods) => methods,
        Err(error) => {
            tracing::warn!(%error, "listing cards for the dashboard failed");
            return None;
        }
    };
    let mut rows: Vec<CardRow> = methods
        .into_iter()
        .map(|m| {
            let card = m.card.unwrap_or_default();
            CardRow {
                default: customer.stripe_payment_method_id.as_deref() == Some(m.id.as_str()),
                id: m.id,
                brand: card.brand.unwrap_or_else(|| "card".into()),
                last4: card.last4.unwrap_or_default(),
                expires: card.exp_month.zip(card.exp_year).map(|(m, y)| format!("{m}/{y}")),
            }
        })
        .collect();
    rows.sort_by_key(|r| !r.default);
    Some(rows)
}

/// Invoices shown per page.
const INVOICES_PAGE: i64 = 12;

/// A page of Stripe's invoices of the customer (after the invoice `after`), whether more
/// follow, or why they cannot be shown now.
async fn invoice_rows(
    stripe: Option<&StripeApi>,
    stripe_customer: Option<&str>,
    after: Option<&str>,
) -> (Vec<InvoiceRow>, bool, Option<&'static str>) {
    let (Some(stripe), Some(customer)) = (stripe, stripe_customer) else { return (Vec::new(), false, None) };
    match stripe.invoices_page(customer, after, INVOICES_PAGE).await {
        Ok(list) => (
            list.data
                .into_iter()
                .map(|i| InvoiceRow {
                    amount: money(i.amount_paid.max(i.amount_due), i.currency.as_deref().unwrap_or("usd")),
                    period: i
                        .period_start
                        .and_then(date)
                        .zip(i.period_end.and_then(date))
                        .map(|(a, b)| format!("{a} – {b}")),
                    id: i.id,
                    status: i.status,
                    url: i.hosted_invoice_url,
                })
                .collect(),
            list.has_more,
            None,
        ),
        Err(error) => {
            tracing::warn!(%error, "listing invoices for the dashboard failed");
            (Vec::new(), false, Some("Invoices cannot be shown right now; try again shortly."))
        }
    }
}

pub async fn show(
    dashboard: Dashboard,
    pool: web::Data<PgPool>,
    stripe: web::Data<Option<StripeApi>>,
    query: web::Query<BillingQuery>,
    flash: Flash,
) -> Result<HttpResponse, ApiError> {
    let Some((customer_id, csrf)) = signed_in(&dashboard) else { return Ok(to_sign_in()) };
    let pool = pool.get_ref();
    let Some(customer) = db::customers::find(pool, customer_id).await? else { return Ok(to_sign_in()) };
    let stripe = stripe.get_ref().as_ref();
    let cards = card_rows(stripe, &customer).await;
    let after = query.invoices_after.as_deref().filter(|id| id.starts_with("in_") && id.len() <= 100);
    let (invoices, more_invoices, invoices_problem) =
        invoice_rows(stripe, customer.stripe_customer_id.as_deref(), after).await;
    let invoices_next = more_invoices.then(|| invoices.last().map(|i| i.id.clone())).flatten();
    let before = query
        .charges_before
        .as_deref()
        .and_then(|b| DateTime::parse_from_rfc3339(b).ok())
        .map(|t| t.with_timezone(&Utc));
    let charges = db::charges::for_customer(pool, customer_id, before, CHARGES_PAGE + 1).await?;
    let more = charges.len() as i64 > CHARGES_PAGE;
    let charges = &charges[..charges.len().min(CHARGES_PAGE as usize)];
    let next = more.then(|| charges.last().map(|c| c.created_at.to_rfc3339())).flatten();
    let charge_rows: Vec<ChargeRow> = charges
        .iter()
        .map(|c| ChargeRow {
            fix_id: c.fix_id.clone(),
            repo: c.repo.clone(),
            amount: money(c.amount_cents, &c.currency),
            status: c.status.as_str(),
            created_at: c.created_at.format("%Y-%m-%d %H:%M").to_string(),
        })
        .collect();
    Ok(page(
        StatusCode::OK,
        "billing.html",
        context! {
            nav => "billing",
            csrf => csrf,
            flash => flash.text(),
            customer_name => &customer.name,
            billing_on => stripe.is_some(),
            plan => customer.subscription_type.as_str(),
            state => customer.subscription_state.map(|s| s.as_str()),
            subscribed => customer.stripe_subscription_id.is_some(),
            cancel_at_period_end => customer.cancel_at_period_end,
            period_end => customer.subscription_period_end.map(|t| t.format("%Y-%m-%d").to_string()),
            has_card => customer.has_payment_method(),
            cards => Serde(cards),
            invoices => Serde(invoices),
            invoices_problem => invoices_problem,
            invoices_next => invoices_next,
            charges => Serde(charge_rows),
            charges_next => next,
        },
    ))
}

/// Where a billing form leads back to: the billing page, saying what is under way or
/// why nothing was done.
fn answered(result: Result<common::queue::Enqueued, ApiError>, under_way: &str) -> Result<HttpResponse, ApiError> {
    match result {
        Ok(_) => Ok(back("/dashboard/billing", under_way)),
        // The API's refusals (422, 409, 404) are the customer's to read; the rest are ours.
        Err(refused) if refused.status.is_client_error() => Ok(back("/dashboard/billing", &refused.message)),
        Err(error) => Err(error),
    }
}

fn billing_on(stripe: &Option<StripeApi>) -> Result<(), ApiError> {
    api::require_billing(stripe).map(|_| ())
}

pub async fn subscribe(
    dashboard: Dashboard,
    req: HttpRequest,
    pool: web::Data<PgPool>,
    stripe: web::Data<Option<StripeApi>>,
    form: web::Form<super::CsrfForm>,
) -> Result<HttpResponse, ApiError> {
    let Some(customer_id) = form_customer(&dashboard, &req, &form.csrf)? else { return Ok(to_sign_in()) };
    billing_on(&stripe)?;
    answered(api::subscribe_for(&pool, customer_id).await, "Your Pro subscription is being set up.")
}

#[derive(Deserialize)]
pub struct CancelForm {
    #[serde(default)]
    csrf: String,
    /// `now` cancels at once; anything else at the period's end.
    #[serde(default)]
    when: String,
}

pub async fn cancel(
    dashboard: Dashboard,
    req: HttpRequest,
    pool: web::Data<PgPool>,
    stripe: web::Data<Option<StripeApi>>,
    form: web::Form<CancelForm>,
) -> Result<HttpResponse, ApiError> {
    let Some(customer_id) = form_customer(&dashboard, &req, &form.csrf)? else { return Ok(to_sign_in()) };
    billing_on(&stripe)?;
    let at_period_end = form.when != "now";
    let under_way = match at_period_end {
        true => "Pro is being cancelled at the end of the period.",
        false => "Pro is being cancelled now.",
    };
    answered(api::cancel_for(&pool, customer_id, at_period_end).await, under_way)
}

pub async fn resume(
    dashboard: Dashboard,
    req: HttpRequest,
    pool: web::Data<PgPool>,
    stripe: web::Data<Option<StripeApi>>,
    form: web::Form<super::CsrfForm>,
) -> Result<HttpResponse, ApiError> {
    let Some(customer_id) = form_customer(&dashboard, &req, &form.csrf)? else { return Ok(to_sign_in()) };
    billing_on(&stripe)?;
    answered(api::resume_for(&pool, customer_id).await, "Pro is being resumed: it renews as before.")
}

/// The card form: a fresh SetupIntent for Stripe.js to confirm.
pub async fn card_form(
    dashboard: Dashboard,
    stripe: web::Data<Option<StripeApi>>,
    settings: web::Data<common::config::Settings>,
    flash: Flash,
) -> Result<HttpResponse, ApiError> {
    let Some((_, csrf)) = signed_in(&dashboard) else { return Ok(to_sign_in()) };
    let (Some(stripe), Some(stripe_settings)) = (stripe.get_ref().as_ref(), settings.stripe.as_ref()) else {
        return Ok(back("/dashboard/billing", "Cards cannot be added here: billing is not configured."));
    };
    let Some(publishable_key) = stripe_settings.publishable_key.as_deref() else {
        return Ok(back("/dashboard/billing", "Cards cannot be added here yet (STRIPE_PUBLISHABLE_KEY is unset)."));
    };
    let intent = match stripe.create_setup_intent().await {
        Ok(intent) => intent,
        Err(error) => {
            tracing::warn!(%error, "creating a SetupIntent for the card form failed");
            return Ok(back("/dashboard/billing", "Stripe cannot be reached right now; try again shortly."));
        }
    };
    let mut response = page(
        StatusCode::OK,
        "card.html",
        context! {
            nav => "billing",
            csrf => csrf,
            flash => flash.text(),
            stripe_js => &stripe_settings.js_url,
            publishable_key => publishable_key,
            client_secret => intent.client_secret,
        },
    );
    let policy = card_page_policy(&stripe_settings.js_url, &stripe_settings.api_base);
    if let Ok(value) = header::HeaderValue::from_str(&policy) {
        response.headers_mut().insert(header::CONTENT_SECURITY_POLICY, value);
    }
    Ok(response)
}

/// The card page's policy: the page policy, plus Stripe.js and our card script, Stripe's
/// API for the card's confirmation, and Stripe's frames (its Elements and 3-D Secure).
fn card_page_policy(js_url: &str, api_base: &str) -> String {
    let (js, api) = (crate::browser::origin_of(js_url), crate::browser::origin_of(api_base));
    format!(
        "default-src 'none'; script-src 'self' {js}; connect-src {api} {js}; frame-src {js} https://hooks.stripe.com; \
         style-src 'unsafe-inline'; img-src 'self' data: {js}; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
}

#[derive(Deserialize)]
pub struct CardForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    payment_method_id: String,
    /// The consent checkbox: `yes` when ticked.
    #[serde(default)]
    consent: String,
}

/// The card form's answer: the payment method Stripe.js confirmed, added as the API adds one.
pub async fn add_card(
    dashboard: Dashboard,
    req: HttpRequest,
    waker: web::Data<JobWaker>,
    stripe: web::Data<Option<StripeApi>>,
    form: web::Form<CardForm>,
) -> Result<HttpResponse, ApiError> {
    let Some(customer_id) = form_customer(&dashboard, &req, &form.csrf)? else { return Ok(to_sign_in()) };
    billing_on(&stripe)?;
    let consent = Some(form.consent == "yes");
    let added = api::add_payment_method_for(&waker, customer_id, form.payment_method_id.clone(), consent).await;
    answered(added, "Your card is being added.")
}

#[derive(Deserialize)]
pub struct CardAction {
    #[serde(default)]
    csrf: String,
}

/// A card of the customer's for one of the forms below, checked as a Stripe id.
fn card_id(raw: &str) -> Option<&str> {
    let valid = raw.strip_prefix("pm_").is_some_and(|rest| {
        !rest.is_empty() && rest.len() <= 100 && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    });
    valid.then_some(raw)
}

/// `POST /dashboard/billing/cards/{id}/default`: this card pays from now on.
pub async fn make_default(
    dashboard: Dashboard,
    req: HttpRequest,
    waker: web::Data<JobWaker>,
    stripe: web::Data<Option<StripeApi>>,
    id: web::Path<String>,
    form: web::Form<CardAction>,
) -> Result<HttpResponse, ApiError> {
    let Some(customer_id) = form_customer(&dashboard, &req, &form.csrf)? else { return Ok(to_sign_in()) };
    billing_on(&stripe)?;
    let Some(card) = card_id(&id) else { return Ok(back("/dashboard/billing", "There is no such card.")) };
    let job =
        SetDefaultPaymentMethod { customer_id, payment_method_id: card.to_owned(), operation_id: uuid::Uuid::new_v4() };
    waker.enqueue(&job).await?;
    Ok(back("/dashboard/billing", "The card is being made your default."))
}

/// `POST /dashboard/billing/cards/{id}/remove`: detaches the card at Stripe.
pub async fn remove_card(
    dashboard: Dashboard,
    req: HttpRequest,
    pool: web::Data<PgPool>,
    waker: web::Data<JobWaker>,
    stripe: web::Data<Option<StripeApi>>,
    id: web::Path<String>,
    form: web::Form<CardAction>,
) -> Result<HttpResponse, ApiError> {
    let Some(customer_id) = form_customer(&dashboard, &req, &form.csrf)? else { return Ok(to_sign_in()) };
    let stripe = api::require_billing(&stripe)?;
    let Some(card) = card_id(&id) else { return Ok(back("/dashboard/billing", "There is no such card.")) };
    let Some(customer) = db::customers::find(pool.get_ref(), customer_id).await? else { return Ok(to_sign_in()) };
    // Told at once when the rule refuses; the job checks it again under the lock.
    let others = match customer.stripe_customer_id.as_deref() {
        Some(stripe_customer) => stripe.payment_methods(stripe_customer).await.map_or(0, |m| m.len().saturating_sub(1)),
        None => 0,
    };
    if let Some(refusal) = removal_refused(&customer, card, others) {
        return Ok(back("/dashboard/billing", &format!("The card stays: {refusal}.")));
    }
    let job =
        RemovePaymentMethod { customer_id, payment_method_id: card.to_owned(), operation_id: uuid::Uuid::new_v4() };
    waker.enqueue(&job).await?;
    Ok(back("/dashboard/billing", "The card is being removed."))
}

/// `card.js`, the card form's own script.
pub async fn card_script() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "public, max-age=300"))
        .body(include_str!("../../templates/dashboard/card.js"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_read_as_money() {
        assert_eq!(money(599, "usd"), "5.99 USD");
        assert_eq!(money(59_900, "eur"), "599.00 EUR");
        assert_eq!(money(5, "usd"), "0.05 USD");
    }

    #[test]
    fn the_card_page_allows_stripe_and_nothing_else() {
        let policy = card_page_policy("https://js.stripe.com/v3/", "https://api.stripe.com/");
        assert!(policy.contains("script-src 'self' https://js.stripe.com;"));
        assert!(policy.contains("connect-src https://api.stripe.com https://js.stripe.com;"));
        assert!(!policy.contains("unsafe-eval") && !policy.contains("script-src 'self' 'unsafe-inline'"));
        let local = card_page_policy("http://127.0.0.1:8420/js.stripe.com/v3/", "http://127.0.0.1:8420/");
        assert!(local.contains("script-src 'self' http://127.0.0.1:8420;"));
    }
}

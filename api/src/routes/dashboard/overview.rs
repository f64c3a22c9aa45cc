//! `GET /dashboard`: the customer's standing at a glance.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use common::db;
use common::domain::{SubscriptionType, Warning};
use minijinja::context;
use minijinja::value::Serde;
use sqlx::PgPool;

use super::{Flash, chart, page, signed_in, to_sign_in};
use crate::dashboard_auth::Dashboard;
use crate::errors::ApiError;

const CHART_DAYS: i32 = 30;
const RECENT_ENTRIES: i64 = 10;

/// What a warning means for the customer, and what to do about it.
fn explain(warning: Warning) -> &'static str {
    match warning {
        Warning::Blocked => {
            "Your credits are used up and there is no payment method: fixes are refused until you add a card."
        }
        Warning::LowBalance => "One credit left and no payment method: add a card to keep fixes flowing.",
        Warning::PaymentPastDue => "Your last Pro invoice failed: update your payment method to keep Pro.",
        Warning::CancellationScheduled => "Pro is cancelled at the end of the current period; you can still resume it.",
    }
}

fn plan_name(plan: SubscriptionType) -> &'static str {
    match plan {
        SubscriptionType::Trial => "Trial",
        SubscriptionType::PayAsYouGo => "Pay as you go",
        SubscriptionType::Pro => "Pro",
    }
}

pub async fn show(dashboard: Dashboard, pool: web::Data<PgPool>, flash: Flash) -> Result<HttpResponse, ApiError> {
    let Some((customer_id, csrf)) = signed_in(&dashboard) else { return Ok(to_sign_in()) };
    let pool = pool.get_ref();
    let Some(customer) = db::customers::find(pool, customer_id).await? else { return Ok(to_sign_in()) };
    let warnings = Warning::derive(
        customer.credit_balance,
        customer.has_payment_method(),
        customer.subscription_state,
        customer.cancel_at_period_end,
    );
    let days = db::customers::credits_per_day(pool, customer_id, CHART_DAYS).await?;
    let entries = db::customers::recent_ledger(pool, customer_id, RECENT_ENTRIES).await?;
    Ok(page(
        StatusCode::OK,
        "overview.html",
        context! {
            nav => "overview",
            csrf => csrf,
            flash => flash.text(),
            customer_name => &customer.name,
            email => &customer.email,
            balance => customer.credit_balance,
            plan => plan_name(customer.subscription_type),
            state => customer.subscription_state.map(|s| s.as_str()),
            period_end => customer.subscription_period_end.map(|t| t.format("%Y-%m-%d").to_string()),
            has_payment_method => customer.has_payment_method(),
            warnings => warnings.iter().map(|w| explain(*w)).collect::<Vec<_>>(),
            fixes_this_month => db::usage::consumed_this_month(pool, customer_id).await?,
            chart => chart::credits_svg(&days),
            chart_days => CHART_DAYS,
            entries => Serde(&entries),
        },
    ))
}

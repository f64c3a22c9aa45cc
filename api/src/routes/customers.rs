//! `GET /api/v1/customers/me`: the usage summary of the key's customer.

use actix_web::{HttpResponse, get, web};
use common::db;
use common::db::customers::LedgerEntry;
use common::domain::{SubscriptionState, SubscriptionType, Warning};
use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Authenticated;
use crate::errors::ApiError;

const RECENT_ENTRIES: i64 = 10;

#[derive(Serialize, ToSchema)]
pub struct CustomerSummary {
    customer_id: Uuid,
    name: String,
    email: String,
    credit_balance: i64,
    subscription_type: SubscriptionType,
    /// Stripe's status of the Pro subscription; none without one.
    subscription_state: Option<SubscriptionState>,
    cancel_at_period_end: bool,
    has_payment_method: bool,
    /// The last 10 ledger entries, newest first.
    recent_ledger_entries: Vec<LedgerEntry>,
    warnings: Vec<Warning>,
}

/// The key's customer: balance, plan, payment method, recent ledger entries, warnings.
#[utoipa::path(operation_id = "show_me", tag = "customers", security(("api_key" = [])), responses((status = 200, description = "Usage summary", body = CustomerSummary)))]
#[get("/api/v1/customers/me")]
pub async fn me(pool: web::Data<PgPool>, auth: Authenticated) -> Result<HttpResponse, ApiError> {
    let customer = auth.customer(pool.get_ref()).await?;
    let entries = db::customers::recent_ledger(pool.get_ref(), customer.id, RECENT_ENTRIES).await?;
    let warnings = Warning::derive(
        customer.credit_balance,
        customer.has_payment_method(),
        customer.subscription_state,
        customer.cancel_at_period_end,
    );
    let has_payment_method = customer.has_payment_method();
    Ok(HttpResponse::Ok().json(CustomerSummary {
        customer_id: customer.id,
        name: customer.name,
        email: customer.email,
        credit_balance: customer.credit_balance,
        subscription_type: customer.subscription_type,
        subscription_state: customer.subscription_state,
        cancel_at_period_end: customer.cancel_at_period_end,
        has_payment_method,
        recent_ledger_entries: entries,
        warnings,
    }))
}

//! `GET /api/v1/customers/me`: the usage summary of the key's customer.

use actix_web::{HttpResponse, web};
use common::db;
use common::domain::Warning;
use sqlx::PgPool;

use crate::auth::Authenticated;
use crate::errors::ApiError;

const RECENT_ENTRIES: i64 = 10;

#[utoipa::path(get, path = "/api/v1/customers/me", tag = "customers", security(("api_key" = [])), responses((status = 200, description = "Usage summary: balance, plan, payment method, last 10 ledger entries, warnings"), (status = 401, description = "UNAUTHORIZED", body = crate::openapi::ErrorBody)))]
pub async fn me(pool: web::Data<PgPool>, auth: Authenticated) -> Result<HttpResponse, ApiError> {
    let customer = auth.customer(pool.get_ref()).await?;
    let entries = db::customers::recent_ledger(pool.get_ref(), customer.id, RECENT_ENTRIES).await?;
    let warnings = Warning::derive(
        customer.credit_balance,
        customer.has_payment_method(),
        customer.subscription_state,
        customer.cancel_at_period_end,
    );
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "customer_id": customer.id,
        "name": customer.name,
        "email": customer.email,
        "credit_balance": customer.credit_balance,
        "subscription_type": customer.subscription_type,
        "subscription_state": customer.subscription_state,
        "cancel_at_period_end": customer.cancel_at_period_end,
        "has_payment_method": customer.has_payment_method(),
        "recent_ledger_entries": entries,
        "warnings": warnings,
    })))
}

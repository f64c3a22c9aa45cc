//! The OpenAPI 3 description of the public API, generated from the handlers'
//! annotations (`#[utoipa::path]`), served at `/api/openapi.json` with a docs page at
//! `/api/docs`.

use actix_web::HttpResponse;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::routes::{api_keys, billing, customers, email, health, onboarding, usage, webhooks};

/// The error body of every error response.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ErrorDetail {
    /// What went wrong, for people.
    message: String,
    /// A stable code, e.g. `VALIDATION_FAILED`, `EMAIL_TAKEN`, `NO_BILLING_INFO`.
    code: String,
}

/// `202` for a billing write: follow `status_url`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct OperationAccepted {
    status: String,
    operation: String,
    operation_id: i64,
    status_url: String,
}

struct ApiKeyAuth;

impl Modify for ApiKeyAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components
            .add_security_scheme("api_key", SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-api-key"))));
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "RSOLV billing & provisioning API", description = "Onboarding, usage, billing and Stripe webhooks. Writes are durable jobs: 202 with a status URL."),
    paths(
        health::health,
        health::ready,
        onboarding::onboard,
        onboarding::status,
        customers::me,
        usage::report_fix,
        usage::fix_status,
        api_keys::create,
        api_keys::list,
        api_keys::revoke,
        billing::add_payment_method,
        billing::subscribe,
        billing::cancel,
        billing::resume,
        billing::invoices,
        billing::operation,
        webhooks::stripe,
        email::unsubscribe_page,
        email::unsubscribe_one_click,
    ),
    components(schemas(ErrorBody, ErrorDetail, OperationAccepted, onboarding::OnboardRequest, usage::FixReport, billing::PaymentMethodRequest, api_keys::NewKey)),
    modifiers(&ApiKeyAuth)
)]
pub struct ApiDoc;

pub async fn document() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}

pub async fn docs_page() -> HttpResponse {
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>RSOLV API</title></head><body>\
         <redoc spec-url=\"/api/openapi.json\"></redoc>\
         <script src=\"https://cdn.redoc.ly/redoc/latest/bundles/redoc.standalone.js\"></script>\
         <noscript><a href=\"/api/openapi.json\">The OpenAPI document</a></noscript></body></html>",
    )
}

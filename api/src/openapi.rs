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

/// The docs page: the same document, rendered on the server. No script, nothing
/// loaded from another site (a CDN's unpinned bundle could rewrite the page), so it
/// works offline and under the strict CSP every page gets.
pub async fn docs_page() -> HttpResponse {
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(render_docs(&ApiDoc::openapi()))
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn render_docs(doc: &utoipa::openapi::OpenApi) -> String {
    use std::fmt::Write;
    let mut html = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>RSOLV API</title>\
         <style>body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#1f2933}\
         h2{font-size:1.05rem;margin:1.5rem 0 .25rem}code{background:#f0f4f8;padding:0 .25rem}\
         .m{display:inline-block;min-width:4.5rem;font-weight:600}ul{margin:.25rem 0}</style></head><body>",
    );
    let _ = write!(
        html,
        "<h1>{}</h1><p>{}</p><p>Machine-readable: <a href=\"/api/openapi.json\">/api/openapi.json</a> (OpenAPI 3).</p>",
        escape(&doc.info.title),
        escape(doc.info.description.as_deref().unwrap_or_default())
    );
    for (path, item) in doc.paths.paths.iter() {
        let operations = [
            ("GET", &item.get),
            ("POST", &item.post),
            ("PUT", &item.put),
            ("PATCH", &item.patch),
            ("DELETE", &item.delete),
        ];
        for (method, operation) in operations {
            let Some(operation) = operation else { continue };
            let _ = write!(html, "<h2><span class=\"m\">{method}</span><code>{}</code></h2>", escape(path));
            if let Some(text) = operation.description.as_deref().or(operation.summary.as_deref()) {
                let _ = write!(html, "<p>{}</p>", escape(text));
            }
            html.push_str("<ul>");
            for (status, response) in operation.responses.responses.iter() {
                let description = match response {
                    utoipa::openapi::RefOr::T(response) => response.description.clone(),
                    utoipa::openapi::RefOr::Ref(reference) => reference.ref_location.clone(),
                };
                let _ = write!(html, "<li><code>{}</code> {}</li>", escape(status), escape(&description));
            }
            html.push_str("</ul>");
        }
    }
    html.push_str("</body></html>");
    html
}

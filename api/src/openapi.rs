//! The OpenAPI 3.1 description of the API (public and admin), served at
//! `/api/openapi.json` with a docs page at `/api/docs`.
//!
//! It is collected from the registration that routes requests (`routes::api`, through
//! utoipa-actix-web): each handler states its method, path, parameters, bodies and
//! answers once, on itself, so a route cannot exist undocumented nor be documented where
//! it does not exist. What every route shares (the request id, rate limits, the
//! `Idempotency-Key`, and the refusals of the layers in front of the handlers: 400, 401,
//! 413, 415, 422, 429, 503) is added here from what each operation declares, in one
//! place. The same document answers a method a path does not serve: 405 with `Allow`
//! naming exactly the documented methods ([`ApiSurface::allowed`]).

use std::sync::Arc;

use actix_web::dev::ResourceDef;
use actix_web::http::Method;
use actix_web::{HttpRequest, HttpResponse, web};
use utoipa::openapi::path::{Operation, Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, ObjectBuilder, OpenApi, Ref, RefOr, Required, Type};
use utoipa::{Modify, OpenApi as _, ToSchema};
use utoipa_actix_web::AppExt;

use common::domain::ErrorCode;

/// The error body of every error response.
#[derive(serde::Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(serde::Serialize, ToSchema)]
pub struct ErrorDetail {
    /// What went wrong, for people.
    pub message: String,
    /// A stable code for programs.
    pub code: ErrorCode,
}

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components
            .add_security_scheme("api_key", SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-api-key"))));
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("`ADMIN_TOKEN`; without one configured, admin routes answer 404"))
                    .build(),
            ),
        );
    }
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "RSOLV billing & provisioning API",
        description = "Onboarding, usage, billing, Stripe webhooks and the operators' admin API. Writes are \
durable jobs: 202 with a status URL. Every answer carries `X-Request-Id`; every error is \
`{\"error\": {\"message\", \"code\"}}`. A method a path does not serve is 405 with `Allow`; an unknown \
path is 404. No string anywhere in a request may hold NUL (U+0000): 422 in a body, 400 in a path or query."
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&SecuritySchemes)
)]
struct ApiDoc;

/// The documented API: its document, and which methods each of its paths serves.
pub struct ApiSurface {
    document: OpenApi,
    json: String,
    docs_page: String,
    methods: Vec<(ResourceDef, String)>,
}

impl ApiSurface {
    /// Collects the document from the routes `register` adds (the ones the server uses).
    /// Without `admin` (no `ADMIN_TOKEN`) the admin API does not exist: it is left out.
    pub fn collect(
        register: impl FnOnce(&mut utoipa_actix_web::service_config::ServiceConfig),
        admin: bool,
    ) -> Arc<Self> {
        let (_, mut document) =
            actix_web::App::new().into_utoipa_app().openapi(ApiDoc::openapi()).configure(register).split_for_parts();
        if !admin {
            document.paths.paths.retain(|path, _| !path.starts_with("/admin/"));
            if let Some(components) = document.components.as_mut() {
                components.security_schemes.remove("admin_token");
            }
        }
        add_shared_answers(&mut document);
        let methods = document
            .paths
            .paths
            .iter()
            .map(|(path, item)| {
                let allow: Vec<&str> = operations(item).map(|(method, _)| method).collect();
                (ResourceDef::new(path.as_str()), allow.join(", "))
            })
            .collect();
        let json = serde_json::to_string(&document).unwrap_or_default();
        let docs_page = render_docs(&document);
        Arc::new(Self { document, json, docs_page, methods })
    }

    pub fn document(&self) -> &OpenApi {
        &self.document
    }

    /// The `Allow` of a documented path (`None` when no documented path matches).
    pub fn allowed(&self, path: &str) -> Option<&str> {
        self.methods.iter().find(|(def, _)| def.is_match(path)).map(|(_, allow)| allow.as_str())
    }

    pub fn json_response(&self) -> HttpResponse {
        HttpResponse::Ok().content_type("application/json").body(self.json.clone())
    }

    /// The docs page: the same document, rendered on the server. No script, nothing
    /// loaded from another site (a CDN's unpinned bundle could rewrite the page), so it
    /// works offline and under the strict CSP every page gets.
    pub fn docs_response(&self) -> HttpResponse {
        HttpResponse::Ok().content_type("text/html; charset=utf-8").body(self.docs_page.clone())
    }
}

fn operations(item: &utoipa::openapi::PathItem) -> impl Iterator<Item = (&'static str, &Operation)> {
    [
        ("GET", &item.get),
        ("POST", &item.post),
        ("PUT", &item.put),
        ("PATCH", &item.patch),
        ("DELETE", &item.delete),
        ("HEAD", &item.head),
        ("OPTIONS", &item.options),
    ]
    .into_iter()
    .filter_map(|(method, operation)| operation.as_ref().map(|operation| (method, operation)))
}

fn error_response(description: &str) -> RefOr<Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content("application/json", Content::new(Some(Ref::from_schema_name("ErrorBody"))))
            .build(),
    )
}

fn header(schema_type: Type, description: &str) -> RefOr<utoipa::openapi::header::Header> {
    RefOr::T(
        utoipa::openapi::header::HeaderBuilder::new()
            .schema(Some(ObjectBuilder::new().schema_type(schema_type)))
            .description(Some(description))
            .build(),
    )
}

/// Whether the rate limiter counts requests to `path` (see `rate_limit::bucket`).
fn rate_limited(path: &str) -> bool {
    path.starts_with("/api/v1/") || path == "/api/webhooks/stripe"
}

fn idempotency_key() -> Parameter {
    ParameterBuilder::new()
        .name("Idempotency-Key")
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(
            "Replays the first answer to the same request within 24 hours (`Idempotent-Replayed: true`) with no \
             second effect; the same key with another request is 422 `IDEMPOTENCY_KEY_REUSED`, and 409 while the \
             first is still running.",
        ))
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(255))
                .pattern(Some("^[!-~]+$")),
        ))
        .build()
}

/// The answers layers in front of the handlers give, added to every operation that can
/// meet them; a handler's own description of the same status wins.
fn add_shared_answers(document: &mut OpenApi) {
    for (path, item) in document.paths.paths.iter_mut() {
        let route = Route {
            limited: rate_limited(path),
            // The webhook reads its body raw (its signature covers the bytes): a body
            // that is not the event it documents is its own 400, never a 422.
            raw_body: path == "/api/webhooks/stripe",
        };
        for (method, slot) in [
            ("POST", &mut item.post),
            ("GET", &mut item.get),
            ("PUT", &mut item.put),
            ("PATCH", &mut item.patch),
            ("DELETE", &mut item.delete),
        ] {
            let Some(operation) = slot.as_mut() else { continue };
            let idempotent = method == "POST" && path.starts_with("/api/v1/");
            add_to_operation(operation, route, idempotent);
        }
    }
}

#[derive(Clone, Copy)]
struct Route {
    limited: bool,
    raw_body: bool,
}

/// What the layers in front of an operation's handler can answer it with.
fn shared_answers(operation: &mut Operation, route: Route, idempotent: bool) -> Vec<(&'static str, &'static str)> {
    let mut shared = vec![
        ("400", "VALIDATION_FAILED: a control character in the path or query, or a malformed parameter"),
        ("431", "REQUEST_HEADERS_TOO_LARGE: the headers are larger than MAX_HEADER_BYTES"),
        ("503", "SERVICE_UNAVAILABLE: the database (or a service the route needs) is unreachable; retry"),
    ];
    if operation.security.as_ref().is_some_and(|s| !s.is_empty()) {
        shared.push(("401", "UNAUTHORIZED: no credentials, or credentials that are not live"));
    }
    let queried =
        operation.parameters.iter().flatten().any(|p| matches!(p, RefOr::T(p) if p.parameter_in == ParameterIn::Query));
    if queried {
        shared.push(("422", "VALIDATION_FAILED: a query parameter is not of its type"));
    }
    if operation.request_body.is_some() {
        shared.push(("413", "PAYLOAD_TOO_LARGE: the body is larger than the limit"));
        shared.push(("415", "UNSUPPORTED_MEDIA_TYPE: the body is not application/json"));
        if !route.raw_body {
            shared.push(("400", "INVALID_JSON: the body is not JSON"));
            shared.push(("422", "VALIDATION_FAILED: the body does not match its schema, or a string holds NUL"));
        }
    }
    if route.limited {
        shared.push(("429", "RATE_LIMITED: over the per-minute limit; `Retry-After` says when to retry"));
    }
    if idempotent {
        operation.parameters.get_or_insert_with(Vec::new).push(RefOr::T(idempotency_key()));
        shared
            .push(("409", "CONFLICT: a request with this Idempotency-Key is still running; retry after `Retry-After`"));
        shared.push(("422", "IDEMPOTENCY_KEY_REUSED, or an Idempotency-Key that is not 1 to 255 printable ASCII"));
    }
    shared
}

fn add_to_operation(operation: &mut Operation, route: Route, idempotent: bool) {
    // Each status keeps the handler's own description, followed by the shared ones.
    for (status, description) in shared_answers(operation, route, idempotent) {
        match operation.responses.responses.get_mut(status) {
            Some(RefOr::T(response)) if !response.description.contains(description) => {
                response.description = format!("{}; {description}", response.description);
            }
            Some(_) => {}
            None => {
                operation.responses.responses.insert(status.to_owned(), error_response(description));
            }
        }
    }
    for (status, response) in operation.responses.responses.iter_mut() {
        let RefOr::T(response) = response else { continue };
        response.headers.insert(
            "X-Request-Id".into(),
            header(Type::String, "Names this request in the logs and in the jobs it enqueued"),
        );
        if route.limited {
            response.headers.insert("X-RateLimit-Limit".into(), header(Type::Integer, "Requests allowed per minute"));
            response.headers.insert("X-RateLimit-Remaining".into(), header(Type::Integer, "Requests left this minute"));
            response
                .headers
                .insert("X-RateLimit-Reset".into(), header(Type::Integer, "When the minute ends (unix seconds)"));
        }
        let retry_after = (status == "429" && route.limited) || (status == "409" && idempotent);
        if retry_after {
            response.headers.insert("Retry-After".into(), header(Type::Integer, "Seconds until a retry can succeed"));
        }
    }
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

fn render_docs(doc: &OpenApi) -> String {
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
        for (method, operation) in operations(item) {
            let _ = write!(html, "<h2><span class=\"m\">{method}</span><code>{}</code></h2>", escape(path));
            if let Some(text) = operation.description.as_deref().or(operation.summary.as_deref()) {
                let _ = write!(html, "<p>{}</p>", escape(text));
            }
            html.push_str("<ul>");
            for (status, response) in operation.responses.responses.iter() {
                let description = match response {
                    RefOr::T(response) => response.description.clone(),
                    RefOr::Ref(reference) => reference.ref_location.clone(),
                };
                let _ = write!(html, "<li><code>{}</code> {}</li>", escape(status), escape(&description));
            }
            html.push_str("</ul>");
        }
    }
    html.push_str("</body></html>");
    html
}

pub async fn document(surface: web::Data<ApiSurface>) -> HttpResponse {
    surface.json_response()
}

pub async fn docs_page(surface: web::Data<ApiSurface>) -> HttpResponse {
    surface.docs_response()
}

/// What no route took: 405 with `Allow` on a documented path, else 404.
pub async fn unrouted(req: HttpRequest, surface: web::Data<ApiSurface>) -> HttpResponse {
    // The path as the router matched it (percent-decoded as routing decodes it).
    match surface.allowed(req.match_info().as_str()) {
        Some(allow) => crate::errors::method_not_allowed(allow),
        None => crate::errors::not_found().await,
    }
}

/// `Allow`'s value for a list of methods.
pub fn allow_header(methods: &[Method]) -> String {
    methods.iter().map(Method::as_str).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_documents_a_body_and_the_request_id_for_each_answer() {
        let surface = ApiSurface::collect(|cfg| crate::routes::api(cfg, 1024), true);
        let paths = &surface.document().paths.paths;
        assert!(paths.len() > 20, "the routes were collected");
        let mut ids = std::collections::BTreeSet::new();
        for (path, item) in paths {
            for (method, operation) in operations(item) {
                let id = operation.operation_id.clone().unwrap_or_default();
                assert!(ids.insert(id.clone()), "{method} {path}: operation id {id} is taken");
                let responses = &operation.responses.responses;
                assert!(responses.keys().any(|status| status.starts_with('2')), "{method} {path} has a success");
                for (status, response) in responses {
                    let RefOr::T(response) = response else { panic!("{method} {path} {status} is inline") };
                    assert!(!response.content.is_empty(), "{method} {path} {status} has a body");
                    assert!(response.headers.contains_key("X-Request-Id"), "{method} {path} {status}");
                }
            }
        }
        assert_eq!(surface.allowed("/api/v1/api-keys"), Some("GET, POST"));
        assert_eq!(surface.allowed("/api/v1/usage/fixes/abc"), Some("GET"));
        assert_eq!(surface.allowed("/admin"), None, "pages are not API");
        assert_eq!(surface.allowed("/nope"), None);
        let without_admin = ApiSurface::collect(|cfg| crate::routes::api(cfg, 1024), false);
        assert_eq!(without_admin.allowed("/admin/api/jobs"), None, "no ADMIN_TOKEN: no admin API");
        assert!(without_admin.document().paths.paths.keys().all(|path| !path.starts_with("/admin/")));
    }
}

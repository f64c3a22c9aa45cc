//! One file per resource, and the one place routes are registered.
//!
//! [`api`] registers the documented API: each handler carries its method and path
//! (actix-web's attribute) and its OpenAPI description (`#[utoipa::path]`), and
//! utoipa-actix-web collects the document from this same registration
//! (`openapi::ApiSurface`). [`pages`] registers what is not API: the HTML admin page,
//! the docs and the metrics exposition.

pub mod admin;
pub mod admin_page;
pub mod api_keys;
pub mod billing;
pub mod customers;
pub mod dashboard;
pub mod email;
pub mod health;
pub mod metrics;
pub mod onboarding;
pub mod usage;
pub mod webhooks;

use actix_web::http::Method;
use actix_web::{FromRequest, Handler, Resource, Responder, web};
use utoipa_actix_web::scope;
use utoipa_actix_web::service_config::ServiceConfig;

use crate::extract::BodyLimit;

/// The documented API. `webhook_limit`: the body limit of the webhook route
/// (`WEBHOOK_MAX_BODY_BYTES`).
pub fn api(cfg: &mut ServiceConfig, webhook_limit: usize) {
    cfg.service(health::health)
        .service(health::ready)
        .service(onboarding::onboard)
        .service(onboarding::status)
        .service(customers::me)
        .service(usage::report_fix)
        .service(usage::fix_status)
        .service(api_keys::create)
        .service(api_keys::list)
        .service(api_keys::revoke)
        .service(billing::add_payment_method)
        .service(billing::subscribe)
        .service(billing::cancel)
        .service(billing::resume)
        .service(billing::invoices)
        .service(billing::operation)
        .service(scope("/api/webhooks").app_data(web::Data::new(BodyLimit(webhook_limit))).service(webhooks::stripe))
        .service(email::unsubscribe_page)
        .service(email::unsubscribe_one_click)
        .service(admin::queues)
        .service(admin::redrive_queue)
        .service(admin::list)
        .service(admin::detail)
        .service(admin::discard)
        .service(admin::redrive)
        .service(admin::discard_by_post)
        .service(admin::cancel)
        .service(admin::adjust_credits)
        .service(admin::audit);
}

/// What is not API: HTML pages, the docs, metrics.
pub fn pages(cfg: &mut web::ServiceConfig) {
    cfg.service(Page::new("/metrics").on(Method::GET, metrics::metrics).done())
        .service(Page::new("/api/openapi.json").on(Method::GET, crate::openapi::document).done())
        .service(Page::new("/api/docs").on(Method::GET, crate::openapi::docs_page).done())
        .service(Page::new("/admin").on(Method::GET, admin_page::overview).done())
        .service(Page::new("/admin/credits").on(Method::POST, admin_page::adjust_credits).done())
        .service(
            Page::new("/admin/login")
                .on(Method::GET, admin_page::login_form)
                .on(Method::POST, admin_page::login)
                .done(),
        )
        .service(Page::new("/admin/logout").on(Method::POST, admin_page::logout).done())
        .service(Page::new("/admin/jobs/{id}").on(Method::GET, admin_page::job).done())
        .service(Page::new("/admin/jobs/{id}/{action}").on(Method::POST, admin_page::act).done())
        .service(Page::new("/admin/queues/{queue}/redrive").on(Method::POST, admin_page::redrive_queue).done());
    dashboard_pages(cfg);
}

/// The customer dashboard (`routes::dashboard`).
fn dashboard_pages(cfg: &mut web::ServiceConfig) {
    use dashboard::{billing, email, keys, overview, sign_in, usage};
    cfg.service(Page::new("/dashboard").on(Method::GET, overview::show).done())
        .service(
            Page::new("/dashboard/login").on(Method::GET, sign_in::form).on(Method::POST, sign_in::request_link).done(),
        )
        // Before `{token}`, which would match "key".
        .service(Page::new("/dashboard/login/key").on(Method::POST, sign_in::with_key).done())
        .service(
            Page::new("/dashboard/login/{token}")
                .on(Method::GET, sign_in::link)
                .on(Method::POST, sign_in::redeem)
                .done(),
        )
        .service(Page::new("/dashboard/logout").on(Method::POST, sign_in::logout).done())
        .service(Page::new("/dashboard/usage").on(Method::GET, usage::show).done())
        .service(Page::new("/dashboard/usage.csv").on(Method::GET, usage::csv).done())
        .service(Page::new("/dashboard/keys").on(Method::GET, keys::list).on(Method::POST, keys::create).done())
        .service(Page::new("/dashboard/keys/{id}/revoke").on(Method::POST, keys::revoke).done())
        .service(Page::new("/dashboard/billing").on(Method::GET, billing::show).done())
        .service(Page::new("/dashboard/billing/subscribe").on(Method::POST, billing::subscribe).done())
        .service(Page::new("/dashboard/billing/cancel").on(Method::POST, billing::cancel).done())
        .service(Page::new("/dashboard/billing/resume").on(Method::POST, billing::resume).done())
        .service(Page::new("/dashboard/billing/card").on(Method::GET, billing::card_form).done())
        .service(Page::new("/dashboard/billing/payment-methods").on(Method::POST, billing::add_card).done())
        .service(Page::new("/dashboard/billing/cards/{id}/default").on(Method::POST, billing::make_default).done())
        .service(Page::new("/dashboard/billing/cards/{id}/remove").on(Method::POST, billing::remove_card).done())
        .service(Page::new("/dashboard/assets/card.js").on(Method::GET, billing::card_script).done())
        .service(Page::new("/dashboard/email").on(Method::GET, email::show).on(Method::POST, email::save).done())
        .service(Page::new("/dashboard/email/unsubscribe").on(Method::POST, email::unsubscribe).done())
        .service(Page::new("/dashboard/email/resubscribe").on(Method::POST, email::resubscribe).done());
}

/// A page's resource, which answers the methods it was not given with 405 and `Allow`.
struct Page {
    resource: Resource,
    methods: Vec<Method>,
}

impl Page {
    fn new(path: &str) -> Self {
        Self { resource: web::resource(path), methods: Vec::new() }
    }

    fn on<F, Args>(mut self, method: Method, handler: F) -> Self
    where
        F: Handler<Args>,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        self.resource = self.resource.route(web::method(method.clone()).to(handler));
        self.methods.push(method);
        self
    }

    fn done(self) -> Resource {
        let allow = crate::openapi::allow_header(&self.methods);
        self.resource.default_service(web::to(move || {
            let allow = allow.clone();
            async move { crate::errors::method_not_allowed(&allow) }
        }))
    }
}

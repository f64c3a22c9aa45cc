//! The application factory, used by `main` and by the tests: binds, wires the routes,
//! and returns a server ready to be awaited.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::dev::Service;
use actix_web::{App, HttpServer, web};
use common::config::Settings;
use common::queue::JobWaker;
use common::stripe::StripeApi;
use sqlx::PgPool;

use crate::errors::{ApiError, method_not_allowed, not_found};
use crate::extract::BodyLimit;
use crate::routes::{
    admin, admin_page, api_keys, billing, customers, email, health, metrics, onboarding, usage, webhooks,
};

pub struct Application {
    server: Server,
    port: u16,
}

impl Application {
    /// Binds `listener` (use port 0 for a random one) and builds the server.
    pub fn build(listener: TcpListener, pool: PgPool, settings: Arc<Settings>) -> std::io::Result<Self> {
        let port = listener.local_addr()?.port();
        common::telemetry::metrics::handle();
        let stripe = match &settings.stripe {
            Some(stripe) => Some(StripeApi::new(stripe, &settings.prices.pro_price_id).map_err(std::io::Error::other)?),
            None => None,
        };
        if settings.metrics_token.is_none() && settings.api_metrics_addr.is_none() {
            tracing::warn!("/metrics is open on the public port: set METRICS_TOKEN or API_METRICS_ADDR in production");
        }
        if let Some(addr) = settings.api_metrics_addr {
            let metrics = metrics::own_server(TcpListener::bind(addr)?, settings.clone())?;
            tokio::spawn(metrics);
            tracing::info!(%addr, "metrics at /metrics on their own address");
        }
        let waker = web::Data::new(JobWaker::spawn(pool.clone()));
        let pool = web::Data::new(pool);
        let limit = web::Data::new(BodyLimit(settings.max_body_bytes));
        let webhook_limit = settings.webhook_max_body_bytes;
        let stripe = web::Data::new(stripe);
        let settings = web::Data::from(settings);
        let server = HttpServer::new(move || {
            App::new()
                .wrap(actix_web::middleware::from_fn(crate::idempotency::guard))
                .wrap(actix_web::middleware::from_fn(crate::rate_limit::enforce))
                // Outside the limits and idempotency: refused before anything counts it.
                .wrap(actix_web::middleware::from_fn(crate::edge::guard))
                .wrap(actix_web::middleware::from_fn(crate::security_headers::add))
                .wrap_fn(|req, srv| {
                    // Latency by route pattern (not raw path: ids would explode the labels).
                    let started = std::time::Instant::now();
                    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
                    let method = req.method().to_string();
                    let response = srv.call(req);
                    async move {
                        let response = response.await?;
                        let status = response.status().as_u16().to_string();
                        ::metrics::histogram!("rsolv_http_request_duration_seconds", "route" => route, "method" => method, "status" => status)
                            .record(started.elapsed().as_secs_f64());
                        Ok(response)
                    }
                })
                // Outermost: every answer names its request, whatever refused it.
                .wrap(actix_web::middleware::from_fn(crate::request_id::assign))
                .app_data(pool.clone())
                .app_data(waker.clone())
                .app_data(limit.clone())
                .app_data(stripe.clone())
                .app_data(settings.clone())
                .app_data(
                    web::PathConfig::default().error_handler(|_, _| ApiError::not_found("no such resource").into()),
                )
                .configure(|cfg| routes(cfg, webhook_limit))
                .default_service(web::to(not_found))
        })
        .listen(listener)?
        .run();
        Ok(Self { server, port })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn server(self) -> Server {
        self.server
    }
}

fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(method_not_allowed))
}

/// `webhook_limit`: the body limit of the webhook route (`WEBHOOK_MAX_BODY_BYTES`).
fn routes(cfg: &mut web::ServiceConfig, webhook_limit: usize) {
    cfg.service(resource("/health").route(web::get().to(health::health)))
        .service(resource("/ready").route(web::get().to(health::ready)))
        .service(resource("/api/v1/customers/onboard").route(web::post().to(onboarding::onboard)))
        .service(resource("/api/v1/onboarding/{customer_id}").route(web::get().to(onboarding::status)))
        .service(resource("/api/v1/customers/me").route(web::get().to(customers::me)))
        .service(resource("/api/v1/usage/fixes").route(web::post().to(usage::report_fix)))
        .service(resource("/api/v1/usage/fixes/{fix_id}").route(web::get().to(usage::fix_status)))
        .service(
            resource("/api/v1/api-keys").route(web::post().to(api_keys::create)).route(web::get().to(api_keys::list)),
        )
        .service(resource("/api/v1/api-keys/{key_id}").route(web::delete().to(api_keys::revoke)))
        .service(resource("/api/v1/billing/payment-methods").route(web::post().to(billing::add_payment_method)))
        .service(
            resource("/api/v1/billing/subscription")
                .route(web::post().to(billing::subscribe))
                .route(web::delete().to(billing::cancel)),
        )
        .service(resource("/api/v1/billing/subscription/resume").route(web::post().to(billing::resume)))
        .service(resource("/api/v1/billing/invoices").route(web::get().to(billing::invoices)))
        .service(resource("/api/v1/billing/operations/{operation_id}").route(web::get().to(billing::operation)))
        .service(
            resource("/api/webhooks/stripe")
                .app_data(web::Data::new(BodyLimit(webhook_limit)))
                .route(web::post().to(webhooks::stripe)),
        )
        .service(resource("/metrics").route(web::get().to(metrics::metrics)))
        .service(resource("/api/openapi.json").route(web::get().to(crate::openapi::document)))
        .service(resource("/api/docs").route(web::get().to(crate::openapi::docs_page)))
        .service(resource("/admin/api/queues").route(web::get().to(admin::queues)))
        .service(resource("/admin/api/queues/{queue}/redrive").route(web::post().to(admin::redrive_queue)))
        .service(resource("/admin/api/jobs").route(web::get().to(admin::list)))
        .service(
            resource("/admin/api/jobs/{id}")
                .route(web::get().to(admin::detail))
                .route(web::delete().to(admin::discard)),
        )
        .service(resource("/admin/api/jobs/{id}/redrive").route(web::post().to(admin::redrive)))
        .service(resource("/admin/api/jobs/{id}/discard").route(web::post().to(admin::discard)))
        .service(resource("/admin/api/jobs/{id}/cancel").route(web::post().to(admin::cancel)))
        .service(resource("/admin/api/customers/{id}/credits").route(web::post().to(admin::adjust_credits)))
        .service(resource("/admin/api/audit").route(web::get().to(admin::audit)))
        .service(resource("/admin").route(web::get().to(admin_page::overview)))
        .service(resource("/admin/credits").route(web::post().to(admin_page::adjust_credits)))
        .service(
            resource("/admin/login")
                .route(web::get().to(admin_page::login_form))
                .route(web::post().to(admin_page::login)),
        )
        .service(resource("/admin/logout").route(web::post().to(admin_page::logout)))
        .service(resource("/admin/jobs/{id}").route(web::get().to(admin_page::job)))
        .service(resource("/admin/jobs/{id}/{action}").route(web::post().to(admin_page::act)))
        .service(resource("/admin/queues/{queue}/redrive").route(web::post().to(admin_page::redrive_queue)))
        .service(
            resource("/email/unsubscribe")
                .route(web::get().to(email::unsubscribe_page))
                .route(web::post().to(email::unsubscribe_one_click)),
        );
}

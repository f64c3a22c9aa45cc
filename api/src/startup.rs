//! The application factory, used by `main` and by the tests: binds, wires the routes,
//! and returns a server ready to be awaited.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::dev::Service;
use actix_web::{App, HttpServer, web};
use common::clock::Clock;
use common::config::Settings;
use common::db::api_keys::KeyLookups;
use common::queue::JobWaker;
use common::stripe::StripeApi;
use sqlx::PgPool;

use utoipa_actix_web::AppExt;

use crate::errors::ApiError;
use crate::extract::BodyLimit;
use crate::openapi::ApiSurface;
use crate::routes::{self, metrics};

pub struct Application {
    server: Server,
    port: u16,
}

impl Application {
    /// Binds `listener` (use port 0 for a random one) and builds the server.
    pub fn build(listener: TcpListener, pool: PgPool, settings: Arc<Settings>) -> std::io::Result<Self> {
        Self::build_with_clock(listener, pool, settings, Clock::system())
    }

    /// As [`build`](Self::build), reading the time from `clock` (a test's, held still).
    pub fn build_with_clock(
        listener: TcpListener,
        pool: PgPool,
        settings: Arc<Settings>,
        clock: Clock,
    ) -> std::io::Result<Self> {
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
        let key_lookups = web::Data::new(KeyLookups::spawn(pool.clone()));
        let pool = web::Data::new(pool);
        let limit = web::Data::new(BodyLimit(settings.max_body_bytes));
        let webhook_limit = settings.webhook_max_body_bytes;
        let stripe = web::Data::new(stripe);
        let clock = web::Data::new(clock);
        let settings = web::Data::from(settings);
        // The document, collected once from the registration every worker repeats below.
        let admin = settings.admin_token.is_some();
        let surface = web::Data::from(ApiSurface::collect(|cfg| routes::api(cfg, webhook_limit), admin));
        let server = HttpServer::new(move || {
            let (app, _) = App::new().into_utoipa_app().configure(|cfg| routes::api(cfg, webhook_limit)).split_for_parts();
            app
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
                .app_data(key_lookups.clone())
                .app_data(limit.clone())
                .app_data(stripe.clone())
                .app_data(clock.clone())
                .app_data(settings.clone())
                .app_data(surface.clone())
                .app_data(
                    web::PathConfig::default().error_handler(|_, _| ApiError::not_found("no such resource").into()),
                )
                .configure(routes::pages)
                .default_service(web::to(crate::openapi::unrouted))
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

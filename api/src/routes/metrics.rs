//! `GET /metrics`: Prometheus text exposition (see `common::telemetry::metrics`).
//!
//! Served on the public port unless `API_METRICS_ADDR` gives it an address of its own
//! (then the public port answers 404 for it); with `METRICS_TOKEN` set, a scrape needs
//! `Authorization: Bearer <METRICS_TOKEN>`.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::http::header;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use common::config::Settings;
use common::telemetry::metrics::{handle, scrape_allowed};

use crate::errors::ApiError;

fn exposition(req: &HttpRequest, settings: &Settings) -> Result<HttpResponse, ApiError> {
    let authorization = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if !scrape_allowed(authorization, settings.metrics_token.as_ref()) {
        return Err(ApiError::unauthorized("metrics need Authorization: Bearer <METRICS_TOKEN>"));
    }
    Ok(HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(handle().render()))
}

/// On the public port: only when metrics have no address of their own.
pub async fn metrics(req: HttpRequest, settings: web::Data<Settings>) -> Result<HttpResponse, ApiError> {
    if settings.api_metrics_addr.is_some() {
        return Err(ApiError::not_found("no such route"));
    }
    exposition(&req, &settings)
}

/// The listener of `API_METRICS_ADDR`: `/metrics` and nothing else.
pub fn own_server(listener: TcpListener, settings: Arc<Settings>) -> std::io::Result<Server> {
    let settings = web::Data::from(settings);
    Ok(HttpServer::new(move || {
        App::new().app_data(settings.clone()).route(
            "/metrics",
            web::get().to(|req: HttpRequest, settings: web::Data<Settings>| async move { exposition(&req, &settings) }),
        )
    })
    .workers(1)
    .listen(listener)?
    .run())
}

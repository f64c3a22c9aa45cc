//! `GET /metrics`: Prometheus text exposition (see `common::telemetry::metrics`).

use actix_web::HttpResponse;

pub async fn metrics() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(common::telemetry::metrics::handle().render())
}

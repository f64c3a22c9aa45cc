//! The worker's `/metrics` listener (`METRICS_ADDR`), asking for
//! `Authorization: Bearer <METRICS_TOKEN>` when one is set. actix-web, as in the API
//! (the exporter's own listener cannot check a token).

use std::net::SocketAddr;

use actix_web::http::header;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use common::config::Secret;
use common::telemetry::metrics::{handle, scrape_allowed};

async fn exposition(req: HttpRequest, token: web::Data<Option<Secret>>) -> HttpResponse {
    let authorization = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if !scrape_allowed(authorization, token.get_ref().as_ref()) {
        return HttpResponse::Unauthorized().body("metrics need Authorization: Bearer <METRICS_TOKEN>\n");
    }
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(handle().render())
}

/// Binds `addr` and serves in the background.
pub fn serve(addr: SocketAddr, token: Option<Secret>) -> std::io::Result<()> {
    handle();
    let token = web::Data::new(token);
    let server =
        HttpServer::new(move || App::new().app_data(token.clone()).route("/metrics", web::get().to(exposition)))
            .workers(1)
            .disable_signals()
            .bind(addr)?
            .run();
    tokio::spawn(server);
    Ok(())
}

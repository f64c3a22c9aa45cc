//! The application factory, used by `main` and by the tests: binds, wires the routes,
//! and returns a server ready to be awaited.

use std::net::TcpListener;

use actix_web::dev::Server;
use actix_web::{App, HttpServer, web};
use sqlx::PgPool;

use crate::errors::{method_not_allowed, not_found};
use crate::extract::BodyLimit;
use crate::routes::{customers, health, onboarding, usage};

pub struct Application {
    server: Server,
    port: u16,
}

impl Application {
    /// Binds `listener` (use port 0 for a random one) and builds the server.
    pub fn build(listener: TcpListener, pool: PgPool, max_body_bytes: usize) -> std::io::Result<Self> {
        let port = listener.local_addr()?.port();
        let pool = web::Data::new(pool);
        let limit = web::Data::new(BodyLimit(max_body_bytes));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(pool.clone())
                .app_data(limit.clone())
                .app_data(
                    web::PathConfig::default()
                        .error_handler(|_, _| crate::errors::ApiError::not_found("no such resource").into()),
                )
                .configure(routes)
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

fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/health").route(web::get().to(health::health)))
        .service(resource("/ready").route(web::get().to(health::ready)))
        .service(resource("/api/v1/customers/onboard").route(web::post().to(onboarding::onboard)))
        .service(resource("/api/v1/onboarding/{customer_id}").route(web::get().to(onboarding::status)))
        .service(resource("/api/v1/customers/me").route(web::get().to(customers::me)))
        .service(resource("/api/v1/usage/fixes").route(web::post().to(usage::report_fix)))
        .service(resource("/api/v1/usage/fixes/{fix_id}").route(web::get().to(usage::fix_status)));
}

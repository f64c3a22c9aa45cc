//! The admin page at `/admin`: queues, dead letters and waiting jobs, with redrive,
//! discard and cancel buttons. Server-rendered (minijinja), no script.

use std::sync::OnceLock;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::{StatusCode, header};
use actix_web::{HttpResponse, web};
use common::config::Settings;
use common::queue::admin::{self, JobFilter};
use minijinja::value::Serde;
use minijinja::{Environment, context};
use serde::Deserialize;
use sqlx::PgPool;

use super::admin::kinds;
use crate::admin_auth::{AdminPage, SESSION_COOKIE, same_secret, session_value};
use crate::errors::ApiError;

fn templates() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        for (name, source) in [
            ("layout.html", include_str!("../templates/layout.html")),
            ("login.html", include_str!("../templates/login.html")),
            ("overview.html", include_str!("../templates/overview.html")),
            ("job.html", include_str!("../templates/job.html")),
        ] {
            env.add_template(name, source).expect("admin templates parse");
        }
        env
    })
}

fn page(status: StatusCode, template: &str, ctx: minijinja::Value) -> HttpResponse {
    match templates().get_template(template).and_then(|t| t.render(ctx)) {
        Ok(html) => HttpResponse::build(status).content_type("text/html; charset=utf-8").body(html),
        Err(error) => {
            tracing::error!(%error, template, "admin page failed to render");
            HttpResponse::InternalServerError().body("admin page failed to render")
        }
    }
}

fn to_login() -> HttpResponse {
    HttpResponse::SeeOther().insert_header((header::LOCATION, "/admin/login")).finish()
}

fn back(flash: &str) -> HttpResponse {
    let location = format!("/admin?flash={}", crate::url::encode_component(flash));
    HttpResponse::SeeOther().insert_header((header::LOCATION, location)).finish()
}

#[derive(Deserialize)]
pub struct Flash {
    flash: Option<String>,
}

pub async fn overview(
    auth: AdminPage,
    pool: web::Data<PgPool>,
    flash: web::Query<Flash>,
) -> Result<HttpResponse, ApiError> {
    if let AdminPage::SignedOut = auth {
        return Ok(to_login());
    }
    let pool = pool.get_ref();
    let queues = admin::overview(pool, &kinds()).await?;
    let dead = admin::list(pool, &JobFilter { status: Some("dead".into()), limit: 100, ..Default::default() }).await?;
    let mut waiting =
        admin::list(pool, &JobFilter { status: Some("retryable".into()), limit: 50, ..Default::default() }).await?;
    waiting.extend(
        admin::list(pool, &JobFilter { status: Some("available".into()), limit: 50, ..Default::default() }).await?,
    );
    Ok(page(
        StatusCode::OK,
        "overview.html",
        context! { signed_in => true, flash => flash.into_inner().flash, queues => Serde(queues), dead => Serde(dead), waiting => Serde(waiting) },
    ))
}

pub async fn job(auth: AdminPage, pool: web::Data<PgPool>, id: web::Path<i64>) -> Result<HttpResponse, ApiError> {
    if let AdminPage::SignedOut = auth {
        return Ok(to_login());
    }
    let job = admin::detail(pool.get_ref(), *id).await?.ok_or_else(|| ApiError::not_found("no such job"))?;
    let args = serde_json::to_string_pretty(&job.args).unwrap_or_default();
    let result = job.result.as_ref().map(|r| serde_json::to_string_pretty(r).unwrap_or_default());
    Ok(page(StatusCode::OK, "job.html", context! { signed_in => true, job => Serde(job), args, result }))
}

pub async fn login_form(auth: AdminPage) -> HttpResponse {
    match auth {
        AdminPage::SignedIn => back("Signed in"),
        AdminPage::SignedOut => page(StatusCode::OK, "login.html", context! { signed_in => false }),
    }
}

#[derive(Deserialize)]
pub struct SignIn {
    token: String,
}

pub async fn login(_: AdminPage, settings: web::Data<Settings>, form: web::Form<SignIn>) -> HttpResponse {
    let Some(token) = &settings.admin_token else { return HttpResponse::NotFound().finish() };
    if !same_secret(form.token.trim(), token) {
        tracing::warn!("admin sign-in with a wrong token");
        return page(StatusCode::UNAUTHORIZED, "login.html", context! { signed_in => false, flash => "Wrong token." });
    }
    let cookie = Cookie::build(SESSION_COOKIE, session_value(token))
        .path("/admin")
        .http_only(true)
        .same_site(SameSite::Strict)
        .finish();
    HttpResponse::SeeOther().cookie(cookie).insert_header((header::LOCATION, "/admin")).finish()
}

pub async fn logout(_: AdminPage) -> HttpResponse {
    let mut cookie = Cookie::build(SESSION_COOKIE, "").path("/admin").finish();
    cookie.make_removal();
    HttpResponse::SeeOther().cookie(cookie).insert_header((header::LOCATION, "/admin/login")).finish()
}

#[derive(Deserialize)]
pub struct JobAction {
    id: i64,
    action: String,
}

pub async fn act(
    auth: AdminPage,
    pool: web::Data<PgPool>,
    path: web::Path<JobAction>,
) -> Result<HttpResponse, ApiError> {
    if let AdminPage::SignedOut = auth {
        return Ok(to_login());
    }
    let JobAction { id, action } = path.into_inner();
    let pool = pool.get_ref();
    let result = match action.as_str() {
        "redrive" => admin::redrive(pool, id).await,
        "discard" => admin::discard(pool, id).await,
        "cancel" => admin::cancel(pool, id).await,
        _ => return Err(ApiError::not_found("no such action")),
    };
    Ok(match result {
        Ok(()) => {
            tracing::info!(job_id = id, %action, "admin page action");
            back(&format!("Job {id}: {action} done"))
        }
        Err(error) => back(&error.to_string()),
    })
}

pub async fn redrive_queue(
    auth: AdminPage,
    pool: web::Data<PgPool>,
    queue: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    if let AdminPage::SignedOut = auth {
        return Ok(to_login());
    }
    let redriven = admin::redrive_all(pool.get_ref(), &queue).await.map_err(ApiError::from)?;
    Ok(back(&format!("{redriven} dead jobs of {queue} redriven")))
}

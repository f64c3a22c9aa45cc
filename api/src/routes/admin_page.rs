//! The admin page at `/admin`: queues, dead letters and waiting jobs, with redrive,
//! discard and cancel buttons; a credit adjustment form and the audit log. Every
//! action is appended to the audit log with the actor `admin-page`.
//! Server-rendered (minijinja), no script. Sessions and CSRF: `admin_auth`.

use std::sync::OnceLock;

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use common::config::Settings;
use common::db;
use common::queue::JobStatus;
use common::queue::admin::{self, JobFilter};
use minijinja::value::Serde;
use minijinja::{Environment, context};
use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

/// Who the audit log names for actions taken on this page.
const ACTOR: &str = "admin-page";

use super::admin::kinds;
use crate::admin_auth::{self, AdminPage, same_secret};
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
    let dead =
        admin::list(pool, &JobFilter { status: Some(JobStatus::Dead), limit: 100, ..Default::default() }).await?;
    let mut waiting =
        admin::list(pool, &JobFilter { status: Some(JobStatus::Retryable), limit: 50, ..Default::default() }).await?;
    waiting.extend(
        admin::list(pool, &JobFilter { status: Some(JobStatus::Available), limit: 50, ..Default::default() }).await?,
    );
    let audit = db::audit::recent(pool, None, 50).await?;
    let drift = db::reconcile_drift::recent(pool, 50).await?;
    // A fresh key per rendered form: submitting it twice adjusts once.
    let adjustment_key = Uuid::new_v4();
    Ok(page(
        StatusCode::OK,
        "overview.html",
        context! { signed_in => true, csrf => auth.csrf_token(), flash => flash.into_inner().flash, queues => Serde(queues), dead => Serde(dead), waiting => Serde(waiting), audit => Serde(audit), drift => Serde(drift), adjustment_key => adjustment_key.to_string() },
    ))
}

pub async fn job(auth: AdminPage, pool: web::Data<PgPool>, id: web::Path<i64>) -> Result<HttpResponse, ApiError> {
    if let AdminPage::SignedOut = auth {
        return Ok(to_login());
    }
    let job = admin::detail(pool.get_ref(), *id).await?.ok_or_else(|| ApiError::not_found("no such job"))?;
    let args = serde_json::to_string_pretty(&job.args).unwrap_or_default();
    let result = job.result.as_ref().map(|r| serde_json::to_string_pretty(r).unwrap_or_default());
    Ok(page(
        StatusCode::OK,
        "job.html",
        context! { signed_in => true, csrf => auth.csrf_token(), job => Serde(job), args, result },
    ))
}

pub async fn login_form(auth: AdminPage) -> HttpResponse {
    match auth {
        AdminPage::SignedIn(_) => back("Signed in"),
        AdminPage::SignedOut => page(StatusCode::OK, "login.html", context! { signed_in => false }),
    }
}

#[derive(Deserialize)]
pub struct SignIn {
    token: String,
}

pub async fn login(
    _: AdminPage,
    req: HttpRequest,
    pool: web::Data<PgPool>,
    settings: web::Data<Settings>,
    form: web::Form<SignIn>,
) -> Result<HttpResponse, ApiError> {
    let Some(token) = &settings.admin_token else { return Ok(HttpResponse::NotFound().finish()) };
    crate::browser::same_site(&req)?;
    if !same_secret(form.token.trim(), token) {
        tracing::warn!("admin sign-in with a wrong token");
        return Ok(page(
            StatusCode::UNAUTHORIZED,
            "login.html",
            context! { signed_in => false, flash => "Wrong token." },
        ));
    }
    let cookie = admin_auth::sign_in(pool.get_ref(), &settings, token).await?;
    tracing::info!("admin signed in");
    Ok(HttpResponse::SeeOther().cookie(cookie).insert_header((header::LOCATION, "/admin")).finish())
}

/// The CSRF token every state-changing form of the page carries.
#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

pub async fn logout(
    auth: AdminPage,
    req: HttpRequest,
    pool: web::Data<PgPool>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, ApiError> {
    if let AdminPage::SignedOut = auth {
        return Ok(to_login());
    }
    auth.check_form(&req, &form.csrf)?;
    let cookie = admin_auth::sign_out(pool.get_ref(), &auth).await?;
    Ok(HttpResponse::SeeOther().cookie(cookie).insert_header((header::LOCATION, "/admin/login")).finish())
}

#[derive(Deserialize)]
pub struct JobAction {
    id: i64,
    action: String,
}

pub async fn act(
    auth: AdminPage,
    req: HttpRequest,
    pool: web::Data<PgPool>,
    path: web::Path<JobAction>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, ApiError> {
    if let AdminPage::SignedOut = auth {
        return Ok(to_login());
    }
    auth.check_form(&req, &form.csrf)?;
    let JobAction { id, action } = path.into_inner();
    let pool = pool.get_ref();
    let result = match action.as_str() {
        "redrive" => admin::redrive(pool, id, ACTOR).await,
        "discard" => admin::discard(pool, id, ACTOR).await,
        "cancel" => admin::cancel(pool, id, ACTOR).await,
        _ => return Err(ApiError::not_found("no such action")),
    };
    Ok(match result {
        Ok(()) => {
            tracing::info!(job_id = id, %action, "admin page action");
            back(&format!("Job {id}: {action} done"))
        }
        Err(error) => back(&flash_for(error)),
    })
}

/// An admin action's failure, for the flash line: what was wrong with the request, or,
/// for a database failure, a short note (the details go to the log, not the page).
fn flash_for(error: admin::AdminError) -> String {
    match error {
        admin::AdminError::Database(detail) => {
            tracing::error!(%detail, "admin page action failed");
            "The database is unavailable; nothing changed. Try again.".to_owned()
        }
        other => other.to_string(),
    }
}

pub async fn redrive_queue(
    auth: AdminPage,
    req: HttpRequest,
    pool: web::Data<PgPool>,
    queue: web::Path<String>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, ApiError> {
    if let AdminPage::SignedOut = auth {
        return Ok(to_login());
    }
    auth.check_form(&req, &form.csrf)?;
    Ok(match admin::redrive_all(pool.get_ref(), &queue, ACTOR).await {
        Ok(redriven) => back(&format!("{redriven} dead jobs of {queue} redriven")),
        Err(error) => back(&flash_for(error)),
    })
}

#[derive(Deserialize)]
pub struct AdjustForm {
    /// The customer's id or email.
    customer: String,
    amount: String,
    reason: String,
    key: String,
    #[serde(default)]
    csrf: String,
}

pub async fn adjust_credits(
    auth: AdminPage,
    req: HttpRequest,
    pool: web::Data<PgPool>,
    form: web::Form<AdjustForm>,
) -> Result<HttpResponse, ApiError> {
    if let AdminPage::SignedOut = auth {
        return Ok(to_login());
    }
    auth.check_form(&req, &form.csrf)?;
    let form = form.into_inner();
    let pool = pool.get_ref();
    let Some(customer) = db::customers::find_by_id_or_email(pool, &form.customer).await? else {
        return Ok(back("No customer with that id or email"));
    };
    let Ok(amount) = form.amount.trim().parse::<i64>() else { return Ok(back("The amount must be a whole number")) };
    let key = Some(form.key.trim()).filter(|k| !k.is_empty() && k.len() <= 255);
    Ok(match common::operator::adjust_credits(pool, ACTOR, customer.id, amount, &form.reason, key).await {
        Ok(adjusted) if adjusted.duplicate => back("That adjustment was made already"),
        Ok(adjusted) => back(&format!(
            "{} {} credits for {}: balance {}",
            if amount > 0 { "Granted" } else { "Revoked" },
            amount.abs(),
            customer.email,
            adjusted.balance_after
        )),
        Err(common::operator::AdjustError::Database(e)) => return Err(e.into()),
        Err(error) => back(&error.to_string()),
    })
}

//! `/dashboard/keys`: the customer's API keys. Created as the API creates them (the same
//! statement and limit, `db::api_keys::create`), the new key shown once on the page that
//! answers the form; revoking the last live key asks for confirmation first, since it
//! stops every integration using it (the dashboard still opens with the email link).
//! With email off (`SMTP_URL` unset) there is no email link, so the last live key is
//! not revoked at all: the customer would be locked out of the dashboard.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use common::db;
use common::db::api_keys::{KeyCreated, Revocation};
use common::domain::{ApiKey, MAX_LIVE_KEYS};
use minijinja::context;
use minijinja::value::Serde;
use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::{Flash, back, page, signed_in, to_sign_in};
use crate::dashboard_auth::Dashboard;
use crate::errors::ApiError;

/// The keys page, with whatever the form that led here has to say.
async fn keys_page(
    pool: &PgPool,
    customer_id: Uuid,
    csrf: String,
    status: StatusCode,
    extra: minijinja::Value,
) -> Result<HttpResponse, ApiError> {
    let keys = db::api_keys::list(pool, customer_id).await?;
    let live = keys.iter().filter(|k| k.revoked_at.is_none()).count();
    let name = db::customers::find(pool, customer_id).await?.map(|c| c.name).unwrap_or_default();
    let ctx = context! {
        nav => "keys",
        csrf => csrf,
        customer_name => name,
        keys => Serde(&keys),
        live => live,
        max_live => MAX_LIVE_KEYS,
        ..extra
    };
    Ok(page(status, "keys.html", ctx))
}

pub async fn list(dashboard: Dashboard, pool: web::Data<PgPool>, flash: Flash) -> Result<HttpResponse, ApiError> {
    let Some((customer_id, csrf)) = signed_in(&dashboard) else { return Ok(to_sign_in()) };
    keys_page(pool.get_ref(), customer_id, csrf, StatusCode::OK, context! { flash => flash.text() }).await
}

#[derive(Deserialize)]
pub struct NewKey {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
}

pub async fn create(
    dashboard: Dashboard,
    req: HttpRequest,
    pool: web::Data<PgPool>,
    form: web::Form<NewKey>,
) -> Result<HttpResponse, ApiError> {
    let Some((customer_id, csrf)) = signed_in(&dashboard) else { return Ok(to_sign_in()) };
    dashboard.check_form(&req, &form.csrf)?;
    let pool = pool.get_ref();
    let Some(name) = common::domain::text::line(&form.name, 100) else {
        let flash = "A key's name is 1 to 100 characters, without control characters.";
        return keys_page(pool, customer_id, csrf, StatusCode::UNPROCESSABLE_ENTITY, context! { flash => flash }).await;
    };
    let key = ApiKey::generate();
    let mut tx = pool.begin().await?;
    let created =
        db::api_keys::create(&mut tx, customer_id, name, &key.hash(), &key.display_prefix(), MAX_LIVE_KEYS, None)
            .await?;
    tx.commit().await?;
    match created {
        KeyCreated::New(created) => {
            tracing::info!(%customer_id, key_id = %created.id, "API key created in the dashboard");
            let extra = context! { new_key => key.expose(), new_key_name => created.name };
            keys_page(pool, customer_id, csrf, StatusCode::CREATED, extra).await
        }
        KeyCreated::Earlier(_) | KeyCreated::TooMany => {
            let flash = format!("You have {MAX_LIVE_KEYS} live keys, the most there can be: revoke one first.");
            keys_page(pool, customer_id, csrf, StatusCode::CONFLICT, context! { flash => flash }).await
        }
    }
}

#[derive(Deserialize)]
pub struct Revoke {
    #[serde(default)]
    csrf: String,
    /// `yes` once the customer confirmed revoking their last live key.
    #[serde(default)]
    confirm: String,
}

const LAST_KEY_EMAIL_OFF: &str = "This is your last live key, and this server sends no email, so you could not sign in again: create another key first.";

pub async fn revoke(
    dashboard: Dashboard,
    req: HttpRequest,
    pool: web::Data<PgPool>,
    settings: web::Data<common::config::Settings>,
    id: web::Path<String>,
    form: web::Form<Revoke>,
) -> Result<HttpResponse, ApiError> {
    let Some((customer_id, csrf)) = signed_in(&dashboard) else { return Ok(to_sign_in()) };
    dashboard.check_form(&req, &form.csrf)?;
    let pool = pool.get_ref();
    let Ok(id) = Uuid::parse_str(&id) else { return Ok(back("/dashboard/keys", "There is no such key.")) };
    let keys = db::api_keys::list(pool, customer_id).await?;
    let live: Vec<_> = keys.iter().filter(|k| k.revoked_at.is_none()).collect();
    const NOT_LIVE: &str = "There is no such live key.";
    let Some(key) = live.iter().find(|k| k.id == id) else { return Ok(back("/dashboard/keys", NOT_LIVE)) };
    let revoked = match settings.email {
        // No email link back in: the last key stays, decided under the revocations' lock.
        None => match db::api_keys::revoke_unless_last(pool, customer_id, id).await? {
            Revocation::Revoked => true,
            Revocation::NotLive => return Ok(back("/dashboard/keys", NOT_LIVE)),
            Revocation::LastKey => return Ok(back("/dashboard/keys", LAST_KEY_EMAIL_OFF)),
        },
        Some(_) => {
            if live.len() == 1 && form.confirm != "yes" {
                let extra = context! { confirm_last => Serde(key) };
                return keys_page(pool, customer_id, csrf, StatusCode::CONFLICT, extra).await;
            }
            db::api_keys::revoke(pool, customer_id, id).await?
        }
    };
    if revoked {
        tracing::info!(%customer_id, key_id = %id, "API key revoked in the dashboard");
    }
    Ok(back("/dashboard/keys", &format!("Key {} ({}…) is revoked.", key.name, key.prefix)))
}

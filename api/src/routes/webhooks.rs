//! `POST /api/webhooks/stripe`: verify the signature over the raw body, enqueue the
//! event's processing keyed by its id, and answer 200 only once that is committed.
//! A bad, missing or expired signature is 400 with nothing stored; a redelivered event
//! answers 200 and enqueues nothing new.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::Utc;
use common::config::Settings;
use common::domain::ErrorCode;
use common::jobs::ProcessStripeEvent;
use common::queue::JobWaker;
use common::stripe::events::Envelope;
use common::stripe::signature;
use sqlx::PgPool;

use crate::errors::ApiError;
use crate::extract::RawJsonBody;

#[utoipa::path(post, path = "/api/webhooks/stripe", tag = "webhooks", params(("Stripe-Signature" = String, Header)), request_body(content = String, content_type = "application/json", description = "A Stripe event, verbatim"), responses((status = 200, description = "`{received: true, duplicate}` once the event is durably enqueued"), (status = 400, description = "INVALID_SIGNATURE or INVALID_PAYLOAD", body = crate::openapi::ErrorBody)))]
pub async fn stripe(
    req: HttpRequest,
    pool: web::Data<PgPool>,
    waker: web::Data<JobWaker>,
    settings: web::Data<Settings>,
    RawJsonBody(body): RawJsonBody,
) -> Result<HttpResponse, ApiError> {
    if settings.webhook_secrets.is_empty() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::ServiceUnavailable,
            "webhooks are not configured (STRIPE_WEBHOOK_SECRET)",
        ));
    }
    let header = req.headers().get("stripe-signature").and_then(|v| v.to_str().ok());
    if let Err(error) = signature::verify(&body, header, &settings.webhook_secrets, Utc::now().timestamp()) {
        tracing::warn!(%error, "webhook refused");
        return Err(ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidSignature, error.to_string()));
    }
    let invalid = |e: serde_json::Error| {
        ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidPayload, format!("not a Stripe event: {e}"))
    };
    let envelope = Envelope::decode(&body).map_err(invalid)?;
    let payload: serde_json::Value = serde_json::from_slice(&body).map_err(invalid)?;
    let enqueued = waker.enqueue(pool.get_ref(), &ProcessStripeEvent::from_envelope(&envelope, payload)).await?;
    tracing::info!(event_id = %envelope.id, kind = %envelope.kind, duplicate = enqueued.is_duplicate(), "webhook accepted");
    Ok(HttpResponse::Ok().json(serde_json::json!({ "received": true, "duplicate": enqueued.is_duplicate() })))
}

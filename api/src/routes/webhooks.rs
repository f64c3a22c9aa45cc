//! `POST /api/webhooks/stripe`: verify the signature over the raw body, enqueue the
//! event's processing keyed by its id, and answer 200 only once that is committed.
//! A bad, missing or expired signature is 400 with nothing stored; a redelivered event
//! answers 200 and enqueues nothing new.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, post, web};
use chrono::Utc;
use common::config::Settings;
use common::domain::ErrorCode;
use common::jobs::ProcessStripeEvent;
use common::queue::JobWaker;
use common::stripe::events::Envelope;
use common::stripe::signature;
use serde::Serialize;
use utoipa::ToSchema;

use crate::errors::ApiError;
use crate::extract::RawJsonBody;
use crate::openapi::ErrorBody;

/// What the API reads of a Stripe event (Stripe sends more; the rest is kept verbatim).
#[derive(serde::Deserialize, ToSchema)]
#[allow(dead_code)] // a schema only: the body is read as bytes, for its signature
pub struct StripeEvent {
    #[schema(pattern = "^evt_[A-Za-z0-9_]{1,250}$")]
    id: String,
    /// e.g. `invoice.payment_succeeded`; types we do not handle are recorded and ignored.
    #[serde(rename = "type")]
    #[schema(max_length = 100, pattern = "^[a-z0-9_]+(\\.[a-z0-9_]+)*$")]
    kind: String,
    /// Unix seconds.
    created: i64,
    data: StripeEventData,
}

#[derive(serde::Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct StripeEventData {
    /// The object the event is about (an invoice, a subscription, …).
    object: serde_json::Map<String, serde_json::Value>,
}

/// Whether a decoded event has the shape [`StripeEvent`] documents.
fn well_formed(envelope: &Envelope) -> Result<(), String> {
    let id_ok = envelope.id.strip_prefix("evt_").is_some_and(|rest| {
        (1..=250).contains(&rest.len()) && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    });
    if !id_ok {
        return Err("id must be a Stripe event id (evt_…)".into());
    }
    let kind_ok = envelope.kind.len() <= 100
        && envelope.kind.split('.').all(|part| {
            !part.is_empty() && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        });
    if !kind_ok {
        return Err("type must be a Stripe event type (e.g. invoice.paid)".into());
    }
    if !envelope.data.object.is_object() {
        return Err("data.object must be an object".into());
    }
    Ok(())
}

#[derive(Serialize, ToSchema)]
pub struct WebhookReceived {
    /// Always `true`: the event is durably queued.
    received: bool,
    /// The event was delivered before: nothing new is queued.
    duplicate: bool,
}

/// A Stripe event. Registered under the `/api/webhooks` scope (its body limit is
/// `WEBHOOK_MAX_BODY_BYTES`), so its path here is the rest: `/api/webhooks/stripe`.
#[utoipa::path(tag = "webhooks", params(("Stripe-Signature" = String, Header, description = "`t=…,v1=…`: HMAC-SHA256 of `t.body` with the endpoint's secret")), request_body(content = StripeEvent, content_type = "application/json", description = "A Stripe event, verbatim"), responses((status = 200, description = "Received once the event is durably queued", body = WebhookReceived), (status = 400, description = "INVALID_SIGNATURE or INVALID_PAYLOAD: nothing is stored", body = ErrorBody), (status = 503, description = "SERVICE_UNAVAILABLE: webhooks are not configured", body = ErrorBody)))]
#[post("/stripe")]
pub async fn stripe(
    req: HttpRequest,
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
    // Signed, so from Stripe: a refusal here is retried by Stripe for days and must reach
    // an operator, so each one is logged with what the event says it is.
    let invalid = |reason: String| {
        let id =
            serde_json::from_slice::<serde_json::Value>(&body).ok().and_then(|v| v["id"].as_str().map(str::to_owned));
        tracing::warn!(event_id = ?id, %reason, "signed webhook refused: not a Stripe event we can store");
        ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidPayload, format!("not a Stripe event: {reason}"))
    };
    let envelope = Envelope::decode(&body).map_err(|e| invalid(e.to_string()))?;
    well_formed(&envelope).map_err(invalid)?;
    let payload: serde_json::Value = serde_json::from_slice(&body).map_err(|e| invalid(e.to_string()))?;
    // Postgres stores no NUL in jsonb: refused here, not failed as a 500 at the insert.
    if crate::extract::holds_nul(&payload) {
        return Err(invalid("a string holds NUL (U+0000)".into()));
    }
    let enqueued = waker.enqueue(&ProcessStripeEvent::from_envelope(&envelope, payload)).await?;
    tracing::info!(event_id = %envelope.id, kind = %envelope.kind, duplicate = enqueued.is_duplicate(), "webhook accepted");
    Ok(HttpResponse::Ok().json(WebhookReceived { received: true, duplicate: enqueued.is_duplicate() }))
}

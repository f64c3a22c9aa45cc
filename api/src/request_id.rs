//! Every request gets an id: the client's `X-Request-Id` when it is a sane one (see
//! `correlation::RequestId`), else a new one. The answer always carries it back, the
//! request's log lines name it (a `request` span), and the jobs the request enqueues
//! store it, so their runs log it too (see `common::correlation`).
//!
//! The outermost middleware, so that answers refused at the edge or by a limit carry
//! the id as well; an error from within keeps its answer and gains the header.

use std::fmt;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpResponse, ResponseError};
use common::correlation::{self, RequestId};
use tracing::Instrument;

pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

pub async fn assign(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let id = req
        .headers()
        .get(&HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(RequestId::parse)
        .unwrap_or_else(RequestId::generate);
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    let span = tracing::info_span!("request", request_id = %id, method = %req.method(), route);
    let answer = correlation::scope(Some(id.clone()), next.call(req)).instrument(span).await;
    match answer {
        Ok(mut response) => {
            response.headers_mut().insert(HEADER, header_value(&id));
            Ok(response.map_into_boxed_body())
        }
        // The request was moved into the call, so its answer is made later, from the
        // error: tagged, it carries the id too.
        Err(error) => Err(Tagged { error, id }.into()),
    }
}

fn header_value(id: &RequestId) -> HeaderValue {
    HeaderValue::from_str(id.as_str()).expect("a parsed request id is a valid header value")
}

/// An error from within, answered as it would be, with the request's id.
struct Tagged {
    error: Error,
    id: RequestId,
}

impl fmt::Debug for Tagged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.error, f)
    }
}

impl fmt::Display for Tagged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

impl ResponseError for Tagged {
    fn status_code(&self) -> StatusCode {
        self.error.as_response_error().status_code()
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = self.error.error_response();
        response.headers_mut().insert(HEADER, header_value(&self.id));
        response
    }
}

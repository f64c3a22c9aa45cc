//! What a customer is told about an operation (a job) that failed: a stable code and a
//! short message. Never the job's raw error: that names tables, hosts, Stripe request
//! ids and our own reasoning, and stays in the job's history for operators (admin page,
//! `rsolv-worker jobs show`), who find it by the operation id the answer carries.

use common::domain::ErrorCode;
use common::queue::{JobState, JobStatus};

use crate::openapi::ErrorDetail;

/// The error of a failed (dead or cancelled) job, as the customer sees it.
pub fn describe(job: &JobState) -> ErrorDetail {
    let reason = job.last_error.as_deref().unwrap_or_default();
    let (code, message) = if job.status == JobStatus::Cancelled {
        cancelled(reason)
    } else {
        (ErrorCode::OperationFailed, "the operation could not be completed; contact support with its id")
    };
    ErrorDetail { code, message: message.to_owned() }
}

/// A job's own decision to stop: its reasons start with a code or a known phrase.
fn cancelled(reason: &str) -> (ErrorCode, &'static str) {
    let starts = |prefix: &str| reason.starts_with(prefix);
    if starts("NO_ACTIVE_SUBSCRIPTION") {
        (ErrorCode::NoActiveSubscription, "there is no active subscription")
    } else if starts("NO_PAYMENT_METHOD") {
        (ErrorCode::NoPaymentMethod, "add a payment method first")
    } else if starts("payment method not attached") {
        (ErrorCode::PaymentMethodRefused, "the payment method was refused; try another card")
    } else if starts("subscription refused") || starts("cancellation refused") || starts("resume refused") {
        (ErrorCode::StripeRefused, "the payment provider refused the change; contact support with its id")
    } else if starts("email ") && reason.contains("belongs to another customer") {
        (ErrorCode::EmailTaken, "this email belongs to another customer")
    } else {
        (ErrorCode::OperationFailed, "the operation could not be completed; contact support with its id")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn describe_json(job: &JobState) -> serde_json::Value {
        serde_json::to_value(describe(job)).unwrap()
    }

    fn job(status: JobStatus, error: &str) -> JobState {
        JobState { id: 7, status, attempts: 3, last_error: Some(error.into()), result: None }
    }

    #[test]
    fn raw_errors_become_codes_and_short_messages() {
        let raw = "database: error returned from database: relation \"customers\" ... at 10.0.3.7:5432";
        let told = describe_json(&job(JobStatus::Dead, raw));
        assert_eq!(told["code"], "OPERATION_FAILED");
        assert!(!told.to_string().contains("database") && !told.to_string().contains("10.0.3.7"));
        let refused = describe_json(&job(JobStatus::Cancelled, "payment method not attached: req_123 card_declined"));
        assert_eq!(refused["code"], "PAYMENT_METHOD_REFUSED");
        assert!(!refused.to_string().contains("req_123"));
        assert_eq!(
            describe_json(&job(JobStatus::Cancelled, "NO_ACTIVE_SUBSCRIPTION"))["code"],
            "NO_ACTIVE_SUBSCRIPTION"
        );
        assert_eq!(
            describe_json(&job(JobStatus::Cancelled, "email a@b.c belongs to another customer"))["code"],
            "EMAIL_TAKEN"
        );
    }
}

use serde::Serialize;

/// The `code` of the error body `{"error": {"message", "code"}}` the API answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    ValidationFailed,
    InvalidJson,
    UnsupportedMediaType,
    PayloadTooLarge,
    RequestHeadersTooLarge,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    EmailTaken,
    NoBillingInfo,
    IdempotencyKeyReused,
    BillingConsentRequired,
    NoPaymentMethod,
    NoActiveSubscription,
    AlreadySubscribed,
    NoScheduledCancellation,
    InsufficientCredits,
    TooManyKeys,
    /// The customer's last live key, which this server will not revoke: with email off it
    /// is the only way into the dashboard.
    LastKey,
    InvalidSignature,
    InvalidPayload,
    RateLimited,
    ServiceUnavailable,
    InternalError,
    /// A background operation ended without its effect (its details are for operators).
    OperationFailed,
    /// Stripe refused the card or the payment method.
    PaymentMethodRefused,
    /// Stripe refused a subscription change.
    StripeRefused,
    Conflict,
}

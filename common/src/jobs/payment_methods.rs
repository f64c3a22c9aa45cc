//! A customer's cards after the first: make another one the default for invoices and
//! charges, or remove one (detached at Stripe: it pays for nothing any more).
//!
//! Both run under the customer's Stripe-state lock (as adding a card does), so they take
//! turns with each other and with a card being added, and Stripe's default and ours end
//! the same. Each is safe to run again after a crash between Stripe's answer and our
//! commit: making a card the default again changes nothing; a card already detached is
//! found detached and the run goes on to what follows. A removed default card is
//! replaced by the customer's newest other card, if they have one.
//!
//! The rule a removal must pass ([`removal_refused`]) is checked by the dashboard before
//! it enqueues, and again here, under the lock, where it counts.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{JobContext, stripe_failure};
use crate::db::{self, customers::Customer};
use crate::queue::{Job, JobError, JobKind, Outcome, RetryPolicy};

/// Why a card cannot be removed now, if it cannot.
pub fn removal_refused(customer: &Customer, payment_method_id: &str, other_cards: usize) -> Option<&'static str> {
    let default = customer.stripe_payment_method_id.as_deref() == Some(payment_method_id);
    (default && other_cards == 0 && customer.stripe_subscription_id.is_some())
        .then_some("this card pays for Pro: add another card first, or cancel Pro")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetDefaultPaymentMethod {
    pub customer_id: Uuid,
    pub payment_method_id: String,
    pub operation_id: Uuid,
}

impl JobKind for SetDefaultPaymentMethod {
    const KIND: &'static str = "set_default_payment_method";
    const RETRY: RetryPolicy = RetryPolicy::new(10, 5).timeout(Duration::from_secs(120));

    fn unique_key(&self) -> Option<String> {
        Some(self.operation_id.to_string())
    }

    fn customer_id(&self) -> Option<Uuid> {
        Some(self.customer_id)
    }
}

impl Job for SetDefaultPaymentMethod {
    type Context = JobContext;

    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        let stripe = ctx.stripe()?;
        let customer = ctx.customer(self.customer_id).await?;
        let Some(stripe_customer) = customer.stripe_customer_id else {
            return Ok(Outcome::cancel("the customer has no Stripe customer"));
        };
        let mut tx = ctx.pool.begin().await?;
        db::customers::lock_stripe_state(&mut tx, customer.id).await?;
        let method = stripe.payment_method(&self.payment_method_id).await.map_err(stripe_failure)?;
        if method.customer.as_deref() != Some(stripe_customer.as_str()) {
            return Ok(Outcome::cancel("that card is not one of this customer's"));
        }
        stripe
            .set_default_payment_method(&stripe_customer, &method.id, self.operation_id)
            .await
            .map_err(stripe_failure)?;
        // A test build can stop here: Stripe's default is set, ours is not yet.
        fail::fail_point!("set_default_payment_method::after_stripe", |_| Err(JobError::new("failpoint")));
        db::customers::set_default_payment_method(&mut *tx, customer.id, &method.id).await?;
        tx.commit().await?;
        tracing::info!(customer_id = %customer.id, "default payment method changed");
        Ok(Outcome::done(serde_json::json!({ "payment_method_id": method.id })))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemovePaymentMethod {
    pub customer_id: Uuid,
    pub payment_method_id: String,
    pub operation_id: Uuid,
}

impl JobKind for RemovePaymentMethod {
    const KIND: &'static str = "remove_payment_method";
    const RETRY: RetryPolicy = RetryPolicy::new(10, 5).timeout(Duration::from_secs(120));

    fn unique_key(&self) -> Option<String> {
        Some(self.operation_id.to_string())
    }

    fn customer_id(&self) -> Option<Uuid> {
        Some(self.customer_id)
    }
}

impl Job for RemovePaymentMethod {
    type Context = JobContext;

    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        let stripe = ctx.stripe()?;
        let mut tx = ctx.pool.begin().await?;
        db::customers::lock_stripe_state(&mut tx, self.customer_id).await?;
        // Read under the lock: what a card being added or made the default left.
        let customer = ctx.customer(self.customer_id).await?;
        let Some(stripe_customer) = customer.stripe_customer_id.clone() else {
            return Ok(Outcome::cancel("the customer has no Stripe customer"));
        };
        let method = stripe.payment_method(&self.payment_method_id).await.map_err(stripe_failure)?;
        let ours = method.customer.as_deref() == Some(stripe_customer.as_str());
        let others: Vec<String> = stripe
            .payment_methods(&stripe_customer)
            .await
            .map_err(stripe_failure)?
            .into_iter()
            .map(|m| m.id)
            .filter(|id| *id != method.id)
            .collect();
        if ours {
            if let Some(refusal) = removal_refused(&customer, &method.id, others.len()) {
                return Ok(Outcome::cancel(refusal));
            }
            stripe.detach_payment_method(&method.id, self.operation_id).await.map_err(stripe_failure)?;
        } else if method.customer.is_some() {
            return Ok(Outcome::cancel("that card is not one of this customer's"));
        }
        // Detached now (by this run, or by an earlier one that stopped before our record
        // changed): what follows is ours to finish.
        // A test build can stop here: detached at Stripe, our record not changed yet.
        fail::fail_point!("remove_payment_method::after_stripe", |_| Err(JobError::new("failpoint")));
        let replacement = match customer.stripe_payment_method_id.as_deref() == Some(method.id.as_str()) {
            false => None,
            true => match others.first() {
                Some(next) => {
                    stripe
                        .set_default_payment_method(&stripe_customer, next, self.operation_id)
                        .await
                        .map_err(stripe_failure)?;
                    db::customers::set_default_payment_method(&mut *tx, customer.id, next).await?;
                    Some(next.clone())
                }
                None => {
                    db::customers::clear_payment_method(&mut *tx, customer.id, &method.id).await?;
                    None
                }
            },
        };
        tx.commit().await?;
        tracing::info!(customer_id = %customer.id, replaced = replacement.is_some(), "payment method removed");
        Ok(Outcome::done(serde_json::json!({ "removed": method.id, "default": replacement })))
    }
}

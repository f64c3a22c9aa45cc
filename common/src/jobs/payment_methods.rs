//! A customer's cards after the first: make another one the default for invoices and
//! charges, or remove one (detached at Stripe: it pays for nothing any more).
//!
//! Both run under the customer's Stripe-state lock (as adding a card does), so they take
//! turns with each other and with a card being added, and Stripe's default and ours end
//! the same. Each is safe to run again after a crash between Stripe's answer and our
//! commit: making a card the default again changes nothing. A removal first moves the
//! default off the card (to the customer's newest other card, if they have one) and
//! commits that, and only then detaches the card: a stop between the two leaves a
//! default that can pay, and the next run detaches a card nothing depends on. A card
//! still being added is removed once it is.
//!
//! The rule a removal must pass ([`removal_refused`]) is checked by the dashboard before
//! it enqueues, and again here, under the lock, where it counts.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{AddPaymentMethod, JobContext, stripe_failure};
use crate::db::{self, customers::Customer};
use crate::queue::{Job, JobError, JobKind, Outcome, RetryPolicy};
use crate::stripe::CallError;

/// Why a card cannot be removed now, if it cannot: a Pro customer keeps at least one
/// card at Stripe, whichever is the default.
pub fn removal_refused(customer: &Customer, _payment_method_id: &str, other_cards: usize) -> Option<&'static str> {
    (other_cards == 0 && customer.stripe_subscription_id.is_some())
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
        let method = match stripe.payment_method(&self.payment_method_id).await {
            Ok(method) => method,
            Err(CallError::Rejected { .. }) => return Ok(Outcome::cancel("there is no such card")),
            Err(error) => return Err(stripe_failure(error)),
        };
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

    /// In two steps, each under the lock: first, if the card is a default (ours or
    /// Stripe's), another card becomes the default at Stripe and here (or, with none
    /// left, ours is cleared), and that commits; then the card is detached. So a stop
    /// anywhere leaves the customer with a card that can pay, never one that cannot.
    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        if let Some(done) = self.hand_over_default(&ctx).await? {
            return Ok(done);
        }
        let stripe = ctx.stripe()?;
        let mut tx = ctx.pool.begin().await?;
        db::customers::lock_stripe_state(&mut tx, self.customer_id).await?;
        // Made the default again since (a click on "Make default" beside "Remove")?
        // Then it is not detached from under it: the next run hands the default over again.
        if ctx.customer(self.customer_id).await?.stripe_payment_method_id.as_deref()
            == Some(self.payment_method_id.as_str())
        {
            return Err(JobError::new("the card became the default again; the next run moves the default off it"));
        }
        // A test build can stop here: the default handed over, the card not detached yet.
        fail::fail_point!("remove_payment_method::before_detach", |_| Err(JobError::new("failpoint")));
        match stripe.detach_payment_method(&self.payment_method_id, self.operation_id).await {
            Ok(()) => {}
            // Detached already (by an earlier run): nothing left to do.
            Err(CallError::Rejected { .. }) => {}
            Err(error) => return Err(stripe_failure(error)),
        }
        tx.commit().await?;
        tracing::info!(customer_id = %self.customer_id, "payment method removed");
        Ok(Outcome::done(serde_json::json!({ "removed": self.payment_method_id })))
    }
}

impl RemovePaymentMethod {
    /// The first step: refuses what must not be removed, and moves the default off the
    /// card. `Some`: the run ends here (refused, or nothing to remove).
    async fn hand_over_default(&self, ctx: &JobContext) -> Result<Option<Outcome>, JobError> {
        let stripe = ctx.stripe()?;
        let mut tx = ctx.pool.begin().await?;
        db::customers::lock_stripe_state(&mut tx, self.customer_id).await?;
        // Read under the lock: what a card being added or made the default left.
        let customer = ctx.customer(self.customer_id).await?;
        let Some(stripe_customer) = customer.stripe_customer_id.clone() else {
            return Ok(Some(Outcome::cancel("the customer has no Stripe customer")));
        };
        let pending = serde_json::json!({ "payment_method_id": self.payment_method_id });
        if crate::queue::unfinished_for_customer(&mut *tx, AddPaymentMethod::KIND, customer.id, &pending)
            .await?
            .is_some()
        {
            return Err(JobError::new("the card is still being added; removing it once it is"));
        }
        let cards = stripe.payment_methods(&stripe_customer).await.map_err(stripe_failure)?;
        if !cards.iter().any(|c| c.id == self.payment_method_id) {
            return Ok(Some(match stripe.payment_method(&self.payment_method_id).await {
                Ok(card) if card.customer.is_some() => Outcome::cancel("that card is not one of this customer's"),
                Ok(_) => Outcome::done(serde_json::json!({ "removed": self.payment_method_id, "already": true })),
                Err(CallError::Rejected { .. }) => Outcome::cancel("there is no such card"),
                Err(error) => return Err(stripe_failure(error)),
            }));
        }
        let others: Vec<&str> =
            cards.iter().map(|c| c.id.as_str()).filter(|id| *id != self.payment_method_id).collect();
        if let Some(refusal) = removal_refused(&customer, &self.payment_method_id, others.len()) {
            return Ok(Some(Outcome::cancel(refusal)));
        }
        let theirs = stripe.default_payment_method(&stripe_customer).await.map_err(stripe_failure)?;
        let ours = customer.stripe_payment_method_id.as_deref();
        if ours == Some(self.payment_method_id.as_str()) || theirs.as_deref() == Some(self.payment_method_id.as_str()) {
            match others.first() {
                Some(next) => {
                    stripe
                        .set_default_payment_method(&stripe_customer, next, self.operation_id)
                        .await
                        .map_err(stripe_failure)?;
                    db::customers::set_default_payment_method(&mut *tx, customer.id, next).await?;
                }
                None => db::customers::clear_payment_method(&mut *tx, customer.id, &self.payment_method_id).await?,
            }
        }
        tx.commit().await?;
        Ok(None)
    }
}

-- Billing: Stripe subscription bookkeeping, webhook events, paid fixes.

ALTER TABLE customers
    -- End of the current Pro period as Stripe last told us; the renewal sweep looks
    -- at subscriptions whose period has ended.
    ADD COLUMN subscription_period_end timestamptz,
    -- The (created, rank) of the last subscription-state event applied, so that an
    -- older event delivered late never overwrites a newer state.
    ADD COLUMN subscription_event_created bigint,
    ADD COLUMN subscription_event_rank smallint;

CREATE INDEX customers_renewal_due ON customers (subscription_period_end)
    WHERE stripe_subscription_id IS NOT NULL;

-- Every Stripe event, once, by its id.
CREATE TABLE billing_events (
    event_id       text PRIMARY KEY,
    type           text NOT NULL,
    stripe_created timestamptz NOT NULL,
    customer_id    uuid REFERENCES customers (id),
    payload        jsonb NOT NULL,
    received_at    timestamptz NOT NULL DEFAULT now(),
    processed_at   timestamptz,
    -- What processing did: applied, ignored (type not handled), stale (older than state).
    outcome        text
);
CREATE INDEX billing_events_customer ON billing_events (customer_id, stripe_created);

-- A fix paid for at balance 0, and why a refused fix was refused.
ALTER TABLE usage_fixes
    ADD COLUMN charged_cents bigint,
    ADD COLUMN payment_intent_id text UNIQUE;

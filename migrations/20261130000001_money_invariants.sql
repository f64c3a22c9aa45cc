-- Money that cannot be doubled or lost: charges written down before they are made,
-- the ledger's arithmetic enforced by Postgres itself, operator adjustments on the record.

-- A charge for one fix, inserted `pending` in the transaction that decides "no credit
-- left -> charge", before Stripe is called. Its id travels to Stripe in the
-- PaymentIntent's metadata, so a retry (or an operator's redrive days later) finds
-- what an earlier attempt did instead of charging again.
CREATE TABLE charges (
    id                uuid PRIMARY KEY,
    customer_id       uuid NOT NULL REFERENCES customers (id),
    fix_id            text NOT NULL,
    repo              text NOT NULL,
    amount_cents      bigint NOT NULL CHECK (amount_cents > 0),
    currency          text NOT NULL,
    -- Sent as Stripe's Idempotency-Key; Stripe keeps keys 24 h, the row forever.
    idempotency_key   text NOT NULL UNIQUE,
    status            text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'requires_action', 'succeeded', 'failed')),
    payment_intent_id text UNIQUE,
    failure_code      text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    resolved_at       timestamptz,
    -- One charge per fix: a fix is never paid for twice.
    UNIQUE (customer_id, fix_id),
    CHECK (status NOT IN ('succeeded', 'requires_action') OR payment_intent_id IS NOT NULL)
);
CREATE INDEX charges_unresolved ON charges (created_at) WHERE status IN ('pending', 'requires_action');

-- Operators' adjustments carry their own source. 'adjustment' stays accepted for
-- entries written before it was renamed (the ledger is append-only: no rewrite).
ALTER TABLE credit_ledger DROP CONSTRAINT credit_ledger_source_check;
ALTER TABLE credit_ledger ADD CONSTRAINT credit_ledger_source_check
    CHECK (source IN ('trial_signup', 'trial_billing_added', 'pro_subscription_payment',
                      'purchased', 'fix_deployed', 'admin_adjustment', 'adjustment'));

-- A balance that already differs from its ledger would fail every later posting under
-- the triggers below: stop here, naming each, for an operator to correct first.
DO $$
DECLARE
    drifted text;
BEGIN
    SELECT string_agg(c.id::text || ' (balance ' || c.credit_balance || ', entries ' || coalesce(l.total, 0) || ')', ', ')
    INTO drifted
    FROM customers c
    LEFT JOIN (SELECT customer_id, sum(amount) AS total FROM credit_ledger GROUP BY customer_id) l ON l.customer_id = c.id
    WHERE c.credit_balance <> coalesce(l.total, 0);
    IF drifted IS NOT NULL THEN
        RAISE EXCEPTION 'credit balances differ from their ledgers; correct them before upgrading: %', drifted;
    END IF;
END $$;

-- The ledger's arithmetic, enforced here and not only in `ledger::post`:
--  1. each entry continues its customer's chain: balance_after = previous balance_after
--     (0 before the first entry) + amount;
--  2. at commit, a customer's credit_balance equals its newest entry's balance_after.
-- Together: the balance is the sum of the customer's entries, and (with the CHECKs on
-- balance and balance_after) never negative. Both read one row by the
-- (customer_id, id DESC) index, so they cost what a posting already costs.
CREATE FUNCTION credit_ledger_chain() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    previous bigint;
BEGIN
    SELECT balance_after INTO previous FROM credit_ledger
    WHERE customer_id = NEW.customer_id ORDER BY id DESC LIMIT 1;
    IF NEW.balance_after <> coalesce(previous, 0) + NEW.amount THEN
        RAISE EXCEPTION 'credit_ledger entry breaks the balance chain of customer % (% + % <> %)',
            NEW.customer_id, coalesce(previous, 0), NEW.amount, NEW.balance_after
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER credit_ledger_chain BEFORE INSERT ON credit_ledger
    FOR EACH ROW EXECUTE FUNCTION credit_ledger_chain();

CREATE FUNCTION customer_balance_matches_ledger() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    customer uuid;
    balance bigint;
    newest bigint;
BEGIN
    IF TG_TABLE_NAME = 'customers' THEN
        customer := NEW.id;
    ELSE
        customer := NEW.customer_id;
    END IF;
    SELECT credit_balance INTO balance FROM customers WHERE id = customer;
    SELECT balance_after INTO newest FROM credit_ledger
    WHERE customer_id = customer ORDER BY id DESC LIMIT 1;
    IF balance IS DISTINCT FROM coalesce(newest, 0) AND balance IS NOT NULL THEN
        RAISE EXCEPTION 'credit balance of customer % is % but its ledger says %', customer, balance, coalesce(newest, 0)
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER customers_balance_matches_ledger
    AFTER INSERT OR UPDATE OF credit_balance ON customers DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION customer_balance_matches_ledger();
CREATE CONSTRAINT TRIGGER credit_ledger_matches_balance
    AFTER INSERT ON credit_ledger DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION customer_balance_matches_ledger();

-- Append-only includes TRUNCATE (row triggers do not see it).
CREATE TRIGGER credit_ledger_no_truncate BEFORE TRUNCATE ON credit_ledger
    FOR EACH STATEMENT EXECUTE FUNCTION credit_ledger_append_only();

-- Every operator action that changes money or jobs, who did it and why.
CREATE TABLE audit_log (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    actor      text NOT NULL,
    action     text NOT NULL,
    target     text NOT NULL,
    reason     text,
    detail     jsonb NOT NULL DEFAULT '{}'::jsonb,
    at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_at ON audit_log (at DESC);
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION credit_ledger_append_only();

-- Every Pro subscription we have applied to a customer (by our own jobs or by its
-- events): a paid invoice grants credits only if its subscription is one of these.
CREATE TABLE subscriptions (
    id            text PRIMARY KEY,
    customer_id   uuid NOT NULL REFERENCES customers (id),
    first_seen_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX subscriptions_customer ON subscriptions (customer_id);
INSERT INTO subscriptions (id, customer_id)
    SELECT stripe_subscription_id, id FROM customers WHERE stripe_subscription_id IS NOT NULL;
-- Past ones too, as their events named them: a late invoice of one still earns credits.
INSERT INTO subscriptions (id, customer_id)
    SELECT DISTINCT payload -> 'data' -> 'object' ->> 'id', customer_id FROM billing_events
    WHERE type LIKE 'customer.subscription.%' AND customer_id IS NOT NULL
      AND payload -> 'data' -> 'object' ->> 'id' IS NOT NULL
ON CONFLICT DO NOTHING;

-- Fixes charged before charges were written down get their charge row, so that every
-- charged fix maps to one succeeded charge (the currency was always the default).
INSERT INTO charges (id, customer_id, fix_id, repo, amount_cents, currency, idempotency_key, status,
                     payment_intent_id, created_at, resolved_at)
    SELECT gen_random_uuid(), customer_id, fix_id, repo, charged_cents, 'usd', 'rsolv-fix-' || customer_id || '-' || fix_id,
           'succeeded', payment_intent_id, created_at, created_at
    FROM usage_fixes WHERE payment_intent_id IS NOT NULL;

-- What reconciliation with Stripe found: healed (set right through the jobs' own code)
-- or not (for an operator), one row per finding.
CREATE TABLE reconcile_drift (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id uuid NOT NULL REFERENCES customers (id),
    kind        text NOT NULL,
    detail      text NOT NULL,
    healed      boolean NOT NULL,
    found_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reconcile_drift_found ON reconcile_drift (found_at DESC);

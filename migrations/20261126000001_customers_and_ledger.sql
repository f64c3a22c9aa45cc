-- Customers, API keys, the credit ledger and recorded fixes (see ../shared/spec/domain.md).

CREATE TABLE customers (
    id                       uuid PRIMARY KEY,
    name                     text NOT NULL,
    email                    text NOT NULL,
    source                   text,
    subscription_type        text NOT NULL DEFAULT 'trial'
        CHECK (subscription_type IN ('trial', 'pay_as_you_go', 'pro')),
    subscription_state       text
        CHECK (subscription_state IN ('incomplete', 'incomplete_expired', 'trialing', 'active',
                                      'past_due', 'canceled', 'unpaid', 'paused')),
    cancel_at_period_end     boolean NOT NULL DEFAULT false,
    credit_balance           bigint NOT NULL DEFAULT 0 CHECK (credit_balance >= 0),
    stripe_customer_id       text UNIQUE,
    stripe_payment_method_id text UNIQUE,
    stripe_subscription_id   text UNIQUE,
    billing_consent_given    boolean NOT NULL DEFAULT false,
    billing_consent_at       timestamptz,
    created_at               timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now()
);
-- Emails are unique whatever their case.
CREATE UNIQUE INDEX customers_email_key ON customers (lower(email));

CREATE TABLE api_keys (
    id           uuid PRIMARY KEY,
    customer_id  uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    name         text NOT NULL,
    -- SHA-256 hex of the raw key; the raw key is never stored.
    key_hash     text NOT NULL UNIQUE CHECK (key_hash ~ '^[0-9a-f]{64}$'),
    -- First characters of the key, enough for a person to tell keys apart.
    prefix       text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);
CREATE INDEX api_keys_customer ON api_keys (customer_id);

CREATE TABLE credit_ledger (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id     uuid NOT NULL REFERENCES customers (id),
    amount          bigint NOT NULL CHECK (amount <> 0),
    balance_after   bigint NOT NULL CHECK (balance_after >= 0),
    source          text NOT NULL
        CHECK (source IN ('trial_signup', 'trial_billing_added', 'pro_subscription_payment',
                          'purchased', 'fix_deployed', 'adjustment')),
    metadata        jsonb NOT NULL DEFAULT '{}'::jsonb,
    idempotency_key text NOT NULL UNIQUE,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX credit_ledger_customer ON credit_ledger (customer_id, id DESC);

-- The ledger is append-only: corrections are new entries, never edits.
CREATE FUNCTION credit_ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'credit_ledger is append-only (% refused)', TG_OP;
END $$;
CREATE TRIGGER credit_ledger_append_only BEFORE UPDATE OR DELETE ON credit_ledger
    FOR EACH ROW EXECUTE FUNCTION credit_ledger_append_only();

-- One row per reported fix: the record that a fix_id is never consumed twice.
CREATE TABLE usage_fixes (
    customer_id     uuid NOT NULL REFERENCES customers (id),
    fix_id          text NOT NULL,
    repo            text NOT NULL,
    outcome         text NOT NULL CHECK (outcome IN ('consumed', 'refused')),
    refusal_code    text,
    ledger_entry_id bigint REFERENCES credit_ledger (id),
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, fix_id),
    CHECK ((outcome = 'consumed') = (ledger_entry_id IS NOT NULL))
);

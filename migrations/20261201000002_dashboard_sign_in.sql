-- One-time sign-in links of the customer dashboard. The emailed link carries a random
-- token; only its SHA-256 is stored, so a copy of this table signs no one in. A link
-- works once (`used_at`), until `expires_at` (15 minutes).
CREATE TABLE sign_in_links (
    token_hash  text PRIMARY KEY,
    customer_id uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);
CREATE INDEX sign_in_links_expires_at ON sign_in_links (expires_at);

-- The dashboard's usage history: a customer's fixes, newest first.
CREATE INDEX usage_fixes_customer_newest ON usage_fixes (customer_id, created_at DESC, fix_id DESC);

-- When a key last authenticated a request, to the minute (updated at most once a
-- minute per key, by the lookup that authenticates it).
ALTER TABLE api_keys ADD COLUMN last_used_at timestamptz;

-- Sequences a customer chose not to receive (the dashboard's email preferences), on top
-- of `customers.unsubscribed_at`, which stops every sequence that can be stopped.
CREATE TABLE email_opt_outs (
    customer_id uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    sequence    text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, sequence)
);

-- Sequences started by the nudge sweep, once per customer, sequence and episode (the
-- trial for expiring_trial; a stretch of inactivity, named by the day it began, for
-- re_engagement): the sweep schedules a sequence only when it inserts its row here.
CREATE TABLE email_sequence_starts (
    customer_id uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    sequence    text NOT NULL,
    occurrence  text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, sequence, occurrence)
);

-- A dashboard session opened with an API key ends when that key is revoked: a leaked
-- key, once revoked, leaves no session behind.
ALTER TABLE sessions ADD COLUMN api_key_id uuid;
CREATE INDEX sessions_api_key_id ON sessions (api_key_id) WHERE api_key_id IS NOT NULL;

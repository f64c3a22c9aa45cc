-- Rate limits shared by every API process: one counter per bucket and minute.
CREATE UNLOGGED TABLE rate_limit_windows (
    bucket       text NOT NULL,
    window_start timestamptz NOT NULL,
    hits         integer NOT NULL,
    PRIMARY KEY (bucket, window_start)
);

-- Idempotent POSTs for API clients (`Idempotency-Key`), kept 24 hours.
CREATE TABLE idempotency_keys (
    -- Whose key: the API key's hash, or the client address for unauthenticated routes.
    scope           text NOT NULL,
    key             text NOT NULL,
    -- SHA-256 of method, path and body: the same key with another request is refused.
    request_hash    text NOT NULL,
    response_status smallint,
    response_body   bytea,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

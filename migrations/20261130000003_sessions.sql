-- Browser sessions (the admin page; the customer dashboard next). The cookie holds a
-- random token; only its SHA-256 is stored, so a copy of this table signs no one in.
-- A session ends at `expires_at` or when its row is deleted (sign-out).
CREATE TABLE sessions (
    token_hash text PRIMARY KEY,
    -- Which door the session opens: 'admin' (later 'customer').
    realm      text NOT NULL,
    -- Who: for admin, a fingerprint of the ADMIN_TOKEN signed in with (rotating the
    -- token ends every session); for customers, the customer id.
    subject    text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX sessions_expires_at ON sessions (expires_at);

-- Idempotency-Key claims hold a lease: a request that never finished (a crash, a
-- dropped connection) leaves its key to a retry once the lease ends, instead of
-- answering 409 for a day. `lease` fences the holder: only the request that holds the
-- current lease may store the answer. Keys are now scoped to the customer
-- (`customer:<id>`) or, for onboarding, the client address (`addr:<ip>`); rows under
-- the old per-API-key scopes simply expire.
ALTER TABLE idempotency_keys
    ADD COLUMN locked_until timestamptz,
    ADD COLUMN lease uuid;

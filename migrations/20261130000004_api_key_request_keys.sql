-- The Idempotency-Key of the request that created an API key: a request re-run after
-- its first run's answer was lost (the key's lease ran out) finds the key it made
-- instead of minting a second one.
ALTER TABLE api_keys ADD COLUMN request_key text;
CREATE UNIQUE INDEX api_keys_request_key ON api_keys (customer_id, request_key) WHERE request_key IS NOT NULL;

-- The request a job was caused by (see common::correlation): its X-Request-Id, carried
-- on to the jobs that job enqueues. Nullable and without a default, so adding it
-- rewrites no row of a live queue.
ALTER TABLE jobs ADD COLUMN request_id text CHECK (char_length(request_id) BETWEEN 1 AND 64);

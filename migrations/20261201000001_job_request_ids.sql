-- The request a job was caused by (see common::correlation): its X-Request-Id, carried
-- on to the jobs that job enqueues. Nullable and without a default, so adding it
-- rewrites no row of a live queue; the length check is added NOT VALID so that adding
-- it does not scan the table under its exclusive lock either (it holds for every row
-- written from now on, and every existing row is NULL).
ALTER TABLE jobs ADD COLUMN request_id text;
ALTER TABLE jobs ADD CONSTRAINT jobs_request_id_length
    CHECK (char_length(request_id) BETWEEN 1 AND 64) NOT VALID;

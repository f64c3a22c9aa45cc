-- no-transaction
-- Unique keys given back by dead and cancelled jobs, for the lookups by key whatever a
-- job's state (`queue::by_unique_key`, `queue::first_enqueued_at`): with
-- `jobs_unique_key`, which holds every other job's key, they cover what
-- `jobs_by_unique_key` covered, and the next migration drops that index. A job with a
-- key then writes one index entry for it when it is inserted and one when it completes,
-- instead of two each (a usage report's job: nine entries in all instead of eleven).
--
-- Built CONCURRENTLY, outside a transaction, so that a live queue keeps inserting and
-- claiming while it builds. If a build is interrupted, Postgres leaves the index INVALID
-- and this statement skips it when run again; the next migration then refuses to drop
-- the index it replaces: drop this one (DROP INDEX CONCURRENTLY jobs_given_back_keys)
-- and run the migrations again.
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_given_back_keys ON jobs (kind, unique_key)
    WHERE unique_key IS NOT NULL AND status IN ('dead', 'cancelled');

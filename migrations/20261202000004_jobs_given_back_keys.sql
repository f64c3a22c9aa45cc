-- no-transaction
-- Unique keys given back by dead and cancelled jobs, for the lookups by key whatever a
-- job's state (`queue::by_unique_key`, `queue::first_enqueued_at`): with
-- `jobs_unique_key`, which holds every other job's key, they cover what
-- `jobs_by_unique_key` covered. Once that index is dropped, a job with a key writes one
-- index entry for it when it is inserted and one when it completes, instead of two each
-- (a usage report's job, inserted and settled: eight index entries instead of ten). The previous release
-- still reads `jobs_by_unique_key`, so it is dropped by a later release (expand, then
-- contract: README, "Rolling deploys"), after a check that this index is valid.
--
-- Built CONCURRENTLY, outside a transaction, so that a live queue keeps inserting and
-- claiming while it builds. If a build is interrupted, Postgres leaves the index INVALID
-- and this statement skips it when run again (and is recorded as applied): rebuild it
-- (REINDEX INDEX CONCURRENTLY jobs_given_back_keys). Until then the lookups by key read
-- `jobs_by_unique_key`.
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_given_back_keys ON jobs (kind, unique_key)
    WHERE unique_key IS NOT NULL AND status IN ('dead', 'cancelled');

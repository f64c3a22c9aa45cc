-- no-transaction
-- Contract step of 20261202000004: every job with a key wrote an entry for it in two
-- indexes when it was inserted and again when it completed; this drops the one no lookup
-- needs any more (the previous release reads `jobs_unique_key` and `jobs_given_back_keys`,
-- checked valid by the migration before this one). CONCURRENTLY, outside a transaction:
-- it waits for the transactions using `jobs` at the time, never blocking inserts and
-- claims meanwhile. A single statement, as a concurrent drop must be.
DROP INDEX CONCURRENTLY IF EXISTS jobs_by_unique_key;

-- Contract step of 20261202000004 (README, "Rolling deploys"): the next migration drops
-- `jobs_by_unique_key`, after which the lookups of a key in any state read
-- `jobs_unique_key` and `jobs_given_back_keys`. This one only stops the migrations
-- while `jobs_given_back_keys` is missing or INVALID (an interrupted concurrent build),
-- so that the older index is never dropped before its replacement can be read. Stopped
-- here, nothing is dropped and the running release keeps working: repair the index as
-- the error says, then run the migrations again (restart the migration Job).
DO $$
BEGIN
    IF to_regclass('jobs_given_back_keys') IS NULL THEN
        RAISE EXCEPTION 'jobs_given_back_keys is missing; nothing was dropped. Create it (CREATE INDEX CONCURRENTLY jobs_given_back_keys ON jobs (kind, unique_key) WHERE unique_key IS NOT NULL AND status IN (''dead'', ''cancelled'')) and run the migrations again';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_index WHERE indexrelid = 'jobs_given_back_keys'::regclass AND indisvalid) THEN
        RAISE EXCEPTION 'jobs_given_back_keys is INVALID (an interrupted build); nothing was dropped. Rebuild it (REINDEX INDEX CONCURRENTLY jobs_given_back_keys; drop any jobs_given_back_keys_ccnew an interrupted REINDEX left) and run the migrations again';
    END IF;
END $$;

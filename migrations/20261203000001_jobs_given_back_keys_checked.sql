-- Contract step of 20261202000004 (README, "Rolling deploys"): the next migration drops
-- `jobs_by_unique_key`, after which the lookups of a key in any state read
-- `jobs_unique_key` and `jobs_given_back_keys`. This one only stops the migrations
-- while `jobs_given_back_keys` is missing or INVALID (an interrupted concurrent build),
-- so that the older index is never dropped before its replacement can be read.
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_index WHERE indexrelid = to_regclass('jobs_given_back_keys') AND indisvalid
    ) THEN
        RAISE EXCEPTION 'jobs_given_back_keys is missing or INVALID (an interrupted build): rebuild it (REINDEX INDEX CONCURRENTLY jobs_given_back_keys) and run the migrations again';
    END IF;
END $$;

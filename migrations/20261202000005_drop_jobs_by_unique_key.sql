-- `jobs_by_unique_key`, replaced by `jobs_given_back_keys` (previous migration) with
-- `jobs_unique_key`. Dropped only once its replacement is valid; the drop holds the jobs
-- table for an instant, and gives up after 5 s of waiting for it rather than stall the
-- queue behind a long transaction (run the migrations again). An API or worker of the
-- previous release still running meanwhile looks keys up correctly, by reading the table.
SET LOCAL lock_timeout = '5s';
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_index WHERE indexrelid = to_regclass('jobs_given_back_keys') AND indisvalid) THEN
        RAISE EXCEPTION 'jobs_given_back_keys is missing or INVALID (an interrupted build): drop it (DROP INDEX CONCURRENTLY jobs_given_back_keys) and run the migrations again';
    END IF;
END $$;
DROP INDEX IF EXISTS jobs_by_unique_key;

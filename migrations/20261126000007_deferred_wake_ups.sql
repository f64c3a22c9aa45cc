-- An insert may leave waking the workers to its caller, after the commit (queue::JobWaker):
-- NOTIFY holds a database-wide lock until the commit is on disk, so transactions that
-- notify commit one at a time, which capped the webhook route.
CREATE OR REPLACE FUNCTION jobs_notify_insert() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    due_kind text;
BEGIN
    IF current_setting('rsolv.wake_up', true) = 'deferred' THEN
        RETURN NULL;
    END IF;
    FOR due_kind IN SELECT DISTINCT kind FROM inserted_jobs WHERE run_at <= now() LOOP
        PERFORM pg_notify('rsolv_jobs', due_kind);
    END LOOP;
    RETURN NULL;
END $$;

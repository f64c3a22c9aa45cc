-- The job queue: our own storage behind apalis's Persistence trait (common/src/queue).
-- Why not apalis-postgres's tables: see common/src/queue/mod.rs.

CREATE TABLE jobs (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The job kind's stable name; each kind is its own queue.
    kind         text NOT NULL,
    args         jsonb NOT NULL,
    status       text NOT NULL DEFAULT 'available'
        CHECK (status IN ('available', 'running', 'retryable', 'completed', 'cancelled', 'dead')),
    attempts     integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- Null: the kind's configured attempts (JOB_<KIND>_MAX_ATTEMPTS) at the time it fails.
    max_attempts integer CHECK (max_attempts > 0),
    -- When the job may next run: the schedule, and after a failure the persisted backoff.
    run_at       timestamptz NOT NULL DEFAULT now(),
    unique_key   text,
    customer_id  uuid,
    locked_by    text,
    locked_at    timestamptz,
    result       jsonb,
    -- Every failed attempt: [{"attempt": n, "at": ts, "error": "..."}]
    errors       jsonb NOT NULL DEFAULT '[]'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);

-- What claiming reads: only waiting rows are indexed, so finished rows cost nothing here.
CREATE INDEX jobs_claim ON jobs (kind, run_at) WHERE status IN ('available', 'retryable');
-- What orphan rescue reads.
CREATE INDEX jobs_running ON jobs (locked_by) WHERE status = 'running';
CREATE INDEX jobs_customer ON jobs (customer_id, kind) WHERE customer_id IS NOT NULL;
-- Unique jobs: a key is taken while a job holding it is waiting, running or done;
-- a dead or cancelled job gives it back so the work can be submitted again.
CREATE UNIQUE INDEX jobs_unique_key ON jobs (kind, unique_key)
    WHERE unique_key IS NOT NULL AND status NOT IN ('dead', 'cancelled');

-- Worker processes' liveness, for rescuing jobs held by a worker that died.
CREATE TABLE job_workers (
    name       text PRIMARY KEY,
    kind       text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    last_seen  timestamptz NOT NULL DEFAULT now()
);

-- One notification per kind per inserting statement (not one per row), and only for
-- jobs due now; scheduled jobs are found by the workers' polling.
CREATE FUNCTION jobs_notify_insert() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    due_kind text;
BEGIN
    FOR due_kind IN SELECT DISTINCT kind FROM inserted_jobs WHERE run_at <= now() LOOP
        PERFORM pg_notify('rsolv_jobs', due_kind);
    END LOOP;
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_notify_insert AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS inserted_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_notify_insert();

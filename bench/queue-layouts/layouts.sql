-- Three layouts of the job table, filled with :n waiting no-op jobs each, for comparing
-- what a claim and a completion cost Postgres alone (see run.sh and BENCHMARKS.md,
-- "What a queue table could buy"). Run on a scratch database that has the migrations.
--
--   ceiling  a copy of `jobs` with its indexes; claiming deletes (rsolv-bench's ceiling)
--   jobs     the landed layout: status in partial indexes, so no transition is HOT
--   jobs2    the bound: waiting jobs listed in q2, which a claim deletes from; no index
--            of jobs2 names a column a claim or a completion changes (both HOT updates);
--            nothing recorded for orphan rescue, no unique keys
--   jobs3    jobs2 plus what the product needs: live and given-back unique keys and dead
--            jobs indexed through generated columns a claim or completion leaves as
--            they were, and one job_claims row per claim (orphan rescue)
--   jobs4    no queue table: waiting jobs indexed in jobs4 itself through a generated
--            column, so a claim is an ordinary update (new index entries) but a
--            completion is HOT; keys, dead jobs and claims rows as jobs3
DROP TABLE IF EXISTS ceiling, jobs2, q2, jobs3, q3, jobs4, job_claims;
TRUNCATE jobs;
CREATE TABLE ceiling (LIKE jobs INCLUDING DEFAULTS INCLUDING INDEXES INCLUDING IDENTITY);

CREATE TABLE jobs2 (LIKE jobs INCLUDING DEFAULTS INCLUDING IDENTITY) WITH (fillfactor = :ff);
ALTER TABLE jobs2 ADD PRIMARY KEY (id);
CREATE INDEX ON jobs2 (customer_id, kind) WHERE customer_id IS NOT NULL;
CREATE TABLE q2 (id bigint PRIMARY KEY, kind text NOT NULL, run_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX ON q2 (kind, run_at);

CREATE TABLE jobs3 (LIKE jobs INCLUDING DEFAULTS INCLUDING IDENTITY) WITH (fillfactor = :ff);
ALTER TABLE jobs3 ADD PRIMARY KEY (id);
ALTER TABLE jobs3 ADD COLUMN live_key text
    GENERATED ALWAYS AS (CASE WHEN status NOT IN ('dead', 'cancelled') THEN unique_key END) STORED;
ALTER TABLE jobs3 ADD COLUMN given_back_key text
    GENERATED ALWAYS AS (CASE WHEN status IN ('dead', 'cancelled') THEN unique_key END) STORED;
ALTER TABLE jobs3 ADD COLUMN dead_kind text GENERATED ALWAYS AS (CASE WHEN status = 'dead' THEN kind END) STORED;
CREATE INDEX ON jobs3 (customer_id, kind) WHERE customer_id IS NOT NULL;
CREATE UNIQUE INDEX ON jobs3 (kind, live_key) WHERE live_key IS NOT NULL;
CREATE INDEX ON jobs3 (kind, given_back_key) WHERE given_back_key IS NOT NULL;
CREATE INDEX ON jobs3 (dead_kind) WHERE dead_kind IS NOT NULL;
CREATE TABLE q3 (id bigint PRIMARY KEY, kind text NOT NULL, run_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX ON q3 (kind, run_at);
CREATE TABLE jobs4 (LIKE jobs INCLUDING DEFAULTS INCLUDING IDENTITY) WITH (fillfactor = :ff);
ALTER TABLE jobs4 ADD PRIMARY KEY (id);
ALTER TABLE jobs4 ADD COLUMN waiting boolean
    GENERATED ALWAYS AS (status IN ('available', 'retryable')) STORED;
ALTER TABLE jobs4 ADD COLUMN live_key text
    GENERATED ALWAYS AS (CASE WHEN status NOT IN ('dead', 'cancelled') THEN unique_key END) STORED;
ALTER TABLE jobs4 ADD COLUMN given_back_key text
    GENERATED ALWAYS AS (CASE WHEN status IN ('dead', 'cancelled') THEN unique_key END) STORED;
ALTER TABLE jobs4 ADD COLUMN dead_kind text GENERATED ALWAYS AS (CASE WHEN status = 'dead' THEN kind END) STORED;
CREATE INDEX ON jobs4 (kind, run_at) WHERE waiting;
CREATE INDEX ON jobs4 (customer_id, kind) WHERE customer_id IS NOT NULL;
CREATE UNIQUE INDEX ON jobs4 (kind, live_key) WHERE live_key IS NOT NULL;
CREATE INDEX ON jobs4 (kind, given_back_key) WHERE given_back_key IS NOT NULL;
CREATE INDEX ON jobs4 (dead_kind) WHERE dead_kind IS NOT NULL;
CREATE TABLE job_claims (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    worker text NOT NULL,
    claimed_at timestamptz NOT NULL,
    ids bigint[] NOT NULL
);

INSERT INTO ceiling (kind, args) SELECT :'kind', jsonb_build_object('seq', g) FROM generate_series(1, :n) g;
INSERT INTO jobs (kind, args) SELECT :'kind', jsonb_build_object('seq', g) FROM generate_series(1, :n) g;
INSERT INTO jobs2 (kind, args) SELECT :'kind', jsonb_build_object('seq', g) FROM generate_series(1, :n) g;
INSERT INTO q2 (id, kind, run_at) SELECT id, kind, run_at FROM jobs2;
INSERT INTO jobs3 (kind, args) SELECT :'kind', jsonb_build_object('seq', g) FROM generate_series(1, :n) g;
INSERT INTO q3 (id, kind, run_at) SELECT id, kind, run_at FROM jobs3;
INSERT INTO jobs4 (kind, args) SELECT :'kind', jsonb_build_object('seq', g) FROM generate_series(1, :n) g;
VACUUM ANALYZE ceiling, jobs, jobs2, q2, jobs3, q3, jobs4;

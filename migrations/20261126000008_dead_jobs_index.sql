-- What the queue gauges read every few seconds in every process: dead jobs per kind,
-- without visiting the finished rows (only dead ones are indexed, and they are few).
CREATE INDEX jobs_dead ON jobs (kind) WHERE status = 'dead';

-- What pruning reads: finished jobs by age.
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE status IN ('completed', 'cancelled', 'dead');

-- rsolv-bench's ceiling: lock a batch of waiting jobs, delete them (commit waited for).
WITH c AS (SELECT id FROM ceiling WHERE kind = 'bench_noop' AND status IN ('available', 'retryable') AND run_at <= now() ORDER BY run_at LIMIT :batch FOR UPDATE SKIP LOCKED) DELETE FROM ceiling USING c WHERE ceiling.id = c.id;

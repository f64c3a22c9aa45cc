-- The same on the queue-table layout: the job and its queue row in one statement.
WITH j AS (INSERT INTO jobs3 (kind, args, unique_key, customer_id) SELECT 'record_usage', jsonb_build_object('seq', g, 'fix', md5(g::text)), md5(random()::text), gen_random_uuid() FROM generate_series(1, :batch) g RETURNING id, kind, run_at) INSERT INTO q3 (id, kind, run_at) SELECT id, kind, run_at FROM j;

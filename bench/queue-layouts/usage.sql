-- :n waiting usage jobs (a unique key and a customer each) in the landed layout and in jobs3.
TRUNCATE jobs, jobs3, q3;
INSERT INTO jobs (kind, args, unique_key, customer_id)
    SELECT 'record_usage', jsonb_build_object('seq', g, 'fix', md5(g::text)), md5(g::text), gen_random_uuid()
    FROM generate_series(1, :n) g;
INSERT INTO jobs3 (kind, args, unique_key, customer_id)
    SELECT 'record_usage', jsonb_build_object('seq', g, 'fix', md5(g::text)), md5(g::text), gen_random_uuid()
    FROM generate_series(1, :n) g;
INSERT INTO q3 (id, kind, run_at) SELECT id, kind, run_at FROM jobs3;
VACUUM ANALYZE jobs, jobs3, q3;

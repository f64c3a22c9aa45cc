-- An API group insert of usage jobs (keys and customers), landed layout.
INSERT INTO jobs (kind, args, unique_key, customer_id) SELECT 'record_usage', jsonb_build_object('seq', g, 'fix', md5(g::text)), md5(random()::text), gen_random_uuid() FROM generate_series(1, :batch) g;

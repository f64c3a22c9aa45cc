-- Drops the unique constraint that `usage_fixes_payment_intent` (previous migration)
-- replaces, only once that index is valid: a payment intent is never without uniqueness.
-- The drop holds usage_fixes for an instant, and gives up after 5 s of waiting for it
-- rather than hold up every fix behind a long reader (run the migrations again).
SET LOCAL lock_timeout = '5s';
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_index
        WHERE indexrelid = to_regclass('usage_fixes_payment_intent') AND indisvalid AND indisunique
    ) THEN
        RAISE EXCEPTION 'usage_fixes_payment_intent is missing or INVALID (an interrupted build): rebuild it (REINDEX INDEX CONCURRENTLY usage_fixes_payment_intent) and run the migrations again';
    END IF;
END $$;
ALTER TABLE usage_fixes DROP CONSTRAINT IF EXISTS usage_fixes_payment_intent_id_key;

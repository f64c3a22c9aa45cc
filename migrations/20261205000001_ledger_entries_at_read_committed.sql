-- Ledger entries are written at READ COMMITTED only (55000 otherwise), as customers are
-- deleted (20261204000001). The ledger's statement check (`credit_ledger_entries_checked`)
-- locks the entries' customers and then reads their earlier entries; at REPEATABLE READ
-- or SERIALIZABLE those reads see the transaction's first snapshot, not the entries
-- committed while it waited for the lock. A writer that locked a customer without moving
-- its balance (raw SQL, not `ledger::post`; say +5 then -5) could then commit entries
-- that a concurrent REPEATABLE READ insert was never checked against, and the chain
-- would break (found by a review of the check; the product posts at READ COMMITTED).
-- A statement trigger of its own, before any row is written, so the check's body stays
-- as it was. Creating it waits for postings in flight and holds new ones behind it, at
-- most 2 s, past which the migration fails, changing nothing (run it again).
SET LOCAL lock_timeout = '2s';

CREATE OR REPLACE FUNCTION credit_ledger_written_at_read_committed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'credit_ledger entries are written at READ COMMITTED only (each is checked against what has committed)'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS credit_ledger_written_at_read_committed ON credit_ledger;
CREATE TRIGGER credit_ledger_written_at_read_committed BEFORE INSERT ON credit_ledger
    FOR EACH STATEMENT EXECUTE FUNCTION credit_ledger_written_at_read_committed();

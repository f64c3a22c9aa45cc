-- The references of the ledger and of the fixes' records, checked once per inserting
-- statement instead of once per row. A foreign key checks each inserted row with a query
-- of its own (and locks the row it names): a batch of 200 fix debits ran 600 of them,
-- nearly half of its two inserts' time (BENCHMARKS.md, "References checked once per
-- statement"). The same rules, and stricter ones, are now checked set-wise:
--  1. each ledger entry's customer exists (credit_ledger_customer_id_fkey): checked by
--     `credit_ledger_entries_checked` as it locks the statement's customers, which it
--     did already;
--  2. each fix's customer exists (usage_fixes_customer_id_fkey), locked until the commit
--     so that it cannot be deleted before the fix commits: FOR NO KEY UPDATE, as the
--     ledger's check locks them (`lock_named_customers`), where the foreign key took FOR
--     KEY SHARE; the product records a fix under its customer's lock already, so only
--     another writer would now wait for the postings in flight;
--  3. each consumed fix's entry exists (usage_fixes_ledger_entry_id_fkey) and, new, is
--     that fix's own debit: a `fix_deployed` entry of the same customer under the fix's
--     idempotency key (`fix_deployed:<customer>:<fix>`, unique), so no two fixes name
--     one debit. The ledger is append-only (no update, delete or truncate), so the entry
--     needs no lock to stay there. Updates of `usage_fixes` check every row they touch
--     (transition tables allow no column list);
--  4. a customer with ledger entries or fixes is not deleted, truncated, nor its id
--     changed (the foreign keys' other half), by triggers on `customers`. Nothing in the
--     product deletes customers; an operator's delete waits for fixes being recorded and
--     then sees them. A delete or renumbering at REPEATABLE READ or SERIALIZABLE is
--     refused outright: its check would read its own snapshot and miss fixes committed
--     while it waited (a foreign key checks those against a newer one).
-- Violations raise foreign_key_violation (23503), as the foreign keys did. Like them,
-- the triggers do not fire under session_replication_role = replica; unlike them, they
-- are turned off by ALTER TABLE … DISABLE TRIGGER USER, and a data-only restore no
-- longer needs `customers` loaded before the ledger (`rsolv-worker verify` checks all
-- of it again: `consumed_fix_without_its_debit`, `record_without_its_customer`).
--
-- The tables are locked first, in the order postings take them (customers, then the
-- ledger, then the fixes): dropping a foreign key locks both of its tables exclusively,
-- and a posting must not hold one of them while the migration holds the other. (A
-- reader that takes them in another order, as `verify` does, may still deadlock with
-- it; Postgres then aborts one of the two, and either may be run again.) Every request
-- that reads a customer waits behind these locks, so each is waited for at most 2 s,
-- past which the migration fails, changing nothing (run it again).
SET LOCAL lock_timeout = '2s';
LOCK TABLE customers, credit_ledger, usage_fixes IN ACCESS EXCLUSIVE MODE;

-- Locks customers `ids` (FOR NO KEY UPDATE, as a posting does), in id order, one index
-- probe each (LATERAL) whatever the plan cached for the calling statement: a row our
-- own postings hold costs no new lock, any other writer waits here for the postings in
-- flight, and a delete waits for our commit. Refuses a customer not there (or deleted
-- while we waited), as `what` names it. (plpgsql, whose plans a session keeps; a SQL
-- function's would be made again in every transaction.)
CREATE OR REPLACE FUNCTION lock_named_customers(ids uuid[], what text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    missing uuid;
BEGIN
    SELECT (array_agg(a.id ORDER BY a.id) FILTER (WHERE c.locked IS NULL))[1] INTO missing
    FROM (SELECT DISTINCT id FROM unnest(ids) AS u(id) ORDER BY id) a
    LEFT JOIN LATERAL (SELECT true AS locked FROM customers WHERE id = a.id FOR NO KEY UPDATE) c ON true;
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION '% names customer %, which does not exist', what, missing
            USING ERRCODE = 'foreign_key_violation';
    END IF;
END $$;

CREATE OR REPLACE FUNCTION credit_ledger_entries_checked() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    broken record;
BEGIN
    -- Locked first, so that the reads below see every posting committed before ours.
    PERFORM lock_named_customers(ARRAY(SELECT customer_id FROM added), 'a credit_ledger entry');
    -- Each a scalar subquery per row (an index probe of credit_ledger_customer),
    -- whatever the plan cached for the statement: never a scan of the ledger. OFFSET 0
    -- keeps the subqueries from being evaluated twice.
    SELECT e.* INTO broken
    FROM (SELECT a.id, a.customer_id, a.amount, a.balance_after,
                 coalesce((SELECT l.balance_after FROM credit_ledger l
                           WHERE l.customer_id = a.customer_id AND l.id < a.id
                           ORDER BY l.id DESC LIMIT 1), 0) AS previous,
                 (SELECT l.id FROM credit_ledger l
                  WHERE l.customer_id = a.customer_id AND l.id > a.id
                  ORDER BY l.id LIMIT 1) AS next_recorded,
                 lead(a.id) OVER (PARTITION BY a.customer_id ORDER BY a.id) AS next_inserted
          FROM added a OFFSET 0) e
    WHERE e.balance_after <> e.previous + e.amount OR e.next_recorded IS DISTINCT FROM e.next_inserted
    LIMIT 1;
    IF FOUND AND broken.balance_after <> broken.previous + broken.amount THEN
        RAISE EXCEPTION 'credit_ledger entry breaks the balance chain of customer % (% + % <> %)',
            broken.customer_id, broken.previous, broken.amount, broken.balance_after
            USING ERRCODE = 'check_violation';
    ELSIF FOUND THEN
        RAISE EXCEPTION 'credit_ledger entry % of customer % goes before entry %, recorded already',
            broken.id, broken.customer_id, broken.next_recorded
            USING ERRCODE = 'check_violation';
    END IF;
    SELECT c.customer_id, c.balance, c.newest INTO broken
    FROM (SELECT a.customer_id,
                 (SELECT credit_balance FROM customers WHERE id = a.customer_id) AS balance,
                 (SELECT l.balance_after FROM credit_ledger l
                  WHERE l.customer_id = a.customer_id ORDER BY l.id DESC LIMIT 1) AS newest
          FROM (SELECT DISTINCT customer_id FROM added) a OFFSET 0) c
    WHERE c.balance IS DISTINCT FROM c.newest
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'credit balance of customer % is % but its ledger says %', broken.customer_id, broken.balance, broken.newest
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION usage_fixes_references_checked() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    broken record;
BEGIN
    -- The fixes' customers, held against a delete until the commit.
    PERFORM lock_named_customers(ARRAY(SELECT customer_id FROM added), 'a fix');
    -- A scalar subquery per consumed fix: a probe of the ledger's primary key, never a
    -- scan (see the ledger's check).
    SELECT e.* INTO broken
    FROM (SELECT a.customer_id, a.fix_id, a.ledger_entry_id,
                 (SELECT true FROM credit_ledger l
                  WHERE l.id = a.ledger_entry_id AND l.customer_id = a.customer_id
                    AND l.source = 'fix_deployed'
                    AND l.idempotency_key = 'fix_deployed:' || a.customer_id || ':' || a.fix_id) AS own_debit
          FROM added a WHERE a.ledger_entry_id IS NOT NULL OFFSET 0) e
    WHERE e.own_debit IS NULL
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'fix % of customer % names ledger entry %, which is not that fix''s debit',
            broken.fix_id, broken.customer_id, broken.ledger_entry_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS usage_fixes_references_checked ON usage_fixes;
DROP TRIGGER IF EXISTS usage_fixes_references_checked_on_update ON usage_fixes;
CREATE TRIGGER usage_fixes_references_checked AFTER INSERT ON usage_fixes
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION usage_fixes_references_checked();
CREATE TRIGGER usage_fixes_references_checked_on_update AFTER UPDATE ON usage_fixes
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION usage_fixes_references_checked();

CREATE OR REPLACE FUNCTION customers_keep_their_records() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.id = OLD.id THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'TRUNCATE' THEN
        IF EXISTS (SELECT 1 FROM credit_ledger) OR EXISTS (SELECT 1 FROM usage_fixes) THEN
            RAISE EXCEPTION 'customers have ledger entries or fixes recorded; the table cannot be truncated'
                USING ERRCODE = 'foreign_key_violation';
        END IF;
        RETURN NULL;
    END IF;
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'customers are deleted or renumbered at READ COMMITTED only (their records are checked against what has committed)'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF EXISTS (SELECT 1 FROM credit_ledger WHERE customer_id = OLD.id)
       OR EXISTS (SELECT 1 FROM usage_fixes WHERE customer_id = OLD.id) THEN
        RAISE EXCEPTION 'customer % has ledger entries or fixes recorded; it cannot be deleted or renumbered', OLD.id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN CASE TG_OP WHEN 'DELETE' THEN OLD ELSE NEW END;
END $$;
DROP TRIGGER IF EXISTS customers_keep_their_records ON customers;
CREATE TRIGGER customers_keep_their_records BEFORE DELETE OR UPDATE OF id ON customers
    FOR EACH ROW EXECUTE FUNCTION customers_keep_their_records();
DROP TRIGGER IF EXISTS customers_keep_their_records_on_truncate ON customers;
CREATE TRIGGER customers_keep_their_records_on_truncate BEFORE TRUNCATE ON customers
    FOR EACH STATEMENT EXECUTE FUNCTION customers_keep_their_records();

ALTER TABLE usage_fixes DROP CONSTRAINT IF EXISTS usage_fixes_ledger_entry_id_fkey;
ALTER TABLE usage_fixes DROP CONSTRAINT IF EXISTS usage_fixes_customer_id_fkey;
ALTER TABLE credit_ledger DROP CONSTRAINT IF EXISTS credit_ledger_customer_id_fkey;

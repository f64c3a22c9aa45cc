-- The ledger's arithmetic (migration 20261130000001), checked once per statement that
-- inserts entries instead of twice per entry. A batch of 200 postings ran 200 BEFORE
-- triggers (the chain) and 200 deferred ones at its commit (the balance), each a plpgsql
-- call with its own queries: 3 s of a metering run's 12 s of the worker's statements
-- (BENCHMARKS.md). Enforced by Postgres for every writer, once the inserting statement
-- has locked the customers it names (so that it sees every entry committed before it):
--  1. each entry continues its customer's chain: balance_after = the balance_after of
--     the customer's entry before it (by id; 0 before the first) + amount;
--  2. each entry is the newest of its customer but for those inserted with it: an entry
--     slipped in before an existing one (an explicit id) is refused, which the per-entry
--     triggers did not see;
--  3. once the statement is done, each of its customers' credit_balance is the newest
--     entry's balance_after. So a posting moves the balance in the statement that
--     inserts its entry (`ledger::post`) or before it, in the same transaction
--     (`ledger::post_many`); and a balance moved afterwards without an entry is refused
--     at commit, as before, by `customers_balance_matches_ledger`.
-- Rule 3 is checked when the statement ends, where it was checked at the commit: an entry
-- inserted before its balance moved is now refused at once. A worker of the previous
-- release (which inserted a batch's entries before moving its balances) still running
-- during a rolling deploy has its batches refused, and runs those jobs one at a time
-- through `ledger::post` instead: slower until it is replaced, never wrong.
--
-- The triggers are swapped under the table's lock, taken first (a trigger's drop would
-- otherwise upgrade the lock its creation took, and deadlock with a posting between
-- them), giving up after 5 s rather than hold every posting behind a long transaction
-- (run the migrations again).
SET LOCAL lock_timeout = '5s';
LOCK TABLE credit_ledger IN ACCESS EXCLUSIVE MODE;
CREATE FUNCTION credit_ledger_entries_checked() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    broken record;
BEGIN
    -- Our postings hold these rows already; any other writer waits here for the
    -- postings in flight, and the reads below then see their entries.
    PERFORM 1 FROM customers WHERE id IN (SELECT customer_id FROM added) ORDER BY id FOR NO KEY UPDATE;
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
CREATE TRIGGER credit_ledger_entries_checked AFTER INSERT ON credit_ledger
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION credit_ledger_entries_checked();
DROP TRIGGER credit_ledger_chain ON credit_ledger;
DROP TRIGGER credit_ledger_matches_balance ON credit_ledger;
DROP FUNCTION credit_ledger_chain();

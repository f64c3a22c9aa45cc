-- no-transaction
-- A fix paid for with a credit has no payment intent, yet the UNIQUE constraint on
-- `usage_fixes.payment_intent_id` gave every such fix an entry (a btree indexes NULLs):
-- one write in four of a consumed fix's row, for nothing. The same uniqueness, over the
-- fixes paid by card only; the next migration drops the constraint it replaces.
--
-- Built CONCURRENTLY, outside a transaction, so that fixes keep being recorded while it
-- builds. If a build is interrupted, Postgres leaves the index INVALID, this statement
-- skips it when run again (and is recorded as applied), and the next migration refuses to
-- drop the constraint: rebuild the index (REINDEX INDEX CONCURRENTLY
-- usage_fixes_payment_intent) and run the migrations again.
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS usage_fixes_payment_intent ON usage_fixes (payment_intent_id)
    WHERE payment_intent_id IS NOT NULL;

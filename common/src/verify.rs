//! Every money invariant, checked against the database as it is: what
//! `rsolv-worker verify` runs, what the tests and the fault simulation assert.
//!
//! Postgres already enforces the ledger's arithmetic on every write (see the
//! `money_invariants` migration); this reads everything again, including what no
//! constraint can express across tables, and names each violation.

use sqlx::PgPool;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// A stable name for the invariant, e.g. `balance_differs_from_ledger`.
    pub invariant: &'static str,
    /// What breaks it: a customer, an entry, a charge.
    pub subject: String,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.invariant, self.subject, self.detail)
    }
}

/// Each invariant as one query returning `(subject, detail)` rows that break it;
/// `$1` limits it to one customer when set.
const CHECKS: &[(&str, &str)] = &[
    (
        "balance_differs_from_ledger",
        "SELECT 'customer ' || c.id, 'balance ' || c.credit_balance || ', entries sum to ' || coalesce(l.total, 0)
         FROM customers c
         LEFT JOIN (SELECT customer_id, sum(amount) AS total FROM credit_ledger GROUP BY customer_id) l
           ON l.customer_id = c.id
         WHERE ($1::uuid IS NULL OR c.id = $1)
           AND (c.credit_balance <> coalesce(l.total, 0) OR c.credit_balance < 0)",
    ),
    (
        "ledger_chain_broken",
        "SELECT 'entry ' || id, 'balance_after ' || balance_after || ' but the running sum is ' || running
         FROM (SELECT id, customer_id, balance_after,
                      sum(amount) OVER (PARTITION BY customer_id ORDER BY id) AS running
               FROM credit_ledger WHERE $1::uuid IS NULL OR customer_id = $1) e
         WHERE balance_after <> running",
    ),
    (
        "consumed_fix_without_its_debit",
        "SELECT 'fix ' || u.fix_id || ' of customer ' || u.customer_id, 'names entry ' || u.ledger_entry_id || ', '
                || coalesce('a ' || l.source || ' entry of customer ' || l.customer_id || ' keyed ' || l.idempotency_key,
                            'which does not exist')
         FROM usage_fixes u LEFT JOIN credit_ledger l ON l.id = u.ledger_entry_id
         WHERE u.outcome = 'consumed' AND ($1::uuid IS NULL OR u.customer_id = $1)
           AND (l.id IS NULL OR l.customer_id <> u.customer_id OR l.source <> 'fix_deployed'
                OR l.idempotency_key <> 'fix_deployed:' || u.customer_id || ':' || u.fix_id)",
    ),
    (
        "record_without_its_customer",
        "SELECT 'entry ' || l.id, 'of customer ' || l.customer_id || ', which does not exist'
         FROM credit_ledger l
         WHERE ($1::uuid IS NULL OR l.customer_id = $1) AND NOT EXISTS (SELECT 1 FROM customers c WHERE c.id = l.customer_id)
         UNION ALL
         SELECT 'fix ' || u.fix_id, 'of customer ' || u.customer_id || ', which does not exist'
         FROM usage_fixes u
         WHERE ($1::uuid IS NULL OR u.customer_id = $1) AND NOT EXISTS (SELECT 1 FROM customers c WHERE c.id = u.customer_id)",
    ),
    (
        "plan_without_subscription",
        "SELECT 'customer ' || id, 'plan ' || subscription_type || ', subscription ' || coalesce(stripe_subscription_id, 'none')
         FROM customers
         WHERE ($1::uuid IS NULL OR id = $1)
           AND (subscription_type = 'pro') <> (stripe_subscription_id IS NOT NULL)",
    ),
    (
        "pro_invoice_granted_twice",
        "SELECT 'invoice ' || (metadata ->> 'invoice_id'), count(*) || ' grants'
         FROM credit_ledger
         WHERE source = 'pro_subscription_payment' AND metadata ? 'invoice_id'
           AND ($1::uuid IS NULL OR customer_id = $1)
         GROUP BY metadata ->> 'invoice_id' HAVING count(*) > 1",
    ),
    (
        "paid_charge_without_its_fix",
        "SELECT 'charge ' || ch.id, 'succeeded as ' || ch.payment_intent_id || ' but fix ' || ch.fix_id
                || ' is not recorded as charged with it'
         FROM charges ch
         LEFT JOIN usage_fixes u ON u.customer_id = ch.customer_id AND u.fix_id = ch.fix_id
         WHERE ch.status = 'succeeded' AND ($1::uuid IS NULL OR ch.customer_id = $1)
           AND (u.payment_intent_id IS DISTINCT FROM ch.payment_intent_id
                OR u.charged_cents IS DISTINCT FROM ch.amount_cents OR u.outcome <> 'consumed')",
    ),
    (
        "charged_fix_without_its_charge",
        "SELECT 'fix ' || u.fix_id || ' of customer ' || u.customer_id, 'charged as ' || u.payment_intent_id
                || ' with no succeeded charge for it'
         FROM usage_fixes u
         WHERE u.payment_intent_id IS NOT NULL AND ($1::uuid IS NULL OR u.customer_id = $1)
           AND NOT EXISTS (SELECT 1 FROM charges ch WHERE ch.payment_intent_id = u.payment_intent_id
                           AND ch.status = 'succeeded' AND ch.fix_id = u.fix_id AND ch.customer_id = u.customer_id)",
    ),
    (
        "purchase_without_paid_charge",
        "SELECT 'fix ' || coalesce(p.fix_id, '(none)') || ' of customer ' || p.customer_id, p.purchases || ' purchased credits'
         FROM (SELECT customer_id, metadata ->> 'fix_id' AS fix_id, count(*) AS purchases FROM credit_ledger
               WHERE source = 'purchased' AND ($1::uuid IS NULL OR customer_id = $1)
               GROUP BY customer_id, metadata ->> 'fix_id') p
         WHERE p.purchases > 1 OR NOT EXISTS (
             SELECT 1 FROM charges ch WHERE ch.customer_id = p.customer_id
               AND ch.fix_id = p.fix_id AND ch.status = 'succeeded')",
    ),
    (
        "pending_charge_abandoned",
        "SELECT 'charge ' || ch.id, 'pending since ' || ch.created_at || ' with no job left to settle it'
         FROM charges ch
         WHERE ch.status = 'pending' AND ($1::uuid IS NULL OR ch.customer_id = $1)
           AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.kind = 'record_usage' AND j.customer_id = ch.customer_id
                             AND j.unique_key = ch.customer_id || ':' || ch.fix_id
                             AND j.status IN ('available', 'running', 'retryable'))",
    ),
];

/// The violations of every money invariant, for one customer or all.
pub async fn money_invariants(pool: &PgPool, customer: Option<Uuid>) -> Result<Vec<Violation>, sqlx::Error> {
    let mut violations = Vec::new();
    for (invariant, sql) in CHECKS {
        let rows: Vec<(String, String)> =
            sqlx::query_as(sqlx::AssertSqlSafe(*sql)).bind(customer).fetch_all(pool).await?;
        violations.extend(rows.into_iter().map(|(subject, detail)| Violation { invariant, subject, detail }));
    }
    Ok(violations)
}

//! `rsolv-worker credits grant|revoke`, `rsolv-worker issue-key` and
//! `rsolv-worker audit`: operators' credit adjustments and key re-issues from a shell,
//! through the same code as the admin API, on the audit log.

use common::db;
use common::operator;

use crate::Error;
use crate::cli::{find_customer, flag};

const USAGE: &str = "usage: rsolv-worker credits grant|revoke --customer EMAIL|ID --amount N --reason TEXT [--key KEY]";

/// The audit log's name for whoever runs the command.
pub fn actor() -> String {
    format!("cli:{}", std::env::var("USER").unwrap_or_else(|_| "unknown".into()))
}

pub async fn run(pool: &sqlx::PgPool, args: &[String]) -> Result<(), Error> {
    let sign = match args.first().map(String::as_str) {
        Some("grant") => 1,
        Some("revoke") => -1,
        _ => return Err(USAGE.into()),
    };
    let who = flag(args, "--customer").ok_or(USAGE)?;
    let amount: i64 = flag(args, "--amount").and_then(|a| a.parse().ok()).filter(|a: &i64| *a > 0).ok_or(USAGE)?;
    let reason = flag(args, "--reason").ok_or(USAGE)?;
    let customer = find_customer(pool, who).await?;
    let adjusted =
        operator::adjust_credits(pool, &actor(), customer.id, sign * amount, reason, flag(args, "--key")).await?;
    if adjusted.duplicate {
        println!("already adjusted with this key (entry {}): nothing moved", adjusted.entry_id);
    } else {
        println!("{} {amount} credits: {} now has {}", args[0], customer.email, adjusted.balance_after);
    }
    Ok(())
}

pub async fn audit(pool: &sqlx::PgPool) -> Result<(), Error> {
    for e in db::audit::recent(pool, None, 200).await? {
        println!(
            "{} {:<14} {:<16} {:<46} {}",
            e.at.format("%F %T"),
            e.actor,
            e.action,
            e.target,
            e.reason.unwrap_or_default()
        );
    }
    Ok(())
}

const ISSUE_USAGE: &str = "usage: rsolv-worker issue-key --customer EMAIL|ID --reason TEXT";

/// A new API key for a customer who lost theirs, printed once.
pub async fn issue_key(pool: &sqlx::PgPool, args: &[String]) -> Result<(), Error> {
    let who = flag(args, "--customer").ok_or(ISSUE_USAGE)?;
    let reason = flag(args, "--reason").ok_or(ISSUE_USAGE)?;
    let customer = find_customer(pool, who).await?;
    let (info, key) = operator::issue_api_key(pool, &actor(), customer.id, reason).await?;
    println!(
        "issued key {} ({}) to {}; give it to the customer, it is not shown again:",
        info.id, info.prefix, customer.email
    );
    println!("{}", key.expose());
    Ok(())
}

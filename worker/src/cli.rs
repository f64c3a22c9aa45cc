//! What the subcommands share: reading `--flag VALUE` and naming a customer.

use common::db;

use crate::Error;

/// The value after `--flag`.
pub fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(String::as_str)
}

/// A customer by id or email.
pub async fn find_customer(pool: &sqlx::PgPool, who: &str) -> Result<db::customers::Customer, Error> {
    db::customers::find_by_id_or_email(pool, who).await?.ok_or_else(|| format!("no customer {who}").into())
}

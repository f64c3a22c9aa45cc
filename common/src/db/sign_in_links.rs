//! One-time sign-in links for the customer dashboard: a random token goes into the
//! emailed link, its SHA-256 into `sign_in_links`. Redeeming marks the link used in the
//! same statement that finds it, so two clicks (or a mail scanner and the customer)
//! cannot both sign in with it.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgExecutor;
use uuid::Uuid;

/// How long a link works.
pub const LINK_TTL: Duration = Duration::from_secs(15 * 60);

/// The token in a sign-in link; never stored, never logged.
pub struct SignInToken(String);

impl SignInToken {
    fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Self(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// What a link carried (checked against the table by [`redeem`]).
    pub fn from_link(value: &str) -> Self {
        Self(value.to_owned())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    fn hash(&self) -> String {
        hex::encode(Sha256::digest(self.0.as_bytes()))
    }
}

/// A new link for `customer_id`, working for [`LINK_TTL`].
pub async fn create<'e>(db: impl PgExecutor<'e>, customer_id: Uuid) -> Result<SignInToken, sqlx::Error> {
    let token = SignInToken::generate();
    sqlx::query!(
        "INSERT INTO sign_in_links (token_hash, customer_id, expires_at)
         VALUES ($1, $2, now() + $3 * interval '1 millisecond')",
        token.hash(),
        customer_id,
        LINK_TTL.as_millis() as f64,
    )
    .execute(db)
    .await?;
    Ok(token)
}

/// The customer a live, unused link signs in, marking it used, and ending the
/// customer's other unused links (one sign-in spends them all); `None` for a link
/// that is unknown, used or expired.
pub async fn redeem<'e>(db: impl PgExecutor<'e>, token: &SignInToken) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"WITH spent AS (UPDATE sign_in_links SET used_at = now()
                           WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now()
                           RETURNING customer_id),
                others AS (UPDATE sign_in_links l SET expires_at = now() FROM spent
                            WHERE l.customer_id = spent.customer_id AND l.token_hash <> $1 AND l.used_at IS NULL)
           SELECT customer_id AS "customer_id!" FROM spent"#,
        token.hash(),
    )
    .fetch_optional(db)
    .await
}

/// The email of the account a live link (unused, unexpired) signs in to, without using
/// it: the link's page says which account it opens.
pub async fn live_for<'e>(db: impl PgExecutor<'e>, token: &SignInToken) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT c.email FROM sign_in_links l JOIN customers c ON c.id = l.customer_id
          WHERE l.token_hash = $1 AND l.used_at IS NULL AND l.expires_at > now()",
        token.hash(),
    )
    .fetch_optional(db)
    .await
}

/// Forgets links a day after they expired.
pub async fn prune<'e>(db: impl PgExecutor<'e>) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!("DELETE FROM sign_in_links WHERE expires_at < now() - interval '1 day'")
        .execute(db)
        .await?
        .rows_affected())
}

//! Server-side browser sessions: a random token in an `HttpOnly` cookie, its SHA-256 in
//! the `sessions` table, an absolute expiry, and sign-out that deletes the row. The
//! CSRF token of a session is derived from its token (so it needs no storage, and a
//! copy of the table yields neither).

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgExecutor;

/// The cookie value of a session; never stored, never logged.
pub struct SessionToken(String);

impl SessionToken {
    fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Self(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// What a cookie carried (checked against the table by [`find`]).
    pub fn from_cookie(value: &str) -> Self {
        Self(value.to_owned())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    fn hash(&self) -> String {
        hex::encode(Sha256::digest(self.0.as_bytes()))
    }

    /// The token every state-changing form of this session must carry.
    pub fn csrf_token(&self) -> String {
        let mut digest = Sha256::new();
        digest.update(b"rsolv-csrf\0");
        digest.update(self.0.as_bytes());
        hex::encode(digest.finalize())
    }
}

/// Opens a session in `realm` for `subject`, valid for `ttl`; `api_key_id`: the key it
/// was opened with, whose revocation ends it.
pub async fn create<'e>(
    db: impl PgExecutor<'e>,
    realm: &str,
    subject: &str,
    ttl: Duration,
    api_key_id: Option<uuid::Uuid>,
) -> Result<SessionToken, sqlx::Error> {
    let token = SessionToken::generate();
    sqlx::query!(
        "INSERT INTO sessions (token_hash, realm, subject, expires_at, api_key_id)
         VALUES ($1, $2, $3, now() + $4 * interval '1 millisecond', $5)",
        token.hash(),
        realm,
        subject,
        ttl.as_millis() as f64,
        api_key_id,
    )
    .execute(db)
    .await?;
    Ok(token)
}

/// The subject of a live session in `realm` with this token.
pub async fn find<'e>(
    db: impl PgExecutor<'e>,
    realm: &str,
    token: &SessionToken,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT subject FROM sessions WHERE token_hash = $1 AND realm = $2 AND expires_at > now()",
        token.hash(),
        realm,
    )
    .fetch_optional(db)
    .await
}

/// Ends the session (sign-out): its cookie opens nothing any more.
pub async fn revoke<'e>(db: impl PgExecutor<'e>, token: &SessionToken) -> Result<(), sqlx::Error> {
    sqlx::query!("DELETE FROM sessions WHERE token_hash = $1", token.hash(),).execute(db).await?;
    Ok(())
}

pub async fn prune<'e>(db: impl PgExecutor<'e>) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!("DELETE FROM sessions WHERE expires_at < now()").execute(db).await?.rows_affected())
}

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::ParseError;

const PREFIX: &str = "rsolv_";
/// 32 random bytes as URL-safe base64 without padding.
const BODY_LEN: usize = 43;

/// Live keys a customer may hold at once (`TOO_MANY_KEYS` beyond).
pub const MAX_LIVE_KEYS: i64 = 20;

/// A raw API key: `rsolv_` + 32 random bytes, URL-safe base64 without padding.
///
/// It is shown to its owner once and never stored, logged or put in a job; its `Debug`
/// output is redacted so that it cannot leak through a stray `{:?}`.

#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Self(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// Parses what a client sent in `x-api-key`. Only the shape is checked here;
    /// whether the key exists is the database's answer.
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let body = raw.strip_prefix(PREFIX).ok_or_else(|| ParseError::new("API key has the wrong format"))?;
        let well_formed =
            body.len() == BODY_LEN && body.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !well_formed {
            return Err(ParseError::new("API key has the wrong format"));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The raw key, for the one response that shows it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> ApiKeyHash {
        ApiKeyHash(hex::encode(Sha256::digest(self.0.as_bytes())))
    }

    /// A short, non-secret label to tell keys apart in listings (`rsolv_AbCd…`).
    pub fn display_prefix(&self) -> String {
        format!("{}…", &self.0[..PREFIX.len() + 4])
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// SHA-256 hex of an API key: the only form of a key that is stored or enqueued.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct ApiKeyHash(String);

impl ApiKeyHash {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_documented_shape_and_parse_back() {
        let key = ApiKey::generate();
        assert_eq!(key.expose().len(), PREFIX.len() + BODY_LEN);
        assert!(key.expose().starts_with("rsolv_"));
        assert_eq!(ApiKey::parse(key.expose()).unwrap(), key);
        assert_ne!(ApiKey::generate(), key);
    }

    #[test]
    fn the_hash_is_sha256_hex_and_the_debug_form_hides_the_key() {
        let key = ApiKey::generate();
        let hash = key.hash();
        assert_eq!(hash.as_str().len(), 64);
        assert!(hash.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(!format!("{key:?}").contains(key.expose()));
    }

    #[test]
    fn malformed_keys_are_refused() {
        for raw in
            ["", "rsolv_", "sk_test_abc", &format!("rsolv_{}", "a".repeat(42)), &format!("rsolv_{}!", "a".repeat(42))]
        {
            assert!(ApiKey::parse(raw).is_err(), "{raw:?}");
        }
    }
}

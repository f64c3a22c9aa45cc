//! Unsubscribe tokens: `{customer id}.{HMAC-SHA256 hex}`, signed with
//! `EMAIL_UNSUBSCRIBE_SECRET`. They do not expire: an unsubscribe link must keep working.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

use crate::config::Secret;

fn mac(secret: &Secret, customer_id: Uuid) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()).expect("HMAC takes keys of any length");
    mac.update(b"unsubscribe:");
    mac.update(customer_id.as_bytes());
    mac
}

pub fn token(secret: &Secret, customer_id: Uuid) -> String {
    format!("{}.{}", customer_id.simple(), hex::encode(mac(secret, customer_id).finalize().into_bytes()))
}

/// The customer a genuine token names.
pub fn verify(secret: &Secret, token: &str) -> Option<Uuid> {
    let (id, signature) = token.split_once('.')?;
    let customer_id = Uuid::parse_str(id).ok()?;
    let signature = hex::decode(signature).ok()?;
    mac(secret, customer_id).verify_slice(&signature).ok()?;
    Some(customer_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_only_with_their_secret_and_unaltered() {
        let secret = Secret::new("s1");
        let id = Uuid::new_v4();
        let t = token(&secret, id);
        assert_eq!(verify(&secret, &t), Some(id));
        assert_eq!(verify(&Secret::new("s2"), &t), None);
        let other = Uuid::new_v4();
        let forged = format!("{}.{}", other.simple(), t.split_once('.').unwrap().1);
        assert_eq!(verify(&secret, &forged), None);
        for bad in ["", ".", "abc.def", &t[..t.len() - 2]] {
            assert_eq!(verify(&secret, bad), None, "{bad:?}");
        }
    }
}

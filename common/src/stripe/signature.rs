//! `Stripe-Signature` as Stripe computes it: `t=<unix seconds>,v1=<hex>[,v1=<hex>…]`,
//! where each `v1` is HMAC-SHA256 over `"{t}.{raw body}"` with an endpoint secret.
//! During secret rotation Stripe sends one `v1` per secret, and we accept any of our
//! configured secrets. Comparison is constant-time; the timestamp must be within the
//! tolerance of now, which bounds replays.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::config::Secret;

pub const TOLERANCE_SECONDS: i64 = 300;

/// At most this many `v1` values in one header: Stripe sends one per endpoint secret,
/// so a handful covers any rotation, and a header stuffed with hundreds costs nothing.
pub const MAX_SIGNATURES: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("Stripe-Signature header is missing")]
    Missing,
    #[error("Stripe-Signature header is malformed")]
    Malformed,
    #[error("Stripe-Signature timestamp is outside the tolerance")]
    Expired,
    #[error("no signature matches the payload")]
    Mismatch,
}

struct Header {
    timestamp: i64,
    signatures: Vec<Vec<u8>>,
}

fn parse(header: &str) -> Result<Header, SignatureError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let (key, value) = part.trim().split_once('=').ok_or(SignatureError::Malformed)?;
        match key {
            "t" => timestamp = Some(value.parse::<i64>().map_err(|_| SignatureError::Malformed)?),
            // A v1 that is not hex cannot match; other schemes (v0) are ignored, as Stripe's own libraries do.
            "v1" => {
                if let Ok(bytes) = hex::decode(value) {
                    signatures.push(bytes);
                }
            }
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() || signatures.len() > MAX_SIGNATURES {
        return Err(SignatureError::Malformed);
    }
    Ok(Header { timestamp, signatures })
}

fn mac(secret: &str, timestamp: i64, payload: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    mac
}

/// Verifies a header against the raw body; `now` is unix seconds.
pub fn verify(payload: &[u8], header: Option<&str>, secrets: &[Secret], now: i64) -> Result<(), SignatureError> {
    let header = parse(header.ok_or(SignatureError::Missing)?)?;
    // Checked: a hostile `t=` must not overflow its way past the tolerance.
    let age = now.checked_sub(header.timestamp).map(i64::unsigned_abs);
    if age.is_none_or(|age| age > TOLERANCE_SECONDS as u64) {
        return Err(SignatureError::Expired);
    }
    // Each secret's MAC over the body once, then compared with every `v1`, constant-time.
    let expected: Vec<_> =
        secrets.iter().map(|secret| mac(secret.expose(), header.timestamp, payload).finalize().into_bytes()).collect();
    let matches =
        expected.iter().any(|mac| header.signatures.iter().any(|signature| bool::from(mac[..].ct_eq(&signature[..]))));
    if matches { Ok(()) } else { Err(SignatureError::Mismatch) }
}

/// Signs a payload as Stripe does (for the webhook simulator and tests).
#[cfg(any(test, feature = "testing"))]
pub fn sign(payload: &[u8], secret: &str, timestamp: i64) -> String {
    let signature = hex::encode(mac(secret, timestamp, payload).finalize().into_bytes());
    format!("t={timestamp},v1={signature}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn secrets(list: &[&str]) -> Vec<Secret> {
        list.iter().map(|s| Secret::new(*s)).collect()
    }

    #[test]
    fn a_header_stuffed_with_signatures_is_refused_unread() {
        let body = br#"{"id":"evt_1"}"#;
        let good = sign(body, "whsec_a", NOW);
        let stuffed = format!("{good}{}", ",v1=00".repeat(MAX_SIGNATURES));
        assert_eq!(verify(body, Some(&stuffed), &secrets(&["whsec_a"]), NOW), Err(SignatureError::Malformed));
        let rotating = format!("{good}{}", ",v1=00".repeat(MAX_SIGNATURES - 1));
        assert_eq!(verify(body, Some(&rotating), &secrets(&["whsec_a"]), NOW), Ok(()));
    }

    #[test]
    fn a_signature_made_as_stripe_makes_it_verifies() {
        let body = br#"{"id":"evt_1"}"#;
        let header = sign(body, "whsec_a", NOW);
        assert_eq!(verify(body, Some(&header), &secrets(&["whsec_a"]), NOW + 10), Ok(()));
    }

    #[test]
    fn a_known_vector_from_stripes_scheme() {
        // HMAC-SHA256("whsec_test", "1700000000.{}") computed independently.
        let header = sign(b"{}", "whsec_test", 1_700_000_000);
        let expected = {
            let mut m = Hmac::<Sha256>::new_from_slice(b"whsec_test").unwrap();
            m.update(b"1700000000.{}");
            hex::encode(m.finalize().into_bytes())
        };
        assert_eq!(header, format!("t=1700000000,v1={expected}"));
    }

    #[test]
    fn rotation_accepts_any_configured_secret_and_any_v1() {
        let body = b"payload";
        let old = sign(body, "whsec_old", NOW);
        let new = sign(body, "whsec_new", NOW);
        let both = format!("{},{}", new, old.split_once(',').unwrap().1);
        assert_eq!(verify(body, Some(&old), &secrets(&["whsec_new", "whsec_old"]), NOW), Ok(()));
        assert_eq!(verify(body, Some(&both), &secrets(&["whsec_old"]), NOW), Ok(()));
    }

    #[test]
    fn forged_stale_missing_and_malformed_headers_are_refused() {
        let body = b"payload";
        let good = sign(body, "whsec_a", NOW);
        let s = secrets(&["whsec_a"]);
        assert_eq!(verify(body, None, &s, NOW), Err(SignatureError::Missing));
        assert_eq!(verify(b"tampered", Some(&good), &s, NOW), Err(SignatureError::Mismatch));
        assert_eq!(verify(body, Some(&sign(body, "whsec_b", NOW)), &s, NOW), Err(SignatureError::Mismatch));
        assert_eq!(verify(body, Some(&good), &s, NOW + 301), Err(SignatureError::Expired));
        assert_eq!(verify(body, Some(&good), &s, NOW - 301), Err(SignatureError::Expired));
        let extreme = format!("t={},v1=00", i64::MIN);
        assert_eq!(verify(body, Some(&extreme), &s, NOW), Err(SignatureError::Expired));
        for bad in ["", "t=abc,v1=00", "v1=00", "t=1800000000", "garbage", "t=1800000000,v1=zz"] {
            assert!(verify(body, Some(bad), &s, NOW).is_err(), "{bad:?}");
        }
        assert_eq!(verify(body, Some(&good), &[], NOW), Err(SignatureError::Mismatch));
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Whatever arrives in the header or the body, verification answers; it never panics.
        #[test]
        fn any_header_and_body_get_an_answer(header in ".{0,300}", body in proptest::collection::vec(any::<u8>(), 0..512), now in any::<i64>()) {
            let _ = verify(&body, Some(&header), &[Secret::new("whsec_x")], now);
        }

        /// Headers shaped like Stripe's, with hostile numbers and hex.
        #[test]
        fn stripe_shaped_headers_get_an_answer(t in any::<i64>(), sigs in proptest::collection::vec("[0-9a-fA-Fz]{0,70}", 0..4), now in any::<i64>()) {
            let header = std::iter::once(format!("t={t}")).chain(sigs.iter().map(|s| format!("v1={s}"))).collect::<Vec<_>>().join(",");
            let _ = verify(b"{}", Some(&header), &[Secret::new("whsec_x")], now);
        }

        /// A body signed with a configured secret verifies, any other body does not.
        #[test]
        fn signatures_bind_the_exact_body(body in proptest::collection::vec(any::<u8>(), 0..256), other in proptest::collection::vec(any::<u8>(), 0..256)) {
            let header = sign(&body, "whsec_x", 1_800_000_000);
            prop_assert_eq!(verify(&body, Some(&header), &[Secret::new("whsec_x")], 1_800_000_000), Ok(()));
            if other != body {
                prop_assert_eq!(verify(&other, Some(&header), &[Secret::new("whsec_x")], 1_800_000_000), Err(SignatureError::Mismatch));
            }
        }
    }
}

//! Webhook signatures: `X-Cvguard-Signature: sha256=<hex HMAC-SHA256 of "timestamp.key.body">`
//! with `X-Cvguard-Timestamp: <unix seconds>` and `Idempotency-Key: <key>`. The key is signed
//! so that a captured call cannot be sent again under a new key (which a receiver would take
//! for a new action). The receiver recomputes it with the shared secret, compares in constant
//! time, and refuses stale timestamps (docs/WEBHOOKS.md).

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

pub const TIMESTAMP_HEADER: &str = "X-Cvguard-Timestamp";
pub const SIGNATURE_HEADER: &str = "X-Cvguard-Signature";
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";

/// `sha256=<hex>` for `timestamp.idempotency_key.body`.
pub fn signature(secret: &[u8], timestamp: i64, idempotency_key: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(idempotency_key.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Checks a request's signature header in constant time, over its timestamp, its
/// `Idempotency-Key` (empty when the request had none) and its body, and that the timestamp
/// is within `tolerance_secs` of `now_secs`.
pub fn verify_request(
    secret: &[u8],
    timestamp: i64,
    idempotency_key: &str,
    body: &[u8],
    header: &str,
    now_secs: i64,
    tolerance_secs: i64,
) -> bool {
    if (now_secs - timestamp).abs() > tolerance_secs {
        return false;
    }
    let expected = signature(secret, timestamp, idempotency_key, body);
    expected.as_bytes().ct_eq(header.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_and_verifies_and_refuses_tampering_and_stale_times() {
        let s = signature(b"secret", 1_700_000_000, "inc:suspend:acc", b"{\"a\":1}");
        assert!(s.starts_with("sha256=") && s.len() == 7 + 64);
        let ok = |secret: &[u8], ts, key, body: &[u8], now| verify_request(secret, ts, key, body, &s, now, 300);
        assert!(ok(
            b"secret",
            1_700_000_000,
            "inc:suspend:acc",
            b"{\"a\":1}",
            1_700_000_100
        ));
        assert!(!ok(
            b"secret",
            1_700_000_000,
            "inc:suspend:acc",
            b"{\"a\":2}",
            1_700_000_100
        ));
        assert!(!ok(
            b"other",
            1_700_000_000,
            "inc:suspend:acc",
            b"{\"a\":1}",
            1_700_000_100
        ));
        assert!(!ok(
            b"secret",
            1_700_000_000,
            "inc:suspend:acc",
            b"{\"a\":1}",
            1_700_000_301
        ));
        // RFC 4231 test case 2 shape: key "Jefe", known HMAC-SHA256 of "what do ya want for nothing?".
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn the_idempotency_key_is_signed_so_a_replay_under_a_new_key_fails() {
        let s = signature(b"secret", 1_700_000_000, "inc:suspend:acc", b"{}");
        let ok = |key| verify_request(b"secret", 1_700_000_000, key, b"{}", &s, 1_700_000_000, 300);
        assert!(ok("inc:suspend:acc"));
        assert!(!ok("inc:suspend:acc-2"));
        assert!(!ok(""));
        // The exact string signed, as docs/WEBHOOKS.md states it.
        let mut mac = Hmac::<Sha256>::new_from_slice(b"secret").unwrap();
        mac.update(b"1700000000.inc:suspend:acc.{}");
        assert_eq!(s, format!("sha256={}", hex::encode(mac.finalize().into_bytes())));
    }
}

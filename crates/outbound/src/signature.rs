//! `X-Hub-Signature: sha256=<hex>`: HMAC-SHA256 of the request body with a per-endpoint
//! secret, as FHIRcast's webhook channel and Flare's rest-hook subscriptions send it.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "X-Hub-Signature";

const PREFIX: &str = "sha256=";

/// A shared secret. Its `Debug` form is redacted so it cannot reach a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        Self(secret.into())
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl From<String> for Secret {
    fn from(secret: String) -> Self {
        Self(secret.into_bytes())
    }
}

impl From<&str> for Secret {
    fn from(secret: &str) -> Self {
        Self(secret.as_bytes().to_vec())
    }
}

fn mac(secret: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length (long keys are hashed first), so this cannot fail.
    Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts keys of any length")
}

/// HMAC-SHA256 of `body` under `secret`, lowercase hex.
pub fn hmac_sha256_hex(secret: &[u8], body: &[u8]) -> String {
    let mut mac = mac(secret);
    mac.update(body);
    to_hex(&mac.finalize().into_bytes())
}

/// The value of [`SIGNATURE_HEADER`]: `sha256=<hex HMAC-SHA256 of body>`.
pub fn hub_signature(secret: &Secret, body: &[u8]) -> String {
    format!("{PREFIX}{}", hmac_sha256_hex(secret.expose(), body))
}

/// Whether `header_value` is a valid `sha256=` signature of `body` under `secret`; compares
/// in constant time. For receivers (tests, and Flare receiving its own callbacks).
pub fn verify_hub_signature(secret: &Secret, body: &[u8], header_value: &str) -> bool {
    let Some(hex) = header_value.trim().strip_prefix(PREFIX) else {
        return false;
    };
    let Some(expected) = from_hex(hex) else {
        return false;
    };
    let mut mac = mac(secret.expose());
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0x0f)] as char);
    }
    out
}

fn from_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    hex.as_bytes()
        .chunks(2)
        .map(|pair| {
            let text = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(text, 16).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231 test case 2 ("what do ya want for nothing?").
    #[test]
    fn rfc4231_case_2() {
        assert_eq!(
            hmac_sha256_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    /// RFC 4231 test case 6: a key longer than the block size is hashed first.
    #[test]
    fn rfc4231_case_6_long_key() {
        let key = [0xaa_u8; 131];
        assert_eq!(
            hmac_sha256_hex(
                &key,
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            ),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn header_value_round_trips_and_rejects_tampering() {
        let secret = Secret::from("s3cret");
        let signature = hub_signature(&secret, b"{\"a\":1}");
        assert!(signature.starts_with("sha256="));
        assert!(verify_hub_signature(&secret, b"{\"a\":1}", &signature));
        assert!(!verify_hub_signature(&secret, b"{\"a\":2}", &signature));
        assert!(!verify_hub_signature(
            &Secret::from("other"),
            b"{\"a\":1}",
            &signature
        ));
        assert!(!verify_hub_signature(&secret, b"{\"a\":1}", "sha256=zz"));
        assert!(!verify_hub_signature(&secret, b"{\"a\":1}", "md5=00"));
    }

    #[test]
    fn debug_form_hides_the_secret() {
        assert!(!format!("{:?}", Secret::from("hunter2")).contains("hunter2"));
    }
}

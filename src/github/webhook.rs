//! Signature verification of GitHub webhook deliveries. A [`VerifiedDelivery`] exists only
//! after the HMAC-SHA256 of the raw body matched `X-Hub-Signature-256` (constant-time), so
//! nothing downstream can look at an unauthenticated body.

use axum::body::Bytes;
use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";
pub const EVENT_HEADER: &str = "x-github-event";
pub const DELIVERY_HEADER: &str = "x-github-delivery";

/// The webhook secret. Its `Debug` never shows the bytes.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Secret {
        Secret(bytes.into())
    }

    /// The bytes, for the one place that needs them (HMAC key, JWT signing key).
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Why a delivery was refused before its body was looked at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("missing X-Hub-Signature-256 header")]
    MissingSignature,
    #[error("X-Hub-Signature-256 does not match the body")]
    BadSignature,
    #[error("missing or invalid X-GitHub-Event header")]
    MissingEvent,
    #[error("missing or invalid X-GitHub-Delivery header")]
    MissingDelivery,
}

impl Rejection {
    /// Signature problems are 401; malformed (but signed) headers are 400.
    pub fn is_auth(&self) -> bool {
        matches!(self, Rejection::MissingSignature | Rejection::BadSignature)
    }
}

/// A delivery whose body is authenticated by the shared secret.
#[derive(Debug, Clone)]
pub struct VerifiedDelivery {
    event: String,
    delivery_id: String,
    body: Bytes,
}

impl VerifiedDelivery {
    pub fn event(&self) -> &str {
        &self.event
    }
    pub fn delivery_id(&self) -> &str {
        &self.delivery_id
    }
    pub fn body(&self) -> &[u8] {
        &self.body
    }
}

/// `sha256=<hex>` of `body` under `secret` (for tests, benchmarks and clients).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Checks the signature over the raw body first; only then reads the event and delivery headers.
pub fn verify(
    secret: &Secret,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<VerifiedDelivery, Rejection> {
    let signature = headers
        .get(SIGNATURE_HEADER)
        .ok_or(Rejection::MissingSignature)?
        .to_str()
        .map_err(|_| Rejection::BadSignature)?;
    let hex_sig = signature
        .trim()
        .strip_prefix("sha256=")
        .ok_or(Rejection::BadSignature)?;
    let expected = hex::decode(hex_sig).map_err(|_| Rejection::BadSignature)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&secret.0).map_err(|_| Rejection::BadSignature)?;
    mac.update(&body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&expected)
        .map_err(|_| Rejection::BadSignature)?;
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty() && v.len() <= 128)
            .map(str::to_string)
    };
    let event = header(EVENT_HEADER).ok_or(Rejection::MissingEvent)?;
    let delivery_id = header(DELIVERY_HEADER).ok_or(Rejection::MissingDelivery)?;
    Ok(VerifiedDelivery {
        event,
        delivery_id,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(sig: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(sig) = sig {
            h.insert(SIGNATURE_HEADER, sig.parse().unwrap());
        }
        h.insert(EVENT_HEADER, "ping".parse().unwrap());
        h.insert(DELIVERY_HEADER, "d1".parse().unwrap());
        h
    }

    #[test]
    fn accepts_the_right_signature_only() {
        let secret = Secret::new("s3cret");
        let body = Bytes::from_static(b"{\"zen\":\"x\"}");
        let good = sign(b"s3cret", &body);
        let ok = verify(&secret, &headers(Some(&good)), body.clone()).unwrap();
        assert_eq!(ok.event(), "ping");
        assert_eq!(ok.delivery_id(), "d1");
        let bad = sign(b"other", &body);
        assert_eq!(
            verify(&secret, &headers(Some(&bad)), body.clone()).unwrap_err(),
            Rejection::BadSignature
        );
        assert_eq!(
            verify(&secret, &headers(None), body.clone()).unwrap_err(),
            Rejection::MissingSignature
        );
        for junk in ["sha1=abc", "sha256=zz", "sha256=", "", "sha256=00"] {
            assert_eq!(
                verify(&secret, &headers(Some(junk)), body.clone()).unwrap_err(),
                Rejection::BadSignature,
                "{junk}"
            );
        }
        let mut tampered = body.to_vec();
        tampered[2] ^= 1;
        assert_eq!(
            verify(&secret, &headers(Some(&good)), Bytes::from(tampered)).unwrap_err(),
            Rejection::BadSignature
        );
        assert!(format!("{secret:?}").contains("redacted"));
    }
}

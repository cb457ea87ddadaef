//! Standard Webhooks signatures: a `whsec_…` secret flows in as a
//! [`Secret`], and for each attempt the event id, the attempt's Unix
//! timestamp and the body bytes flow through [`sign`] into the
//! `webhook-signature` header value. [`verify`] does the receiver's side, for
//! tests and the example receiver.
//!
//! The signed content is `"{id}.{timestamp}.{body}"`, the MAC is
//! HMAC-SHA256 keyed with the secret's decoded bytes, and the header is
//! `v1,<base64 MAC>`, one per secret separated by spaces, so receivers keep
//! verifying while a secret is rotated. Secrets are 24 to 64 bytes; they are
//! never shown by `Debug` or `Display`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use sha2::Sha256;
use std::fmt;

/// Prefix of a secret's text form.
pub const SECRET_PREFIX: &str = "whsec_";
/// Shortest secret accepted, in decoded bytes.
pub const MIN_SECRET_BYTES: usize = 24;
/// Longest secret accepted, in decoded bytes.
pub const MAX_SECRET_BYTES: usize = 64;
/// Length of a secret made by [`Secret::generate`], in bytes.
pub const GENERATED_SECRET_BYTES: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// A signing key: 24 to 64 bytes.
///
/// # Guarantees
/// `Debug` and `Display` print a placeholder, never the key. The only ways
/// to get the key out are [`Secret::expose_whsec`] and signing with it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    key: Vec<u8>,
}

/// Why a secret was refused. Messages never contain the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The text after `whsec_` is not standard base64.
    #[error("secret is not valid base64")]
    NotBase64,
    /// The decoded key is shorter than 24 or longer than 64 bytes.
    #[error("secret is {0} bytes; it must be 24 to 64 bytes")]
    BadLength(usize),
}

impl SecretError {
    /// A stable snake_case reason for conditions and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            SecretError::NotBase64 => "secret_not_base64",
            SecretError::BadLength(_) => "secret_bad_length",
        }
    }
}

impl Secret {
    /// Reads a secret in its text form, `whsec_<base64>`.
    ///
    /// Surrounding whitespace (a trailing newline from a mounted file) is
    /// ignored, and so is a missing `whsec_` prefix, as the official
    /// Standard Webhooks libraries do. Base64 padding is optional.
    ///
    /// # Errors
    /// [`SecretError`] when the text is not base64 or the key is not 24 to
    /// 64 bytes long.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let text = text.trim();
        let encoded = text.strip_prefix(SECRET_PREFIX).unwrap_or(text);
        let engine = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        let key = engine.decode(encoded).map_err(|_| SecretError::NotBase64)?;
        Self::from_bytes(&key)
    }

    /// Wraps raw key bytes.
    ///
    /// # Errors
    /// [`SecretError::BadLength`] unless `key` is 24 to 64 bytes long.
    pub fn from_bytes(key: &[u8]) -> Result<Self, SecretError> {
        if (MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&key.len()) {
            Ok(Self { key: key.to_vec() })
        } else {
            Err(SecretError::BadLength(key.len()))
        }
    }

    /// A new secret of 32 bytes from the thread-local CSPRNG (ChaCha,
    /// seeded and periodically reseeded from the operating system).
    pub fn generate() -> Self {
        let mut key = vec![0u8; GENERATED_SECRET_BYTES];
        rand::rng().fill_bytes(&mut key);
        Self { key }
    }

    /// The text form, `whsec_<base64>`, for storing in a Kubernetes Secret.
    /// Named so that every use stands out in review.
    pub fn expose_whsec(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(&self.key))
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        let mut mac =
            HmacSha256::new_from_slice(&self.key).expect("HMAC accepts keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("whsec_<redacted>")
    }
}

impl std::str::FromStr for Secret {
    type Err = SecretError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

/// The `webhook-signature` header value for one attempt: `v1,<base64>` for
/// each secret, in the order given, separated by single spaces.
///
/// `timestamp` is the attempt's Unix time in seconds, the same value sent
/// as `webhook-timestamp`; `body` is the exact bytes sent.
///
/// # Caveats
/// With no secrets the result is empty; the dispatcher must not deliver for
/// a webhook whose secret is not ready.
pub fn sign(secrets: &[Secret], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|secret| {
            let tag = secret.mac(id, timestamp, body).finalize().into_bytes();
            format!("v1,{}", STANDARD.encode(tag))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Why a signature did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The header holds no `v1,` signature.
    #[error("no v1 signature in the header")]
    NoSignature,
    /// No `v1,` signature matched any of the secrets.
    #[error("no signature matches")]
    Mismatch,
}

/// Checks a `webhook-signature` header as a receiver would: succeeds when
/// any `v1,` entry matches any of `secrets`. Entries of other versions are
/// skipped. The comparison is constant-time.
///
/// # Caveats
/// It does not check that `timestamp` is recent; a receiver must also
/// refuse timestamps too far from its clock (the libraries use 5 minutes).
///
/// # Errors
/// [`VerifyError`] when no entry is `v1`, or none matches.
pub fn verify(
    secrets: &[Secret],
    id: &str,
    timestamp: i64,
    body: &[u8],
    header: &str,
) -> Result<(), VerifyError> {
    let candidates: Vec<Vec<u8>> = header
        .split_whitespace()
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|encoded| STANDARD.decode(encoded).ok())
        .collect();
    if candidates.is_empty() {
        return Err(VerifyError::NoSignature);
    }
    let matched = secrets.iter().any(|secret| {
        candidates.iter().any(|candidate| {
            secret
                .mac(id, timestamp, body)
                .verify_slice(candidate)
                .is_ok()
        })
    });
    if matched {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example used across the Standard Webhooks reference libraries'
    // test suites; recomputed independently when this test was written.
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TIMESTAMP: i64 = 1_614_265_330;
    const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn signature_matches_the_standard_webhooks_reference_vector() {
        let secret = Secret::parse(SPEC_SECRET).unwrap();
        assert_eq!(
            sign(&[secret], SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY),
            SPEC_SIGNATURE
        );
    }

    #[test]
    fn signature_is_hmac_sha256_over_id_timestamp_and_body() {
        let key = [7u8; 32];
        let secret = Secret::from_bytes(&key).unwrap();
        let mut mac = HmacSha256::new_from_slice(&key).unwrap();
        mac.update(b"evt_1.1700000000.{\"a\":1}");
        let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
        assert_eq!(
            sign(&[secret], "evt_1", 1_700_000_000, br#"{"a":1}"#),
            expected
        );
    }

    #[test]
    fn rotation_yields_one_signature_per_secret_and_either_verifies() {
        let old = Secret::generate();
        let new = Secret::generate();
        let header = sign(&[new.clone(), old.clone()], "id", 42, b"body");
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|part| part.starts_with("v1,")));
        assert_eq!(verify(&[old], "id", 42, b"body", &header), Ok(()));
        assert_eq!(verify(&[new], "id", 42, b"body", &header), Ok(()));
        assert_eq!(sign(&[], "id", 42, b"body"), "");
    }

    #[test]
    fn verification_fails_when_anything_signed_changes() {
        let secret = Secret::parse(SPEC_SECRET).unwrap();
        let secrets = [secret];
        let ok = |id: &str, ts: i64, body: &[u8]| verify(&secrets, id, ts, body, SPEC_SIGNATURE);
        assert_eq!(ok(SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY), Ok(()));
        assert_eq!(
            ok("msg_other", SPEC_TIMESTAMP, SPEC_BODY),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            ok(SPEC_ID, SPEC_TIMESTAMP + 1, SPEC_BODY),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            ok(SPEC_ID, SPEC_TIMESTAMP, b"{}"),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(&secrets, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY, "v2,abc"),
            Err(VerifyError::NoSignature)
        );
        assert_eq!(
            verify(
                &[Secret::generate()],
                SPEC_ID,
                SPEC_TIMESTAMP,
                SPEC_BODY,
                SPEC_SIGNATURE
            ),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn secrets_outside_24_to_64_bytes_or_not_base64_are_refused() {
        let encode = |n: usize| format!("whsec_{}", STANDARD.encode(vec![1u8; n]));
        assert_eq!(Secret::parse(&encode(23)), Err(SecretError::BadLength(23)));
        assert!(Secret::parse(&encode(24)).is_ok());
        assert!(Secret::parse(&encode(64)).is_ok());
        assert_eq!(Secret::parse(&encode(65)), Err(SecretError::BadLength(65)));
        assert_eq!(
            Secret::parse("whsec_not*base64"),
            Err(SecretError::NotBase64)
        );
        assert_eq!(Secret::parse(""), Err(SecretError::BadLength(0)));
        assert_eq!(SecretError::NotBase64.reason(), "secret_not_base64");
    }

    #[test]
    fn secret_text_tolerates_whitespace_missing_prefix_and_padding() {
        let reference = Secret::parse(SPEC_SECRET).unwrap();
        assert_eq!(
            Secret::parse(&format!("  {SPEC_SECRET}\n")).unwrap(),
            reference
        );
        assert_eq!(
            Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap(),
            reference
        );
        let unpadded = format!("whsec_{}", STANDARD.encode([9u8; 25]).trim_end_matches('='));
        assert!(Secret::parse(&unpadded).is_ok());
    }

    #[test]
    fn generated_secrets_are_32_random_bytes_and_round_trip_through_text() {
        let a = Secret::generate();
        let b = Secret::generate();
        assert_ne!(a, b);
        let text = a.expose_whsec();
        assert!(text.starts_with("whsec_"));
        assert_eq!(
            STANDARD.decode(&text[6..]).unwrap().len(),
            GENERATED_SECRET_BYTES
        );
        assert_eq!(text.parse::<Secret>().unwrap(), a);
    }

    #[test]
    fn debug_and_display_never_show_the_key() {
        let secret = Secret::parse(SPEC_SECRET).unwrap();
        let shown = format!("{secret} {secret:?} {:?}", Some(&secret));
        assert!(!shown.contains("MfKQ9r8"), "{shown}");
        assert!(shown.contains("redacted"));
    }
}

//! The signing Secret's layout, defined once for its writer (the controller, or the tenant
//! with `spec.secretRef`) and its reader (the dispatcher), and the keys read out of it.
//!
//! Data `secret` = `whsec_<base64>`; optional data `previous` with annotation
//! `hookline.dev/previous-valid-until` (RFC 3339), signed with too until then. A generated
//! Secret also carries its key generation, the rotation it answers and when it was rotated.
//!
//! [`SigningKeys::from_layout`] turns the raw bytes of those fields into the current key and,
//! during a rotation overlap, the previous one; [`SigningKeys::at`] hands the signer the keys
//! valid at an instant.

use jiff::Timestamp;

use crate::signing::{Secret, SecretError};

/// Data key of the current key.
pub const KEY_CURRENT: &str = "secret";
/// Data key of the previous key during a rotation overlap.
pub const KEY_PREVIOUS: &str = "previous";
/// Annotation: until when the previous key is valid (and signed with).
pub const ANN_PREVIOUS_VALID_UNTIL: &str = "hookline.dev/previous-valid-until";
/// Annotation: generation of the current key (1, 2, …).
pub const ANN_GENERATION: &str = "hookline.dev/key-generation";
/// Annotation: the `rotate-secret` value the current key answers.
pub const ANN_ROTATION: &str = "hookline.dev/rotation";
/// Annotation: when the current key became current.
pub const ANN_ROTATED_AT: &str = "hookline.dev/rotated-at";
/// Label on every Secret the controller generates: the `Webhook`'s name.
pub const LABEL_WEBHOOK: &str = "hookline.dev/webhook";

/// Checks a key's shape: optional `whsec_` prefix, base64 of 24 to 64 bytes.
///
/// # Errors
/// A message saying what is wrong, never containing the key.
pub fn check_key(key: &str) -> Result<(), String> {
    Secret::parse(key).map(|_| ()).map_err(|e| match e {
        SecretError::NotBase64 => {
            "the key is not valid base64 (expected whsec_<base64>)".to_string()
        }
        other => other.to_string(),
    })
}

fn utf8(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes).ok()
}

/// Why a signing Secret holds no usable key. The message never contains a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// No `secret` data key (or not UTF-8).
    #[error("no data key \"{KEY_CURRENT}\"")]
    Missing,
    /// The `secret` data key holds no valid key.
    #[error("data key \"{KEY_CURRENT}\": {0}")]
    Invalid(SecretError),
}

/// The keys of one `Webhook`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKeys {
    current: Secret,
    previous: Option<(Secret, Timestamp)>,
}

impl SigningKeys {
    /// Reads the fields of a signing Secret: the bytes of data `secret` and `previous` and the
    /// `previous-valid-until` annotation.
    ///
    /// An unusable `previous` key or expiry annotation is ignored (signing with the current key
    /// alone is always valid for receivers that have it).
    ///
    /// # Errors
    /// [`KeyError`] when `secret` is missing or invalid.
    pub fn from_layout(
        current: Option<&[u8]>,
        previous: Option<&[u8]>,
        previous_valid_until: Option<&str>,
    ) -> Result<SigningKeys, KeyError> {
        let current_text = current.and_then(utf8).ok_or(KeyError::Missing)?;
        let current = Secret::parse(current_text).map_err(KeyError::Invalid)?;
        let until = previous_valid_until.and_then(|t| t.parse::<Timestamp>().ok());
        let previous = match (previous.and_then(utf8).map(Secret::parse), until) {
            (Some(Ok(key)), Some(until)) => Some((key, until)),
            _ => None,
        };
        Ok(SigningKeys { current, previous })
    }

    /// The keys to sign with at `now`: the current one, then the previous one while its
    /// overlap lasts.
    pub fn at(&self, now: Timestamp) -> Vec<Secret> {
        let mut keys = vec![self.current.clone()];
        if let Some((previous, until)) = &self.previous
            && now < *until
        {
            keys.push(previous.clone());
        }
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> String {
        Secret::from_bytes(&[byte; 32]).unwrap().expose_whsec()
    }

    #[test]
    fn the_previous_key_is_signed_with_only_until_its_expiry() {
        let (a, b) = (key(1), key(2));
        let until = "2026-01-02T00:00:00Z";
        let keys =
            SigningKeys::from_layout(Some(a.as_bytes()), Some(b.as_bytes()), Some(until)).unwrap();
        let before: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let after: Timestamp = "2026-01-03T00:00:00Z".parse().unwrap();
        assert_eq!(keys.at(before).len(), 2);
        assert_eq!(keys.at(after).len(), 1);
        assert_eq!(keys.at(after)[0].expose_whsec(), a);
    }

    #[test]
    fn a_missing_or_bad_current_key_is_an_error_that_never_shows_a_key() {
        let err = SigningKeys::from_layout(None, None, None).unwrap_err();
        assert_eq!(err.to_string(), "no data key \"secret\"");
        let err = SigningKeys::from_layout(Some(b"whsec_!!!"), None, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("data key \"secret\"") && !err.contains("!!!"),
            "{err}"
        );
        let b = key(2);
        let keys =
            SigningKeys::from_layout(Some(key(1).as_bytes()), Some(b.as_bytes()), Some("never"))
                .unwrap();
        assert_eq!(
            keys.at(Timestamp::UNIX_EPOCH).len(),
            1,
            "an unreadable expiry drops the previous key"
        );
        assert!(check_key("whsec_%%").unwrap_err().contains("base64"));
    }
}

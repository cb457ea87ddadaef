//! Signing keys: each `Webhook`'s signing Secret flows in through a `get`
//! (the dispatcher may read those Secrets by name only, never list them),
//! [`from_secret`] turns it into the current key and, during a rotation
//! overlap, the previous one ([`SigningKeys`], whose `at` hands the signer the
//! keys valid at an instant). [`run`] re-reads every Secret
//! periodically, and at once when a `Webhook` appears, names another Secret,
//! or its `status.secret` reports a new key generation (a rotation), so a
//! rotated key is signed with within a second or so.
//!
//! The Secret layout is defined once, in [`hookline_core::secret`].
//!
//! A Secret that cannot be read for a transient reason (403 while the
//! controller is still widening the Role, a network error) keeps the keys
//! last read; one that is gone (404) or holds no valid key removes them, and
//! deliveries for that `Webhook` wait (postponed, not dropped).

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret as KubeSecret;
use kube::{Api, Client};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use hookline_core::secret::{
    ANN_PREVIOUS_VALID_UNTIL, KEY_CURRENT, KEY_PREVIOUS, KeyError, SigningKeys,
};

use crate::tenant::endpoints::Registry;

/// How soon a Webhook whose keys are missing (or could not be read) is looked at again.
const MISSING_RETRY: Duration = Duration::from_secs(2);

/// Reads a signing Secret in the layout of [`hookline_core::secret`].
///
/// # Errors
/// [`KeyError`] (never containing a key) when `secret` is missing or invalid.
pub fn from_secret(secret: &KubeSecret) -> Result<SigningKeys, KeyError> {
    let data = |key: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|v| v.0.as_slice())
    };
    let until = secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANN_PREVIOUS_VALID_UNTIL))
        .map(String::as_str);
    SigningKeys::from_layout(data(KEY_CURRENT), data(KEY_PREVIOUS), until)
}

/// Re-reads every `Webhook`'s signing Secret every `every`, until `stop`; in between, when
/// `wake` is notified and every [`MISSING_RETRY`] while some are wanted, only the Secrets of
/// `Webhook`s without keys or whose keys changed
/// ([`crate::tenant::endpoints::Endpoint::take_keys_wanted`]). Re-reading them all on every
/// wake-up read every Secret back to back while `Webhook`s were being created, and every 2 s
/// while one key was missing (BENCHMARKS.md).
pub async fn run(
    client: Client,
    namespace: String,
    registry: Arc<Registry>,
    wake: Arc<Notify>,
    every: Duration,
    stop: CancellationToken,
) {
    let api = Api::<KubeSecret>::namespaced(client, &namespace);
    let mut last_full: Option<Instant> = None;
    loop {
        let full = last_full.is_none_or(|t| t.elapsed() >= every);
        if full {
            last_full = Some(Instant::now());
        }
        let mut missing = false;
        for endpoint in registry.snapshot() {
            if !endpoint.take_keys_wanted() && !full {
                continue;
            }
            let name = endpoint.secret_name();
            let result = tokio::time::timeout(Duration::from_secs(10), api.get_opt(&name)).await;
            let had = endpoint.has_keys();
            match result {
                Ok(Ok(Some(secret))) => match from_secret(&secret) {
                    Ok(keys) => {
                        if !had {
                            info!(webhook = %endpoint.name, secret = %name, "signing keys loaded");
                        }
                        endpoint.set_keys(Some(keys));
                    }
                    Err(e) => {
                        if had {
                            warn!(webhook = %endpoint.name, secret = %name, error = %e, "signing Secret holds no usable key; deliveries wait");
                        }
                        endpoint.set_keys(None);
                    }
                },
                Ok(Ok(None)) => {
                    if had {
                        warn!(webhook = %endpoint.name, secret = %name, "signing Secret not found; deliveries wait");
                    }
                    endpoint.set_keys(None);
                }
                Ok(Err(e)) => {
                    endpoint.keys_read_failed();
                    missing = true;
                    debug!(webhook = %endpoint.name, secret = %name, error = %e, "cannot read signing Secret yet")
                }
                Err(_) => {
                    endpoint.keys_read_failed();
                    missing = true;
                    debug!(webhook = %endpoint.name, secret = %name, "reading signing Secret timed out")
                }
            }
            missing |= !endpoint.has_keys();
        }
        let until_full = last_full.map_or(Duration::ZERO, |t| every.saturating_sub(t.elapsed()));
        let pause = if missing {
            MISSING_RETRY.min(until_full)
        } else {
            until_full
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = wake.notified() => {}
            () = tokio::time::sleep(pause) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hookline_core::signing::Secret;
    use jiff::Timestamp;
    use k8s_openapi::ByteString;
    use std::collections::BTreeMap;

    fn secret(data: &[(&str, &str)], until: Option<&str>) -> KubeSecret {
        let mut s = KubeSecret {
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..KubeSecret::default()
        };
        if let Some(u) = until {
            s.metadata.annotations = Some(BTreeMap::from([(
                ANN_PREVIOUS_VALID_UNTIL.to_owned(),
                u.to_owned(),
            )]));
        }
        s
    }

    #[test]
    fn the_previous_key_is_signed_with_until_its_overlap_ends() {
        let (a, b) = (Secret::generate(), Secret::generate());
        let s = secret(
            &[
                (KEY_CURRENT, &a.expose_whsec()),
                (KEY_PREVIOUS, &b.expose_whsec()),
            ],
            Some("2026-01-02T00:00:00Z"),
        );
        let keys = from_secret(&s).unwrap();
        assert_eq!(
            keys.at("2026-01-01T00:00:00Z".parse().unwrap()),
            vec![a.clone(), b]
        );
        assert_eq!(keys.at("2026-01-02T00:00:00Z".parse().unwrap()), vec![a]);
    }

    #[test]
    fn a_previous_key_without_its_expiry_is_ignored() {
        let (a, b) = (Secret::generate(), Secret::generate());
        let s = secret(
            &[
                (KEY_CURRENT, &a.expose_whsec()),
                (KEY_PREVIOUS, &b.expose_whsec()),
            ],
            None,
        );
        let keys = from_secret(&s).unwrap();
        assert_eq!(keys.at(Timestamp::now()), vec![a]);
    }

    #[test]
    fn a_missing_or_invalid_key_is_explained_without_the_key() {
        let err = from_secret(&secret(&[], None)).unwrap_err().to_string();
        assert!(err.contains("\"secret\""), "{err}");
        let err = from_secret(&secret(&[(KEY_CURRENT, "whsec_c2hvcnQ=")], None))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bytes") && !err.contains("c2hvcnQ"), "{err}");
    }
}

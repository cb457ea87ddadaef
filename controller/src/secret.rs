//! Signing secrets: the Secret generated for a `Webhook` without `secretRef` (created, rotated
//! on the `hookline.dev/rotate-secret` annotation, previous key expired after the overlap), and
//! the check of a referenced Secret. Pure: the Webhook, the existing Secret and the time in; the
//! Secret to apply and the status to report out.
//!
//! Layout of a signing Secret (generated or referenced), read by the dispatcher:
//! - data `secret`: the current key, `whsec_<base64 of 24–64 bytes>`
//! - data `previous` (optional): the previous key, signed with too until
//! - annotation `hookline.dev/previous-valid-until` (RFC 3339)

use std::{collections::BTreeMap, time::Duration};

use hookline_core::naming;
use hookline_core::signing;
use hookline_crds::{SecretStatus, Webhook, annotations};
use jiff::Timestamp;
use k8s_openapi::{
    ByteString,
    api::core::v1::Secret,
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
};
use kube::{Resource, ResourceExt};

pub use hookline_core::secret::{
    ANN_GENERATION, ANN_PREVIOUS_VALID_UNTIL, ANN_ROTATED_AT, ANN_ROTATION, KEY_CURRENT,
    KEY_PREVIOUS, LABEL_WEBHOOK, check_key,
};

/// A new random key: 32 bytes, as `whsec_<base64>`.
pub fn generate_key() -> String {
    signing::Secret::generate().expose_whsec()
}

/// Checks a Secret named by `spec.secretRef`.
///
/// # Errors
/// Missing `secret` data key, or a malformed key.
pub fn check_referenced(secret: &Secret) -> Result<(), String> {
    let name = secret.name_any();
    let data = secret.data.as_ref();
    let key = data
        .and_then(|d| d.get(KEY_CURRENT))
        .ok_or_else(|| format!("Secret {name} has no data key \"{KEY_CURRENT}\"; put the signing key there as whsec_<base64>"))?;
    let key = std::str::from_utf8(&key.0)
        .map_err(|_| format!("Secret {name}: key \"{KEY_CURRENT}\" is not text"))?;
    check_key(key).map_err(|e| format!("Secret {name}, key \"{KEY_CURRENT}\": {e}"))
}

/// What to do with a generated Secret.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The Secret to apply, when it must change.
    pub apply: Option<Secret>,
    /// What the status says.
    pub status: SecretStatus,
    /// When to come back (the end of a rotation overlap).
    pub revisit_at: Option<Timestamp>,
    /// An Event to emit: (reason, message).
    pub event: Option<(&'static str, String)>,
}

fn data_str(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(key)
        .and_then(|v| String::from_utf8(v.0.clone()).ok())
}

fn ann(secret: &Secret, key: &str) -> Option<String> {
    secret.annotations().get(key).cloned()
}

/// Plans the generated Secret of `webhook` given what exists.
///
/// # Guarantees
/// The current key never changes except on a new `rotate-secret` value; after a rotation the
/// previous key stays in the Secret until `overlap` has passed.
pub fn plan_generated(
    webhook: &Webhook,
    existing: Option<&Secret>,
    now: Timestamp,
    overlap: Duration,
    new_key: impl FnOnce() -> String,
) -> Plan {
    let name = naming::signing_secret(&webhook.name_any());
    let wanted_rotation = webhook
        .annotations()
        .get(annotations::ROTATE_SECRET)
        .cloned()
        .unwrap_or_default();
    let current = existing
        .and_then(|s| data_str(s, KEY_CURRENT))
        .filter(|k| check_key(k).is_ok());
    let generation: i64 = existing
        .and_then(|s| ann(s, ANN_GENERATION))
        .and_then(|g| g.parse().ok())
        .unwrap_or(1);
    let rotation = existing
        .and_then(|s| ann(s, ANN_ROTATION))
        .unwrap_or_default();
    let rotated_at = existing
        .and_then(|s| ann(s, ANN_ROTATED_AT))
        .and_then(|t| t.parse::<Timestamp>().ok());
    let previous = existing.and_then(|s| data_str(s, KEY_PREVIOUS));
    let valid_until = existing
        .and_then(|s| ann(s, ANN_PREVIOUS_VALID_UNTIL))
        .and_then(|t| t.parse::<Timestamp>().ok());

    let (cur, prev, until, gen_, rot, at, event) = match current {
        None => {
            let event = if existing.is_some() {
                (
                    "SecretRegenerated",
                    format!("Secret {name} held no valid key; generated a new one"),
                )
            } else {
                ("SecretCreated", format!("generated signing Secret {name}"))
            };
            (
                new_key(),
                None,
                None,
                1,
                wanted_rotation.clone(),
                now,
                Some(event),
            )
        }
        Some(cur) if wanted_rotation != rotation => {
            let until = now + jiff::SignedDuration::try_from(overlap).unwrap_or_default();
            let event = (
                "SecretRotated",
                format!(
                    "rotated signing Secret {name} to key generation {}; the previous key stays valid until {until}",
                    generation + 1
                ),
            );
            (
                new_key(),
                Some(cur),
                Some(until),
                generation + 1,
                wanted_rotation.clone(),
                now,
                Some(event),
            )
        }
        Some(cur) => {
            let expired = valid_until.is_some_and(|u| u <= now);
            let (prev, until, event) = if expired {
                (
                    None,
                    None,
                    Some((
                        "PreviousKeyExpired",
                        format!("the previous key of Secret {name} is no longer signed with"),
                    )),
                )
            } else {
                (previous.clone(), valid_until, None)
            };
            (
                cur,
                prev,
                until,
                generation,
                rotation.clone(),
                rotated_at.unwrap_or(now),
                event,
            )
        }
    };

    let status = SecretStatus {
        name: name.clone(),
        generation: gen_,
        rotated_at: Some(Time(at)),
        previous_valid_until: until.map(Time),
    };
    let unchanged = existing.is_some()
        && event.is_none()
        && existing
            .and_then(|s| s.metadata.owner_references.as_ref())
            .is_some_and(|o| !o.is_empty());
    let apply =
        (!unchanged).then(|| build(webhook, &name, &cur, prev.as_deref(), until, gen_, &rot, at));
    Plan {
        apply,
        status,
        revisit_at: until,
        event,
    }
}

#[allow(clippy::too_many_arguments)]
fn build(
    webhook: &Webhook,
    name: &str,
    current: &str,
    previous: Option<&str>,
    until: Option<Timestamp>,
    generation: i64,
    rotation: &str,
    at: Timestamp,
) -> Secret {
    let mut data = BTreeMap::new();
    data.insert(
        KEY_CURRENT.to_owned(),
        ByteString(current.as_bytes().to_vec()),
    );
    if let Some(p) = previous {
        data.insert(KEY_PREVIOUS.to_owned(), ByteString(p.as_bytes().to_vec()));
    }
    let mut annotations = BTreeMap::from([
        (ANN_GENERATION.to_owned(), generation.to_string()),
        (ANN_ROTATION.to_owned(), rotation.to_owned()),
        (ANN_ROTATED_AT.to_owned(), at.to_string()),
    ]);
    if let Some(u) = until {
        annotations.insert(ANN_PREVIOUS_VALID_UNTIL.to_owned(), u.to_string());
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: webhook.namespace(),
            labels: Some(BTreeMap::from([
                (
                    "app.kubernetes.io/managed-by".to_owned(),
                    "hookline-controller".to_owned(),
                ),
                (LABEL_WEBHOOK.to_owned(), webhook.name_any()),
            ])),
            annotations: Some(annotations),
            owner_references: webhook.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        type_: Some("hookline.dev/signing-key".to_owned()),
        data: Some(data),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::{Engine as _, engine::general_purpose::STANDARD};
    use hookline_crds::WebhookSpec;

    fn webhook(rotate: Option<&str>) -> Webhook {
        let mut w = Webhook::new(
            "fraud",
            WebhookSpec {
                url: "https://h.example/".into(),
                event_types: vec!["a".into()],
                paused: false,
                secret_ref: None,
                delivery: None,
                headers: BTreeMap::new(),
            },
        );
        w.metadata.namespace = Some("acme".into());
        w.metadata.uid = Some("uid-1".into());
        if let Some(r) = rotate {
            w.metadata.annotations = Some(BTreeMap::from([(
                annotations::ROTATE_SECRET.to_owned(),
                r.to_owned(),
            )]));
        }
        w
    }

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn generated_keys_are_32_random_bytes_in_whsec_form() {
        let (a, b) = (generate_key(), generate_key());
        assert!(a.starts_with("whsec_") && check_key(&a).is_ok());
        assert_eq!(STANDARD.decode(&a[6..]).unwrap().len(), 32);
        assert_ne!(a, b);
    }

    #[test]
    fn keys_of_the_wrong_size_or_encoding_are_refused_without_echoing_them() {
        let short = format!("whsec_{}", STANDARD.encode([1u8; 16]));
        let err = check_key(&short).unwrap_err();
        assert!(
            err.contains("16 bytes") && !err.contains(&short[6..]),
            "{err}"
        );
        assert!(check_key("whsec_***").unwrap_err().contains("base64"));
        assert!(
            check_key(&STANDARD.encode([7u8; 24])).is_ok(),
            "the prefix is optional"
        );
    }

    #[test]
    fn first_reconcile_creates_a_secret_owned_by_the_webhook() {
        let plan = plan_generated(&webhook(None), None, t("2026-11-23T12:00:00Z"), DAY, || {
            "whsec_new".into()
        });
        let s = plan.apply.expect("created");
        assert_eq!(s.metadata.name.as_deref(), Some("fraud-signing"));
        assert_eq!(s.metadata.owner_references.unwrap()[0].uid, "uid-1");
        assert_eq!(
            data_str(
                &Secret {
                    data: s.data.clone(),
                    ..Secret::default()
                },
                KEY_CURRENT
            )
            .unwrap(),
            "whsec_new"
        );
        assert_eq!(plan.status.generation, 1);
        assert_eq!(plan.event.unwrap().0, "SecretCreated");
    }

    #[test]
    fn unchanged_secret_is_left_alone() {
        let key = generate_key();
        let first = plan_generated(&webhook(None), None, t("2026-11-23T12:00:00Z"), DAY, || {
            key.clone()
        })
        .apply
        .unwrap();
        let again = plan_generated(
            &webhook(None),
            Some(&first),
            t("2026-11-23T13:00:00Z"),
            DAY,
            || panic!("no new key"),
        );
        assert!(again.apply.is_none() && again.event.is_none());
        assert_eq!(again.status.generation, 1);
    }

    #[test]
    fn rotation_keeps_the_previous_key_for_the_overlap_then_drops_it() {
        let (k1, k2) = (generate_key(), generate_key());
        let first = plan_generated(&webhook(None), None, t("2026-11-23T12:00:00Z"), DAY, || {
            k1.clone()
        })
        .apply
        .unwrap();
        let rotated = plan_generated(
            &webhook(Some("r1")),
            Some(&first),
            t("2026-11-24T00:00:00Z"),
            DAY,
            || k2.clone(),
        );
        let s = rotated.apply.clone().unwrap();
        assert_eq!(data_str(&s, KEY_CURRENT).unwrap(), k2);
        assert_eq!(data_str(&s, KEY_PREVIOUS).unwrap(), k1);
        assert_eq!(rotated.status.generation, 2);
        assert_eq!(rotated.revisit_at, Some(t("2026-11-25T00:00:00Z")));

        let during = plan_generated(
            &webhook(Some("r1")),
            Some(&s),
            t("2026-11-24T12:00:00Z"),
            DAY,
            || panic!("no new key"),
        );
        assert!(during.apply.is_none(), "nothing changes during the overlap");

        let after = plan_generated(
            &webhook(Some("r1")),
            Some(&s),
            t("2026-11-25T00:00:01Z"),
            DAY,
            || panic!("no new key"),
        );
        let s = after.apply.unwrap();
        assert_eq!(data_str(&s, KEY_CURRENT).unwrap(), k2);
        assert!(data_str(&s, KEY_PREVIOUS).is_none());
        assert_eq!(after.status.generation, 2);
    }

    #[test]
    fn referenced_secret_without_the_key_is_explained() {
        let s = Secret {
            metadata: ObjectMeta {
                name: Some("mine".into()),
                ..ObjectMeta::default()
            },
            ..Secret::default()
        };
        let err = check_referenced(&s).unwrap_err();
        assert!(err.contains("mine") && err.contains("\"secret\""), "{err}");
    }
}

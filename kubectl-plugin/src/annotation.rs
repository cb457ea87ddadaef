//! The annotations a tenant sets on a `Webhook` to ask for something (`hookline.dev/test`,
//! `hookline.dev/rotate-secret`): each acts when its value changes, so [`set`] writes a fresh
//! value — the Unix time and a random suffix — with a JSON merge patch that touches nothing
//! else, and returns it for the caller to wait on.

use hookline_crds::Webhook;
use jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};
use rand::distr::{Alphanumeric, SampleString};
use serde_json::json;

use crate::error::{Error, Object, Result};

/// Six random lowercase letters and digits (also the suffix of generated object names).
pub fn random_suffix() -> String {
    Alphanumeric
        .sample_string(&mut rand::rng(), 6)
        .to_lowercase()
}

/// A fresh annotation value: `<unix seconds>-<random>`, visible ASCII only (the dispatcher builds
/// the test event id `test_<value>` of such characters).
pub fn fresh_value(now: Timestamp, random: &str) -> String {
    format!("{}-{random}", now.as_second())
}

/// The merge patch that sets annotation `key` to `value`.
pub fn patch(key: &str, value: &str) -> serde_json::Value {
    json!({"metadata": {"annotations": {key: value}}})
}

/// Sets annotation `key` of the `Webhook` `object` to a fresh value, and returns the value.
///
/// # Errors
/// When the `Webhook` does not exist or may not be patched.
pub async fn set(api: &Api<Webhook>, object: &Object<'_>, key: &str) -> Result<String> {
    let value = fresh_value(Timestamp::now(), &random_suffix());
    api.patch(
        object.name,
        &PatchParams::default(),
        &Patch::Merge(patch(key, &value)),
    )
    .await
    .map_err(|e| Error::kube("annotating", object, e))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_value_is_visible_ascii_and_the_patch_touches_only_the_annotation() {
        let v = fresh_value("2026-12-01T12:00:00Z".parse().unwrap(), &random_suffix());
        assert!(v.starts_with("1796126400-") && v.len() == 17, "{v}");
        assert!(v.chars().all(|c| c.is_ascii_graphic()));
        assert_ne!(random_suffix(), random_suffix());
        assert_eq!(
            patch("hookline.dev/test", "x"),
            json!({"metadata": {"annotations": {"hookline.dev/test": "x"}}})
        );
    }
}

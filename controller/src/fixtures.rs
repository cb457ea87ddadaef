//! Objects the unit tests of several modules build alike.

use hookline_crds::Webhook;

/// A `Webhook` `ns/name`, optionally naming its own Secret and being deleted.
pub fn webhook(ns: &str, name: &str, secret_ref: Option<&str>, deleting: bool) -> Webhook {
    let mut spec = serde_json::json!({"url": "https://h.example/", "eventTypes": ["a"]});
    if let Some(s) = secret_ref {
        spec["secretRef"] = serde_json::json!({"name": s});
    }
    let mut meta = serde_json::json!({"name": name, "namespace": ns});
    if deleting {
        meta["deletionTimestamp"] = "2026-11-23T10:00:00Z".into();
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": hookline_core::API_VERSION, "kind": "Webhook", "metadata": meta, "spec": spec
    }))
    .unwrap()
}

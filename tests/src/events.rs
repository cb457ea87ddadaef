//! Events in, signed deliveries out: [`event`] builds the JSON envelope a test produces to an
//! events topic, and [`verify`] / [`verify_fresh`] check what the receiver recorded against a
//! `Webhook`'s signing key with Hookline's own Standard Webhooks code (the official library's
//! check is `tests/tests/standard_webhooks.rs`). Both panic with the cause, as the test would.

use std::time::{SystemTime, UNIX_EPOCH};

use hookline_core::signing;
use serde_json::json;

use crate::receiver::Recorded;

/// How far a delivery's `webhook-timestamp` may be from now to count as this attempt's time.
pub const FRESH_SECS: i64 = 300;

/// The JSON envelope `{id, type, timestamp, data}` of one event, as a producer writes it.
///
/// # Panics
/// Never in practice: the envelope always serialises.
pub fn event(id: &str, type_: &str, data: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(
        &json!({"id": id, "type": type_, "timestamp": "2026-11-23T12:00:00Z", "data": data}),
    )
    .unwrap()
}

/// The `webhook-timestamp` of `r`, in seconds.
///
/// # Panics
/// When the header is missing or not a number.
pub fn timestamp(r: &Recorded) -> i64 {
    r.header("webhook-timestamp")
        .expect("webhook-timestamp")
        .parse()
        .unwrap()
}

/// Checks that `r` carries a valid Standard Webhooks signature made with `key` over its
/// `webhook-id`, `webhook-timestamp` and body bytes.
///
/// # Panics
/// When a `webhook-*` header is missing or no signature verifies with `key`.
pub fn verify(key: &signing::Secret, r: &Recorded) {
    let id = r.header("webhook-id").expect("webhook-id");
    let ts = timestamp(r);
    let sig = r.header("webhook-signature").expect("webhook-signature");
    signing::verify(std::slice::from_ref(key), id, ts, &r.body, sig).unwrap_or_else(|e| {
        panic!("the signature of {id} verifies with the Webhook's own key: {e}")
    });
}

/// [`verify`], and the `webhook-timestamp` is this attempt's time: within [`FRESH_SECS`] of now
/// (for a delivery checked soon after it arrived).
///
/// # Panics
/// As [`verify`], or when the timestamp is older or newer than that.
pub fn verify_fresh(key: &signing::Secret, r: &Recorded) {
    verify(key, r);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (now - timestamp(r)).abs() < FRESH_SECS,
        "webhook-timestamp is this attempt's time"
    );
}

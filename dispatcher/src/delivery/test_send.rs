//! Test sends: the annotation `hookline.dev/test: <nonce>` becomes one signed `webhook.test`
//! event `test_<nonce>` POSTed straight to the URL, its result written into the endpoint's
//! status (`status.lastTest`). It ignores pause, circuit and rate limit: a test is an explicit
//! request to reach the URL now.

use std::sync::Arc;
use std::time::Duration;

use hookline_core::envelope::{Event, Format};
use hookline_core::retry::Outcome;
use hookline_crds::TestStatus;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tracing::info;

use crate::delivery::client::{Deliverer, Request};
use crate::tenant::endpoints::Endpoint;

/// Sends the signed `webhook.test` event `test_<nonce>` to one endpoint and
/// records the result in its status. Ignores pause, circuit and rate limit:
/// a test is an explicit request to reach the URL now.
pub async fn test_send(endpoint: Arc<Endpoint>, nonce: String, deliverer: Deliverer) {
    let started = Timestamp::now();
    let id: String = format!("test_{nonce}")
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(255)
        .collect();
    let data = serde_json::json!({"webhook": endpoint.name.as_ref(), "nonce": nonce});
    let event = Event {
        id,
        event_type: "webhook.test".to_owned(),
        timestamp: started,
        data: serde_json::value::to_raw_value(&data).expect("JSON"),
        key: None,
        format: Format::Envelope,
    };
    let payload = event.payload();
    // A Webhook created with the annotation is seen before its Secret is read.
    for _ in 0..50 {
        if endpoint.has_keys() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let keys = endpoint.keys_at(started);
    let result = match endpoint.settings() {
        Err(e) => Err(format!("the spec cannot be used: {e}")),
        Ok(_) if keys.is_empty() => Err("no signing key available yet".to_owned()),
        Ok(settings) => Ok(deliverer
            .send(Request {
                url: &settings.url,
                headers: &settings.headers,
                event_id: &event.id,
                payload: &payload,
                keys: &keys,
                attempt: 1,
                timeout: settings.timeout,
                replay: None,
            })
            .await),
    };
    let status = match &result {
        Ok(a) => TestStatus {
            nonce,
            time: Time(started),
            success: matches!(
                a.outcome,
                Outcome::Response {
                    status: 200..=299,
                    ..
                }
            ),
            status_code: a.status().map(i32::from),
            latency_ms: Some(i64::try_from(a.latency.as_millis()).unwrap_or(i64::MAX)),
            error: (!matches!(
                a.outcome,
                Outcome::Response {
                    status: 200..=299,
                    ..
                }
            ))
            .then(|| a.message.clone()),
        },
        Err(e) => TestStatus {
            nonce,
            time: Time(started),
            success: false,
            status_code: None,
            latency_ms: None,
            error: Some(e.clone()),
        },
    };
    info!(webhook = %endpoint.name, success = status.success, "test send");
    endpoint.stats(|s| s.test(status));
}

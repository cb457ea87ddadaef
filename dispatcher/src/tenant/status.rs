//! Delivery status written into each `Webhook`. Deliveries flow into an
//! endpoint's [`Stats`] as they happen; every `--status-interval` [`run`]
//! writes the endpoints that changed by server-side apply on the status
//! subresource, field manager `hookline.dev/dispatcher`, owning only
//! `delivered`, `failed`, `lastSuccessTime`, `lastFailure`, `circuit`,
//! `lastTest`, `disabled` and the conditions `Delivering` and `Degraded`.
//!
//! # Counters
//! The dispatcher keeps only what it has not written yet (deltas). A write
//! reads the `Webhook` first, adds the deltas to the stored counters and
//! applies with the object's `resourceVersion` as a precondition, so counters
//! survive restarts, and two writers (a rolling update) never overwrite each
//! other's counts; a conflict is retried.
//!
//! Because server-side apply removes fields a manager stops sending, every
//! write carries every dispatcher-owned field, carried over from the object
//! when nothing newer happened here.

use std::sync::Arc;
use std::time::Duration;

use hookline_crds::Webhook;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Resource};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use hookline_core::status::{DISPATCHER_MANAGER as MANAGER, View, conditions};

use crate::error::{Error, Result};
use crate::ops::metrics::Metrics;
use crate::tenant::endpoints::{Disabled, Endpoint, Registry};
use crate::tenant::stats::Stats;

/// The status apply patch for `fresh` (the object as just read) given what
/// happened here.
pub fn patch(
    fresh: &Webhook,
    stats: &Stats,
    view: &View,
    disabled: Option<&Disabled>,
    now: Timestamp,
) -> serde_json::Value {
    let status = fresh.status.clone().unwrap_or_default();
    let mut s = serde_json::Map::new();
    s.insert(
        "delivered".into(),
        json!(status.delivered.unwrap_or(0) + stats.delivered),
    );
    s.insert(
        "failed".into(),
        json!(status.failed.unwrap_or(0) + stats.failed),
    );
    let last_success = stats.last_success.map(Time).or(status.last_success_time);
    if let Some(t) = last_success {
        s.insert("lastSuccessTime".into(), json!(t));
    }
    if let Some(f) = stats.last_failure.clone().or(status.last_failure) {
        s.insert("lastFailure".into(), json!(f));
    }
    s.insert("circuit".into(), json!(view.circuit.as_str()));
    if let Some(t) = stats.last_test.clone().or(status.last_test) {
        s.insert("lastTest".into(), json!(t));
    }
    if let Some(d) = disabled {
        s.insert(
            "disabled".into(),
            json!({"since": Time(d.since), "reason": d.reason, "generation": d.generation}),
        );
    }
    s.insert(
        "conditions".into(),
        json!(conditions(
            &status.conditions,
            view,
            fresh.metadata.generation,
            now
        )),
    );
    json!({
        "apiVersion": hookline_core::API_VERSION,
        "kind": "Webhook",
        "metadata": {"name": fresh.metadata.name, "resourceVersion": fresh.metadata.resource_version},
        "status": s,
    })
}

fn view(endpoint: &Endpoint, stats: &Stats) -> View {
    View {
        availability: endpoint.availability(),
        invalid: endpoint.settings().err().map(|e| e.to_string()),
        circuit: endpoint.circuit_state(),
        last_success: stats.last_success,
        last_failure: stats.last_failure.as_ref().map(|f| f.time.0),
        secret_name: endpoint.secret_name(),
    }
}

/// Writes one endpoint's status; on success the written deltas are taken off
/// its stats.
///
/// # Errors
/// The API's refusal; a conflict is retried twice first.
pub async fn write(
    api: &Api<Webhook>,
    endpoint: &Endpoint,
    recorder: &Recorder,
    metrics: &Metrics,
) -> Result<()> {
    let timer = metrics.status_duration.start_timer();
    let mut tries = 0;
    let result = loop {
        tries += 1;
        let stats = endpoint.stats(|s| s.clone());
        let fresh = tokio::time::timeout(Duration::from_secs(10), api.get_status(&endpoint.name))
            .await
            .map_err(|_| Error::Timeout("reading Webhook status"))??;
        let view = view(endpoint, &stats);
        let disabled = endpoint.disabled();
        announce_gone(recorder, &fresh, disabled.as_ref()).await;
        let body = patch(&fresh, &stats, &view, disabled.as_ref(), Timestamp::now());
        let pp = PatchParams::apply(MANAGER).force();
        let sent = tokio::time::timeout(
            Duration::from_secs(10),
            api.patch_status(&endpoint.name, &pp, &Patch::Apply(&body)),
        )
        .await
        .map_err(|_| Error::Timeout("writing Webhook status"))?;
        match sent {
            Ok(_) => {
                endpoint.stats(|live| {
                    live.delivered -= stats.delivered;
                    live.failed -= stats.failed;
                    live.written_circuit = Some(view.circuit);
                    live.dirty &= live.version != stats.version;
                });
                break Ok(());
            }
            Err(kube::Error::Api(e)) if e.code == 409 && tries < 3 => {
                metrics.status_write("conflict");
                debug!(webhook = %endpoint.name, "status changed meanwhile; writing again");
            }
            Err(e) => break Err(Error::from(e)),
        }
    };
    timer.observe_duration();
    result
}

/// Publishes the `Gone` Event once: when the stored status does not say
/// disabled yet.
async fn announce_gone(recorder: &Recorder, fresh: &Webhook, disabled: Option<&Disabled>) {
    let stored = fresh
        .status
        .as_ref()
        .and_then(|s| s.disabled.as_ref())
        .is_some();
    if disabled.is_none() || stored {
        return;
    }
    let ev = Event {
        type_: EventType::Warning,
        reason: hookline_core::conditions::reasons::GONE.into(),
        note: Some("the receiver answered 410 Gone: deliveries to this Webhook stopped; change the spec or set the annotation hookline.dev/enable to a new value to resume".into()),
        action: "Deliver".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, &fresh.object_ref(&())).await {
        warn!(error = %e, "cannot publish the Gone Event");
    }
}

/// Writes the status of every endpoint that needs it, every `every`, until
/// `stop`; then once more.
pub async fn run(
    api: Api<Webhook>,
    registry: Arc<Registry>,
    recorder: Recorder,
    metrics: Metrics,
    every: Duration,
    stop: CancellationToken,
) {
    loop {
        let stopping = tokio::select! {
            () = stop.cancelled() => true,
            () = tokio::time::sleep(every) => false,
        };
        flush(&api, &registry, &recorder, &metrics).await;
        if stopping {
            return;
        }
    }
}

/// Writes every endpoint that needs it, once.
pub async fn flush(
    api: &Api<Webhook>,
    registry: &Registry,
    recorder: &Recorder,
    metrics: &Metrics,
) {
    for endpoint in registry.snapshot() {
        let circuit = endpoint.circuit_state();
        metrics.circuit(&endpoint.name, circuit);
        metrics.set_in_flight(
            &endpoint.name,
            endpoint
                .in_memory
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        if !endpoint.stats(|s| s.needs_write(circuit)) {
            continue;
        }
        match write(api, &endpoint, recorder, metrics).await {
            Ok(()) => metrics.status_write("ok"),
            Err(Error::Kube(kube::Error::Api(e))) if e.code == 404 => {}
            Err(e) => {
                metrics.status_write("error");
                warn!(webhook = %endpoint.name, error = %e, category = e.category(), "cannot write Webhook status");
            }
        }
    }
}

#[cfg(test)]
#[path = "status_tests.rs"]
mod tests;

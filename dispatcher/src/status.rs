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

use hookline_crds::conditions::{reasons, types};
use hookline_crds::{FailureStatus, TestStatus, Webhook, WebhookStatus};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Resource};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::circuit::CircuitState;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::webhooks::{Availability, Disabled, Endpoint, Registry};

/// Field manager of everything the dispatcher writes.
pub const MANAGER: &str = "hookline.dev/dispatcher";
/// `Degraded` reason when the last attempt failed.
pub const DELIVERIES_FAILING: &str = "DeliveriesFailing";

/// What happened to one endpoint since its status was last written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Deliveries (2xx) not yet added to `status.delivered`.
    pub delivered: i64,
    /// Dead letters not yet added to `status.failed`.
    pub failed: i64,
    /// The last success.
    pub last_success: Option<Timestamp>,
    /// The last failed attempt.
    pub last_failure: Option<FailureStatus>,
    /// The last test send.
    pub last_test: Option<TestStatus>,
    /// The circuit state last written.
    pub written_circuit: Option<CircuitState>,
    /// Something must be written even without new counts.
    pub dirty: bool,
    /// Bumped by every change, so a write clears `dirty` only if nothing
    /// changed while it was under way.
    pub version: u64,
}

impl Stats {
    /// Fresh stats of an endpoint found with `status`; `dirty` forces a first
    /// write (e.g. a stale `disabled` to clear).
    pub fn from_status(status: &WebhookStatus, dirty: bool) -> Stats {
        Stats {
            last_success: status.last_success_time.as_ref().map(|t| t.0),
            last_failure: status.last_failure.clone(),
            dirty,
            ..Stats::default()
        }
    }

    /// Something changed that the status must show.
    pub fn mark(&mut self) {
        self.dirty = true;
        self.version += 1;
    }

    /// A delivery succeeded at `at`.
    pub fn success(&mut self, at: Timestamp) {
        self.delivered += 1;
        self.last_success = Some(at);
        self.version += 1;
    }

    /// An attempt failed at `at`.
    pub fn failure(&mut self, at: Timestamp, reason: &str, message: &str, status: Option<u16>) {
        self.last_failure = Some(FailureStatus {
            time: Time(at),
            reason: failure_reason(reason).to_owned(),
            message: message.to_owned(),
            status_code: status.map(i32::from),
        });
        self.mark();
    }

    /// A delivery was dead-lettered.
    pub fn dead_letter(&mut self) {
        self.failed += 1;
        self.version += 1;
    }

    /// A test send finished.
    pub fn test(&mut self, result: TestStatus) {
        self.last_test = Some(result);
        self.mark();
    }

    /// Whether a write is due given the current circuit state.
    pub fn needs_write(&self, circuit: CircuitState) -> bool {
        self.dirty
            || self.delivered != 0
            || self.failed != 0
            || self.written_circuit != Some(circuit)
    }
}

/// `Timeout`, `ConnectError`, `HttpStatus`, `AddressRefused`, … from a
/// snake_case failure reason (the CRD documents CamelCase reasons).
pub fn failure_reason(reason: &str) -> &'static str {
    match reason {
        "timeout" => "Timeout",
        "connect" | "network" => "ConnectError",
        "dns" => "DnsError",
        "tls" => "TlsError",
        "address_refused" => "AddressRefused",
        "invalid_request" => "InvalidRequest",
        "payload_too_large" => "PayloadTooLarge",
        "redirect_not_followed" => "RedirectNotFollowed",
        "circuit_open" => "CircuitOpen",
        r if r.starts_with("http_") => "HttpStatus",
        _ => "DeliveryFailed",
    }
}

/// What the conditions are computed from.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    /// Whether it can take deliveries.
    pub availability: Availability,
    /// Why the settings cannot be used, when they cannot.
    pub invalid: Option<String>,
    /// The circuit state.
    pub circuit: CircuitState,
    /// The last success.
    pub last_success: Option<Timestamp>,
    /// When the last attempt failed.
    pub last_failure: Option<Timestamp>,
    /// The signing Secret's name.
    pub secret_name: String,
}

/// `Delivering` and `Degraded` as (type, status, reason, message).
pub fn verdicts(v: &View) -> [(&'static str, bool, &'static str, String); 2] {
    let delivering = match v.availability {
        Availability::Disabled => (false, reasons::GONE, "disabled after the receiver answered 410 Gone; change the spec or set the annotation hookline.dev/enable to a new value to resume".to_owned()),
        Availability::Paused => (false, reasons::PAUSED, "spec.paused is true; events are kept and delivered after it is resumed".to_owned()),
        Availability::Invalid => (false, reasons::INVALID_SPEC, format!("the dispatcher cannot use this spec: {}", v.invalid.as_deref().unwrap_or("invalid"))),
        Availability::NoKeys => (false, reasons::SECRET_NOT_FOUND, format!("waiting for a usable signing key in Secret {}; events are kept", v.secret_name)),
        Availability::Ready if v.circuit == CircuitState::Open => (false, reasons::CIRCUIT_OPEN, "circuit breaker open after repeated failures; deliveries resume after the cool-down".to_owned()),
        Availability::Ready => (true, reasons::DELIVERING, "delivering events to the URL".to_owned()),
    };
    let failing = match (v.last_failure, v.last_success) {
        (Some(f), Some(s)) => f > s,
        (Some(_), None) => true,
        _ => false,
    };
    let degraded = if v.availability == Availability::Disabled {
        (
            true,
            reasons::GONE,
            "the receiver answered 410 Gone".to_owned(),
        )
    } else if v.circuit != CircuitState::Closed {
        (
            true,
            reasons::CIRCUIT_OPEN,
            format!("circuit breaker {}", v.circuit.as_str()),
        )
    } else if failing {
        (
            true,
            DELIVERIES_FAILING,
            "the last attempt failed; see status.lastFailure".to_owned(),
        )
    } else {
        (false, reasons::DELIVERING, "deliveries succeed".to_owned())
    };
    [
        (types::DELIVERING, delivering.0, delivering.1, delivering.2),
        (types::DEGRADED, degraded.0, degraded.1, degraded.2),
    ]
}

/// The conditions, keeping `lastTransitionTime` of those whose status did not flip.
pub fn conditions(
    existing: &[Condition],
    v: &View,
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    verdicts(v)
        .into_iter()
        .map(|(type_, ok, reason, message)| {
            let status = if ok { "True" } else { "False" };
            let since = existing
                .iter()
                .find(|c| c.type_ == type_ && c.status == status)
                .map_or(Time(now), |c| c.last_transition_time.clone());
            Condition {
                type_: type_.to_owned(),
                status: status.to_owned(),
                reason: reason.to_owned(),
                message,
                observed_generation: generation,
                last_transition_time: since,
            }
        })
        .collect()
}

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
        "apiVersion": "hookline.dev/v1alpha1",
        "kind": "Webhook",
        "metadata": {"name": fresh.metadata.name, "resourceVersion": fresh.metadata.resource_version},
        "status": s,
    })
}

fn view(endpoint: &Endpoint, stats: &Stats) -> View {
    View {
        availability: endpoint.availability(),
        invalid: endpoint.settings().err(),
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
        let stats = endpoint.stats.lock().expect("stats lock").clone();
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
                let mut live = endpoint.stats.lock().expect("stats lock");
                live.delivered -= stats.delivered;
                live.failed -= stats.failed;
                live.written_circuit = Some(view.circuit);
                live.dirty &= live.version != stats.version;
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
        reason: reasons::GONE.into(),
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
        if !endpoint
            .stats
            .lock()
            .expect("stats lock")
            .needs_write(circuit)
        {
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
mod tests;

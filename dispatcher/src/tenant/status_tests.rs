//! Unit tests for [`super`]: conditions and the status patch, from plain values.

use super::*;
use hookline_core::circuit::CircuitState;
use hookline_core::conditions::{reasons, types};
use hookline_core::status::failure_reason;
use hookline_core::status::{Availability, verdicts};
use hookline_crds::WebhookSpec;
use hookline_crds::{TestStatus, WebhookStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use std::collections::BTreeMap;

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn ready_view() -> View {
    View {
        availability: Availability::Ready,
        invalid: None,
        circuit: CircuitState::Closed,
        last_success: Some(t("2026-01-01T00:00:00Z")),
        last_failure: None,
        secret_name: "fraud-signing".into(),
    }
}

fn webhook(status: WebhookStatus) -> Webhook {
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
    w.metadata.generation = Some(3);
    w.metadata.resource_version = Some("77".into());
    w.status = Some(status);
    w
}

fn find<'a>(conds: &'a [Condition], type_: &str) -> &'a Condition {
    conds.iter().find(|c| c.type_ == type_).unwrap()
}

#[test]
fn a_healthy_endpoint_is_delivering_and_not_degraded() {
    let conds = conditions(&[], &ready_view(), Some(3), t("2026-01-01T00:00:01Z"));
    assert_eq!(find(&conds, types::DELIVERING).status, "True");
    assert_eq!(find(&conds, types::DEGRADED).status, "False");
    assert_eq!(find(&conds, types::DEGRADED).observed_generation, Some(3));
}

#[test]
fn an_open_circuit_stops_delivering_and_degrades() {
    let v = View {
        circuit: CircuitState::Open,
        ..ready_view()
    };
    let conds = conditions(&[], &v, None, t("2026-01-01T00:00:01Z"));
    let d = find(&conds, types::DELIVERING);
    assert_eq!(
        (d.status.as_str(), d.reason.as_str()),
        ("False", reasons::CIRCUIT_OPEN)
    );
    assert_eq!(find(&conds, types::DEGRADED).reason, reasons::CIRCUIT_OPEN);
}

#[test]
fn paused_and_gone_say_why_deliveries_stopped() {
    let paused = View {
        availability: Availability::Paused,
        ..ready_view()
    };
    assert_eq!(verdicts(&paused)[0].reason, reasons::PAUSED);
    assert!(!verdicts(&paused)[1].ok, "paused is not degraded");
    let gone = View {
        availability: Availability::Disabled,
        ..ready_view()
    };
    assert_eq!(verdicts(&gone)[0].reason, reasons::GONE);
    assert!(verdicts(&gone)[1].ok);
}

#[test]
fn a_failure_after_the_last_success_degrades() {
    let v = View {
        last_failure: Some(t("2026-01-01T00:00:05Z")),
        ..ready_view()
    };
    let degraded = &verdicts(&v)[1];
    assert_eq!(
        (degraded.type_, degraded.ok, degraded.reason),
        (types::DEGRADED, true, reasons::DELIVERIES_FAILING)
    );
    let recovered = View {
        last_success: Some(t("2026-01-01T00:00:06Z")),
        ..v
    };
    assert!(!verdicts(&recovered)[1].ok);
}

#[test]
fn transition_time_is_kept_while_the_status_holds() {
    let first = conditions(&[], &ready_view(), None, t("2026-01-01T00:00:01Z"));
    let again = conditions(&first, &ready_view(), None, t("2026-01-01T01:00:00Z"));
    assert_eq!(
        find(&again, types::DELIVERING).last_transition_time.0,
        t("2026-01-01T00:00:01Z")
    );
    let open = View {
        circuit: CircuitState::Open,
        ..ready_view()
    };
    let flipped = conditions(&again, &open, None, t("2026-01-01T02:00:00Z"));
    assert_eq!(
        find(&flipped, types::DELIVERING).last_transition_time.0,
        t("2026-01-01T02:00:00Z")
    );
}

#[test]
fn the_patch_adds_the_deltas_to_the_stored_counters_under_the_read_version() {
    let fresh = webhook(WebhookStatus {
        delivered: Some(10),
        failed: Some(2),
        ..WebhookStatus::default()
    });
    let mut stats = Stats::default();
    stats.success(t("2026-01-01T00:00:00Z"));
    stats.success(t("2026-01-01T00:00:01Z"));
    stats.dead_letter();
    let p = patch(
        &fresh,
        &stats,
        &ready_view(),
        None,
        t("2026-01-01T00:00:02Z"),
    );
    assert_eq!(p["status"]["delivered"], 12);
    assert_eq!(p["status"]["failed"], 3);
    assert_eq!(p["status"]["lastSuccessTime"], "2026-01-01T00:00:01Z");
    assert_eq!(p["status"]["circuit"], "closed");
    assert_eq!(p["metadata"]["resourceVersion"], "77");
    assert!(p["status"].get("disabled").is_none());
    assert!(
        p["status"].get("observedGeneration").is_none(),
        "controller-owned"
    );
    let conds = p["status"]["conditions"].as_array().unwrap();
    assert_eq!(conds.len(), 2, "only Delivering and Degraded");
}

#[test]
fn the_patch_carries_over_what_happened_before_and_writes_disabled() {
    let fresh = webhook(WebhookStatus {
        last_test: Some(TestStatus {
            nonce: "n1".into(),
            time: Time(t("2026-01-01T00:00:00Z")),
            success: true,
            status_code: Some(200),
            latency_ms: Some(3),
            error: None,
        }),
        ..WebhookStatus::default()
    });
    let disabled = Disabled {
        since: t("2026-01-01T00:00:09Z"),
        reason: "Gone".into(),
        generation: 3,
        enable_token: None,
    };
    let p = patch(
        &fresh,
        &Stats::default(),
        &ready_view(),
        Some(&disabled),
        t("2026-01-01T00:00:10Z"),
    );
    assert_eq!(p["status"]["lastTest"]["nonce"], "n1");
    assert_eq!(p["status"]["disabled"]["reason"], "Gone");
    assert_eq!(p["status"]["disabled"]["generation"], 3);
    assert_eq!(p["status"]["delivered"], 0);
}

#[test]
fn failure_reasons_become_the_documented_camel_case() {
    assert_eq!(failure_reason("timeout"), "Timeout");
    assert_eq!(failure_reason("http_5xx"), "HttpStatus");
    assert_eq!(failure_reason("address_refused"), "AddressRefused");
    assert_eq!(failure_reason("connect"), "ConnectError");
}

#[test]
fn stats_need_a_write_for_new_counts_or_a_new_circuit_state() {
    let mut s = Stats {
        written_circuit: Some(CircuitState::Closed),
        ..Stats::default()
    };
    assert!(!s.needs_write(CircuitState::Closed));
    assert!(s.needs_write(CircuitState::Open));
    s.success(Timestamp::now());
    assert!(s.needs_write(CircuitState::Closed));
}

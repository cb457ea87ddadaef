//! Prometheus metrics of the controller, named `hookline_controller_*`, with bounded labels
//! only (the reconciler, an outcome, an error category, a state) — never a namespace or
//! Webhook name, which are unbounded on a large platform. Both reconcilers count into the same
//! families, told apart by the `controller` label ([`WEBHOOK`], [`TENANT`]).

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// `controller` label of the `Webhook` reconciler.
pub const WEBHOOK: &str = "webhook";
/// `controller` label of the tenant reconciler.
pub const TENANT: &str = "tenant";

/// The controller's metrics.
#[derive(Clone)]
pub struct Metrics {
    /// Reconciles by controller and outcome (`webhook`: `ok`, `invalid`, `error`; `tenant`:
    /// `applied`, `removed`, `error`).
    pub reconciles: IntCounterVec,
    /// Reconcile failures by controller and error category.
    pub failures: IntCounterVec,
    /// Time per reconcile, by controller.
    pub duration: HistogramVec,
    /// Leader state: 1 while this replica leads.
    pub leader: prometheus::IntGauge,
    /// Webhooks by readiness (`true`, `false`, `unknown`), counted from the reflector.
    pub webhooks: prometheus::IntGaugeVec,
    /// Tenants by state (`live`: has `Webhook`s; `orphan`: objects left to remove).
    pub tenants: prometheus::IntGaugeVec,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    ///
    /// # Panics
    /// When registered twice in one registry (a programming error).
    pub fn register(registry: &Registry) -> Metrics {
        let m = Metrics {
            reconciles: IntCounterVec::new(
                Opts::new(
                    "hookline_controller_reconciles_total",
                    "Reconciles by controller and outcome",
                ),
                &["controller", "outcome"],
            )
            .expect("metric"),
            failures: IntCounterVec::new(
                Opts::new(
                    "hookline_controller_reconcile_errors_total",
                    "Reconcile errors by controller and category",
                ),
                &["controller", "category"],
            )
            .expect("metric"),
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "hookline_controller_reconcile_duration_seconds",
                    "Time per reconcile, by controller",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
                &["controller"],
            )
            .expect("metric"),
            leader: prometheus::IntGauge::new(
                "hookline_controller_leader",
                "1 while this replica is the leader",
            )
            .expect("metric"),
            webhooks: prometheus::IntGaugeVec::new(
                Opts::new("hookline_controller_webhooks", "Webhooks by readiness"),
                &["ready"],
            )
            .expect("metric"),
            tenants: prometheus::IntGaugeVec::new(
                Opts::new("hookline_controller_tenants", "Tenants by state"),
                &["state"],
            )
            .expect("metric"),
        };
        registry
            .register(Box::new(m.reconciles.clone()))
            .expect("register");
        registry
            .register(Box::new(m.failures.clone()))
            .expect("register");
        registry
            .register(Box::new(m.duration.clone()))
            .expect("register");
        registry
            .register(Box::new(m.leader.clone()))
            .expect("register");
        registry
            .register(Box::new(m.webhooks.clone()))
            .expect("register");
        registry
            .register(Box::new(m.tenants.clone()))
            .expect("register");
        m
    }
}

/// Counts `(ready, not ready, unknown)` among `webhooks` by their `Ready` condition.
pub fn readiness<'a>(
    webhooks: impl IntoIterator<Item = &'a hookline_crds::Webhook>,
) -> (i64, i64, i64) {
    let mut counts = (0, 0, 0);
    for w in webhooks {
        let ready = w
            .status
            .as_ref()
            .and_then(|s| {
                s.conditions
                    .iter()
                    .find(|c| c.type_ == hookline_core::conditions::types::READY)
            })
            .map(|c| c.status.as_str());
        match ready {
            Some("True") => counts.0 += 1,
            Some("False") => counts.1 += 1,
            _ => counts.2 += 1,
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_registered_and_exported() {
        let registry = Registry::new();
        let m = Metrics::register(&registry);
        m.reconciles.with_label_values(&[WEBHOOK, "ok"]).inc();
        m.reconciles.with_label_values(&[TENANT, "applied"]).inc();
        m.failures.with_label_values(&[TENANT, "Kafka"]).inc();
        m.webhooks.with_label_values(&["true"]).set(3);
        m.tenants.with_label_values(&["live"]).set(2);
        m.duration.with_label_values(&[TENANT]).observe(0.01);
        let names: Vec<String> = registry
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect();
        for want in [
            "hookline_controller_reconciles_total",
            "hookline_controller_reconcile_errors_total",
            "hookline_controller_reconcile_duration_seconds",
            "hookline_controller_leader",
            "hookline_controller_webhooks",
            "hookline_controller_tenants",
        ] {
            assert!(
                names.iter().any(|n| n == want),
                "{want} missing from {names:?}"
            );
        }
    }

    #[test]
    fn webhooks_are_counted_by_their_ready_condition() {
        let mk = |status: Option<&str>| {
            let mut w: hookline_crds::Webhook = serde_json::from_value(serde_json::json!({
                "apiVersion": "hookline.dev/v1alpha1", "kind": "Webhook", "metadata": {"name": "w"},
                "spec": {"url": "https://h.example/", "eventTypes": ["a"]}
            }))
            .unwrap();
            if let Some(st) = status {
                w.status = serde_json::from_value(serde_json::json!({"conditions": [{
                    "type": "Ready", "status": st, "reason": "R", "message": "",
                    "lastTransitionTime": "2026-11-23T10:00:00Z"}]}))
                .unwrap();
            }
            w
        };
        let all = [
            mk(Some("True")),
            mk(Some("True")),
            mk(Some("False")),
            mk(None),
        ];
        assert_eq!(readiness(all.iter()), (2, 1, 1));
    }
}

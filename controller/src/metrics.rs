//! Prometheus metrics of the controller, named `hookline_controller_*`, with bounded labels
//! (outcome, error category) only — never a namespace or Webhook name, which are unbounded
//! on a large platform.

use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts, Registry};

/// The controller's metrics.
#[derive(Clone)]
pub struct Metrics {
    /// Reconciles by outcome (`ok`, `invalid`, `error`).
    pub reconciles: IntCounterVec,
    /// Reconcile failures by error category.
    pub failures: IntCounterVec,
    /// Time per reconcile.
    pub duration: Histogram,
    /// Leader state: 1 while this replica leads.
    pub leader: prometheus::IntGauge,
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
                    "Reconciles by outcome",
                ),
                &["outcome"],
            )
            .expect("metric"),
            failures: IntCounterVec::new(
                Opts::new(
                    "hookline_controller_reconcile_errors_total",
                    "Reconcile errors by category",
                ),
                &["category"],
            )
            .expect("metric"),
            duration: Histogram::with_opts(
                HistogramOpts::new(
                    "hookline_controller_reconcile_duration_seconds",
                    "Time per reconcile",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
            )
            .expect("metric"),
            leader: prometheus::IntGauge::new(
                "hookline_controller_leader",
                "1 while this replica is the leader",
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
        m
    }
}

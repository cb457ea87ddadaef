//! Prometheus metrics of the dispatcher, named `hookline_dispatcher_*`. Every
//! attempt, retry, dead letter and circuit change flows in here from the
//! pipeline; `/metrics` serves them. Labels are bounded: `namespace`,
//! `webhook`, `outcome`, `status_class` and a dead letter's snake_case
//! `reason` — never an event id, key or URL. A deleted `Webhook`'s series are
//! removed with [`Metrics::forget_webhook`].

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use hookline_core::circuit::CircuitState;

/// The dispatcher's metrics, labelled with its tenant namespace.
#[derive(Clone)]
pub struct Metrics {
    namespace: String,
    /// Attempts by outcome (`delivered`, `retry`, `dead_letter`, `gone`) and
    /// status class (`2xx`…`5xx`, `none` for transport failures).
    pub deliveries: IntCounterVec,
    /// Attempt latency, to the end of the bounded body read.
    pub attempt_duration: HistogramVec,
    /// Retries written to a retry topic; outcome `attempt_failed` (an attempt
    /// was spent) or `postponed` (circuit open, paused, queue full: none was).
    pub retries_scheduled: IntCounterVec,
    /// Records dead-lettered, by reason; `webhook` is empty for records that
    /// could not be parsed.
    pub dead_letters: IntCounterVec,
    /// Records Kafka refused for good, by kind (`retry`, `dead_letter`, `attempt`, `dedup`)
    /// and reason (`record_too_large`, `record_invalid`); a refused retry or dead letter is
    /// replaced by a dead letter referring to its event.
    pub writes_refused: IntCounterVec,
    /// Records of the events topic not yet committed (sum over partitions).
    pub consumer_lag: IntGaugeVec,
    /// Circuit breaker state: 0 closed, 1 half-open, 2 open.
    pub circuit_state: IntGaugeVec,
    /// Deliveries held in memory (running, waiting for a slot, parked).
    pub in_flight: IntGaugeVec,
    /// Records read, by outcome (`event`, `malformed`, `retry`, `postponed`,
    /// `orphaned` for retries whose `Webhook` is gone, `duplicate` for events whose id was
    /// seen within the dedup window, `settled_before` for events settled above the committed
    /// position before a crash or rebalance, …; docs/operations.md lists them all).
    pub records: IntCounterVec,
    /// Status writes by outcome (`ok`, `conflict`, `error`).
    pub status_writes: IntCounterVec,
    /// Time to write one `Webhook` status.
    pub status_duration: Histogram,
    /// 1 while the consumer is paused for back-pressure.
    pub backpressure: IntGauge,
    /// Times back-pressure engaged.
    pub backpressure_engaged: IntCounter,
    /// The memory limit the budget derives from (0: none).
    pub memory_limit: IntGauge,
    /// Bytes of the records the deliveries in memory hold.
    pub held_bytes: IntGauge,
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
}

impl Metrics {
    /// Creates the metrics for `namespace` and registers them in `registry`.
    ///
    /// # Panics
    /// When registered twice in one registry (a programming error).
    pub fn register(registry: &Registry, namespace: &str) -> Metrics {
        let m = Metrics {
            namespace: namespace.to_owned(),
            deliveries: counter(
                "hookline_dispatcher_deliveries_total",
                "Delivery attempts by outcome and status class",
                &["namespace", "webhook", "outcome", "status_class"],
            ),
            attempt_duration: HistogramVec::new(
                HistogramOpts::new(
                    "hookline_dispatcher_attempt_duration_seconds",
                    "Duration of one delivery attempt",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                ]),
                &["namespace", "webhook", "status_class"],
            )
            .expect("valid metric"),
            retries_scheduled: counter(
                "hookline_dispatcher_retries_scheduled_total",
                "Deliveries written to a retry topic",
                &["namespace", "webhook", "outcome"],
            ),
            dead_letters: counter(
                "hookline_dispatcher_dead_letters_total",
                "Records written to the dead-letter topic, by reason",
                &["namespace", "webhook", "reason"],
            ),
            writes_refused: counter(
                "hookline_dispatcher_writes_refused_total",
                "Records Kafka refused for good (too large, invalid), by kind and reason",
                &["namespace", "record", "reason"],
            ),
            consumer_lag: gauge(
                "hookline_dispatcher_consumer_lag",
                "Records of the events topic not yet committed",
                &["namespace"],
            ),
            circuit_state: gauge(
                "hookline_dispatcher_circuit_state",
                "Circuit breaker state: 0 closed, 1 half-open, 2 open",
                &["namespace", "webhook"],
            ),
            in_flight: gauge(
                "hookline_dispatcher_in_flight",
                "Deliveries held in memory",
                &["namespace", "webhook"],
            ),
            records: counter(
                "hookline_dispatcher_records_total",
                "Records read from Kafka, by outcome",
                &["namespace", "outcome"],
            ),
            status_writes: counter(
                "hookline_dispatcher_status_writes_total",
                "Webhook status writes by outcome",
                &["namespace", "outcome"],
            ),
            status_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "hookline_dispatcher_status_write_duration_seconds",
                    "Time to write one Webhook status",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
            )
            .expect("valid metric"),
            backpressure: IntGauge::new(
                "hookline_dispatcher_backpressure",
                "1 while consumption is paused because too much is in memory",
            )
            .expect("valid metric"),
            backpressure_engaged: IntCounter::new(
                "hookline_dispatcher_backpressure_engaged_total",
                "Times consumption stopped because --max-pending jobs, or the memory budget's bytes, were in memory",
            )
            .expect("valid metric"),
            memory_limit: IntGauge::new(
                "hookline_dispatcher_memory_limit_bytes",
                "The container memory limit the dispatcher bounds itself by (0: none found)",
            )
            .expect("valid metric"),
            held_bytes: IntGauge::new(
                "hookline_dispatcher_held_bytes",
                "Bytes of the records the deliveries in memory hold",
            )
            .expect("valid metric"),
        };
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.deliveries.clone()),
            Box::new(m.attempt_duration.clone()),
            Box::new(m.retries_scheduled.clone()),
            Box::new(m.dead_letters.clone()),
            Box::new(m.writes_refused.clone()),
            Box::new(m.consumer_lag.clone()),
            Box::new(m.circuit_state.clone()),
            Box::new(m.in_flight.clone()),
            Box::new(m.records.clone()),
            Box::new(m.status_writes.clone()),
            Box::new(m.status_duration.clone()),
            Box::new(m.backpressure.clone()),
            Box::new(m.backpressure_engaged.clone()),
            Box::new(m.memory_limit.clone()),
            Box::new(m.held_bytes.clone()),
        ];
        for c in collectors {
            registry.register(c).expect("metric registered once");
        }
        m
    }

    /// Counts one attempt.
    pub fn attempt(&self, webhook: &str, outcome: &str, status: Option<u16>, seconds: f64) {
        let class = status_class(status);
        self.deliveries
            .with_label_values(&[&self.namespace, webhook, outcome, class])
            .inc();
        self.attempt_duration
            .with_label_values(&[&self.namespace, webhook, class])
            .observe(seconds);
    }

    /// Counts a retry written to a retry topic.
    pub fn retry(&self, webhook: &str, attempt_spent: bool) {
        let outcome = if attempt_spent {
            "attempt_failed"
        } else {
            "postponed"
        };
        self.retries_scheduled
            .with_label_values(&[&self.namespace, webhook, outcome])
            .inc();
    }

    /// Counts a dead letter.
    pub fn dead_letter(&self, webhook: &str, reason: &str) {
        self.dead_letters
            .with_label_values(&[&self.namespace, webhook, reason])
            .inc();
    }

    /// Counts a record Kafka refused for good: `record` is its kind, `reason` the dead letter's.
    pub fn write_refused(&self, record: &str, reason: &str) {
        self.writes_refused
            .with_label_values(&[&self.namespace, record, reason])
            .inc();
    }

    /// Counts a record read.
    pub fn record(&self, outcome: &str) {
        self.records
            .with_label_values(&[&self.namespace, outcome])
            .inc();
    }

    /// Sets a webhook's circuit state.
    pub fn circuit(&self, webhook: &str, state: CircuitState) {
        let value = match state {
            CircuitState::Closed => 0,
            CircuitState::HalfOpen => 1,
            CircuitState::Open => 2,
        };
        self.circuit_state
            .with_label_values(&[&self.namespace, webhook])
            .set(value);
    }

    /// Sets a webhook's deliveries held in memory.
    pub fn set_in_flight(&self, webhook: &str, count: usize) {
        self.in_flight
            .with_label_values(&[&self.namespace, webhook])
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Sets the consumer lag of the events topic.
    pub fn set_lag(&self, lag: i64) {
        self.consumer_lag
            .with_label_values(&[&self.namespace])
            .set(lag);
    }

    /// Counts a status write.
    pub fn status_write(&self, outcome: &str) {
        self.status_writes
            .with_label_values(&[&self.namespace, outcome])
            .inc();
    }

    /// Removes the gauges of a deleted `Webhook` (counters stay until restart,
    /// as Prometheus expects of counters).
    pub fn forget_webhook(&self, webhook: &str) {
        let _ = self
            .circuit_state
            .remove_label_values(&[&self.namespace, webhook]);
        let _ = self
            .in_flight
            .remove_label_values(&[&self.namespace, webhook]);
    }
}

/// `2xx`, `3xx`, `4xx`, `5xx`, `other` for a status; `none` without one.
pub fn status_class(status: Option<u16>) -> &'static str {
    match status {
        None => "none",
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        Some(_) => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes_are_bounded() {
        assert_eq!(status_class(None), "none");
        assert_eq!(status_class(Some(204)), "2xx");
        assert_eq!(status_class(Some(503)), "5xx");
        assert_eq!(status_class(Some(799)), "other");
    }

    #[test]
    fn metrics_register_once_and_render_with_the_namespace_label() {
        let registry = Registry::new();
        let m = Metrics::register(&registry, "acme");
        m.attempt("fraud", "delivered", Some(200), 0.01);
        m.circuit("fraud", CircuitState::Open);
        m.write_refused("retry", "record_too_large");
        let mut out = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &registry.gather(),
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(
            r#"hookline_dispatcher_deliveries_total{namespace="acme",outcome="delivered",status_class="2xx",webhook="fraud"} 1"#
        ));
        assert!(
            text.contains(
                r#"hookline_dispatcher_circuit_state{namespace="acme",webhook="fraud"} 2"#
            )
        );
        assert!(text.contains(
            r#"hookline_dispatcher_writes_refused_total{namespace="acme",reason="record_too_large",record="retry"} 1"#
        ));
    }
}

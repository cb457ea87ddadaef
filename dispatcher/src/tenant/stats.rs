//! What happened to one endpoint since its status was last written: deliveries flow into its
//! [`Stats`] as they happen (deltas of the counters, the last success, failure and test), and
//! the status writer ([`crate::tenant::status`]) takes the written deltas off again.

use hookline_core::circuit::CircuitState;
use hookline_core::status::failure_reason;
use hookline_crds::{FailureStatus, TestStatus, WebhookStatus};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

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

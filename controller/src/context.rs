//! What both reconcilers share, handed to every reconcile: the API client, the platform
//! settings, the Event recorder, the metrics, the Kafka topic manager, the `Webhook` store (the
//! `Webhook` controller's reflector, which the tenant reconciler reads too), and the count of
//! consecutive failures per reconcile key for the error backoff.

use std::{collections::HashMap, sync::Arc, time::Duration};

use hookline_crds::Webhook;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Client,
    runtime::{
        events::{Event, EventType, Recorder},
        reflector::Store,
    },
};
use tracing::warn;

use crate::{error::Error, metrics::Metrics, settings::Settings, topics::TopicManager};

/// Field manager of everything the controller writes.
pub use hookline_core::status::CONTROLLER_MANAGER as MANAGER;

/// What every reconcile shares.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Platform settings.
    pub settings: Settings,
    /// Publishes Kubernetes Events.
    pub recorder: Recorder,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Kafka topics.
    pub topics: Arc<TopicManager>,
    /// Every `Webhook` this controller serves.
    pub webhooks: Store<Webhook>,
    /// Consecutive failed reconciles per key (`webhook:<ns>/<name>`, `tenant:<ns>`); an entry
    /// goes with the next success, or when its object goes.
    failures: std::sync::Mutex<HashMap<String, u32>>,
}

impl Context {
    /// A context for both reconcilers.
    pub fn new(
        client: Client,
        settings: Settings,
        recorder: Recorder,
        metrics: Metrics,
        topics: Arc<TopicManager>,
        webhooks: Store<Webhook>,
    ) -> Context {
        Context {
            client,
            settings,
            recorder,
            metrics,
            topics,
            webhooks,
            failures: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Publishes an Event about `regarding`; a failure is logged, never fatal.
    pub async fn event(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, regarding).await {
            warn!(error = %e, "cannot publish Event");
        }
    }

    /// Counts a failed reconcile of `key`, logs it, and says when to retry.
    pub fn failed(&self, controller: &'static str, key: String, err: &Error) -> Duration {
        self.metrics
            .failures
            .with_label_values(&[controller, err.category()])
            .inc();
        self.metrics
            .reconciles
            .with_label_values(&[controller, "error"])
            .inc();
        let failures = {
            let mut map = self.failures.lock().expect("failure counts");
            let n = map.entry(key.clone()).or_insert(0);
            *n += 1;
            *n
        };
        let delay = backoff(failures);
        warn!(controller, key, error = %err, category = err.category(), failures, retry_in = ?delay, "reconcile failed");
        delay
    }

    /// Forgets the failures of `key` (it succeeded, or its object is gone).
    pub fn forget_failures(&self, key: &str) {
        self.failures.lock().expect("failure counts").remove(key);
    }
}

/// Delay before the `failures`-th retry of a failing reconcile: 1 s doubling, at most 5 min.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(9)).min(Duration::from_secs(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_reconciles_back_off_exponentially_up_to_five_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(16));
        assert_eq!(backoff(9), Duration::from_secs(256));
        assert_eq!(backoff(10), Duration::from_secs(300));
        assert_eq!(backoff(1000), Duration::from_secs(300));
    }
}

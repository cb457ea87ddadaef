//! Keeps the [`Registry`] in line with the tenant's `Webhook`s: a reflector
//! on the tenant namespace (list + watch, the dispatcher's RBAC allows no
//! more) feeds every change into [`Registry::sync`]. Out of each sync flow a
//! wake-up for the signing-Secret loader when a `Webhook` appeared or names
//! another Secret, the test sends to start, and the metrics of `Webhook`s
//! that are gone. The first complete listing marks the dispatcher synced.

use std::sync::Arc;

use futures::StreamExt;
use hookline_crds::Webhook;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::ops::metrics::Metrics;
use crate::tenant::endpoints::{Endpoint, Registry};

/// What the reflector task needs.
pub struct Reflector {
    /// The API client.
    pub client: Client,
    /// The tenant namespace.
    pub namespace: String,
    /// The endpoints to keep in line.
    pub registry: Arc<Registry>,
    /// Woken when signing Secrets must be read now.
    pub secrets: Arc<Notify>,
    /// Starts a test send (endpoint, nonce); the binary wires it to the delivery side, so
    /// this module does not depend on it.
    pub start_test: Box<dyn Fn(Arc<Endpoint>, String) + Send + Sync>,
    /// Metrics, to forget deleted `Webhook`s.
    pub metrics: Metrics,
    /// Set to true once the first listing is complete.
    pub synced: watch::Sender<bool>,
}

impl Reflector {
    /// Watches until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let api = Api::<Webhook>::namespaced(self.client.clone(), &self.namespace);
        let (store, writer) = reflector::store();
        let stream = watcher(api, watcher::Config::default().any_semantic())
            .default_backoff()
            .reflect(writer);
        futures::pin_mut!(stream);
        loop {
            let next = tokio::select! {
                () = stop.cancelled() => return,
                next = stream.next() => next,
            };
            match next {
                None => return,
                Some(Err(e)) => warn!(error = %e, "watching Webhooks"),
                Some(Ok(watcher::Event::Init | watcher::Event::InitApply(_))) => {}
                Some(Ok(event)) => {
                    let report = self.registry.sync(&store.state());
                    if report.secrets_to_load > 0 {
                        self.secrets.notify_one();
                    }
                    for name in &report.removed {
                        info!(webhook = %name, "Webhook removed");
                        self.metrics.forget_webhook(name);
                    }
                    for (endpoint, nonce) in report.tests {
                        (self.start_test)(endpoint, nonce);
                    }
                    if matches!(event, watcher::Event::InitDone) && !*self.synced.borrow() {
                        info!(webhooks = store.state().len(), "Webhooks listed");
                        let _ = self.synced.send(true);
                    }
                }
            }
        }
    }
}

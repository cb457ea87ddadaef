//! The tenant's `WebhookReplay`s, as far as the dispatcher cares: whether the replay a retry
//! record names still exists. Deleting a `WebhookReplay` cancels it; its deliveries not started
//! yet are then dropped (counted as `replay_cancelled` in `hookline_dispatcher_records_total`).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use hookline_core::replay::ReplayTag;
use hookline_crds::WebhookReplay;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, Resource};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Which replays exist.
#[derive(Clone)]
pub struct Replays {
    store: Option<Store<WebhookReplay>>,
    namespace: Arc<str>,
}

impl Replays {
    /// Watches the `WebhookReplay`s of `namespace` until `stop`; the store answers once the
    /// first listing is in.
    pub fn watch(client: Client, namespace: &str, stop: CancellationToken) -> Replays {
        let api = Api::<WebhookReplay>::namespaced(client, namespace);
        let (store, writer) = reflector::store();
        let stream = watcher(api, watcher::Config::default().any_semantic())
            .default_backoff()
            .reflect(writer)
            .applied_objects();
        tokio::spawn(async move {
            futures::pin_mut!(stream);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    next = stream.next() => match next {
                        None => return,
                        Some(Err(e)) => warn!(error = %e, "watching WebhookReplays"),
                        Some(Ok(_)) => {}
                    },
                }
            }
        });
        Replays {
            store: Some(store),
            namespace: namespace.into(),
        }
    }

    /// Replays without a watch: every replay counts as existing (for tests and tools).
    pub fn everything() -> Replays {
        Replays {
            store: None,
            namespace: "".into(),
        }
    }

    /// Waits up to `limit` for the first listing; answers whether it came.
    pub async fn ready(&self, limit: Duration) -> bool {
        match &self.store {
            None => true,
            Some(s) => tokio::time::timeout(limit, s.wait_until_ready())
                .await
                .is_ok_and(|r| r.is_ok()),
        }
    }

    /// Whether the replay of `tag` exists (same name, same uid, not being deleted). Before the
    /// first listing every replay counts as existing: a delivery is never dropped on a guess.
    pub fn active(&self, tag: &ReplayTag) -> bool {
        let Some(store) = &self.store else {
            return true;
        };
        if !store_ready(store) {
            return true;
        }
        store
            .get(&ObjectRef::new(&tag.name).within(&self.namespace))
            .is_some_and(|r| {
                r.meta().uid.as_deref() == Some(tag.uid.as_str())
                    && r.meta().deletion_timestamp.is_none()
            })
    }
}

fn store_ready(store: &Store<WebhookReplay>) -> bool {
    // `wait_until_ready` resolves at once when the first listing is in.
    futures::FutureExt::now_or_never(store.wait_until_ready()).is_some_and(|r| r.is_ok())
}

//! The scheduler-and-kubelet loop. A watcher over all Pods feeds [`Runner::handle`]: an
//! unscheduled Pod whose images and volumes the runner can run is bound to this node through
//! the `pods/binding` subresource (a Pod it cannot run gets `PodScheduled=False` and stays
//! Pending); a Pod bound to this node gets a pod task ([`crate::pod`]) that follows its
//! updates; a Pod that disappears has its task told so. On shutdown every pod task stops its
//! processes and the runner waits for them.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::{Arc, Mutex},
};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Binding, ObjectReference, Pod};
use kube::{
    Api, Client,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt as _, watcher},
};
use tokio_util::sync::CancellationToken;

use crate::{
    FIELD_MANAGER,
    backoff::BackoffPolicy,
    identity::ClusterInfo,
    image::{self, ImageRule},
    ipalloc::IpAllocator,
    memory::Enforcer,
    pod::{self, PodHandle},
    probe::Prober,
    volumes::{self, REASON_UNMOUNTABLE},
};

/// Reason of the `PodScheduled=False` condition on Pods the runner cannot run.
pub const REASON_UNRUNNABLE: &str = "PodRunnerCannotRunImage";

/// Everything the runner's tasks share.
pub struct Ctx {
    /// Admin client.
    pub client: Client,
    /// This node's name.
    pub node_name: String,
    /// Where pod directories live.
    pub state_dir: PathBuf,
    /// Which images run how.
    pub rules: Vec<ImageRule>,
    /// The apiserver, for pod kubeconfigs and service env.
    pub cluster: ClusterInfo,
    /// Pod IPs.
    pub ips: Mutex<IpAllocator>,
    /// Probe HTTP client.
    pub prober: Prober,
    /// Restart backoff.
    pub backoff: BackoffPolicy,
    /// The node IP (127.0.0.1).
    pub host_ip: String,
    /// Lifetime requested for ServiceAccount tokens.
    pub token_seconds: i64,
    /// `PATH` given to processes.
    pub host_path: String,
    /// Upper bound of the grace period when the runner itself shuts down.
    pub shutdown_grace: std::time::Duration,
    /// How containers are held to their memory limits.
    pub memory: Enforcer,
}

/// Unscheduled and not held back by scheduling gates.
fn awaits_scheduling(pod: &Pod) -> bool {
    let Some(spec) = &pod.spec else { return false };
    spec.node_name.as_deref().unwrap_or_default().is_empty()
        && spec.scheduling_gates.as_ref().is_none_or(Vec::is_empty)
        && pod.metadata.deletion_timestamp.is_none()
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Why the runner cannot take a Pod: reason and message of its `PodScheduled=False`.
fn unrunnable(pod: &Pod, rules: &[ImageRule]) -> Option<(&'static str, String)> {
    if let Err(image) = image::runnable(pod, rules) {
        let msg = format!(
            "the hookline pod runner cannot run image {image:?}: no --image-map or --host-image prefix matches"
        );
        return Some((REASON_UNRUNNABLE, msg));
    }
    volumes::refusal(pod).map(|msg| (REASON_UNMOUNTABLE, msg))
}

fn marked_unrunnable(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && matches!(
                        c.reason.as_deref(),
                        Some(REASON_UNRUNNABLE | REASON_UNMOUNTABLE)
                    )
            })
        })
}

/// The watch loop's state.
pub struct Runner {
    ctx: Arc<Ctx>,
    pods: HashMap<String, PodHandle>,
}

impl Runner {
    /// A runner with no pods yet.
    pub fn new(ctx: Arc<Ctx>) -> Self {
        Self {
            ctx,
            pods: HashMap::new(),
        }
    }

    /// Watches Pods until `shutdown`, then stops every pod task and waits for them.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let api: Api<Pod> = Api::all(self.ctx.client.clone());
        let mut events = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        let mut listed: Option<HashSet<String>> = None;
        loop {
            let event = tokio::select! {
                () = shutdown.cancelled() => break,
                e = events.next() => e,
            };
            match event {
                None => break,
                Some(Err(e)) => tracing::warn!(error = %e, "pod watch error"),
                Some(Ok(watcher::Event::Init)) => listed = Some(HashSet::new()),
                Some(Ok(watcher::Event::InitApply(p))) => {
                    if let (Some(seen), Some(uid)) = (listed.as_mut(), p.metadata.uid.clone()) {
                        seen.insert(uid);
                    }
                    self.handle(p).await;
                }
                Some(Ok(watcher::Event::InitDone)) => {
                    let seen = listed.take().unwrap_or_default();
                    let gone: Vec<String> = self
                        .pods
                        .keys()
                        .filter(|uid| !seen.contains(*uid))
                        .cloned()
                        .collect();
                    for uid in gone {
                        tracing::info!(uid, "pod vanished while the watch was down");
                        self.pods.remove(&uid);
                    }
                }
                Some(Ok(watcher::Event::Apply(p))) => self.handle(p).await,
                Some(Ok(watcher::Event::Delete(p))) => {
                    if let Some(uid) = &p.metadata.uid {
                        // Dropping the handle tells the task the Pod is gone.
                        self.pods.remove(uid);
                    }
                }
            }
            self.pods.retain(|_, h| !h.task.is_finished());
        }
        tracing::info!(pods = self.pods.len(), "stopping all pods");
        let handles: Vec<PodHandle> = self.pods.drain().map(|(_, h)| h).collect();
        for h in &handles {
            h.shutdown.cancel();
        }
        for h in handles {
            let _ = h.task.await;
        }
    }

    /// Reacts to one observed Pod.
    async fn handle(&mut self, pod: Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .unwrap_or_default();
        if node == self.ctx.node_name {
            if let Some(h) = self.pods.get(&uid) {
                h.updates.send_replace(Arc::new(pod));
                return;
            }
            // Without a pod task no process of this Pod runs (leftovers of a previous run are
            // killed at startup), so a deletion can complete at once.
            if pod.metadata.deletion_timestamp.is_some() {
                self.delete_now(&pod).await;
                return;
            }
            if is_terminal(&pod) {
                return;
            }
            self.pods
                .insert(uid, pod::spawn(self.ctx.clone(), Arc::new(pod)));
            return;
        }
        if !awaits_scheduling(&pod) {
            return;
        }
        match unrunnable(&pod, &self.ctx.rules) {
            None => self.bind(&pod).await,
            Some((reason, msg)) if !marked_unrunnable(&pod) => {
                self.mark_unrunnable(&pod, reason, &msg).await;
            }
            Some(_) => {}
        }
    }

    /// Binds a Pod to this node, as a scheduler does.
    async fn bind(&self, pod: &Pod) {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let binding = Binding {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(ns.to_string()),
                uid: pod.metadata.uid.clone(),
                ..Default::default()
            },
            target: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(self.ctx.node_name.clone()),
                ..Default::default()
            },
        };
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), ns);
        match api
            .create_subresource::<_, serde_json::Value>(
                "binding",
                name,
                &PostParams::default(),
                &binding,
            )
            .await
        {
            Ok(_) => {
                tracing::info!(pod = %format!("{ns}/{name}"), node = %self.ctx.node_name, "bound pod")
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                tracing::debug!(pod = %format!("{ns}/{name}"), "pod already bound");
            }
            Err(e) => tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "cannot bind pod"),
        }
    }

    /// Sets `PodScheduled=False` with `reason` and `message` on a Pod the runner cannot run.
    async fn mark_unrunnable(&self, pod: &Pod, reason: &str, message: &str) {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let patch = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": ns},
            "status": {"conditions": [{
                "type": "PodScheduled",
                "status": "False",
                "reason": reason,
                "message": message,
                "lastTransitionTime": crate::status::now().to_string(),
            }]},
        });
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), ns);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        if let Err(e) = api.patch_status(name, &params, &Patch::Apply(patch)).await {
            tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "cannot mark pod unschedulable");
        } else {
            tracing::info!(pod = %format!("{ns}/{name}"), reason, message, "cannot run pod; left pending");
        }
    }

    /// Finishes the deletion of a Pod none of whose processes run.
    async fn delete_now(&self, pod: &Pod) {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), ns);
        let params = kube::api::DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(kube::api::Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        if let Err(e) = api.delete(name, &params).await {
            tracing::debug!(pod = %format!("{ns}/{name}"), error = %e, "cannot delete terminal pod");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn pod_without_node_and_gates_awaits_scheduling() {
        assert!(awaits_scheduling(&pod(
            json!({"metadata": {"name": "p"}, "spec": {"containers": []}})
        )));
        assert!(!awaits_scheduling(&pod(json!({"metadata": {"name": "p"},
            "spec": {"containers": [], "schedulingGates": [{"name": "g"}]}}))));
        assert!(!awaits_scheduling(&pod(json!({"metadata": {"name": "p"},
            "spec": {"containers": [], "nodeName": "n"}}))));
    }

    #[test]
    fn pod_marked_by_the_runner_is_recognised() {
        let p = pod(
            json!({"metadata": {"name": "p"}, "spec": {"containers": []},
            "status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": REASON_UNRUNNABLE}]}}),
        );
        assert!(marked_unrunnable(&p));
    }

    #[test]
    fn a_pod_with_a_claim_is_not_taken_and_says_why() {
        let rules = [ImageRule::Host {
            prefix: "hookline.test/".into(),
        }];
        let p = pod(json!({"metadata": {"name": "p"}, "spec": {
            "containers": [{"name": "c", "image": "hookline.test/sh", "command": ["sh"]}],
            "volumes": [{"name": "store", "persistentVolumeClaim": {"claimName": "data"}}]}}));
        let (reason, msg) = unrunnable(&p, &rules).unwrap();
        assert_eq!(reason, REASON_UNMOUNTABLE);
        assert!(msg.contains("persistentVolumeClaim \"data\""), "{msg}");
        let p = pod(json!({"metadata": {"name": "p"}, "spec": {
            "containers": [{"name": "c", "image": "hookline.test/sh", "command": ["sh"]}],
            "volumes": [{"name": "store", "emptyDir": {}}]}}));
        assert_eq!(unrunnable(&p, &rules), None);
    }
}

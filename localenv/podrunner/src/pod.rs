//! One bound Pod, from taking it on to deleting it. The pod task claims a loopback IP,
//! prepares the pod directory (`STATE_DIR/<namespace>_<name>/`) with a ServiceAccount token,
//! a kubeconfig and the `emptyDir` volumes ([`crate::volumes`]), starts a [`ContainerTask`]
//! per container, and writes the Pod status (server-side apply on the status subresource)
//! whenever a container record changes. When the Pod gets a deletionTimestamp it stops the
//! processes within the grace period, removes the volumes and deletes the Pod with
//! `gracePeriodSeconds=0`, as the kubelet does; when the Pod vanishes it stops the processes
//! and removes the volumes; when the runner shuts down it only stops the processes.

use std::{net::Ipv4Addr, path::PathBuf, sync::Arc, time::Duration};

use jiff::Timestamp;
use k8s_openapi::{
    api::core::v1::{Pod, PodStatus},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, Preconditions},
};
use tokio::{
    sync::{mpsc, watch},
    task::{JoinHandle, JoinSet},
};
use tokio_util::sync::CancellationToken;

use crate::{
    FIELD_MANAGER,
    container::{ContainerTask, RestartPolicy},
    identity,
    runner::Ctx,
    status::{self, ContainerRecord, State, StatusInput, now},
    volumes,
};

/// Default `terminationGracePeriodSeconds`.
const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// What the container tasks of a pod share.
#[derive(Debug)]
pub struct PodView {
    /// The Pod as first seen.
    pub pod: Arc<Pod>,
    /// `namespace/name`, for logs.
    pub key: String,
    /// The pod directory (logs, pid files, token, kubeconfig).
    pub dir: PathBuf,
    /// `HOME` and default working directory of the processes (`<pod dir>/home`): kept apart
    /// from the pod directory so a process serving its working directory cannot serve the
    /// token, and so no `~/.kube/config` of the host is found.
    pub home: PathBuf,
    /// The pod's loopback IP.
    pub pod_ip: Ipv4Addr,
    /// Variables every container gets before its own (`PATH`, `HOME`, `KUBECONFIG`, ...).
    pub base_env: Vec<(String, String)>,
    /// `spec.restartPolicy`.
    pub restart_policy: RestartPolicy,
    /// `spec.terminationGracePeriodSeconds`.
    pub grace: Duration,
}

/// The runner's handle on a pod task.
pub struct PodHandle {
    /// Newer versions of the Pod go here; dropping it tells the task the Pod vanished.
    pub updates: watch::Sender<Arc<Pod>>,
    /// Cancelled when the runner shuts down: stop processes, leave the Pod alone.
    pub shutdown: CancellationToken,
    /// The task.
    pub task: JoinHandle<()>,
}

/// Starts the task for a Pod bound to this node.
pub fn spawn(ctx: Arc<Ctx>, pod: Arc<Pod>) -> PodHandle {
    let (updates, rx) = watch::channel(pod);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run(ctx, rx, shutdown.clone()));
    PodHandle {
        updates,
        shutdown,
        task,
    }
}

/// The directory of a pod under the state dir.
pub fn pod_dir(ctx: &Ctx, pod: &Pod) -> PathBuf {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    ctx.state_dir.join(format!("{ns}_{name}"))
}

fn seconds(v: Option<i64>) -> Option<Duration> {
    v.and_then(|s| u64::try_from(s).ok())
        .map(Duration::from_secs)
}

/// Grace period for a deletion: the one the apiserver recorded, else the spec's.
fn deletion_grace(pod: &Pod) -> Duration {
    seconds(pod.metadata.deletion_grace_period_seconds)
        .or_else(|| {
            seconds(
                pod.spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds),
            )
        })
        .unwrap_or(DEFAULT_GRACE)
}

/// Records to start from: restart counts carry over from a previous run of the runner.
fn initial_records(pod: &Pod) -> Vec<ContainerRecord> {
    let previous = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref());
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    containers
        .iter()
        .map(|c| {
            let image = c.image.as_deref().unwrap_or_default();
            let mut rec = ContainerRecord::creating(&c.name, image, 0);
            if let Some(prev) = previous.and_then(|p| p.iter().find(|s| s.name == c.name)) {
                let ran = prev
                    .state
                    .as_ref()
                    .is_some_and(|s| s.running.is_some() || s.terminated.is_some());
                rec.restart_count = prev.restart_count + i32::from(ran);
                if ran || prev.restart_count > 0 {
                    rec.last_state = Some(State::Terminated {
                        exit_code: 137,
                        signal: None,
                        reason: "Unknown".into(),
                        message: Some("the process was gone when the pod runner restarted".into()),
                        started_at: None,
                        finished_at: now(),
                        pid: None,
                    });
                }
            }
            rec
        })
        .collect()
}

/// Returns the pod IP to the allocator when the pod task ends.
struct IpClaim {
    ctx: Arc<Ctx>,
    ip: Ipv4Addr,
}

impl IpClaim {
    /// The IP the Pod already has (a previous run) when free, else a new one.
    fn take(ctx: &Arc<Ctx>, pod: &Pod) -> Option<Self> {
        let mut ips = ctx
            .ips
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let previous = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok());
        let ip = previous
            .filter(|ip| ips.reserve(*ip))
            .or_else(|| ips.allocate())?;
        Some(Self {
            ctx: ctx.clone(),
            ip,
        })
    }
}

impl Drop for IpClaim {
    fn drop(&mut self) {
        self.ctx
            .ips
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .release(self.ip);
    }
}

/// Writes the Pod status when it differs from what was written last.
struct StatusWriter {
    api: Api<Pod>,
    name: String,
    namespace: String,
    pod_ip: Ipv4Addr,
    host_ip: String,
    start_time: Timestamp,
    last: Option<PodStatus>,
}

impl StatusWriter {
    /// Computes and writes the status; false when the write failed (to be retried).
    async fn write(&mut self, records: &[ContainerRecord]) -> bool {
        let previous = self
            .last
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let status = status::pod_status(StatusInput {
            records,
            pod_ip: self.pod_ip,
            host_ip: &self.host_ip,
            start_time: self.start_time,
            previous: &previous,
            now: now(),
        });
        if self.last.as_ref() == Some(&status) {
            return true;
        }
        let patch = Pod {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                ..Default::default()
            },
            spec: None,
            status: Some(status.clone()),
        };
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match self
            .api
            .patch_status(&self.name, &params, &Patch::Apply(&patch))
            .await
        {
            Ok(_) => {
                self.last = Some(status);
                true
            }
            // Gone: the watch reports that; nothing to retry.
            Err(kube::Error::Api(e)) if e.code == 404 => true,
            Err(e) => {
                tracing::warn!(pod = %format!("{}/{}", self.namespace, self.name), error = %e, "cannot write pod status");
                false
            }
        }
    }
}

/// Requests a token and writes `token` and `kubeconfig` into the pod dir; returns when the
/// token expires.
async fn refresh_identity(
    ctx: &Ctx,
    pod: &Pod,
    dir: &std::path::Path,
) -> crate::error::Result<Timestamp> {
    let (token, expires) = identity::request_token(&ctx.client, pod, ctx.token_seconds).await?;
    let token_file = dir.join("token");
    identity::write_private(&token_file, &token)?;
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    identity::write_private(
        &dir.join("kubeconfig"),
        &identity::pod_kubeconfig(&ctx.cluster, ns, &token_file),
    )?;
    Ok(expires)
}

/// Keeps the pod's token fresh: renews at 80 % of its lifetime, retries every 10 s on error.
async fn token_refresher(ctx: Arc<Ctx>, pod: Arc<Pod>, dir: PathBuf, mut expires: Timestamp) {
    loop {
        let left = expires.duration_since(Timestamp::now()).as_secs().max(0);
        let wait = Duration::from_secs(u64::try_from(left).unwrap_or(0) * 4 / 5)
            .max(Duration::from_secs(10));
        tokio::time::sleep(wait).await;
        match refresh_identity(&ctx, &pod, &dir).await {
            Ok(t) => expires = t,
            Err(e) => {
                tracing::warn!(error = %e, category = e.category(), dir = %dir.display(), "cannot refresh pod token");
                expires = Timestamp::now();
            }
        }
    }
}

/// How the pod task ended its main loop.
enum Exit {
    Deleting(Duration),
    Vanished(Duration),
    Shutdown(Duration),
}

/// Waits for the end of the pod task's work: the Pod deleted (deletionTimestamp), vanished,
/// or the runner shutting down (stopping with `shutdown_grace`).
async fn next_exit(
    updates: &mut watch::Receiver<Arc<Pod>>,
    shutdown: &CancellationToken,
    shutdown_grace: Duration,
) -> Exit {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Exit::Shutdown(shutdown_grace),
            changed = updates.changed() => {
                let latest = updates.borrow_and_update().clone();
                match changed {
                    Err(_) => return Exit::Vanished(deletion_grace(&latest)),
                    Ok(()) if latest.metadata.deletion_timestamp.is_some() => {
                        return Exit::Deleting(deletion_grace(&latest));
                    }
                    Ok(()) => {}
                }
            }
        }
    }
}

async fn run(ctx: Arc<Ctx>, mut updates: watch::Receiver<Arc<Pod>>, shutdown: CancellationToken) {
    let pod = updates.borrow_and_update().clone();
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = pod.metadata.name.clone().unwrap_or_default();
    let key = format!("{namespace}/{name}");
    let dir = pod_dir(&ctx, &pod);
    let home = dir.join("home");
    if let Err(e) = std::fs::create_dir_all(&home) {
        tracing::error!(pod = %key, dir = %dir.display(), error = %e, "cannot create pod dir");
    }
    let Some(ip) = IpClaim::take(&ctx, &pod) else {
        tracing::error!(pod = %key, "no free pod IP");
        return;
    };
    let spec = pod.spec.clone().unwrap_or_default();
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    if let Err(e) = volumes::prepare(&dir, uid, &spec) {
        // Each container creates its own mount directories again and reports a failure.
        tracing::warn!(pod = %key, error = %e, "cannot prepare pod volumes");
    }
    let volumes_dir = volumes::volumes_dir(&dir);
    let automount = spec.automount_service_account_token != Some(false);
    let mut base_env = vec![
        ("PATH".to_string(), ctx.host_path.clone()),
        ("HOME".into(), home.display().to_string()),
        ("HOSTNAME".into(), name.clone()),
    ];
    base_env.extend(ctx.cluster.service_env());
    if automount {
        base_env.push((
            "KUBECONFIG".into(),
            dir.join("kubeconfig").display().to_string(),
        ));
    }
    let view = Arc::new(PodView {
        pod: pod.clone(),
        key: key.clone(),
        dir: dir.clone(),
        home,
        pod_ip: ip.ip,
        base_env,
        restart_policy: RestartPolicy::parse(spec.restart_policy.as_deref()),
        grace: seconds(spec.termination_grace_period_seconds).unwrap_or(DEFAULT_GRACE),
    });
    let mut records = initial_records(&pod);
    let mut writer = StatusWriter {
        api: Api::namespaced(ctx.client.clone(), &namespace),
        name: name.clone(),
        namespace: namespace.clone(),
        pod_ip: ip.ip,
        host_ip: ctx.host_ip.clone(),
        start_time: pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.clone())
            .map_or_else(now, |t| t.0),
        last: None,
    };
    tracing::info!(pod = %key, ip = %ip.ip, "taking on pod");
    let mut dirty = !writer.write(&records).await;

    // Identity first (retried while the pod lives), then the containers.
    let mut refresher: Option<JoinHandle<()>> = None;
    let mut early_exit = None;
    while automount && refresher.is_none() {
        match refresh_identity(&ctx, &pod, &dir).await {
            Ok(expires) => {
                let task = token_refresher(ctx.clone(), pod.clone(), dir.clone(), expires);
                refresher = Some(tokio::spawn(task));
            }
            Err(e) => {
                tracing::warn!(pod = %key, error = %e, category = e.category(), "cannot get ServiceAccount token");
                let msg = format!("cannot get a ServiceAccount token: {e}");
                for r in &mut records {
                    r.state = State::waiting("ContainerCreating", msg.clone());
                }
                writer.write(&records).await;
                tokio::select! {
                    exit = next_exit(&mut updates, &shutdown, Duration::ZERO) => {
                        early_exit = Some(exit);
                        break;
                    }
                    () = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        }
    }

    let (stop_tx, stop_rx) = watch::channel(None);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut containers = JoinSet::new();
    if early_exit.is_none() {
        for (index, c) in spec.containers.iter().enumerate() {
            let task = ContainerTask {
                ctx: ctx.clone(),
                view: view.clone(),
                index,
                spec: c.clone(),
                record: records[index].clone(),
                mounts: volumes::plan(&spec, c, &volumes_dir),
                updates: tx.clone(),
                stop: stop_rx.clone(),
            };
            containers.spawn(task.run());
        }
    }
    drop(tx);
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let exit = loop {
        if let Some(exit) = early_exit.take() {
            break exit;
        }
        if dirty {
            dirty = !writer.write(&records).await;
        }
        tokio::select! {
            Some((i, rec)) = rx.recv() => {
                records[i] = rec;
                while let Ok((i, rec)) = rx.try_recv() {
                    records[i] = rec;
                }
                dirty = true;
            }
            exit = next_exit(&mut updates, &shutdown, view.grace.min(ctx.shutdown_grace)) => break exit,
            Some(_) = containers.join_next(), if !containers.is_empty() => {}
            _ = tick.tick() => {}
        }
    };
    if let Some(r) = refresher {
        r.abort();
    }
    let grace = match exit {
        Exit::Deleting(g) | Exit::Vanished(g) | Exit::Shutdown(g) => g,
    };
    tracing::info!(pod = %key, grace_seconds = grace.as_secs(), "stopping pod processes");
    stop_tx.send_replace(Some(grace));
    while containers.join_next().await.is_some() {}
    while let Ok((i, rec)) = rx.try_recv() {
        records[i] = rec;
    }
    if let Exit::Deleting(_) | Exit::Vanished(_) = exit {
        // emptyDir volumes live as long as their Pod; the logs stay in the pod dir.
        if let Err(e) = volumes::remove(&dir) {
            tracing::warn!(pod = %key, error = %e, "cannot remove pod volumes");
        }
    }
    if let Exit::Deleting(_) = exit {
        // Final statuses first (best effort), then the deletion the kubelet does.
        writer.write(&records).await;
        delete_pod(&writer.api, &name, pod.metadata.uid.clone()).await;
        tracing::info!(pod = %key, "pod deleted");
    }
    drop(ip);
}

/// Deletes the Pod with grace period 0, guarded by its uid; retried a few times.
async fn delete_pod(api: &Api<Pod>, name: &str, uid: Option<String>) {
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid,
            resource_version: None,
        }),
        ..Default::default()
    };
    for attempt in 0..5 {
        match api.delete(name, &params).await {
            Ok(_) => return,
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => return,
            Err(e) => {
                tracing::warn!(pod = name, attempt, error = %e, "cannot delete pod");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deletion_grace_prefers_the_recorded_deletion_period() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "deletionGracePeriodSeconds": 3},
            "spec": {"terminationGracePeriodSeconds": 5, "containers": []}
        }))
        .unwrap();
        assert_eq!(deletion_grace(&pod), Duration::from_secs(3));
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"}, "spec": {"terminationGracePeriodSeconds": 5, "containers": []}
        }))
        .unwrap();
        assert_eq!(deletion_grace(&pod), Duration::from_secs(5));
    }

    #[test]
    fn restart_count_carries_over_from_a_previous_run() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]},
            "status": {"containerStatuses": [{
                "name": "a", "image": "x", "imageID": "", "ready": true, "restartCount": 2,
                "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
            }]}
        }))
        .unwrap();
        let records = initial_records(&pod);
        assert_eq!(records[0].restart_count, 3);
        assert!(records[0].last_state.is_some());
        assert_eq!(records[1].restart_count, 0);
        assert!(records[1].last_state.is_none());
    }
}

//! The runner's Node. [`register`] server-side-applies a Ready Node with this host's capacity
//! (cpu, memory, pods) and address 127.0.0.1; [`run_heartbeats`] re-applies its status and
//! renews its Lease in `kube-node-lease` every interval, so kube-controller-manager's node
//! lifecycle controller keeps it Ready and never evicts its Pods. The objects are built by
//! pure functions from a [`NodeFacts`] snapshot.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::{
    api::{coordination::v1::Lease, coordination::v1::LeaseSpec, core::v1::Node},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference},
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::{FIELD_MANAGER, error::Result, status::now};

/// How long the node's Lease is valid without renewal (the kubelet's default).
const LEASE_DURATION_SECONDS: i32 = 40;

/// What the Node says about this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    /// Node name.
    pub name: String,
    /// CPU count.
    pub cpu: String,
    /// Memory as a quantity, e.g. `16318724Ki`.
    pub memory: String,
    /// Maximum pod count.
    pub pods: String,
    /// `amd64`, `arm64`, ...
    pub arch: String,
    /// Kernel release.
    pub kernel: String,
    /// Boot id.
    pub boot_id: String,
    /// Machine id.
    pub machine_id: String,
}

impl NodeFacts {
    /// Reads the facts of this host (falling back to placeholders where /proc is silent).
    pub fn gather(name: &str, pods: u32) -> Self {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_string())
                .ok()
        };
        let memory = read("/proc/meminfo")
            .and_then(|m| {
                m.lines().find_map(|l| {
                    l.strip_prefix("MemTotal:")?
                        .trim()
                        .strip_suffix("kB")
                        .map(|kb| kb.trim().to_string())
                })
            })
            .map_or_else(|| "8Gi".to_string(), |kb| format!("{kb}Ki"));
        let cpu = std::thread::available_parallelism()
            .map_or(1, usize::from)
            .to_string();
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        Self {
            name: name.to_string(),
            cpu,
            memory,
            pods: pods.to_string(),
            arch: arch.to_string(),
            kernel: read("/proc/sys/kernel/osrelease").unwrap_or_default(),
            boot_id: read("/proc/sys/kernel/random/boot_id").unwrap_or_default(),
            machine_id: read("/etc/machine-id").unwrap_or_default(),
        }
    }
}

/// The Node object (metadata and spec) the runner applies.
pub fn node_object(facts: &NodeFacts) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": facts.name,
            "labels": {
                "kubernetes.io/hostname": facts.name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": facts.arch,
                "hookline.dev/pod-runner": "true",
            },
        },
        "spec": {},
    })
}

/// The Node status the runner applies: Ready since `ready_since`, heartbeat `now`.
pub fn node_status(facts: &NodeFacts, ready_since: Timestamp, now: Timestamp) -> Value {
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({
            "type": type_, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": now.to_string(), "lastTransitionTime": ready_since.to_string(),
        })
    };
    let resources = json!({"cpu": facts.cpu, "memory": facts.memory, "pods": facts.pods});
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": facts.name},
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "pod runner has sufficient memory"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "pod runner has no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "pod runner has sufficient PID"),
                condition("Ready", "True", "KubeletReady", "hookline pod runner is posting ready status"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": facts.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "architecture": facts.arch,
                "bootID": facts.boot_id,
                "containerRuntimeVersion": concat!("hookline-podrunner://", env!("CARGO_PKG_VERSION")),
                "kernelVersion": facts.kernel,
                "kubeProxyVersion": "",
                "kubeletVersion": "v1.35.0",
                "machineID": facts.machine_id,
                "operatingSystem": "linux",
                "osImage": "hookline pod runner (local processes)",
                "systemUUID": facts.machine_id,
            },
        },
    })
}

/// The node's Lease, renewed at `now`.
pub fn lease(node: &str, node_uid: &str, now: Timestamp) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(node.to_string()),
            namespace: Some("kube-node-lease".into()),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: node.to_string(),
                uid: node_uid.to_string(),
                ..Default::default()
            }]),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(node.to_string()),
            lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
            renew_time: Some(MicroTime(now)),
            ..Default::default()
        }),
    }
}

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Applies the Node and its status; returns the Node's uid.
///
/// # Errors
/// When the apiserver rejects either apply.
pub async fn register(
    client: &Client,
    facts: &NodeFacts,
    ready_since: Timestamp,
) -> Result<String> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = nodes
        .patch(
            &facts.name,
            &apply_params(),
            &Patch::Apply(node_object(facts)),
        )
        .await?;
    heartbeat(
        client,
        facts,
        ready_since,
        node.metadata.uid.as_deref().unwrap_or_default(),
    )
    .await?;
    Ok(node.metadata.uid.unwrap_or_default())
}

/// Re-applies the Node status with a fresh heartbeat and renews the Lease.
///
/// # Errors
/// When the apiserver rejects an apply.
pub async fn heartbeat(
    client: &Client,
    facts: &NodeFacts,
    ready_since: Timestamp,
    uid: &str,
) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let status = node_status(facts, ready_since, now());
    nodes
        .patch_status(&facts.name, &apply_params(), &Patch::Apply(status))
        .await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let lease = lease(&facts.name, uid, Timestamp::now());
    leases
        .patch(&facts.name, &apply_params(), &Patch::Apply(lease))
        .await?;
    Ok(())
}

/// Heartbeats every `interval` until `shutdown`; re-registers the Node if it was deleted.
pub async fn run_heartbeats(
    client: Client,
    facts: NodeFacts,
    ready_since: Timestamp,
    mut uid: String,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let result = match heartbeat(&client, &facts, ready_since, &uid).await {
            Err(crate::error::Error::Kube(kube::Error::Api(e))) if e.code == 404 => {
                register(&client, &facts, ready_since)
                    .await
                    .map(|new_uid| uid = new_uid)
            }
            other => other,
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, category = e.category(), node = %facts.name, "node heartbeat failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> NodeFacts {
        NodeFacts {
            name: "hookline-local".into(),
            cpu: "2".into(),
            memory: "1000Ki".into(),
            pods: "110".into(),
            arch: "amd64".into(),
            kernel: "6.1".into(),
            boot_id: "b".into(),
            machine_id: "m".into(),
        }
    }

    #[test]
    fn node_status_is_ready_with_capacity_and_a_fresh_heartbeat() {
        let since = Timestamp::from_second(100).unwrap();
        let now = Timestamp::from_second(200).unwrap();
        let v = node_status(&facts(), since, now);
        let node: Node = serde_json::from_value(v).unwrap();
        let status = node.status.unwrap();
        let ready = status
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "True");
        assert_eq!(ready.last_heartbeat_time.unwrap().0, now);
        assert_eq!(ready.last_transition_time.unwrap().0, since);
        let cap = status.capacity.unwrap();
        assert_eq!(cap["cpu"].0, "2");
        assert_eq!(cap["pods"].0, "110");
        assert_eq!(status.allocatable.unwrap()["memory"].0, "1000Ki");
    }

    #[test]
    fn lease_is_held_by_the_node_and_owned_by_it() {
        let l = lease(
            "hookline-local",
            "uid-1",
            Timestamp::from_second(5).unwrap(),
        );
        assert_eq!(l.metadata.namespace.as_deref(), Some("kube-node-lease"));
        assert_eq!(l.metadata.owner_references.unwrap()[0].uid, "uid-1");
        assert_eq!(
            l.spec.unwrap().holder_identity.as_deref(),
            Some("hookline-local")
        );
    }

    #[test]
    fn gathered_facts_have_a_memory_quantity_and_cpus() {
        let f = NodeFacts::gather("n", 110);
        assert!(f.memory.ends_with("Ki") || f.memory.ends_with("Gi"));
        assert!(f.cpu.parse::<u32>().unwrap() >= 1);
    }
}

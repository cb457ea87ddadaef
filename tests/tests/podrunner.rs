//! The pod runner stands in for a kubelet: a Deployment made by the real Deployment and
//! ReplicaSet controllers becomes local processes with Ready Pods, a killed process is
//! restarted, and deleting the Deployment ends its processes. A container over its
//! `resources.limits.memory` is OOM-killed and reported as the kubelet reports it.

use std::time::Duration;

use hookline_tests::{
    Env, LogDump, TestNamespace,
    pods::{self, alive, is_ready},
    wait,
};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ContainerStatus, Pod},
};
use kube::{
    Api,
    api::{DeleteParams, ListParams, PostParams},
};
use serde_json::json;

/// The pid of the `web` container of Pod `pod` in `ns`.
fn read_pid(ns: &str, pod: &str) -> Option<i32> {
    pods::pid(ns, pod, "web")
}

#[tokio::test]
async fn deployment_replicas_run_as_local_processes_restart_when_killed_and_end_when_deleted() {
    let _dump = LogDump::new();
    let env = Env::get().unwrap();
    let client = env.client().await.unwrap();
    let ns = TestNamespace::create(&env, &client, "pods").await.unwrap();
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns.name);
    let pods = Api::<Pod>::namespaced(client.clone(), &ns.name);

    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{
                        "name": "web",
                        "image": "hookline.test/python:3",
                        "command": ["python3", "-m", "http.server", "--bind", "$(POD_IP)", "8080"],
                        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1}
                    }]
                }
            }
        }
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();

    let names = wait::until(
        Duration::from_secs(90),
        "2 Ready pods with live processes",
        || async {
            let list = pods.list(&ListParams::default()).await?;
            let live: Vec<String> = list
                .items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none() && is_ready(p))
                .filter_map(|p| p.metadata.name.clone())
                .filter(|n| read_pid(&ns.name, n).is_some_and(alive))
                .collect();
            Ok((live.len() == 2).then_some(live))
        },
    )
    .await
    .unwrap();

    // Each replica has its own loopback IP, so both bind port 8080.
    let ips: Vec<String> = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .collect();
    assert_eq!(ips.len(), 2);
    assert_ne!(ips[0], ips[1]);
    assert!(ips.iter().all(|ip| ip.starts_with("127.")), "{ips:?}");

    wait::until(
        Duration::from_secs(60),
        "Deployment available with 2 replicas",
        || async {
            let d = deployments.get("web").await?;
            let s = d.status.unwrap_or_default();
            Ok((s.available_replicas == Some(2) && s.ready_replicas == Some(2)).then_some(()))
        },
    )
    .await
    .unwrap();

    // Kill one process: the runner restarts it and counts the restart.
    let victim = &names[0];
    let old_pid = read_pid(&ns.name, victim).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait::until(
        Duration::from_secs(60),
        "killed container restarted",
        || async {
            let pod = pods.get(victim).await?;
            let restarts = pod
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|cs| cs.first())
                .map_or(0, |c| c.restart_count);
            let new_pid = read_pid(&ns.name, victim);
            Ok((restarts >= 1
                && new_pid.is_some_and(|p| p != old_pid && alive(p))
                && is_ready(&pod))
            .then_some(()))
        },
    )
    .await
    .unwrap();

    // Delete the Deployment: both processes end and the Pods go away.
    let pids: Vec<i32> = names.iter().filter_map(|n| read_pid(&ns.name, n)).collect();
    assert_eq!(pids.len(), 2);
    deployments
        .delete("web", &DeleteParams::foreground())
        .await
        .unwrap();
    wait::until(
        Duration::from_secs(60),
        "both processes ended and pods gone",
        || async {
            let left = pods.list(&ListParams::default()).await?.items.len();
            Ok((left == 0 && pids.iter().all(|p| !alive(*p))).then_some(()))
        },
    )
    .await
    .unwrap();
}

/// A `python3 -c` command that allocates and touches `mib` MiB, then sleeps.
fn allocate_and_sleep(mib: u32) -> serde_json::Value {
    let code = format!(
        "import time; b = b'\\x01' * ({mib} << 20); print('allocated {mib} MiB', flush=True); time.sleep(3600)"
    );
    json!(["python3", "-c", code])
}

/// Whether `state` is `terminated` with reason `OOMKilled` and exit code 137.
fn oom_killed(state: Option<&k8s_openapi::api::core::v1::ContainerState>) -> bool {
    state
        .and_then(|s| s.terminated.as_ref())
        .is_some_and(|t| t.reason.as_deref() == Some("OOMKilled") && t.exit_code == 137)
}

#[tokio::test]
async fn a_container_over_its_memory_limit_is_oom_killed_and_one_within_keeps_running() {
    let _dump = LogDump::new();
    let env = Env::get().unwrap();
    let client = env.client().await.unwrap();
    let ns = TestNamespace::create(&env, &client, "oom").await.unwrap();
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns.name);
    let pods = Api::<Pod>::namespaced(client.clone(), &ns.name);

    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "mem"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "mem"}},
            "template": {
                "metadata": {"labels": {"app": "mem"}},
                "spec": {
                    "terminationGracePeriodSeconds": 2,
                    "containers": [{
                        "name": "hog",
                        "image": "hookline.test/python:3",
                        "command": allocate_and_sleep(256),
                        "resources": {"limits": {"memory": "64Mi"}}
                    }, {
                        "name": "calm",
                        "image": "hookline.test/python:3",
                        "command": allocate_and_sleep(32),
                        "resources": {"limits": {"memory": "256Mi"}}
                    }]
                }
            }
        }
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();

    let status_of = |pod: &Pod, name: &str| -> Option<ContainerStatus> {
        pod.status
            .as_ref()?
            .container_statuses
            .as_ref()?
            .iter()
            .find(|c| c.name == name)
            .cloned()
    };
    let (pod, hog) = wait::until(
        Duration::from_secs(60),
        "container hog OOMKilled (exit code 137) and restarted",
        || async {
            let list = pods.list(&ListParams::default()).await?;
            let Some(pod) = list.items.into_iter().next() else {
                return Ok(None);
            };
            let Some(hog) = status_of(&pod, "hog") else {
                return Ok(None);
            };
            let killed = oom_killed(hog.last_state.as_ref()) || oom_killed(hog.state.as_ref());
            Ok((killed && hog.restart_count >= 1).then_some((pod, hog)))
        },
    )
    .await
    .unwrap();

    let name = pod.metadata.name.clone().unwrap();
    let calm = status_of(&pod, "calm").unwrap();
    assert_eq!(
        calm.restart_count, 0,
        "calm restarted: {calm:?} (hog: {hog:?})"
    );
    assert!(
        calm.state.as_ref().is_some_and(|s| s.running.is_some()),
        "calm is not running: {calm:?}"
    );
    assert!(
        calm.last_state
            .as_ref()
            .is_none_or(|s| s.terminated.is_none()),
        "calm was terminated once: {calm:?}"
    );
    assert!(
        pods::pid(&ns.name, &name, "calm").is_some_and(alive),
        "calm's process is gone"
    );
}

//! Pods as the pod runner runs them: a Pod's `Ready` condition comes from the API server
//! ([`is_ready`], [`ready_pods`]); each container is a local process whose pid the pod runner
//! writes to `$HOOKLINE_RUN_DIR/pods/<namespace>_<pod>/<container>.pid` ([`pid`]), which a test
//! reads to kill it or to see it gone ([`alive`]).

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, api::ListParams};

use crate::run_dir;

/// Whether `pod` has condition `Ready=True`.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The Ready Pods of `namespace` matching label `selector` that are not being deleted, as
/// (name, Pod IP).
///
/// # Errors
/// When the Pods cannot be listed.
pub async fn ready_pods(
    client: &Client,
    namespace: &str,
    selector: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(selector))
        .await?;
    Ok(pods
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| is_ready(p))
        .filter_map(|p| Some((p.metadata.name.clone()?, p.status.as_ref()?.pod_ip.clone()?)))
        .collect())
}

/// The pid the pod runner recorded for `container` of Pod `pod` in `namespace`.
pub fn pid(namespace: &str, pod: &str, container: &str) -> Option<i32> {
    let file = run_dir()
        .join("pods")
        .join(format!("{namespace}_{pod}"))
        .join(format!("{container}.pid"));
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// Whether process `pid` runs (a zombie is dead for our purposes).
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_none_or(|(_, rest)| rest.split_whitespace().next() != Some("Z"))
        })
        .unwrap_or(false)
}

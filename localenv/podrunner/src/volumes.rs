//! Pod volumes without a mount namespace. An `emptyDir` volume is a host directory,
//! `<pod dir>/volumes/<volume name>/`, and a container's `volumeMounts` of it are honoured by
//! rewriting paths: every occurrence of the mount path as a path prefix in the container's
//! expanded `command`, `args` and env values becomes that directory
//! (`--store=/var/lib/x/db` with `/var/lib/x` mounted → `--store=<pod dir>/volumes/store/db`).
//! [`plan`] turns a pod spec and a container into [`Mount`]s or a refusal and [`rewrite`]
//! rewrites one string (both pure); [`prepare`], [`create`] and [`remove`] are the file work.
//!
//! # Guarantees
//! - A new Pod gets empty volumes: [`prepare`] empties `volumes/` when it belonged to a Pod of
//!   the same name but another uid, and the pod task [`remove`]s it when its Pod is deleted.
//! - A container restarted in the same Pod, or a Pod the runner takes on again after its own
//!   restart, keeps its volumes' contents, as under a kubelet.
//! - A string is rewritten once, longest mount path first, so `/data/cache` mounted apart from
//!   `/data` wins, and a host directory is never rewritten again.
//!
//! # Decisions
//! - Rewriting, not mounting: a program that opens a mount path it was not told through its
//!   command line or env (a compiled-in default) does not find the volume. Hookline's binaries
//!   take every path as a flag.
//! - A path prefix is the mount path at the start of a value or after a character that cannot
//!   continue a path (`=`, `:`, `,`, a space, …; a `/` counts as a separator so
//!   `sqlite:///var/lib/x` works), followed by the end, a `/` or such a character:
//!   `/data` rewrites `/data/x` and `a=/data` but not `/data2`, `/data.db` or `/srv/data`.
//! - `persistentVolumeClaim` (and `ephemeral`) volumes are refused: the runner has no storage
//!   to bind and would lose "persistent" data with the pod directory. Such a Pod is not bound
//!   (`PodScheduled=False`, [`REASON_UNMOUNTABLE`], the message from [`refusal`]).
//! - Other volume types (configMap, secret, projected — including the `kube-api-access-*`
//!   volume every Pod gets —, hostPath, …) are not mounted and their paths are left alone;
//!   `readOnly` is not enforced; `subPath` (relative, no `..`) selects a subdirectory;
//!   `subPathExpr` is refused.

use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, Volume};

use crate::error::{Error, Result};

/// Reason of the `PodScheduled=False` condition on Pods with a volume the runner cannot make.
pub const REASON_UNMOUNTABLE: &str = "PodRunnerCannotMountVolume";

/// The directory of a pod's volumes, under the pod directory.
const VOLUMES: &str = "volumes";

/// Records which Pod (uid) the volumes belong to; no volume can be named so.
const UID_FILE: &str = ".pod-uid";

/// One volume mount of a container: its path in the container, its directory on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The container path, absolute, without a trailing `/`.
    pub mount_path: String,
    /// The host directory standing in for it.
    pub host_dir: PathBuf,
}

/// Why the runner cannot give a Pod its volumes: the first `persistentVolumeClaim` or
/// `ephemeral` volume, as a message for the Pod's status.
pub fn refusal(pod: &Pod) -> Option<String> {
    pod.spec
        .as_ref()?
        .volumes
        .iter()
        .flatten()
        .find_map(refused_volume)
}

fn refused_volume(v: &Volume) -> Option<String> {
    let claim = if let Some(pvc) = &v.persistent_volume_claim {
        format!("persistentVolumeClaim {:?}", pvc.claim_name)
    } else if v.ephemeral.is_some() {
        "an ephemeral volume claim".to_string()
    } else {
        return None;
    };
    Some(format!(
        "the hookline pod runner has no storage: volume {:?} is {claim}; use an emptyDir on the local environment",
        v.name
    ))
}

/// A `subPath` as a relative path of plain components.
fn sub_path(value: &str) -> Result<PathBuf, String> {
    let path = Path::new(value);
    if path
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        Ok(path.to_path_buf())
    } else {
        Err(format!(
            "subPath {value:?} must be relative and must not contain '..'"
        ))
    }
}

/// The mounts of `container` backed by a directory, longest mount path first. `volumes_dir`
/// is `<pod dir>/volumes`.
///
/// # Errors
/// A message for the container's waiting state: a mount of a refused volume, a `subPathExpr`,
/// a bad `subPath` or mount path, or a mount naming no volume of the pod.
pub fn plan(
    spec: &PodSpec,
    container: &Container,
    volumes_dir: &Path,
) -> Result<Vec<Mount>, String> {
    let mut mounts = Vec::new();
    for vm in container.volume_mounts.iter().flatten() {
        let Some(volume) = spec.volumes.iter().flatten().find(|v| v.name == vm.name) else {
            return Err(format!(
                "volumeMount {:?} names no volume of the pod",
                vm.name
            ));
        };
        if let Some(msg) = refused_volume(volume) {
            return Err(msg);
        }
        if volume.empty_dir.is_none() {
            continue;
        }
        if vm.sub_path_expr.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(format!(
                "volumeMount {:?}: subPathExpr is not supported by the pod runner",
                vm.name
            ));
        }
        let mount_path = vm.mount_path.trim_end_matches('/');
        if !vm.mount_path.starts_with('/') || mount_path.is_empty() {
            return Err(format!(
                "volumeMount {:?}: mountPath {:?} must be an absolute path other than /",
                vm.name, vm.mount_path
            ));
        }
        let mut host_dir = volumes_dir.join(&volume.name);
        if let Some(sub) = vm.sub_path.as_deref().filter(|s| !s.is_empty()) {
            host_dir.push(sub_path(sub)?);
        }
        mounts.push(Mount {
            mount_path: mount_path.to_string(),
            host_dir,
        });
    }
    mounts.sort_by_key(|m| std::cmp::Reverse(m.mount_path.len()));
    Ok(mounts)
}

/// Whether `c` can continue a path name (so a mount path next to it is not a whole prefix).
fn continues_path(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '~')
}

/// `value` with every occurrence of a mount path as a path prefix replaced by its host
/// directory. `mounts` as [`plan`] returns them (longest first).
pub fn rewrite(value: &str, mounts: &[Mount]) -> String {
    if mounts.is_empty() {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len());
    let mut prev: Option<char> = None;
    let mut rest = value;
    while let Some(c) = rest.chars().next() {
        if c == '/' && !prev.is_some_and(continues_path) {
            let hit = mounts.iter().find(|m| {
                rest.strip_prefix(m.mount_path.as_str())
                    .is_some_and(|after| after.chars().next().is_none_or(|n| !continues_path(n)))
            });
            if let Some(m) = hit {
                out.push_str(&m.host_dir.display().to_string());
                rest = &rest[m.mount_path.len()..];
                prev = m.mount_path.chars().last();
                continue;
            }
        }
        out.push(c);
        prev = Some(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// The container's environment with the values the Pod gave rewritten; entries still equal
/// to one of the runner's `base` variables (host paths already) are left as they are.
pub fn rewrite_env(
    vars: Vec<(String, String)>,
    base: &[(String, String)],
    mounts: &[Mount],
) -> Vec<(String, String)> {
    vars.into_iter()
        .map(|(k, v)| {
            if base.iter().any(|(bk, bv)| *bk == k && *bv == v) {
                (k, v)
            } else {
                let v = rewrite(&v, mounts);
                (k, v)
            }
        })
        .collect()
}

/// `<pod dir>/volumes`.
pub fn volumes_dir(pod_dir: &Path) -> PathBuf {
    pod_dir.join(VOLUMES)
}

/// Makes `<pod dir>/volumes/` the volumes of the Pod with `uid`: emptied first when another
/// Pod of the same name left it, then a directory for every `emptyDir` volume of `spec`.
///
/// # Errors
/// When a directory cannot be removed or created.
pub fn prepare(pod_dir: &Path, uid: &str, spec: &PodSpec) -> Result<()> {
    let dir = volumes_dir(pod_dir);
    let uid_file = dir.join(UID_FILE);
    let owner = std::fs::read_to_string(&uid_file).ok();
    if owner.as_deref().map(str::trim) != Some(uid) {
        remove(pod_dir)?;
        std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        std::fs::write(&uid_file, format!("{uid}\n")).map_err(Error::io(&uid_file))?;
    }
    for v in spec.volumes.iter().flatten() {
        if v.empty_dir.is_some() {
            let path = dir.join(&v.name);
            std::fs::create_dir_all(&path).map_err(Error::io(&path))?;
        }
    }
    Ok(())
}

/// Creates the host directories of `mounts` (a `subPath` is created at container start, as
/// the kubelet does).
///
/// # Errors
/// The first directory that cannot be created.
pub fn create(mounts: &[Mount]) -> Result<()> {
    for m in mounts {
        std::fs::create_dir_all(&m.host_dir).map_err(Error::io(&m.host_dir))?;
    }
    Ok(())
}

/// Deletes the pod's volumes (`<pod dir>/volumes/`); the logs in the pod dir stay.
///
/// # Errors
/// When the directory exists and cannot be removed.
pub fn remove(pod_dir: &Path) -> Result<()> {
    let dir = volumes_dir(pod_dir);
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&dir)(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mounts(pairs: &[(&str, &str)]) -> Vec<Mount> {
        let mut m: Vec<Mount> = pairs
            .iter()
            .map(|(p, h)| Mount {
                mount_path: (*p).to_string(),
                host_dir: PathBuf::from(h),
            })
            .collect();
        m.sort_by_key(|m| std::cmp::Reverse(m.mount_path.len()));
        m
    }

    fn pod(volumes: serde_json::Value, mounts: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u-1"},
            "spec": {"volumes": volumes, "containers": [{"name": "c", "volumeMounts": mounts}]}
        }))
        .unwrap()
    }

    fn plan_of(p: &Pod) -> Result<Vec<Mount>, String> {
        let spec = p.spec.as_ref().unwrap();
        plan(spec, &spec.containers[0], Path::new("/state/ns_p/volumes"))
    }

    #[test]
    fn a_flag_under_the_mount_path_points_into_the_volume_dir() {
        let m = mounts(&[("/var/lib/hookline-api", "/state/ns_p/volumes/store")]);
        assert_eq!(
            rewrite("--store=/var/lib/hookline-api/deliveries.db", &m),
            "--store=/state/ns_p/volumes/store/deliveries.db"
        );
        assert_eq!(
            rewrite("/var/lib/hookline-api", &m),
            "/state/ns_p/volumes/store"
        );
    }

    #[test]
    fn longer_names_and_other_paths_that_merely_contain_the_mount_path_stay() {
        let m = mounts(&[("/data", "/v/d")]);
        for unchanged in [
            "/data2",
            "/data.db",
            "/data-old/x",
            "/srv/data",
            "x/data",
            "data",
        ] {
            assert_eq!(rewrite(unchanged, &m), unchanged);
        }
    }

    #[test]
    fn every_occurrence_after_a_separator_is_rewritten() {
        let m = mounts(&[("/data", "/v/d")]);
        assert_eq!(
            rewrite("/data/a:/data/b,/data c=/data", &m),
            "/v/d/a:/v/d/b,/v/d c=/v/d"
        );
        assert_eq!(rewrite("sqlite:///data/x.db", &m), "sqlite:///v/d/x.db");
        assert_eq!(rewrite("/data/data", &m), "/v/d/data");
    }

    #[test]
    fn the_longest_mount_path_wins_and_a_rewritten_path_is_not_rewritten_again() {
        let m = mounts(&[("/data", "/v/d"), ("/data/cache", "/v/c"), ("/v", "/w")]);
        assert_eq!(rewrite("/data/cache/x", &m), "/v/c/x");
        assert_eq!(rewrite("/data/other", &m), "/v/d/other");
        assert_eq!(rewrite("/v/x", &m), "/w/x");
    }

    #[test]
    fn non_ascii_text_around_a_mount_path_is_kept() {
        let m = mounts(&[("/data", "/v/d")]);
        assert_eq!(rewrite("é=/data/ü", &m), "é=/v/d/ü");
        assert_eq!(rewrite("é/data", &m), "é/data");
    }

    #[test]
    fn without_mounts_nothing_changes() {
        assert_eq!(rewrite("/data/x", &[]), "/data/x");
    }

    #[test]
    fn pod_env_values_are_rewritten_but_the_runner_base_env_is_not() {
        let m = mounts(&[("/root", "/v/r")]);
        let base = vec![
            ("HOME".to_string(), "/root/.cache/home".to_string()),
            ("PATH".to_string(), "/usr/bin".to_string()),
        ];
        let vars = vec![
            ("HOME".to_string(), "/root/.cache/home".to_string()),
            ("PATH".to_string(), "/root/bin".to_string()),
            ("DB".to_string(), "/root/db".to_string()),
        ];
        let out = rewrite_env(vars, &base, &m);
        assert_eq!(out[0].1, "/root/.cache/home");
        assert_eq!(
            out[1].1, "/v/r/bin",
            "a base variable the pod overrides is the pod's"
        );
        assert_eq!(out[2].1, "/v/r/db");
    }

    #[test]
    fn empty_dir_mounts_map_to_the_volume_dir_longest_first() {
        let p = pod(
            json!([{"name": "store", "emptyDir": {}}, {"name": "cache", "emptyDir": {"sizeLimit": "1Gi"}},
                   {"name": "kube-api-access-x", "projected": {"sources": []}}]),
            json!([{"name": "store", "mountPath": "/data/"},
                   {"name": "cache", "mountPath": "/data/cache", "subPath": "a/b"},
                   {"name": "kube-api-access-x", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]),
        );
        assert_eq!(
            plan_of(&p).unwrap(),
            vec![
                Mount {
                    mount_path: "/data/cache".into(),
                    host_dir: "/state/ns_p/volumes/cache/a/b".into()
                },
                Mount {
                    mount_path: "/data".into(),
                    host_dir: "/state/ns_p/volumes/store".into()
                },
            ]
        );
    }

    #[test]
    fn a_claim_is_refused_with_a_message_naming_volume_and_claim() {
        let p = pod(
            json!([{"name": "store", "persistentVolumeClaim": {"claimName": "x"}}]),
            json!([{"name": "store", "mountPath": "/data"}]),
        );
        let msg = refusal(&p).unwrap();
        assert!(
            msg.contains("\"store\"") && msg.contains("persistentVolumeClaim \"x\""),
            "{msg}"
        );
        assert_eq!(plan_of(&p).unwrap_err(), msg);
        let p = pod(json!([{"name": "store", "emptyDir": {}}]), json!([]));
        assert_eq!(refusal(&p), None);
    }

    #[test]
    fn escaping_sub_paths_and_sub_path_exprs_are_refused() {
        for vm in [
            json!({"name": "s", "mountPath": "/d", "subPath": "../x"}),
            json!({"name": "s", "mountPath": "/d", "subPath": "/abs"}),
            json!({"name": "s", "mountPath": "/d", "subPathExpr": "$(POD_NAME)"}),
            json!({"name": "s", "mountPath": "/"}),
            json!({"name": "nope", "mountPath": "/d"}),
        ] {
            let p = pod(json!([{"name": "s", "emptyDir": {}}]), json!([vm]));
            assert!(plan_of(&p).is_err(), "{vm}");
        }
    }

    #[test]
    fn volumes_survive_the_same_pod_and_are_emptied_for_another_uid() {
        let dir = std::env::temp_dir().join(format!("podrunner-volumes-{}", std::process::id()));
        let p = pod(json!([{"name": "store", "emptyDir": {}}]), json!([]));
        let spec = p.spec.as_ref().unwrap();
        prepare(&dir, "u-1", spec).unwrap();
        let file = volumes_dir(&dir).join("store/db");
        std::fs::write(&file, "x").unwrap();
        prepare(&dir, "u-1", spec).unwrap();
        assert!(file.exists(), "the same pod keeps its data");
        prepare(&dir, "u-2", spec).unwrap();
        assert!(!file.exists(), "a new pod of the same name starts empty");
        assert!(volumes_dir(&dir).join("store").is_dir());
        remove(&dir).unwrap();
        assert!(!volumes_dir(&dir).exists());
        remove(&dir).unwrap();
        std::fs::remove_dir_all(&dir).ok();
    }
}

//! A container's environment, resolved the way the kubelet does it: the runner's base
//! variables (apiserver address, `KUBECONFIG`, `HOME`, `PATH`), then `envFrom` sources in
//! order, then `env` entries, each value `$(VAR)`-expanded against what came before. The
//! ConfigMaps and Secrets a container references are named by [`referenced`], fetched by
//! [`fetch_sources`] (the only I/O here) and handed to [`resolve`] as a [`Sources`].

use std::{collections::BTreeMap, collections::BTreeSet};

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::{Api, Client};

use crate::expand::expand_with;

/// The objects a container's env refers to, by name; an absent name was not found.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    /// ConfigMaps of the pod's namespace.
    pub config_maps: BTreeMap<String, ConfigMap>,
    /// Secrets of the pod's namespace.
    pub secrets: BTreeMap<String, Secret>,
}

/// Values for the downward API that are not (yet) in the Pod object.
#[derive(Debug, Clone)]
pub struct Downward {
    /// The pod's IP (allocated by the runner, possibly not yet written to the status).
    pub pod_ip: String,
    /// The node's IP.
    pub host_ip: String,
}

/// The names of the ConfigMaps and Secrets `container` reads its env from.
pub fn referenced(container: &Container) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut config_maps = BTreeSet::new();
    let mut secrets = BTreeSet::new();
    for from in container.env_from.iter().flatten() {
        if let Some(r) = &from.config_map_ref {
            config_maps.insert(r.name.clone());
        }
        if let Some(r) = &from.secret_ref {
            secrets.insert(r.name.clone());
        }
    }
    for var in container.env.iter().flatten() {
        let Some(source) = &var.value_from else {
            continue;
        };
        if let Some(r) = &source.config_map_key_ref {
            config_maps.insert(r.name.clone());
        }
        if let Some(r) = &source.secret_key_ref {
            secrets.insert(r.name.clone());
        }
    }
    (config_maps, secrets)
}

/// Fetches the objects [`referenced`] names from `namespace`; a missing one is left out.
///
/// # Errors
/// Any API error other than not-found.
pub async fn fetch_sources(
    client: &Client,
    namespace: &str,
    container: &Container,
) -> Result<Sources, kube::Error> {
    let (cm_names, secret_names) = referenced(container);
    let mut sources = Sources::default();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    for name in cm_names {
        if let Some(cm) = cms.get_opt(&name).await? {
            sources.config_maps.insert(name, cm);
        }
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    for name in secret_names {
        if let Some(s) = secrets.get_opt(&name).await? {
            sources.secrets.insert(name, s);
        }
    }
    Ok(sources)
}

/// Sets `name` in an ordered variable list, replacing an earlier definition in place.
fn set(vars: &mut Vec<(String, String)>, name: &str, value: String) {
    match vars.iter_mut().find(|(k, _)| k == name) {
        Some(slot) => slot.1 = value,
        None => vars.push((name.to_string(), value)),
    }
}

fn config_map_value(cm: &ConfigMap, key: &str) -> Option<String> {
    if let Some(v) = cm.data.as_ref().and_then(|d| d.get(key)) {
        return Some(v.clone());
    }
    cm.binary_data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
}

fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    if let Some(v) = secret.data.as_ref().and_then(|d| d.get(key)) {
        return Some(String::from_utf8_lossy(&v.0).into_owned());
    }
    secret
        .string_data
        .as_ref()
        .and_then(|d| d.get(key))
        .cloned()
}

/// A downward-API `fieldRef` value.
///
/// # Errors
/// An unsupported field path.
pub fn field_value(pod: &Pod, path: &str, downward: &Downward) -> Result<String, String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let subscript = |prefix: &str| -> Option<String> {
        let rest = path
            .strip_prefix(prefix)?
            .strip_prefix("['")?
            .strip_suffix("']")?;
        Some(rest.to_string())
    };
    let value = match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        "status.podIP" | "status.podIPs" => downward.pod_ip.clone(),
        "status.hostIP" | "status.hostIPs" => downward.host_ip.clone(),
        _ => {
            if let Some(key) = subscript("metadata.labels") {
                meta.labels
                    .as_ref()
                    .and_then(|l| l.get(&key))
                    .cloned()
                    .unwrap_or_default()
            } else if let Some(key) = subscript("metadata.annotations") {
                meta.annotations
                    .as_ref()
                    .and_then(|a| a.get(&key))
                    .cloned()
                    .unwrap_or_default()
            } else {
                return Err(format!(
                    "fieldRef {path:?} is not supported by the pod runner"
                ));
            }
        }
    };
    Ok(value)
}

/// The full environment of `container`: `base` first, then `envFrom`, then `env`.
///
/// # Errors
/// A message for the container's `CreateContainerConfigError` when a required ConfigMap,
/// Secret or key is missing or a reference is unsupported.
pub fn resolve(
    pod: &Pod,
    container: &Container,
    base: &[(String, String)],
    sources: &Sources,
    downward: &Downward,
) -> Result<Vec<(String, String)>, String> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut vars: Vec<(String, String)> = base.to_vec();

    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.as_deref().unwrap_or_default();
        let entries: Vec<(String, String)> = if let Some(r) = &from.config_map_ref {
            match sources.config_maps.get(&r.name) {
                Some(cm) => {
                    let mut all: Vec<(String, String)> = cm
                        .data
                        .iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    for (k, v) in cm.binary_data.iter().flatten() {
                        all.push((k.clone(), String::from_utf8_lossy(&v.0).into_owned()));
                    }
                    all
                }
                None if r.optional == Some(true) => Vec::new(),
                None => return Err(format!("configmap \"{}\" not found", r.name)),
            }
        } else if let Some(r) = &from.secret_ref {
            match sources.secrets.get(&r.name) {
                Some(s) => s
                    .data
                    .iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
                    .collect(),
                None if r.optional == Some(true) => Vec::new(),
                None => return Err(format!("secret \"{}\" not found", r.name)),
            }
        } else {
            Vec::new()
        };
        for (key, value) in entries {
            let name = format!("{prefix}{key}");
            // Keys that cannot be variable names are skipped, as the kubelet does.
            if name.is_empty() || name.contains('=') {
                continue;
            }
            set(&mut vars, &name, value);
        }
    }

    for var in container.env.iter().flatten() {
        let value = match &var.value_from {
            None => expand_with(var.value.as_deref().unwrap_or_default(), &vars),
            Some(source) => {
                if let Some(r) = &source.config_map_key_ref {
                    let optional = r.optional == Some(true);
                    match sources.config_maps.get(&r.name) {
                        None if optional => continue,
                        None => return Err(format!("configmap \"{}\" not found", r.name)),
                        Some(cm) => match config_map_value(cm, &r.key) {
                            Some(v) => v,
                            None if optional => continue,
                            None => {
                                return Err(format!(
                                    "couldn't find key {} in ConfigMap {namespace}/{}",
                                    r.key, r.name
                                ));
                            }
                        },
                    }
                } else if let Some(r) = &source.secret_key_ref {
                    let optional = r.optional == Some(true);
                    match sources.secrets.get(&r.name) {
                        None if optional => continue,
                        None => return Err(format!("secret \"{}\" not found", r.name)),
                        Some(s) => match secret_value(s, &r.key) {
                            Some(v) => v,
                            None if optional => continue,
                            None => {
                                return Err(format!(
                                    "couldn't find key {} in Secret {namespace}/{}",
                                    r.key, r.name
                                ));
                            }
                        },
                    }
                } else if let Some(r) = &source.field_ref {
                    field_value(pod, &r.field_path, downward)?
                } else if source.resource_field_ref.is_some() {
                    return Err(format!(
                        "env {}: resourceFieldRef is not supported by the pod runner",
                        var.name
                    ));
                } else {
                    return Err(format!("env {}: unsupported valueFrom", var.name));
                }
            }
        };
        set(&mut vars, &var.name, value);
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(env: serde_json::Value, env_from: serde_json::Value) -> (Pod, Container) {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "ns", "uid": "u-1", "labels": {"app": "web"}},
            "spec": {"nodeName": "hookline-local", "serviceAccountName": "sa",
                     "containers": [{"name": "c", "env": env, "envFrom": env_from}]}
        }))
        .unwrap();
        let c = pod.spec.as_ref().unwrap().containers[0].clone();
        (pod, c)
    }

    fn downward() -> Downward {
        Downward {
            pod_ip: "127.1.0.7".into(),
            host_ip: "127.0.0.1".into(),
        }
    }

    fn sources() -> Sources {
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "cfg"}, "data": {"LEVEL": "debug", "bad=key": "x"}
        }))
        .unwrap();
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "creds"}, "data": {"token": "c2VjcmV0"}
        }))
        .unwrap();
        Sources {
            config_maps: [("cfg".to_string(), cm)].into(),
            secrets: [("creds".to_string(), secret)].into(),
        }
    }

    fn get<'a>(vars: &'a [(String, String)], name: &str) -> Option<&'a str> {
        vars.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn field_refs_come_from_the_pod_and_the_allocated_ip() {
        let (p, c) = pod(
            json!([
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}}
            ]),
            json!([]),
        );
        let vars = resolve(&p, &c, &[], &Sources::default(), &downward()).unwrap();
        assert_eq!(get(&vars, "POD_IP"), Some("127.1.0.7"));
        assert_eq!(get(&vars, "NAME"), Some("web-1"));
        assert_eq!(get(&vars, "NS"), Some("ns"));
        assert_eq!(get(&vars, "SA"), Some("sa"));
        assert_eq!(get(&vars, "APP"), Some("web"));
    }

    #[test]
    fn literal_values_expand_earlier_variables() {
        let (p, c) = pod(
            json!([
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "ADDR", "value": "$(POD_IP):8080"},
                {"name": "LATER", "value": "$(AFTER)"},
                {"name": "AFTER", "value": "x"}
            ]),
            json!([]),
        );
        let vars = resolve(&p, &c, &[], &Sources::default(), &downward()).unwrap();
        assert_eq!(get(&vars, "ADDR"), Some("127.1.0.7:8080"));
        assert_eq!(get(&vars, "LATER"), Some("$(AFTER)"));
    }

    #[test]
    fn secret_and_config_map_keys_resolve() {
        let (p, c) = pod(
            json!([
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
                {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "LEVEL"}}}
            ]),
            json!([]),
        );
        let vars = resolve(&p, &c, &[], &sources(), &downward()).unwrap();
        assert_eq!(get(&vars, "TOKEN"), Some("secret"));
        assert_eq!(get(&vars, "LEVEL"), Some("debug"));
    }

    #[test]
    fn missing_required_secret_is_a_config_error() {
        let (p, c) = pod(
            json!([{"name": "T", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}]),
            json!([]),
        );
        let err = resolve(&p, &c, &[], &sources(), &downward()).unwrap_err();
        assert_eq!(err, "secret \"nope\" not found");
    }

    #[test]
    fn missing_required_key_names_the_object() {
        let (p, c) = pod(
            json!([{"name": "T", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k"}}}]),
            json!([]),
        );
        let err = resolve(&p, &c, &[], &sources(), &downward()).unwrap_err();
        assert_eq!(err, "couldn't find key k in ConfigMap ns/cfg");
    }

    #[test]
    fn missing_optional_references_are_skipped() {
        let (p, c) = pod(
            json!([
                {"name": "A", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": true}}},
                {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k", "optional": true}}}
            ]),
            json!([{"configMapRef": {"name": "gone", "optional": true}}]),
        );
        let vars = resolve(&p, &c, &[], &sources(), &downward()).unwrap();
        assert!(vars.is_empty());
    }

    #[test]
    fn env_from_prefixes_keys_skips_invalid_ones_and_env_overrides_it() {
        let (p, c) = pod(
            json!([{"name": "APP_LEVEL", "value": "info"}]),
            json!([{"configMapRef": {"name": "cfg"}, "prefix": "APP_"}, {"secretRef": {"name": "creds"}}]),
        );
        let vars = resolve(&p, &c, &[], &sources(), &downward()).unwrap();
        assert_eq!(get(&vars, "APP_LEVEL"), Some("info"));
        assert_eq!(get(&vars, "token"), Some("secret"));
        assert!(get(&vars, "APP_bad=key").is_none());
    }

    #[test]
    fn pod_env_overrides_the_runner_base_env() {
        let (p, c) = pod(json!([{"name": "KUBECONFIG", "value": "/mine"}]), json!([]));
        let base = vec![
            ("KUBECONFIG".to_string(), "/runner".to_string()),
            ("PATH".into(), "/bin".into()),
        ];
        let vars = resolve(&p, &c, &base, &Sources::default(), &downward()).unwrap();
        assert_eq!(get(&vars, "KUBECONFIG"), Some("/mine"));
        assert_eq!(get(&vars, "PATH"), Some("/bin"));
    }

    #[test]
    fn unsupported_field_path_is_a_config_error() {
        let (p, c) = pod(
            json!([{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "status.phase"}}}]),
            json!([]),
        );
        assert!(resolve(&p, &c, &[], &Sources::default(), &downward()).is_err());
    }

    #[test]
    fn referenced_lists_every_config_map_and_secret() {
        let (_, c) = pod(
            json!([{"name": "T", "valueFrom": {"secretKeyRef": {"name": "s1", "key": "k"}}}]),
            json!([{"configMapRef": {"name": "c1"}}, {"secretRef": {"name": "s2"}}]),
        );
        let (cms, secrets) = referenced(&c);
        assert_eq!(cms.into_iter().collect::<Vec<_>>(), vec!["c1"]);
        assert_eq!(secrets.into_iter().collect::<Vec<_>>(), vec!["s1", "s2"]);
    }
}

//! A Pod's ServiceAccount identity for a process that is not in a container. The runner asks
//! the TokenRequest API for a token bound to the Pod, writes it to `<pod dir>/token`, and
//! writes `<pod dir>/kubeconfig` pointing at the apiserver (server and CA taken from the
//! runner's own kubeconfig) with `tokenFile: <pod dir>/token`. `KUBECONFIG` in the process env
//! points there, so `kube::Config::infer()` (and kubectl, client-go) act with exactly the
//! ServiceAccount's RBAC; because the kubeconfig names a token *file*, clients re-read it and
//! the runner can refresh the token before it expires.

use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _, path::Path};

use jiff::Timestamp;
use k8s_openapi::api::{
    authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec},
    core::v1::{Pod, ServiceAccount},
};
use kube::{Api, Client, api::PostParams, config::Kubeconfig};

use crate::error::{Error, Result};

/// Where the apiserver is and how to trust it, from the runner's kubeconfig.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInfo {
    /// `https://host:port`.
    pub server: String,
    /// Host part of `server`.
    pub host: String,
    /// Port of `server`.
    pub port: u16,
    /// Base64 PEM CA bundle, when inline.
    pub ca_data: Option<String>,
    /// Absolute path of the CA bundle, when a file.
    pub ca_file: Option<String>,
    /// Whether TLS verification is off.
    pub insecure: bool,
    /// Server name for TLS verification.
    pub tls_server_name: Option<String>,
}

impl ClusterInfo {
    /// The cluster of the current context (or the only cluster).
    ///
    /// # Errors
    /// When no cluster with a server can be found.
    pub fn from_kubeconfig(kc: &Kubeconfig) -> Result<Self> {
        let cluster_name = kc
            .current_context
            .as_ref()
            .and_then(|cur| kc.contexts.iter().find(|c| &c.name == cur))
            .and_then(|c| c.context.as_ref())
            .map(|c| c.cluster.clone());
        let named = match cluster_name {
            Some(name) => kc.clusters.iter().find(|c| c.name == name),
            None => kc.clusters.first(),
        }
        .ok_or_else(|| Error::Kubeconfig("no cluster for the current context".into()))?;
        let cluster = named
            .cluster
            .as_ref()
            .ok_or_else(|| Error::Kubeconfig(format!("cluster {} is empty", named.name)))?;
        let server = cluster
            .server
            .clone()
            .ok_or_else(|| Error::Kubeconfig(format!("cluster {} has no server", named.name)))?;
        let (host, port) = host_port(&server)
            .ok_or_else(|| Error::Kubeconfig(format!("cannot parse server {server:?}")))?;
        Ok(Self {
            server,
            host,
            port,
            ca_data: cluster.certificate_authority_data.clone(),
            ca_file: cluster.certificate_authority.clone(),
            insecure: cluster.insecure_skip_tls_verify == Some(true),
            tls_server_name: cluster.tls_server_name.clone(),
        })
    }

    /// `KUBERNETES_SERVICE_HOST`, `KUBERNETES_SERVICE_PORT` and friends, pointing at the
    /// apiserver's loopback address (what in-cluster clients read).
    pub fn service_env(&self) -> Vec<(String, String)> {
        let (h, p) = (&self.host, self.port);
        vec![
            ("KUBERNETES_SERVICE_HOST".into(), h.clone()),
            ("KUBERNETES_SERVICE_PORT".into(), p.to_string()),
            ("KUBERNETES_SERVICE_PORT_HTTPS".into(), p.to_string()),
            ("KUBERNETES_PORT".into(), format!("tcp://{h}:{p}")),
        ]
    }
}

/// Host and port of an `https://host:port/...` URL (port 443 when absent).
fn host_port(server: &str) -> Option<(String, u16)> {
    let rest = server.split_once("://").map_or(server, |(_, r)| r);
    let authority = rest.split('/').next()?;
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = after
            .strip_prefix(':')
            .map_or(Some(443), |p| p.parse().ok())?;
        return Some((host.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host.to_string(), port.parse().ok()?)),
        None if !authority.is_empty() => Some((authority.to_string(), 443)),
        None => None,
    }
}

/// The kubeconfig (YAML) a pod's processes use.
pub fn pod_kubeconfig(cluster: &ClusterInfo, namespace: &str, token_file: &Path) -> String {
    let mut c = serde_json::Map::new();
    c.insert("server".into(), cluster.server.clone().into());
    if let Some(data) = &cluster.ca_data {
        c.insert("certificate-authority-data".into(), data.clone().into());
    } else if let Some(file) = &cluster.ca_file {
        c.insert("certificate-authority".into(), file.clone().into());
    }
    if cluster.insecure {
        c.insert("insecure-skip-tls-verify".into(), true.into());
    }
    if let Some(name) = &cluster.tls_server_name {
        c.insert("tls-server-name".into(), name.clone().into());
    }
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": c}],
        "users": [{"name": "pod", "user": {"tokenFile": token_file.display().to_string()}}],
        "contexts": [{"name": "pod", "context": {"cluster": "local", "user": "pod", "namespace": namespace}}],
        "current-context": "pod",
    });
    serde_yaml::to_string(&doc).unwrap_or_default()
}

/// Requests a token for the pod's ServiceAccount, bound to the pod, valid for
/// `expiration_seconds`. Returns the token and its expiry.
///
/// # Errors
/// When the TokenRequest fails (e.g. the ServiceAccount does not exist).
pub async fn request_token(
    client: &Client,
    pod: &Pod,
    expiration_seconds: i64,
) -> Result<(String, Timestamp)> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .filter(|s| !s.is_empty())
        .unwrap_or("default");
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(expiration_seconds),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..Default::default()
    };
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let resp = api
        .create_token_request(sa, &PostParams::default(), &request)
        .await?;
    let status = resp
        .status
        .ok_or_else(|| Error::Kubeconfig("TokenRequest returned no status".into()))?;
    Ok((status.token, status.expiration_timestamp.0))
}

/// Writes `contents` to `path` through a temporary file and a rename (readers never see a
/// partial file), readable by the owner only.
///
/// # Errors
/// When the file cannot be written.
pub fn write_private(path: &Path, contents: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(Error::io(&tmp))?;
    f.write_all(contents.as_bytes()).map_err(Error::io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(Error::io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kubeconfig(yaml: &str) -> Kubeconfig {
        Kubeconfig::from_yaml(yaml).unwrap()
    }

    const ADMIN: &str = r#"
apiVersion: v1
kind: Config
clusters:
- name: other
  cluster: {server: "https://10.0.0.1:6443"}
- name: local
  cluster: {server: "https://127.0.0.1:16443", certificate-authority-data: Q0E=}
users:
- name: admin
  user: {token: x}
contexts:
- name: admin
  context: {cluster: local, user: admin}
current-context: admin
"#;

    #[test]
    fn cluster_of_the_current_context_is_used() {
        let c = ClusterInfo::from_kubeconfig(&kubeconfig(ADMIN)).unwrap();
        assert_eq!(c.server, "https://127.0.0.1:16443");
        assert_eq!((c.host.as_str(), c.port), ("127.0.0.1", 16443));
        assert_eq!(c.ca_data.as_deref(), Some("Q0E="));
    }

    #[test]
    fn service_env_points_at_the_apiserver_loopback_address() {
        let c = ClusterInfo::from_kubeconfig(&kubeconfig(ADMIN)).unwrap();
        let env = c.service_env();
        assert!(env.contains(&("KUBERNETES_SERVICE_HOST".into(), "127.0.0.1".into())));
        assert!(env.contains(&("KUBERNETES_SERVICE_PORT".into(), "16443".into())));
    }

    #[test]
    fn server_urls_without_port_or_with_ipv6_parse() {
        assert_eq!(
            host_port("https://example.com"),
            Some(("example.com".into(), 443))
        );
        assert_eq!(host_port("https://[::1]:6443/"), Some(("::1".into(), 6443)));
    }

    #[test]
    fn pod_kubeconfig_reads_the_token_file_and_defaults_to_the_pod_namespace() {
        let c = ClusterInfo::from_kubeconfig(&kubeconfig(ADMIN)).unwrap();
        let yaml = pod_kubeconfig(&c, "team-a", Path::new("/state/ns_p/token"));
        let kc = kubeconfig(&yaml);
        let user = kc.auth_infos[0].auth_info.as_ref().unwrap();
        assert_eq!(user.token_file.as_deref(), Some("/state/ns_p/token"));
        assert!(user.token.is_none());
        let ctx = kc.contexts[0].context.as_ref().unwrap();
        assert_eq!(ctx.namespace.as_deref(), Some("team-a"));
        let again = ClusterInfo::from_kubeconfig(&kc).unwrap();
        assert_eq!(again.server, c.server);
        assert_eq!(again.ca_data, c.ca_data);
    }
}

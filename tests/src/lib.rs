//! The harness every integration and end-to-end test (and the benchmark, `hookline-bench`) uses
//! to reach the real local environment (kube-apiserver + etcd + kube-controller-manager, Kafka,
//! the pod runner) that `localenv/up.sh` starts.
//!
//! Flow: [`Env::get`] reads `$HOOKLINE_RUN_DIR/env.sh` (starting the environment when it is not
//! up; [`Env::read`] only reads it) → a test takes its own [`TestNamespace`] or
//! [`tenant::Tenant`] and Kafka topics ([`kafka`]) → produces [`events`], drives the system and
//! observes it through [`receiver::Receiver`], [`pods`] and [`wait::until`] → on failure,
//! [`LogDump`] prints the tails of the component and Pod logs.

pub mod api;
pub mod broker;
pub mod cluster;
pub mod crd;
pub mod dispatcher;
pub mod events;
pub mod group;
pub mod install;
pub mod kafka;
pub mod outage;
pub mod pods;
pub mod python;
pub mod receiver;
pub mod tenant;
pub mod verify;
pub mod wait;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client, Config,
    api::{DeleteParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use rand::distr::{Alphanumeric, SampleString};

/// Where the local environment keeps its state (`env.sh`, kubeconfig, logs, pid files).
pub fn run_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("HOOKLINE_RUN_DIR") {
        return PathBuf::from(dir);
    }
    cache_dir().join("run")
}

/// `~/.cache/hookline`, or `$HOOKLINE_CACHE`.
pub fn cache_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("HOOKLINE_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".cache/hookline")
}

/// The repository root (the workspace this crate sits in).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Facts about the running local environment, read from `env.sh`.
#[derive(Debug, Clone)]
pub struct Env {
    /// The `export`s of `env.sh`.
    pub vars: HashMap<String, String>,
    /// Admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// `127.0.0.1:PORT` of the Kafka broker.
    pub kafka_bootstrap: String,
    /// The kubectl matching the API server's version.
    pub kubectl: PathBuf,
}

static ENV: OnceLock<Result<Env, String>> = OnceLock::new();

impl Env {
    /// The running environment; starts it with `localenv/up.sh` when `env.sh` is missing or
    /// the API server does not answer. Started once per test process.
    ///
    /// # Errors
    /// When the environment cannot be started: the error carries up.sh's output.
    pub fn get() -> anyhow::Result<Env> {
        ENV.get_or_init(|| Self::connect_or_start().map_err(|e| format!("{e:#}")))
            .clone()
            .map_err(|e| anyhow::anyhow!("local environment unavailable: {e}"))
    }

    fn connect_or_start() -> anyhow::Result<Env> {
        if let Ok(env) = Self::read()
            && env.kubectl_ok(&["get", "--raw", "/readyz"])
        {
            return Ok(env);
        }
        let up = repo_root().join("localenv/up.sh");
        let out = Command::new(&up)
            .output()
            .with_context(|| format!("running {}", up.display()))?;
        if !out.status.success() {
            bail!(
                "{} failed:\n{}\n{}",
                up.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Self::read()
    }

    /// The running environment, from `env.sh`, without starting it (what the benchmark uses:
    /// it measures an environment it was given).
    ///
    /// # Errors
    /// When `env.sh` is missing (the environment is not up) or lacks a variable.
    pub fn read() -> anyhow::Result<Env> {
        let path = run_dir().join("env.sh");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (is the environment up? make env-up)",
                path.display()
            )
        })?;
        let vars = parse_env_sh(&text);
        let get = |k: &str| {
            vars.get(k)
                .cloned()
                .with_context(|| format!("{} does not set {k}", path.display()))
        };
        Ok(Env {
            kubeconfig: get("KUBECONFIG")?.into(),
            kafka_bootstrap: get("HOOKLINE_KAFKA_BOOTSTRAP")?,
            kubectl: get("HOOKLINE_KUBECTL")?.into(),
            vars,
        })
    }

    fn kubectl_ok(&self, args: &[&str]) -> bool {
        self.kubectl_cmd(args)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// A `kubectl` command bound to the admin kubeconfig.
    pub fn kubectl_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.kubectl);
        cmd.env("KUBECONFIG", &self.kubeconfig).args(args);
        cmd
    }

    /// Runs kubectl; returns stdout, or an error with stderr.
    ///
    /// # Errors
    /// When kubectl exits non-zero.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.kubectl_cmd(args).output().context("running kubectl")?;
        if !out.status.success() {
            bail!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs kubectl with `stdin` piped in (e.g. `apply -f -`); returns (success, stdout, stderr).
    ///
    /// # Errors
    /// When kubectl cannot be started.
    pub fn kubectl_stdin(
        &self,
        args: &[&str],
        stdin: &str,
    ) -> anyhow::Result<(bool, String, String)> {
        use std::io::Write;
        let mut child = self
            .kubectl_cmd(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("running kubectl")?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(stdin.as_bytes())?;
        let out = child.wait_with_output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// A client acting as ServiceAccount `sa` of namespace `ns`, with a 10-minute token from
    /// the TokenRequest API: exactly that account's RBAC applies.
    ///
    /// # Errors
    /// When the account does not exist or no token can be issued.
    pub async fn client_as(&self, admin: &Client, ns: &str, sa: &str) -> anyhow::Result<Client> {
        use k8s_openapi::api::{authentication::v1::TokenRequest, core::v1::ServiceAccount};
        let tr: TokenRequest = serde_json::from_value(
            serde_json::json!({"spec": {"audiences": [], "expirationSeconds": 600}}),
        )?;
        let token = Api::<ServiceAccount>::namespaced(admin.clone(), ns)
            .create_token_request(sa, &PostParams::default(), &tr)
            .await?
            .status
            .context("no token issued")?
            .token;
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)?;
        let mut config =
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        config.auth_info = Default::default();
        config.auth_info.token = Some(token.into());
        Ok(Client::try_from(config)?)
    }

    /// An admin client for the API server.
    ///
    /// # Errors
    /// When the kubeconfig cannot be read.
    pub async fn client(&self) -> anyhow::Result<Client> {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)?;
        let config =
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        Ok(Client::try_from(config)?)
    }
}

/// Reads `export KEY=VALUE` lines (values optionally single- or double-quoted).
pub fn parse_env_sh(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("export "))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            (k.trim().to_owned(), v.to_owned())
        })
        .collect()
}

/// A plain `GET http://addr{path}` (for /metrics of a Pod on its loopback IP); the body.
///
/// # Errors
/// When the connection fails or the answer is not 200.
pub fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nhost: {addr}\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    anyhow::ensure!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "GET {addr}{path}: {head}"
    );
    Ok(body.to_owned())
}

/// A short random lowercase suffix for names of namespaces, topics and users.
pub fn random_suffix() -> String {
    Alphanumeric
        .sample_string(&mut rand::rng(), 8)
        .to_lowercase()
}

/// A namespace of a test's own, deleted (without waiting) when dropped.
pub struct TestNamespace {
    /// Its name, `hl-<prefix>-<random>`.
    pub name: String,
    kubectl: PathBuf,
    kubeconfig: PathBuf,
}

impl TestNamespace {
    /// Creates `hl-<prefix>-<random>`.
    ///
    /// # Errors
    /// When the API server refuses.
    pub async fn create(env: &Env, client: &Client, prefix: &str) -> anyhow::Result<TestNamespace> {
        let name = format!("hl-{prefix}-{}", random_suffix());
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"hookline.dev/test": "true"}}
        }))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
        Ok(TestNamespace {
            name,
            kubectl: env.kubectl.clone(),
            kubeconfig: env.kubeconfig.clone(),
        })
    }

    /// Deletes it and waits for nothing; also what `Drop` does.
    pub async fn delete(&self, client: &Client) {
        let _ = Api::<Namespace>::all(client.clone())
            .delete(&self.name, &DeleteParams::default())
            .await;
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::env::var_os("HOOKLINE_KEEP_NAMESPACES").is_some() {
            eprintln!(
                "keeping namespace {} (HOOKLINE_KEEP_NAMESPACES is set)",
                self.name
            );
            return;
        }
        let _ = Command::new(&self.kubectl)
            .env("KUBECONFIG", &self.kubeconfig)
            .args([
                "delete",
                "namespace",
                &self.name,
                "--wait=false",
                "--ignore-not-found",
            ])
            .output();
    }
}

/// Prints the tails of the environment's logs and of every Pod log when the test panics
/// (create it first in a test; it acts on drop).
pub struct LogDump {
    /// Extra files to show, such as a Pod's log.
    pub extra: Vec<PathBuf>,
}

impl LogDump {
    /// A dump of the component logs only.
    pub fn new() -> LogDump {
        LogDump { extra: Vec::new() }
    }
}

impl Default for LogDump {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for LogDump {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let run = run_dir();
        let mut files: Vec<PathBuf> = self.extra.clone();
        for dir in [run.join("logs")] {
            if let Ok(entries) = std::fs::read_dir(&dir) {
                files.extend(entries.flatten().map(|e| e.path()));
            }
        }
        if let Ok(pods) = std::fs::read_dir(run.join("pods")) {
            for pod in pods.flatten() {
                if let Ok(entries) = std::fs::read_dir(pod.path()) {
                    files.extend(
                        entries
                            .flatten()
                            .map(|e| e.path())
                            .filter(|p| p.extension().is_some_and(|e| e == "log")),
                    );
                }
            }
        }
        files.sort();
        for f in files {
            let Ok(text) = std::fs::read_to_string(&f) else {
                continue;
            };
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(30)..];
            eprintln!("----- tail of {} -----\n{}", f.display(), tail.join("\n"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_sh_exports_are_read_with_and_without_quotes() {
        let vars =
            parse_env_sh("# comment\nexport A=1\nexport B=\"two words\"\nexport C='x=y'\nD=4\n");
        assert_eq!(vars.get("A").map(String::as_str), Some("1"));
        assert_eq!(vars.get("B").map(String::as_str), Some("two words"));
        assert_eq!(vars.get("C").map(String::as_str), Some("x=y"));
        assert!(!vars.contains_key("D"));
    }

    #[test]
    fn random_suffixes_are_lowercase_and_differ() {
        let (a, b) = (random_suffix(), random_suffix());
        assert_eq!(a.len(), 8);
        assert_eq!(a, a.to_lowercase());
        assert_ne!(a, b);
    }
}

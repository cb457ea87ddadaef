//! The benchmark's view of the local environment: facts flow in from the
//! environment's `env.sh` ([`Env`]), and out go the objects a benchmark
//! needs — its own tenant namespace ([`Tenant`]) with a shared signing Secret
//! and its `Webhook`s, the controller installed if it is not, and Kafka topics
//! of its own per run ([`RunTopics`], created with the admin API and deleted
//! afterwards) so that each run starts from an empty log and a fresh
//! consumer group.
//!
//! Why topics of its own: the controller runs a dispatcher of its own for
//! every tenant (a debug build, started by the pod runner). The benchmark's
//! dispatcher is a release build it starts itself, told to read the run's
//! topics; the controller's copy reads `hookline.<ns>.events`, which nobody
//! writes, and stays idle.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hookline_crds::Webhook;
use hookline_crds::conditions::types;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use serde_json::json;

/// The operator namespace.
pub const OPERATOR_NAMESPACE: &str = "hookline-system";
/// The signing Secret every benchmark `Webhook` refers to (unless generated).
pub const SIGNING_SECRET: &str = "bench-signing";
/// Its key: 32 bytes, `whsec_` + base64.
pub const SIGNING_KEY: &str = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// The local environment, from `env.sh`.
#[derive(Debug, Clone)]
pub struct Env {
    /// Every `export` of `env.sh`.
    pub vars: HashMap<String, String>,
    /// Admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// `127.0.0.1:PORT` of Kafka.
    pub kafka_bootstrap: String,
    /// The run directory (pids, logs).
    pub run_dir: PathBuf,
}

/// `~/.cache/hookline`, or `$HOOKLINE_CACHE`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("HOOKLINE_CACHE").map_or_else(
        || {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/hookline")
        },
        PathBuf::from,
    )
}

/// Reads `export KEY=VALUE` lines (values optionally quoted).
pub fn parse_env_sh(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("export "))
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

impl Env {
    /// Reads `$HOOKLINE_RUN_DIR/env.sh` (default `~/.cache/hookline/run`).
    ///
    /// # Errors
    /// When the environment is not up (`make env-up`).
    pub fn read() -> anyhow::Result<Env> {
        let run_dir = std::env::var_os("HOOKLINE_RUN_DIR")
            .map_or_else(|| cache_dir().join("run"), PathBuf::from);
        let path = run_dir.join("env.sh");
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
            run_dir,
            vars,
        })
    }

    /// The Kafka broker's pid, from the environment's pid file.
    pub fn kafka_pid(&self) -> Option<u32> {
        pid_file(&self.run_dir.join("pids/kafka.pid"))
    }

    /// An admin client.
    ///
    /// # Errors
    /// When the kubeconfig cannot be read.
    pub async fn client(&self) -> anyhow::Result<Client> {
        let kc = Kubeconfig::read_from(&self.kubeconfig)?;
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
        Ok(Client::try_from(config)?)
    }

    fn kafka(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.kafka_bootstrap);
        c
    }
}

fn pid_file(path: &Path) -> Option<u32> {
    // `<pid> <start time>`: the environment records the start time to detect reuse.
    std::fs::read_to_string(path)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Makes sure the Hookline controller runs (installs the chart with the test
/// settings — `allowHttp`, `allowCidrs: [127.0.0.0/8]` — when it does not).
///
/// # Errors
/// When helm fails or the controller does not become available in 3 minutes.
pub async fn ensure_controller(env: &Env, client: &Client, repo: &Path) -> anyhow::Result<()> {
    let deployments = Api::<Deployment>::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let available = |d: Option<Deployment>| {
        d.and_then(|d| d.status)
            .is_some_and(|s| s.available_replicas.unwrap_or(0) >= 1)
    };
    if available(deployments.get_opt("hookline-controller").await?) {
        return Ok(());
    }
    eprintln!("hookline-controller is not running: installing the chart with the test settings");
    let kubectl = env
        .vars
        .get("HOOKLINE_KUBECTL")
        .context("env.sh does not set HOOKLINE_KUBECTL")?;
    run(Command::new(kubectl)
        .env("KUBECONFIG", &env.kubeconfig)
        .args(["apply", "--server-side", "--force-conflicts", "-f"])
        .arg(repo.join("crds/manifests")))?;
    let helm = env
        .vars
        .get("HOOKLINE_HELM")
        .context("env.sh does not set HOOKLINE_HELM")?;
    let mut cmd = Command::new(helm);
    cmd.env("KUBECONFIG", &env.kubeconfig)
        .args(["upgrade", "--install", "hookline"])
        .arg(repo.join("charts/hookline"))
        .args([
            "--namespace",
            OPERATOR_NAMESPACE,
            "--create-namespace",
            "--skip-crds",
        ]);
    for v in [
        format!("kafka.bootstrapServers={}", env.kafka_bootstrap),
        "image.tag=dev".into(),
        "delivery.allowHttp=true".into(),
        "delivery.allowCidrs={127.0.0.0/8}".into(),
        "kafka.topics.partitions=3".into(),
        "kafka.topics.replicationFactor=1".into(),
    ] {
        cmd.arg("--set").arg(v);
    }
    run(&mut cmd)?;
    let end = Instant::now() + Duration::from_secs(180);
    while Instant::now() < end {
        if available(deployments.get_opt("hookline-controller").await?) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    bail!("hookline-controller did not become available within 3 minutes")
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A benchmark tenant: a namespace of its own, deleted by [`Tenant::delete`].
pub struct Tenant {
    /// The namespace.
    pub name: String,
    client: Client,
    api: Api<Webhook>,
}

/// One `Webhook` to create.
#[derive(Debug, Clone)]
pub struct WebhookDef {
    /// Its name.
    pub name: String,
    /// Its URL.
    pub url: String,
    /// Its event types.
    pub event_types: Vec<String>,
    /// `spec.delivery`, if any.
    pub delivery: Option<serde_json::Value>,
    /// Use the shared Secret (`secretRef`) rather than a generated one.
    pub shared_secret: bool,
}

impl Tenant {
    /// Creates namespace `hlb-<label>-<random>` and the shared signing Secret.
    ///
    /// # Errors
    /// When the API server refuses.
    pub async fn create(client: &Client, label: &str) -> anyhow::Result<Tenant> {
        let name = format!("hlb-{label}-{}", suffix());
        let ns: Namespace = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"hookline.dev/bench": "true"}}
        }))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": SIGNING_SECRET},
            "stringData": {"secret": SIGNING_KEY}
        }))?;
        Api::<Secret>::namespaced(client.clone(), &name)
            .create(&PostParams::default(), &secret)
            .await?;
        Ok(Tenant {
            api: Api::namespaced(client.clone(), &name),
            client: client.clone(),
            name,
        })
    }

    /// Creates `defs`, `parallel` at a time.
    ///
    /// # Errors
    /// When the API server refuses one.
    pub async fn create_webhooks(
        &self,
        defs: &[WebhookDef],
        parallel: usize,
    ) -> anyhow::Result<()> {
        use futures::StreamExt as _;
        let results: Vec<anyhow::Result<()>> = futures::stream::iter(defs.iter().cloned())
            .map(|d| {
                let api = self.api.clone();
                async move {
                    let mut spec = json!({"url": d.url, "eventTypes": d.event_types});
                    if let Some(delivery) = d.delivery {
                        spec["delivery"] = delivery;
                    }
                    if d.shared_secret {
                        spec["secretRef"] = json!({"name": SIGNING_SECRET});
                    }
                    let wh: Webhook = serde_json::from_value(json!({
                        "apiVersion": "hookline.dev/v1alpha1", "kind": "Webhook",
                        "metadata": {"name": d.name}, "spec": spec
                    }))?;
                    api.create(&PostParams::default(), &wh).await?;
                    Ok(())
                }
            })
            .buffer_unordered(parallel.max(1))
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// How many of the tenant's `Webhook`s are `Ready=True`, of how many.
    ///
    /// # Errors
    /// When the list fails.
    pub async fn ready(&self) -> anyhow::Result<(usize, usize)> {
        let list = self.api.list(&ListParams::default()).await?;
        let ready = list
            .items
            .iter()
            .filter(|w| {
                w.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == types::READY && c.status == "True")
                })
            })
            .count();
        Ok((ready, list.items.len()))
    }

    /// Waits until all `Webhook`s are `Ready` (or `limit` passes); returns
    /// how long it took, or `None` on timeout.
    ///
    /// # Errors
    /// When listing fails.
    pub async fn wait_ready(
        &self,
        limit: Duration,
        from: Instant,
    ) -> anyhow::Result<Option<Duration>> {
        let end = from + limit;
        loop {
            let (ready, all) = self.ready().await?;
            if ready == all && all > 0 {
                return Ok(Some(from.elapsed()));
            }
            if Instant::now() > end {
                eprintln!(
                    "  {}: {ready} of {all} Webhooks Ready after {limit:?}",
                    self.name
                );
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Deletes the namespace (without waiting) and the controller's topics of it.
    pub async fn delete(&self, env: &Env) {
        let _ = Api::<Namespace>::all(self.client.clone())
            .delete(&self.name, &DeleteParams::default())
            .await;
        let topics = hookline_crds::naming::topics(&self.name);
        let names: Vec<String> = topics.all().into_iter().map(str::to_owned).collect();
        // The controller keeps a deleted tenant's topics by design; a benchmark's are litter.
        delete_topics(env, &names).await;
    }
}

/// A short random lowercase suffix.
pub fn suffix() -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mix = (n as u64 ^ u64::from(std::process::id()).rotate_left(32))
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    format!("{:08x}", mix >> 32)
}

/// The topics and consumer group of one benchmark run.
#[derive(Debug, Clone)]
pub struct RunTopics {
    /// Events.
    pub events: String,
    /// `(tier, topic)`, shortest first.
    pub retry: Vec<(String, String)>,
    /// Dead letters.
    pub dead_letter: String,
    /// Attempts.
    pub attempts: String,
    /// The consumer group.
    pub group: String,
}

impl RunTopics {
    /// Names for run `run` of tenant `ns`.
    pub fn new(ns: &str, run: &str) -> RunTopics {
        let base = format!("hlb.{ns}.{run}");
        RunTopics {
            events: format!("{base}.events"),
            retry: hookline_crds::naming::RETRY_TIERS
                .iter()
                .map(|(_, t)| ((*t).to_owned(), format!("{base}.retry.{t}")))
                .collect(),
            dead_letter: format!("{base}.dlq"),
            attempts: format!("{base}.attempts"),
            group: format!("hlb-dispatcher.{ns}.{run}"),
        }
    }

    /// Every topic.
    pub fn all(&self) -> Vec<String> {
        let mut v = vec![self.events.clone()];
        v.extend(self.retry.iter().map(|(_, t)| t.clone()));
        v.push(self.dead_letter.clone());
        v.push(self.attempts.clone());
        v
    }

    /// Creates them, `partitions` each.
    ///
    /// # Errors
    /// When Kafka refuses.
    pub async fn create(&self, env: &Env, partitions: i32) -> anyhow::Result<()> {
        let admin: AdminClient<DefaultClientContext> = env.kafka().create()?;
        let names = self.all();
        let new: Vec<NewTopic<'_>> = names
            .iter()
            .map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(1)))
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        for r in admin.create_topics(&new, &opts).await? {
            if let Err((t, code)) = r {
                bail!("creating topic {t}: {code}");
            }
        }
        Ok(())
    }

    /// Deletes them.
    pub async fn delete(&self, env: &Env) {
        delete_topics(env, &self.all()).await;
    }
}

async fn delete_topics(env: &Env, names: &[String]) {
    let Ok(admin) = env.kafka().create::<AdminClient<DefaultClientContext>>() else {
        return;
    };
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let _ = admin.delete_topics(&refs, &opts).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_topics_have_every_tier_and_a_group_of_their_own() {
        let t = RunTopics::new("hlb-x-1", "r3");
        assert_eq!(t.events, "hlb.hlb-x-1.r3.events");
        assert_eq!(t.retry.len(), hookline_crds::naming::RETRY_TIERS.len());
        assert_eq!(t.all().len(), 3 + t.retry.len());
        assert!(t.group.contains("r3"));
    }

    #[test]
    fn env_sh_is_read() {
        let v = parse_env_sh("export A=1\nexport B=\"x y\"\n");
        assert_eq!(v["B"], "x y");
    }
}

//! The benchmark's view of the local environment, built on the test harness
//! (`hookline-tests`): facts flow in from the environment's `env.sh`
//! ([`Env`], read and never started: a benchmark measures the environment it
//! is given), the controller is installed with the test settings if it does
//! not run ([`ensure_controller`]), and out go what a benchmark adds of its
//! own — a harness tenant with a shared signing Secret and many `Webhook`s
//! created in parallel ([`Tenant`]), and Kafka topics per run ([`RunTopics`],
//! created and deleted afterwards) so that each run starts from an empty log
//! and a fresh consumer group.
//!
//! Why topics of its own: the controller runs a dispatcher of its own for
//! every tenant (a debug build, started by the pod runner). The benchmark's
//! dispatcher is a release build it starts itself, told to read the run's
//! topics; the controller's copy reads `hookline.<ns>.events`, which nobody
//! writes, and stays idle.

use std::time::{Duration, Instant};

use hookline_core::{conditions::types, naming};
use hookline_crds::Webhook;
use hookline_tests::{install, kafka, run_dir, tenant, wait};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

pub use hookline_tests::Env;

/// The signing Secret every benchmark `Webhook` refers to (unless generated).
pub const SIGNING_SECRET: &str = "bench-signing";
/// Its key: 32 bytes, `whsec_` + base64.
pub const SIGNING_KEY: &str = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// The Kafka broker's pid, from the environment's pid file (`<pid> <start time>`: the
/// environment records the start time to detect reuse).
pub fn kafka_pid() -> Option<u32> {
    std::fs::read_to_string(run_dir().join("pids/kafka.pid"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Makes sure the Hookline controller runs: when it is not available, installs
/// the CRDs and the chart with the test settings (`allowHttp`, `allowCidrs:
/// [127.0.0.0/8]`) as the tests do; a running controller is left as it is.
///
/// # Errors
/// When helm fails or the controller does not become available.
pub async fn ensure_controller(env: &Env, client: &Client) -> anyhow::Result<()> {
    let controller = Api::<Deployment>::namespaced(client.clone(), install::OPERATOR_NAMESPACE)
        .get_opt("hookline-controller")
        .await?;
    let available = controller
        .and_then(|d| d.status)
        .is_some_and(|s| s.available_replicas.unwrap_or(0) >= 1);
    if available {
        return Ok(());
    }
    eprintln!("hookline-controller is not running: installing the chart with the test settings");
    install::controller(env, client).await
}

/// A benchmark tenant: the harness's tenant namespace `hl-bench-<label>-<random>`
/// with the shared signing Secret; deleted by [`Tenant::delete`] (and, as any
/// harness namespace, when dropped).
pub struct Tenant {
    /// The harness tenant: environment, admin client, namespace, `Webhook` API.
    pub inner: tenant::Tenant,
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
    /// Creates the namespace and the shared signing Secret.
    ///
    /// # Errors
    /// When the API server refuses.
    pub async fn create(env: &Env, client: &Client, label: &str) -> anyhow::Result<Tenant> {
        let inner =
            tenant::Tenant::create_in(env.clone(), client.clone(), &format!("bench-{label}"))
                .await?;
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": SIGNING_SECRET},
            "stringData": {"secret": SIGNING_KEY}
        }))?;
        Api::<Secret>::namespaced(client.clone(), &inner.ns.name)
            .create(&PostParams::default(), &secret)
            .await?;
        Ok(Tenant { inner })
    }

    /// The namespace.
    pub fn name(&self) -> &str {
        &self.inner.ns.name
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
                let api = self.inner.api.clone();
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
        let list = self.inner.api.list(&ListParams::default()).await?;
        let ready = list
            .items
            .iter()
            .filter(|w| wait::condition_is_true(w, types::READY))
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
                    self.name()
                );
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Deletes the namespace (without waiting) and the controller's topics of it.
    pub async fn delete(&self) {
        let t = &self.inner;
        t.ns.delete(&t.client).await;
        let names: Vec<String> = t.topics().all().into_iter().map(str::to_owned).collect();
        // The controller keeps a deleted tenant's topics by design; a benchmark's are litter.
        kafka::delete_topics(&t.env, &names).await;
    }
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
            retry: naming::RETRY_TIERS
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
        kafka::create_topics(env, &self.all(), partitions).await
    }

    /// Deletes them.
    pub async fn delete(&self, env: &Env) {
        kafka::delete_topics(env, &self.all()).await;
    }
}

/// Sets the replicas of the chart's `hookline-api` Deployment; answers what they were (`None`
/// when there is none, or it cannot be scaled). The chart's debug `hookline-api` reads every
/// tenant's attempts topic into its delivery log, which costs up to half a core under load: a
/// benchmark of something else scales it to 0 and back.
pub async fn scale_chart_api(client: &Client, replicas: i32) -> Option<i32> {
    let api = Api::<Deployment>::namespaced(client.clone(), "hookline-system");
    let was = api
        .get_opt("hookline-api")
        .await
        .ok()??
        .spec?
        .replicas
        .unwrap_or(1);
    api.patch_scale(
        "hookline-api",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"spec": {"replicas": replicas}})),
    )
    .await
    .ok()?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    Some(was)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_topics_have_every_tier_and_a_group_of_their_own() {
        let t = RunTopics::new("hlb-x-1", "r3");
        assert_eq!(t.events, "hlb.hlb-x-1.r3.events");
        assert_eq!(t.retry.len(), naming::RETRY_TIERS.len());
        assert_eq!(t.all().len(), 3 + t.retry.len());
        assert!(t.group.contains("r3"));
    }
}

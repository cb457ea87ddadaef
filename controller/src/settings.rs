//! Platform settings of the controller: what the platform team decides once for every tenant
//! (operator namespace, Kafka, address rules, dispatcher defaults). They arrive as flags or
//! environment variables (the Helm chart sets them) and flow into validation and into every
//! dispatcher Deployment the controller builds.

use std::time::Duration;

use clap::Parser;
use hookline_core::args::AddressRules;

/// `hookline-controller` flags; each also reads an environment variable.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "hookline-controller",
    version,
    about = "Reconciles Hookline Webhooks"
)]
pub struct Settings {
    /// Namespace where the controller and every tenant's dispatcher run.
    #[arg(
        long,
        env = "HOOKLINE_OPERATOR_NAMESPACE",
        default_value = "hookline-system"
    )]
    pub operator_namespace: String,

    /// Kafka bootstrap servers (host:port, comma-separated).
    #[arg(long, env = "HOOKLINE_KAFKA_BOOTSTRAP")]
    pub kafka_bootstrap: String,

    /// Optional Secret in the operator namespace whose keys are passed to the dispatchers as
    /// environment variables (`HOOKLINE_KAFKA_*`: TLS and SASL settings).
    #[arg(long, env = "HOOKLINE_KAFKA_SECRET")]
    pub kafka_secret: Option<String>,

    /// Image of the dispatcher.
    #[arg(long, env = "HOOKLINE_DISPATCHER_IMAGE", default_value = concat!("ghcr.io/hookline/hookline:", env!("CARGO_PKG_VERSION")))]
    pub dispatcher_image: String,

    /// Replicas of each tenant's dispatcher Deployment.
    #[arg(long, env = "HOOKLINE_DISPATCHER_REPLICAS", default_value_t = 1)]
    pub dispatcher_replicas: i32,

    /// Resources of each dispatcher container, as JSON (`{"requests": {...}, "limits": {...}}`).
    #[arg(long, env = "HOOKLINE_DISPATCHER_RESOURCES",
          default_value = r#"{"requests":{"cpu":"100m","memory":"64Mi"},"limits":{"memory":"256Mi"}}"#,
          value_parser = parse_resources)]
    pub dispatcher_resources: k8s_openapi::api::core::v1::ResourceRequirements,

    /// Scheduling and image-pull settings of every dispatcher Pod, as JSON: `imagePullSecrets`,
    /// `nodeSelector`, `tolerations`, `affinity`, `priorityClassName` (each optional; the
    /// chart fills them from its values). Unknown keys are refused.
    #[arg(long, env = "HOOKLINE_DISPATCHER_POD", default_value = "{}", value_parser = parse_pod)]
    pub dispatcher_pod: DispatcherPod,

    /// `imagePullPolicy` of every dispatcher container (`Always`, `IfNotPresent`, `Never`).
    #[arg(long, env = "HOOKLINE_DISPATCHER_IMAGE_PULL_POLICY", default_value = "IfNotPresent",
          value_parser = ["Always", "IfNotPresent", "Never"])]
    pub dispatcher_image_pull_policy: String,

    /// `RUST_LOG` of every dispatcher (e.g. `info`, `debug`, `info,hookline_dispatcher=debug`).
    #[arg(long, env = "HOOKLINE_DISPATCHER_LOG_LEVEL", default_value = "info")]
    pub dispatcher_log_level: String,

    /// Platform default of `spec.delivery.retry.maxAttempts`, passed to every dispatcher.
    #[arg(long, env = "HOOKLINE_DEFAULT_MAX_ATTEMPTS", value_parser = clap::value_parser!(u32).range(1..=50))]
    pub default_max_attempts: Option<u32>,

    /// Platform default of `spec.delivery.retry.initialDelay` (e.g. `1s`).
    #[arg(long, env = "HOOKLINE_DEFAULT_INITIAL_DELAY", value_parser = parse_duration)]
    pub default_initial_delay: Option<Duration>,

    /// Platform default of `spec.delivery.retry.maxDelay` (e.g. `10h`).
    #[arg(long, env = "HOOKLINE_DEFAULT_MAX_DELAY", value_parser = parse_duration)]
    pub default_max_delay: Option<Duration>,

    /// Which receiver URLs `Webhook`s may use (validated here, passed to every dispatcher).
    #[command(flatten)]
    pub address: AddressRules,

    /// Partitions of each new tenant topic.
    #[arg(long, env = "HOOKLINE_TOPIC_PARTITIONS", default_value_t = 6)]
    pub topic_partitions: i32,

    /// Replication factor of each new tenant topic.
    #[arg(long, env = "HOOKLINE_TOPIC_REPLICATION", default_value_t = 1)]
    pub topic_replication: i32,

    /// `min.insync.replicas` of each new tenant topic: how many replicas must have a write
    /// before an `acks=all` producer (the dispatcher, and what tenants are told to run) gets
    /// its acknowledgement. Unset: 2, or the replication factor when that is lower. Above the
    /// replication factor the controller refuses to start.
    #[arg(long, env = "HOOKLINE_TOPIC_MIN_INSYNC_REPLICAS", value_parser = clap::value_parser!(i32).range(1..))]
    pub topic_min_insync_replicas: Option<i32>,

    /// How long an event id is remembered by each tenant's dispatcher: a record with an id seen
    /// within it is not delivered again (also the retention of new dedup topics, plus an hour).
    #[arg(long, env = "HOOKLINE_DEDUP_WINDOW", default_value = "24h", value_parser = parse_duration)]
    pub dedup_window: Duration,

    /// How long the previous signing key stays valid after a rotation (e.g. `24h`).
    #[arg(long, env = "HOOKLINE_ROTATION_OVERLAP", default_value = "24h", value_parser = parse_duration)]
    pub rotation_overlap: Duration,

    /// Address to serve /metrics, /healthz and /readyz on.
    #[arg(long, env = "HOOKLINE_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: String,

    /// Take part in leader election (a Lease in the operator namespace) so that only one
    /// replica reconciles.
    #[arg(long, env = "HOOKLINE_LEADER_ELECT", default_value_t = false)]
    pub leader_elect: bool,

    /// This replica's identity in leader election (the Pod name).
    #[arg(long, env = "POD_NAME", default_value = "hookline-controller")]
    pub pod_name: String,

    /// Serve only the `Webhook`s labelled `hookline.dev/instance=<this value>` (a canary of a
    /// new version, or a test's own controller), with its own operator namespace. Without it,
    /// the controller serves every `Webhook` that has no such label.
    ///
    /// Caveat: whoever may create a `Webhook` may label it, so run a second instance only with
    /// settings no laxer (address rules, retry limits) than the main one's. All `Webhook`s of a
    /// namespace should belong to the same instance: two instances would manage the same
    /// tenant's Role.
    #[arg(long, env = "HOOKLINE_INSTANCE")]
    pub instance: Option<String>,
}

/// Label choosing the controller instance that serves a `Webhook` (see [`Settings::instance`]).
pub const LABEL_INSTANCE: &str = "hookline.dev/instance";

impl Settings {
    /// Label selector of the `Webhook`s this controller serves.
    pub fn webhook_selector(&self) -> String {
        match &self.instance {
            Some(i) => format!("{LABEL_INSTANCE}={i}"),
            None => format!("!{LABEL_INSTANCE}"),
        }
    }

    /// Whether this controller serves a `Webhook` with these labels: the same choice as
    /// [`webhook_selector`](Self::webhook_selector), for an object read directly.
    pub fn serves(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        labels.get(LABEL_INSTANCE) == self.instance.as_ref()
    }
}

/// Where dispatcher Pods run and how their image is pulled: what a platform sets for all of
/// its workloads.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DispatcherPod {
    /// Secrets for pulling the image from a private registry.
    #[serde(default)]
    pub image_pull_secrets: Vec<k8s_openapi::api::core::v1::LocalObjectReference>,
    /// Node labels the Pods must match.
    #[serde(default)]
    pub node_selector: std::collections::BTreeMap<String, String>,
    /// Taints the Pods tolerate.
    #[serde(default)]
    pub tolerations: Vec<k8s_openapi::api::core::v1::Toleration>,
    /// Node and Pod (anti-)affinity.
    #[serde(default)]
    pub affinity: Option<k8s_openapi::api::core::v1::Affinity>,
    /// The Pods' PriorityClass (empty: none).
    #[serde(default)]
    pub priority_class_name: Option<String>,
}

fn parse_pod(s: &str) -> Result<DispatcherPod, String> {
    serde_json::from_str(s).map_err(|e| {
        format!("not a JSON object of imagePullSecrets, nodeSelector, tolerations, affinity, priorityClassName: {e}")
    })
}

fn parse_resources(s: &str) -> Result<k8s_openapi::api::core::v1::ResourceRequirements, String> {
    serde_json::from_str(s).map_err(|e| format!("not a ResourceRequirements JSON object: {e}"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    hookline_core::duration::parse(s).map_err(|e| e.to_string())
}

impl Settings {
    /// Settings for unit tests.
    pub fn for_tests() -> Settings {
        Settings::parse_from(["hookline-controller", "--kafka-bootstrap", "127.0.0.1:9092"])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_https_only_with_no_allow_list() {
        let s = Settings::for_tests();
        assert!(!s.address.allow_http);
        assert!(s.address.allow_cidrs.is_empty());
        assert_eq!(s.operator_namespace, "hookline-system");
        assert_eq!(s.rotation_overlap, Duration::from_secs(86_400));
    }

    #[test]
    fn the_main_instance_serves_unlabelled_webhooks_and_a_named_one_only_its_own() {
        let mut s = Settings::for_tests();
        assert_eq!(s.webhook_selector(), "!hookline.dev/instance");
        s.instance = Some("canary".into());
        assert_eq!(s.webhook_selector(), "hookline.dev/instance=canary");
    }

    #[test]
    fn a_webhook_is_served_by_the_instance_its_label_names_or_by_the_main_one_without() {
        let labels = |v: Option<&str>| {
            v.map(|v| (LABEL_INSTANCE.to_owned(), v.to_owned()))
                .into_iter()
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        let main = Settings::for_tests();
        let canary = Settings {
            instance: Some("canary".into()),
            ..Settings::for_tests()
        };
        assert!(main.serves(&labels(None)));
        assert!(!main.serves(&labels(Some("canary"))));
        assert!(canary.serves(&labels(Some("canary"))));
        assert!(!canary.serves(&labels(None)));
        assert!(!canary.serves(&labels(Some("other"))));
    }

    #[test]
    fn min_insync_replicas_is_unset_unless_given_and_at_least_one() {
        assert_eq!(Settings::for_tests().topic_min_insync_replicas, None);
        let s = Settings::parse_from([
            "x",
            "--kafka-bootstrap",
            "k:1",
            "--topic-min-insync-replicas",
            "2",
        ]);
        assert_eq!(s.topic_min_insync_replicas, Some(2));
        assert!(
            Settings::try_parse_from([
                "x",
                "--kafka-bootstrap",
                "k:1",
                "--topic-min-insync-replicas",
                "0"
            ])
            .is_err()
        );
    }

    #[test]
    fn allow_list_is_comma_separated_cidrs() {
        let s = Settings::parse_from([
            "x",
            "--kafka-bootstrap",
            "k:1",
            "--allow-cidr",
            "127.0.0.0/8,::1/128",
        ]);
        assert_eq!(s.address.allow_cidrs.len(), 2);
    }
}

//! The dispatcher's settings: flags (each also an `HOOKLINE_*` environment
//! variable) flow in through [`Config`], exactly as the controller writes them
//! into the tenant's Deployment; extra librdkafka settings flow in from
//! `HOOKLINE_KAFKA_<NAME>` variables through [`kafka_env_settings`]; out come
//! the Kafka client configurations of the consumer, the producer and the
//! start-up scanner, with the settings delivery semantics depend on forced.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use ipnet::IpNet;
use rdkafka::ClientConfig;

/// One delayed-retry topic: records written to it become actionable `delay`
/// after they were written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryTier {
    /// The tier's delay.
    pub delay: Duration,
    /// The topic.
    pub topic: String,
}

/// `hookline-dispatcher` flags; each also reads an environment variable.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "hookline-dispatcher",
    version,
    about = "Delivers a tenant's Kafka events to its Webhooks"
)]
pub struct Config {
    /// The tenant namespace whose `Webhook`s this dispatcher serves.
    #[arg(long, env = "HOOKLINE_TENANT_NAMESPACE")]
    pub tenant_namespace: String,

    /// Kafka bootstrap servers (host:port, comma-separated).
    #[arg(long, env = "HOOKLINE_KAFKA_BOOTSTRAP")]
    pub kafka_bootstrap: String,

    /// The topic producers write events to.
    #[arg(long, env = "HOOKLINE_EVENTS_TOPIC")]
    pub events_topic: String,

    /// Where events that never succeed, and records that cannot be parsed, go.
    #[arg(long, env = "HOOKLINE_DEAD_LETTER_TOPIC")]
    pub dead_letter_topic: String,

    /// One record per delivery attempt, for audit (best effort).
    #[arg(long, env = "HOOKLINE_ATTEMPTS_TOPIC")]
    pub attempts_topic: String,

    /// Consumer group of the events and retry topics.
    #[arg(long, env = "HOOKLINE_CONSUMER_GROUP")]
    pub consumer_group: String,

    /// Address to serve /metrics, /healthz and /readyz on.
    #[arg(long, env = "HOOKLINE_LISTEN", default_value = "0.0.0.0:9090")]
    pub listen: SocketAddr,

    /// A delayed-retry tier as `<delay>=<topic>`, e.g. `1s=hookline.acme.retry.1s`;
    /// repeated once per tier (comma-separated in the environment variable).
    #[arg(long = "retry-topic", env = "HOOKLINE_RETRY_TOPICS", value_delimiter = ',', value_parser = parse_tier, required = true)]
    pub retry_topics: Vec<RetryTier>,

    /// Deliver to `http://` URLs too (off by default: https only).
    #[arg(long, env = "HOOKLINE_ALLOW_HTTP", default_value_t = false)]
    pub allow_http: bool,

    /// CIDRs deliveries may reach although they are not public (comma-separated).
    #[arg(
        long = "allow-cidr",
        env = "HOOKLINE_ALLOW_CIDRS",
        value_delimiter = ','
    )]
    pub allow_cidrs: Vec<IpNet>,

    /// Deliveries held in memory (running, waiting for a slot, or parked behind
    /// an earlier event of their key) above which consumption pauses.
    #[arg(long, env = "HOOKLINE_MAX_PENDING", default_value_t = 10_000)]
    pub max_pending: usize,

    /// Largest record accepted (key + value + headers), in bytes.
    #[arg(long, env = "HOOKLINE_MAX_RECORD_BYTES", default_value_t = crate::envelope::DEFAULT_MAX_RECORD_BYTES)]
    pub max_record_bytes: usize,

    /// How often delivery counters and conditions are written to `Webhook` status.
    #[arg(long, env = "HOOKLINE_STATUS_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub status_interval: Duration,

    /// Platform default for `spec.delivery.retry.maxAttempts` where a Webhook leaves it out.
    #[arg(long, env = "HOOKLINE_DEFAULT_MAX_ATTEMPTS")]
    pub default_max_attempts: Option<u32>,

    /// Platform default for `spec.delivery.retry.initialDelay` (e.g. `1s`).
    #[arg(long, env = "HOOKLINE_DEFAULT_INITIAL_DELAY", value_parser = parse_duration)]
    pub default_initial_delay: Option<Duration>,

    /// Platform default for `spec.delivery.retry.maxDelay` (e.g. `10h`).
    #[arg(long, env = "HOOKLINE_DEFAULT_MAX_DELAY", value_parser = parse_duration)]
    pub default_max_delay: Option<Duration>,

    /// How often signing Secrets are re-read (they are also read when a `Webhook` changes).
    #[arg(long, env = "HOOKLINE_SECRET_REFRESH", default_value = "30s", value_parser = parse_duration)]
    pub secret_refresh: Duration,

    /// On SIGTERM, how long running deliveries may take to finish before the
    /// rest is left to be redelivered after the restart.
    #[arg(long, env = "HOOKLINE_SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    crate::duration::parse(text).map_err(|e| e.to_string())
}

/// Reads `<delay>=<topic>`.
///
/// # Errors
/// A message for a missing `=`, a bad duration, a zero delay or an empty topic.
pub fn parse_tier(text: &str) -> Result<RetryTier, String> {
    let (delay, topic) = text
        .split_once('=')
        .ok_or_else(|| format!("expected <delay>=<topic>, got {text:?}"))?;
    let delay = parse_duration(delay.trim())?;
    let topic = topic.trim();
    if delay.is_zero() {
        return Err("a retry tier's delay must be above zero".to_owned());
    }
    if topic.is_empty() {
        return Err(format!("retry tier {text:?} names no topic"));
    }
    Ok(RetryTier {
        delay,
        topic: topic.to_owned(),
    })
}

/// librdkafka settings from `HOOKLINE_KAFKA_<NAME>` variables:
/// `HOOKLINE_KAFKA_SECURITY_PROTOCOL` becomes `security.protocol`.
/// `HOOKLINE_KAFKA_BOOTSTRAP` and `HOOKLINE_KAFKA_SECRET` are not settings.
pub fn kafka_env_settings(vars: impl Iterator<Item = (String, String)>) -> Vec<(String, String)> {
    vars.filter_map(|(k, v)| {
        let name = k.strip_prefix("HOOKLINE_KAFKA_")?;
        (!name.is_empty() && name != "BOOTSTRAP" && name != "SECRET")
            .then(|| (name.to_ascii_lowercase().replace('_', "."), v))
    })
    .collect()
}

impl Config {
    /// The retry tiers, shortest first, duplicates removed.
    pub fn tiers(&self) -> Vec<RetryTier> {
        let mut tiers = self.retry_topics.clone();
        tiers.sort_by_key(|t| t.delay);
        tiers.dedup_by(|a, b| a.topic == b.topic);
        tiers
    }

    /// Bootstrap servers plus the `HOOKLINE_KAFKA_*` settings of this process.
    pub fn kafka_base(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.kafka_bootstrap);
        for (k, v) in kafka_env_settings(std::env::vars()) {
            config.set(k, v);
        }
        config
    }

    /// The consumer of the events and retry topics: one group for all of them
    /// with the `range` assignor, so that partition *i* of every topic goes to
    /// the same replica (the per-key ordering relies on it); offsets are
    /// committed by hand, only once settled.
    pub fn consumer_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("auto.offset.reset", "earliest")
            .set("statistics.interval.ms", "10000")
            .set("session.timeout.ms", "30000");
        merge(&mut config, self.kafka_base());
        config
            .set("group.id", &self.consumer_group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("partition.assignment.strategy", "range")
            .set("enable.partition.eof", "false");
        config
    }

    /// The producer of retry, dead-letter and attempt records: `acks=all` and
    /// idempotence, so an acknowledged retry is durable and never doubled.
    pub fn producer_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("linger.ms", "5")
            .set("message.timeout.ms", "60000")
            .set("compression.type", "none");
        merge(&mut config, self.kafka_base());
        config.set("acks", "all").set("enable.idempotence", "true");
        config
    }

    /// A group-less reader of the retry topics, used once per assignment to
    /// find the retries still pending.
    pub fn scanner_config(&self) -> ClientConfig {
        let mut config = self.kafka_base();
        config
            .set("group.id", format!("{}.scan", self.consumer_group))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false");
        config
    }
}

fn merge(into: &mut ClientConfig, from: ClientConfig) {
    for (k, v) in from.config_map() {
        into.set(k, v);
    }
}

impl Config {
    /// The retry policy for Webhooks that leave fields out: the module defaults, overridden
    /// by the platform's `--default-*` flags.
    ///
    /// # Errors
    /// When the overrides make an invalid policy (e.g. initial delay above the maximum).
    pub fn default_retry(&self) -> Result<crate::retry::RetryPolicy, String> {
        let mut p = crate::retry::RetryPolicy::default();
        if let Some(n) = self.default_max_attempts {
            p.max_attempts = n;
        }
        if let Some(d) = self.default_initial_delay {
            p.initial_delay = d;
        }
        if let Some(d) = self.default_max_delay {
            p.max_delay = d;
        }
        p.validate()
            .map_err(|e| format!("platform retry defaults: {e}"))?;
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = [
            "hookline-dispatcher",
            "--tenant-namespace=acme",
            "--kafka-bootstrap=k:9092",
            "--events-topic=hookline.acme.events",
            "--dead-letter-topic=hookline.acme.dlq",
            "--attempts-topic=hookline.acme.attempts",
            "--consumer-group=hookline-dispatcher.acme",
            "--listen=127.0.0.1:9090",
            "--retry-topic=10s=hookline.acme.retry.10s",
            "--retry-topic=1s=hookline.acme.retry.1s",
            "--retry-topic=1h=hookline.acme.retry.1h",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        v.extend(extra.iter().map(|s| (*s).to_owned()));
        v
    }

    #[test]
    fn the_flags_the_controller_writes_are_accepted() {
        let c = Config::try_parse_from(args(&["--allow-http", "--allow-cidr=127.0.0.0/8,::1/128"]))
            .unwrap();
        assert_eq!(c.tenant_namespace, "acme");
        assert!(c.allow_http);
        assert_eq!(c.allow_cidrs.len(), 2);
        let tiers = c.tiers();
        assert_eq!(tiers[0].delay, Duration::from_secs(1));
        assert_eq!(tiers[2].topic, "hookline.acme.retry.1h");
        assert_eq!(c.status_interval, Duration::from_secs(2));
    }

    #[test]
    fn a_retry_tier_needs_a_delay_and_a_topic() {
        assert!(parse_tier("1m=t").is_ok());
        assert!(parse_tier("t").unwrap_err().contains("<delay>=<topic>"));
        assert!(parse_tier("0s=t").is_err());
        assert!(parse_tier("1s=").is_err());
        assert!(parse_tier("soon=t").is_err());
    }

    #[test]
    fn kafka_settings_come_from_prefixed_environment_variables() {
        let vars = [
            ("HOOKLINE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("HOOKLINE_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
            ("HOOKLINE_KAFKA_BOOTSTRAP", "k:9092"),
            ("HOOKLINE_KAFKA_SECRET", "kafka-creds"),
            ("PATH", "/bin"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let got = kafka_env_settings(vars.into_iter());
        assert_eq!(
            got,
            vec![
                ("security.protocol".to_owned(), "SASL_SSL".to_owned()),
                ("sasl.mechanism".to_owned(), "SCRAM-SHA-512".to_owned())
            ]
        );
    }

    #[test]
    fn the_settings_delivery_depends_on_cannot_be_overridden() {
        let c = Config::try_parse_from(args(&[])).unwrap();
        let consumer = c.consumer_config();
        assert_eq!(consumer.get("enable.auto.commit"), Some("false"));
        assert_eq!(consumer.get("partition.assignment.strategy"), Some("range"));
        assert_eq!(consumer.get("group.id"), Some("hookline-dispatcher.acme"));
        let producer = c.producer_config();
        assert_eq!(producer.get("acks"), Some("all"));
        assert_eq!(producer.get("enable.idempotence"), Some("true"));
    }

    #[test]
    fn platform_retry_defaults_override_the_module_defaults_and_are_checked() {
        let c = Config::try_parse_from(args(&[])).unwrap();
        assert_eq!(
            c.default_retry().unwrap(),
            crate::retry::RetryPolicy::default()
        );
        let c = Config::try_parse_from(args(&[
            "--default-max-attempts=5",
            "--default-max-delay=1h",
        ]))
        .unwrap();
        let p = c.default_retry().unwrap();
        assert_eq!(
            (p.max_attempts, p.max_delay),
            (5, Duration::from_secs(3600))
        );
        let c = Config::try_parse_from(args(&[
            "--default-initial-delay=2h",
            "--default-max-delay=1h",
        ]))
        .unwrap();
        assert!(
            c.default_retry()
                .unwrap_err()
                .contains("platform retry defaults")
        );
    }
}

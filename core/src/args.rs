//! The dispatcher's command line, defined once: the controller builds a [`DispatcherArgs`]
//! for each tenant and writes [`DispatcherArgs::to_args`] into the dispatcher Deployment; the
//! dispatcher parses the same struct from its flags (each also an `HOOKLINE_*` environment
//! variable). A round-trip test keeps the two sides from drifting.
//!
//! Out of it come the values the dispatcher derives from its flags: the retry tiers in order,
//! the platform's default retry policy, and (in [`crate::kafka`]) the Kafka client settings.

use std::time::Duration;

use clap::Parser;
use ipnet::IpNet;

use crate::envelope::DEFAULT_MAX_RECORD_BYTES;
use crate::retry::RetryPolicy;
use crate::ssrf::{AddressPolicy, UrlRefusal, check_url};

/// One delayed-retry topic: records written to it become actionable `delay`
/// after they were written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryTier {
    /// The tier's delay.
    pub delay: Duration,
    /// The topic.
    pub topic: String,
}

/// Which receiver URLs the platform allows: flags of the controller (which validates
/// `Webhook`s by them) and of the dispatcher (which enforces them at connect time), one
/// definition for both.
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressRules {
    /// Accept and deliver to `http://` URLs too (off by default: https only).
    #[arg(long, env = "HOOKLINE_ALLOW_HTTP", default_value_t = false)]
    pub allow_http: bool,

    /// CIDRs `Webhook`s may target although they are not public (loopback, private, …);
    /// comma-separated, empty by default.
    #[arg(
        long = "allow-cidr",
        env = "HOOKLINE_ALLOW_CIDRS",
        value_delimiter = ','
    )]
    pub allow_cidrs: Vec<IpNet>,
}

impl AddressRules {
    /// The address policy of these rules.
    pub fn policy(&self) -> AddressPolicy {
        AddressPolicy::new(self.allow_cidrs.clone())
    }

    /// Checks a `Webhook` URL by these rules ([`check_url`]).
    ///
    /// # Errors
    /// The first [`UrlRefusal`].
    pub fn check(&self, url: &url::Url) -> Result<(), UrlRefusal> {
        check_url(url, self.allow_http, Some(&self.policy()))
    }
}

/// Default of `--max-pending`.
pub const DEFAULT_MAX_PENDING: usize = 10_000;
/// Default of `--status-interval`.
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(2);
/// Default of `--secret-refresh`.
pub const DEFAULT_SECRET_REFRESH: Duration = Duration::from_secs(30);
/// Default of `--shutdown-grace`.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// `hookline-dispatcher` flags; each also reads an environment variable.
#[derive(Parser, Debug, Clone, PartialEq, Eq)]
#[command(
    name = "hookline-dispatcher",
    version,
    about = "Delivers a tenant's Kafka events to its Webhooks"
)]
pub struct DispatcherArgs {
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

    /// Address to serve /metrics, /healthz and /readyz on (`host:port`). The controller writes
    /// `$(POD_IP):<port>`, which Kubernetes expands before the process starts.
    #[arg(long, env = "HOOKLINE_LISTEN", default_value = "0.0.0.0:9090", value_parser = parse_listen)]
    pub listen: String,

    /// A delayed-retry tier as `<delay>=<topic>`, e.g. `1s=hookline.acme.retry.1s`;
    /// repeated once per tier (comma-separated in the environment variable).
    #[arg(long = "retry-topic", env = "HOOKLINE_RETRY_TOPICS", value_delimiter = ',', value_parser = parse_tier, required = true)]
    pub retry_topics: Vec<RetryTier>,

    /// Which receiver addresses the platform allows.
    #[command(flatten)]
    pub address: AddressRules,

    /// Deliveries held in memory (running, waiting for a slot, or parked behind
    /// an earlier event of their key) above which consumption pauses.
    #[arg(long, env = "HOOKLINE_MAX_PENDING", default_value_t = DEFAULT_MAX_PENDING)]
    pub max_pending: usize,

    /// The container's memory limit, which bounds in bytes what the dispatcher holds
    /// ([`crate::memory::Budget`]): bytes, or with a `KiB`/`MiB`/`GiB` (or `Ki`/`Mi`/`Gi`)
    /// suffix. Without it, the limit of the process's cgroup counts, if any.
    #[arg(long, env = "HOOKLINE_MEMORY_LIMIT", value_parser = crate::memory::parse_size)]
    pub memory_limit: Option<usize>,

    /// Largest record accepted (key + value + headers), in bytes.
    #[arg(long, env = "HOOKLINE_MAX_RECORD_BYTES", default_value_t = DEFAULT_MAX_RECORD_BYTES)]
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

    /// The compacted topic where the event ids seen are remembered ([`crate::dedup`]), one
    /// partition per events partition. Without it, duplicates are not suppressed.
    #[arg(long, env = "HOOKLINE_DEDUP_TOPIC")]
    pub dedup_topic: Option<String>,

    /// How long an event id is remembered: a record with an id seen within it is not delivered
    /// again.
    #[arg(long, env = "HOOKLINE_DEDUP_WINDOW", default_value = "24h", value_parser = parse_duration)]
    pub dedup_window: Duration,
}

/// Default of `--dedup-window`.
pub const DEFAULT_DEDUP_WINDOW: Duration = Duration::from_secs(86_400);

fn parse_duration(text: &str) -> Result<Duration, String> {
    crate::duration::parse(text).map_err(|e| e.to_string())
}

/// Accepts `host:port` where host is an address or a `$(VAR)` reference that Kubernetes
/// expands in container args.
fn parse_listen(text: &str) -> Result<String, String> {
    if text.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(text.to_owned());
    }
    match text.rsplit_once(':') {
        Some((host, port))
            if host.starts_with("$(") && host.ends_with(')') && port.parse::<u16>().is_ok() =>
        {
            Ok(text.to_owned())
        }
        _ => Err(format!("expected <address>:<port>, got {text:?}")),
    }
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

impl DispatcherArgs {
    /// The settings of `tenant`'s dispatcher with its topics and consumer group as
    /// [`crate::naming`] names them, and every other setting at its default (https only, no
    /// allow-list, the module retry defaults). Callers change what differs.
    pub fn for_tenant(tenant: &str, kafka_bootstrap: &str) -> DispatcherArgs {
        let topics = crate::naming::topics(tenant);
        DispatcherArgs {
            tenant_namespace: tenant.to_owned(),
            kafka_bootstrap: kafka_bootstrap.to_owned(),
            events_topic: topics.events,
            dead_letter_topic: topics.dead_letter,
            attempts_topic: topics.attempts,
            consumer_group: crate::naming::consumer_group(tenant),
            listen: "0.0.0.0:9090".to_owned(),
            retry_topics: topics
                .retry
                .into_iter()
                .map(|(delay, topic)| RetryTier { delay, topic })
                .collect(),
            address: AddressRules::default(),
            max_pending: DEFAULT_MAX_PENDING,
            memory_limit: None,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            status_interval: DEFAULT_STATUS_INTERVAL,
            default_max_attempts: None,
            default_initial_delay: None,
            default_max_delay: None,
            secret_refresh: DEFAULT_SECRET_REFRESH,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            dedup_topic: Some(topics.dedup),
            dedup_window: DEFAULT_DEDUP_WINDOW,
        }
    }

    /// The arguments that make [`DispatcherArgs::parse_from`] return `self` again: every flag
    /// that differs from its default, in declaration order. The controller writes these into
    /// each dispatcher Deployment.
    pub fn to_args(&self) -> Vec<String> {
        let d = crate::duration::format;
        let mut args = vec![
            format!("--tenant-namespace={}", self.tenant_namespace),
            format!("--kafka-bootstrap={}", self.kafka_bootstrap),
            format!("--events-topic={}", self.events_topic),
            format!("--dead-letter-topic={}", self.dead_letter_topic),
            format!("--attempts-topic={}", self.attempts_topic),
            format!("--consumer-group={}", self.consumer_group),
            format!("--listen={}", self.listen),
        ];
        args.extend(
            self.retry_topics
                .iter()
                .map(|t| format!("--retry-topic={}={}", d(t.delay), t.topic)),
        );
        if self.address.allow_http {
            args.push("--allow-http".to_owned());
        }
        if !self.address.allow_cidrs.is_empty() {
            let cidrs: Vec<String> = self
                .address
                .allow_cidrs
                .iter()
                .map(ToString::to_string)
                .collect();
            args.push(format!("--allow-cidr={}", cidrs.join(",")));
        }
        if self.max_pending != DEFAULT_MAX_PENDING {
            args.push(format!("--max-pending={}", self.max_pending));
        }
        if let Some(n) = self.memory_limit {
            args.push(format!("--memory-limit={n}"));
        }
        if self.max_record_bytes != DEFAULT_MAX_RECORD_BYTES {
            args.push(format!("--max-record-bytes={}", self.max_record_bytes));
        }
        if self.status_interval != DEFAULT_STATUS_INTERVAL {
            args.push(format!("--status-interval={}", d(self.status_interval)));
        }
        if let Some(n) = self.default_max_attempts {
            args.push(format!("--default-max-attempts={n}"));
        }
        if let Some(v) = self.default_initial_delay {
            args.push(format!("--default-initial-delay={}", d(v)));
        }
        if let Some(v) = self.default_max_delay {
            args.push(format!("--default-max-delay={}", d(v)));
        }
        if self.secret_refresh != DEFAULT_SECRET_REFRESH {
            args.push(format!("--secret-refresh={}", d(self.secret_refresh)));
        }
        if self.shutdown_grace != DEFAULT_SHUTDOWN_GRACE {
            args.push(format!("--shutdown-grace={}", d(self.shutdown_grace)));
        }
        if let Some(t) = &self.dedup_topic {
            args.push(format!("--dedup-topic={t}"));
        }
        if self.dedup_window != DEFAULT_DEDUP_WINDOW {
            args.push(format!("--dedup-window={}", d(self.dedup_window)));
        }
        args
    }

    /// The retry tiers, shortest first, duplicates removed.
    pub fn tiers(&self) -> Vec<RetryTier> {
        let mut tiers = self.retry_topics.clone();
        tiers.sort_by_key(|t| t.delay);
        tiers.dedup_by(|a, b| a.topic == b.topic);
        tiers
    }

    /// The retry policy for Webhooks that leave fields out: the module defaults, overridden
    /// by the platform's `--default-*` flags.
    ///
    /// # Errors
    /// When the overrides make an invalid policy (e.g. initial delay above the maximum).
    pub fn default_retry(&self) -> Result<RetryPolicy, String> {
        let mut p = RetryPolicy::default();
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

    fn parse(args: Vec<String>) -> DispatcherArgs {
        DispatcherArgs::try_parse_from(args).unwrap()
    }

    #[test]
    fn the_flags_are_parsed_and_tiers_sorted() {
        let c = parse(args(&["--allow-http", "--allow-cidr=127.0.0.0/8,::1/128"]));
        assert_eq!(c.tenant_namespace, "acme");
        assert!(c.address.allow_http);
        assert_eq!(c.address.allow_cidrs.len(), 2);
        let tiers = c.tiers();
        assert_eq!(tiers[0].delay, Duration::from_secs(1));
        assert_eq!(tiers[2].topic, "hookline.acme.retry.1h");
        assert_eq!(c.status_interval, DEFAULT_STATUS_INTERVAL);
    }

    #[test]
    fn to_args_parses_back_to_the_same_settings() {
        let defaults = parse(args(&[]));
        let mut every = parse(args(&[
            "--allow-http",
            "--allow-cidr=127.0.0.0/8,::1/128",
            "--max-pending=40",
            "--memory-limit=256Mi",
            "--max-record-bytes=4096",
            "--status-interval=500ms",
            "--default-max-attempts=5",
            "--default-initial-delay=2s",
            "--default-max-delay=1h",
            "--secret-refresh=1m",
            "--shutdown-grace=5s",
            "--dedup-topic=hookline.acme.dedup",
            "--dedup-window=1h",
        ]));
        for original in [defaults, every.clone()] {
            let mut argv = vec!["hookline-dispatcher".to_owned()];
            argv.extend(original.to_args());
            assert_eq!(parse(argv), original);
        }
        every.listen = "$(POD_IP):9090".to_owned();
        let mut argv = vec!["hookline-dispatcher".to_owned()];
        argv.extend(every.to_args());
        assert_eq!(parse(argv).listen, "$(POD_IP):9090");
    }

    #[test]
    fn a_tenants_defaults_parse_back_from_its_arguments() {
        let args = DispatcherArgs::for_tenant("acme", "k:9092");
        assert_eq!(args.events_topic, "hookline.acme.events");
        assert_eq!(args.consumer_group, "hookline-dispatcher.acme");
        let mut argv = vec!["hookline-dispatcher".to_owned()];
        argv.extend(args.to_args());
        assert_eq!(parse(argv), args);
    }

    #[test]
    fn a_listen_address_needs_a_port() {
        assert!(parse_listen("0.0.0.0:9090").is_ok());
        assert!(parse_listen("$(POD_IP):9090").is_ok());
        assert!(parse_listen("$(POD_IP)").is_err());
        assert!(parse_listen("nowhere:x").is_err());
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
    fn platform_retry_defaults_override_the_module_defaults_and_are_checked() {
        let c = parse(args(&[]));
        assert_eq!(c.default_retry().unwrap(), RetryPolicy::default());
        let p = parse(args(&[
            "--default-max-attempts=5",
            "--default-max-delay=1h",
        ]))
        .default_retry()
        .unwrap();
        assert_eq!(
            (p.max_attempts, p.max_delay),
            (5, Duration::from_secs(3600))
        );
        let c = parse(args(&[
            "--default-initial-delay=2h",
            "--default-max-delay=1h",
        ]));
        assert!(
            c.default_retry()
                .unwrap_err()
                .contains("platform retry defaults")
        );
    }
}

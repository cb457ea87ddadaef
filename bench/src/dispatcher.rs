//! The system under test as a process the benchmark owns: `hookline-dispatcher`
//! (a release build) started with the flags the controller writes into a
//! tenant's Deployment (`controller/src/children.rs`), but pointed at the
//! run's own topics and consumer group, serving `/metrics` on a loopback
//! port; its logs go to a file. Counters flow back out of `/metrics`
//! ([`Dispatcher::counters`]) and the process ends with SIGTERM, as a
//! Deployment's Pod would.

use hookline_core::args::{DispatcherArgs, parse_tier};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Serialize;

use crate::cluster::{Env, RunTopics};

/// How to start one dispatcher.
#[derive(Debug, Clone)]
pub struct Options {
    /// The binary.
    pub bin: PathBuf,
    /// The tenant namespace.
    pub namespace: String,
    /// The run's topics and group.
    pub topics: RunTopics,
    /// Extra environment (`HOOKLINE_KAFKA_*` tuning, `RUST_LOG`).
    pub env: Vec<(String, String)>,
    /// Where its output goes.
    pub log: PathBuf,
}

/// A running dispatcher.
pub struct Dispatcher {
    child: tokio::process::Child,
    /// Its pid.
    pub pid: u32,
    metrics: String,
    http: reqwest::Client,
}

/// Dispatcher counters read from `/metrics`, summed over webhooks.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Counters {
    /// `hookline_dispatcher_deliveries_total` by outcome.
    pub deliveries: BTreeMap<String, f64>,
    /// `hookline_dispatcher_retries_scheduled_total` by outcome.
    pub retries_scheduled: BTreeMap<String, f64>,
    /// `hookline_dispatcher_dead_letters_total`.
    pub dead_letters: f64,
    /// `hookline_dispatcher_records_total` by outcome.
    pub records: BTreeMap<String, f64>,
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl Dispatcher {
    /// Starts it.
    ///
    /// # Errors
    /// When the binary cannot be started.
    pub fn start(env: &Env, opts: &Options) -> anyhow::Result<Dispatcher> {
        Self::start_with_dedup(env, opts, None)
    }

    /// Like [`Dispatcher::start`], remembering the event ids it saw in `dedup_topic` (a
    /// compacted topic with as many partitions as the events topic) and suppressing duplicates
    /// when one is given, as a tenant's Deployment does; `None` is [`Dispatcher::start`].
    ///
    /// # Errors
    /// When the binary cannot be started.
    pub fn start_with_dedup(
        env: &Env,
        opts: &Options,
        dedup_topic: Option<&str>,
    ) -> anyhow::Result<Dispatcher> {
        let port = free_port()?;
        let t = &opts.topics;
        let mut settings = DispatcherArgs::for_tenant(&opts.namespace, &env.kafka_bootstrap);
        settings.events_topic.clone_from(&t.events);
        settings.dead_letter_topic.clone_from(&t.dead_letter);
        settings.attempts_topic.clone_from(&t.attempts);
        settings.consumer_group.clone_from(&t.group);
        // The bench's own topics have no dedup topic unless one is given: by default
        // duplicates are not suppressed here.
        settings.dedup_topic = dedup_topic.map(str::to_owned);
        settings.listen = format!("127.0.0.1:{port}");
        settings.address.allow_http = true;
        settings.address.allow_cidrs = vec!["127.0.0.0/8".parse()?];
        settings.retry_topics = t
            .retry
            .iter()
            .map(|(tier, topic)| parse_tier(&format!("{tier}={topic}")))
            .collect::<Result<_, _>>()
            .map_err(anyhow::Error::msg)?;
        let args = settings.to_args();
        if let Some(dir) = opts.log.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let log = std::fs::File::create(&opts.log)
            .with_context(|| format!("creating {}", opts.log.display()))?;
        let mut cmd = tokio::process::Command::new(&opts.bin);
        cmd.args(&args)
            .env("KUBECONFIG", &env.kubeconfig)
            .env("RUST_LOG", "info")
            .env("POD_NAME", format!("bench-{}", opts.topics.group))
            .envs(opts.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", opts.bin.display()))?;
        let pid = child.id().context("the dispatcher exited at once")?;
        Ok(Dispatcher {
            child,
            pid,
            metrics: format!("http://127.0.0.1:{port}"),
            http: crate::baseline::client()?,
        })
    }

    /// Waits until `/readyz` answers 200.
    ///
    /// # Errors
    /// When it does not within `limit`, or the process exits.
    pub async fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let end = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("the dispatcher exited with {status} before it was ready");
            }
            if let Ok(r) = self
                .http
                .get(format!("{}/readyz", self.metrics))
                .send()
                .await
                && r.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > end {
                bail!("the dispatcher was not ready within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Its counters now.
    ///
    /// # Errors
    /// When `/metrics` cannot be read.
    pub async fn counters(&self) -> anyhow::Result<Counters> {
        let text = self
            .http
            .get(format!("{}/metrics", self.metrics))
            .send()
            .await?
            .text()
            .await?;
        Ok(parse_counters(&text))
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub async fn stop(mut self, grace: Duration) {
        if let Ok(pid) = i32::try_from(self.pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    let at = labels.find(&format!("{name}=\""))? + name.len() + 2;
    let end = labels[at..].find('"')?;
    Some(&labels[at..at + end])
}

/// Reads the counters the benchmark reports from a Prometheus text page.
pub fn parse_counters(text: &str) -> Counters {
    let mut c = Counters::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        match name {
            "hookline_dispatcher_deliveries_total" => {
                let k = label(labels, "outcome").unwrap_or("?").to_owned();
                *c.deliveries.entry(k).or_insert(0.0) += v;
            }
            "hookline_dispatcher_retries_scheduled_total" => {
                let k = label(labels, "outcome").unwrap_or("?").to_owned();
                *c.retries_scheduled.entry(k).or_insert(0.0) += v;
            }
            "hookline_dispatcher_dead_letters_total" => c.dead_letters += v,
            "hookline_dispatcher_records_total" => {
                let k = label(labels, "outcome").unwrap_or("?").to_owned();
                *c.records.entry(k).or_insert(0.0) += v;
            }
            _ => {}
        }
    }
    c
}

/// `$CARGO_TARGET_DIR/<profile>/hookline-dispatcher`, next to this binary when it is there.
pub fn default_bin() -> PathBuf {
    let here = std::env::current_exe().ok();
    if let Some(dir) = here.as_deref().and_then(Path::parent) {
        let candidate = dir.join("hookline-dispatcher");
        if candidate.exists() {
            return candidate;
        }
    }
    hookline_tests::cache_dir().join("target/release/hookline-dispatcher")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_summed_over_webhooks() {
        let text = r#"# HELP x
hookline_dispatcher_deliveries_total{namespace="a",outcome="delivered",status_class="2xx",webhook="w1"} 10
hookline_dispatcher_deliveries_total{namespace="a",outcome="delivered",status_class="2xx",webhook="w2"} 5
hookline_dispatcher_deliveries_total{namespace="a",outcome="retry",status_class="timeout",webhook="w2"} 2
hookline_dispatcher_retries_scheduled_total{namespace="a",outcome="postponed",webhook="w2"} 7
hookline_dispatcher_records_total{namespace="a",outcome="event"} 15
"#;
        let c = parse_counters(text);
        assert_eq!(c.deliveries["delivered"], 15.0);
        assert_eq!(c.deliveries["retry"], 2.0);
        assert_eq!(c.retries_scheduled["postponed"], 7.0);
        assert_eq!(c.records["event"], 15.0);
    }
}

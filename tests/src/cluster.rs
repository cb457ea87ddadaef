//! The Kafka cluster of the environment as a test sees it: how many brokers it runs (one, or
//! three with `HOOKLINE_LOCALENV_KAFKA_BROKERS=3 localenv/up.sh`), the component name of each
//! node (for [`crate::outage`] to kill and start it), and what the brokers say about topics —
//! each partition's leader, replicas and in-sync replicas, and a topic setting with where its
//! value comes from (the topic's own, or a broker default).

use std::time::Duration;

use anyhow::{Context as _, bail};
use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, ConfigSource, ResourceSpecifier},
    client::DefaultClientContext,
};

use crate::Env;

/// How many Kafka brokers the environment runs (`HOOKLINE_LOCALENV_KAFKA_BROKERS` in `env.sh`;
/// an `env.sh` written before that variable existed means one).
pub fn brokers(env: &Env) -> usize {
    env.vars
        .get("HOOKLINE_LOCALENV_KAFKA_BROKERS")
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
}

/// Fails, saying how to start the right environment, unless it runs at least `n` brokers.
///
/// # Errors
/// When it runs fewer.
pub fn require_brokers(env: &Env, n: usize) -> anyhow::Result<()> {
    let have = brokers(env);
    anyhow::ensure!(
        have >= n,
        "this test needs a local environment with {n} Kafka brokers, and the one in {} runs {have}; \
         start one of its own beside it: HOOKLINE_RUN_DIR=~/.cache/hookline/run-3brokers \
         HOOKLINE_POD_IP_BASE=127.3 HOOKLINE_LOCALENV_KAFKA_BROKERS=3 localenv/up.sh, then run \
         the test with that HOOKLINE_RUN_DIR (localenv/test.sh does both)",
        crate::run_dir().display()
    );
    Ok(())
}

/// The component name of broker (node id) `id` in a multi-broker environment, as
/// `localenv/component.sh` and `$RUN/pids` know it.
pub fn node_component(id: i32) -> String {
    format!("kafka-{id}")
}

/// One partition as the brokers describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// Partition number.
    pub id: i32,
    /// Node id of its leader (-1 when it has none).
    pub leader: i32,
    /// Node ids of its replicas.
    pub replicas: Vec<i32>,
    /// Node ids of its in-sync replicas.
    pub isr: Vec<i32>,
}

fn admin(env: &Env) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", &env.kafka_bootstrap)
        .create()?)
}

/// The partitions of `topic` and the node ids of the live brokers, from a fresh metadata
/// request (a new client each time, so nothing cached from before a broker died).
///
/// # Errors
/// When the brokers do not answer within 10 s or the topic is unknown.
pub async fn describe(env: &Env, topic: &str) -> anyhow::Result<(Vec<PartitionInfo>, Vec<i32>)> {
    let client = admin(env)?;
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let md = client
            .inner()
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .with_context(|| format!("metadata of {topic}"))?;
        let t = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .with_context(|| format!("no metadata for {topic}"))?;
        if let Some(e) = t.error() {
            bail!("metadata of {topic}: {e:?}");
        }
        let mut parts: Vec<PartitionInfo> = t
            .partitions()
            .iter()
            .map(|p| PartitionInfo {
                id: p.id(),
                leader: p.leader(),
                replicas: p.replicas().to_vec(),
                isr: p.isr().to_vec(),
            })
            .collect();
        parts.sort_by_key(|p| p.id);
        let mut live: Vec<i32> = md.brokers().iter().map(|b| b.id()).collect();
        live.sort_unstable();
        Ok((parts, live))
    })
    .await?
}

/// Setting `key` of each of `topics`: its value, and whether it is the topic's own
/// (`DynamicTopic`: set when the topic was created or altered) rather than a broker default.
///
/// # Errors
/// When the brokers refuse or a topic lacks the setting.
pub async fn topic_setting(
    env: &Env,
    topics: &[&str],
    key: &str,
) -> anyhow::Result<Vec<(String, Option<String>, bool)>> {
    let client = admin(env)?;
    let specs: Vec<ResourceSpecifier<'_>> =
        topics.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(20)));
    let results = client.describe_configs(&specs, &opts).await?;
    topics
        .iter()
        .zip(results)
        .map(|(topic, r)| {
            let res = r.map_err(|e| anyhow::anyhow!("describing {topic}: {e}"))?;
            let entry = res
                .get(key)
                .with_context(|| format!("{topic} has no {key} setting"))?;
            Ok((
                (*topic).to_owned(),
                entry.value.clone(),
                entry.source == ConfigSource::DynamicTopic,
            ))
        })
        .collect()
}

/// The broker leading the most of `partitions` (the lowest id among equals): killing it moves
/// the most leaderships.
pub fn busiest_leader(partitions: &[PartitionInfo]) -> Option<i32> {
    let mut counts = std::collections::BTreeMap::<i32, usize>::new();
    for p in partitions.iter().filter(|p| p.leader >= 0) {
        *counts.entry(p.leader).or_default() += 1;
    }
    counts
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
        .map(|(id, _)| *id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_with(vars: &[(&str, &str)]) -> Env {
        Env {
            vars: vars
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            kubeconfig: "/dev/null".into(),
            kafka_bootstrap: "127.0.0.1:1".into(),
            kubectl: "kubectl".into(),
        }
    }

    #[test]
    fn an_env_sh_without_the_broker_count_means_one_broker() {
        assert_eq!(brokers(&env_with(&[])), 1);
        assert_eq!(
            brokers(&env_with(&[("HOOKLINE_LOCALENV_KAFKA_BROKERS", "3")])),
            3
        );
        let err = require_brokers(&env_with(&[]), 3).unwrap_err().to_string();
        assert!(err.contains("runs 1"), "{err}");
        assert!(err.contains("HOOKLINE_LOCALENV_KAFKA_BROKERS=3"), "{err}");
    }

    #[test]
    fn the_busiest_leader_leads_the_most_partitions_lowest_id_first() {
        let p = |id, leader| PartitionInfo {
            id,
            leader,
            replicas: vec![1, 2, 3],
            isr: vec![1, 2, 3],
        };
        assert_eq!(busiest_leader(&[p(0, 2), p(1, 3), p(2, 2)]), Some(2));
        assert_eq!(busiest_leader(&[p(0, 3), p(1, 1), p(2, 2)]), Some(1));
        assert_eq!(busiest_leader(&[p(0, -1)]), None);
    }
}

//! Kafka topics of each tenant, made with the admin API: created when missing with the
//! platform's partitions, replication and `min.insync.replicas`, never shrunk, never deleted
//! (a deleted `Webhook` leaves its tenant's data in place; see the README for retention and
//! purging). The tenant
//! reconciler ensures them; the `Webhook` reconciler reads the last failure for its
//! `DispatcherReady` condition. Namespaces whose topics are known to exist are remembered, so a
//! busy tenant costs one admin round trip per controller start, not one per reconcile; a
//! removed tenant is forgotten.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
    time::Duration,
};

use hookline_core::naming;
use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    error::RDKafkaErrorCode,
};

use crate::error::{Error, Result};

/// `min.insync.replicas` of new tenant topics when the platform sets none: 2, so that an
/// `acks=all` write (every producer of Hookline's uses it) is on two brokers before it counts
/// and survives the loss of any one; the replication factor when that is lower, so a 1-broker
/// Kafka keeps working.
pub const DEFAULT_MIN_INSYNC_REPLICAS: i32 = 2;

/// The `min.insync.replicas` of new topics replicated `replication` times: `wanted`, or
/// [`DEFAULT_MIN_INSYNC_REPLICAS`] capped at `replication`.
///
/// # Errors
/// When `wanted` is below 1 or above `replication`: every `acks=all` write would then fail
/// with `NOT_ENOUGH_REPLICAS`, so the controller refuses to start instead.
pub fn min_insync_replicas(replication: i32, wanted: Option<i32>) -> Result<i32, String> {
    match wanted {
        None => Ok(DEFAULT_MIN_INSYNC_REPLICAS.min(replication).max(1)),
        Some(n) if (1..=replication).contains(&n) => Ok(n),
        Some(n) => Err(format!(
            "min.insync.replicas {n} of tenant topics must be between 1 and their replication \
             factor {replication}: with more, every acks=all write fails"
        )),
    }
}

/// Topic settings (beyond partitions and replication) of each of `topics`, in
/// [`naming::Topics::all`] order.
fn topic_configs<'a>(
    topics: &'a naming::Topics,
    min_insync: &str,
    dedup_retention_ms: &str,
) -> Vec<(&'a str, Vec<(&'static str, String)>)> {
    topics
        .all()
        .into_iter()
        .map(|n| {
            let mut c = vec![("min.insync.replicas", min_insync.to_owned())];
            if n == topics.dead_letter.as_str() || topics.retry.iter().any(|(_, t)| t == n) {
                // Room for the retry or dead letter of the largest event a dispatcher accepts
                // (the default `--max-record-bytes`), above the broker's usual 1 MiB.
                let max = hookline_core::kafka::max_message_bytes(
                    hookline_core::envelope::DEFAULT_MAX_RECORD_BYTES,
                );
                c.push(("max.message.bytes", max.to_string()));
            }
            if n == topics.dead_letter.as_str() || n == topics.attempts.as_str() {
                c.push(("retention.ms", "1209600000".to_owned())); // 14 days
            } else if n == topics.dedup.as_str() {
                // Compacted (the latest record per id), and nothing older than the window
                // (plus an hour of slack) is needed to restore what is remembered.
                c.push(("cleanup.policy", "compact,delete".to_owned()));
                c.push(("retention.ms", dedup_retention_ms.to_owned()));
            }
            (n, c)
        })
        .collect()
}

/// Creates and remembers tenant topics.
pub struct TopicManager {
    admin: std::sync::Arc<AdminClient<DefaultClientContext>>,
    partitions: i32,
    replication: i32,
    min_insync: String,
    dedup_retention_ms: String,
    ensured: Mutex<HashSet<String>>,
    failed: Mutex<HashMap<String, String>>,
}

impl TopicManager {
    /// A manager talking to `bootstrap`, with extra librdkafka settings (TLS/SASL) from
    /// `HOOKLINE_KAFKA_*` environment variables (`HOOKLINE_KAFKA_SASL_MECHANISM` →
    /// `sasl.mechanism`). New topics get `min.insync.replicas` from [`min_insync_replicas`].
    ///
    /// # Errors
    /// When the client cannot be created (bad settings), or `min_insync` does not fit
    /// `replication`.
    pub fn new(
        bootstrap: &str,
        partitions: i32,
        replication: i32,
        min_insync: Option<i32>,
        dedup_window: Duration,
    ) -> Result<TopicManager> {
        let min_insync = min_insync_replicas(replication, min_insync).map_err(Error::Kafka)?;
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", bootstrap);
        for (k, v) in hookline_core::kafka::env_settings(std::env::vars()) {
            config.set(k, v);
        }
        let admin: AdminClient<DefaultClientContext> = config
            .create()
            .map_err(|e| Error::Kafka(format!("creating admin client: {e}")))?;
        Ok(TopicManager {
            admin: std::sync::Arc::new(admin),
            partitions,
            replication,
            min_insync: min_insync.to_string(),
            dedup_retention_ms: (dedup_window + Duration::from_secs(3600))
                .as_millis()
                .to_string(),
            ensured: Mutex::new(HashSet::new()),
            failed: Mutex::new(HashMap::new()),
        })
    }

    /// Whether the brokers answer a metadata request within `timeout`.
    ///
    /// # Errors
    /// The Kafka error, for the log and the readiness message.
    pub async fn reachable(&self, timeout: Duration) -> Result<()> {
        let admin = self.admin.clone();
        tokio::task::spawn_blocking(move || admin.inner().fetch_metadata(None, timeout).map(|_| ()))
            .await
            .map_err(|e| Error::Kafka(e.to_string()))?
            .map_err(|e| Error::Kafka(format!("brokers unreachable: {e}")))
    }

    /// Makes sure every topic of `tenant` exists; remembers the outcome for [`Self::failure`].
    ///
    /// # Errors
    /// When the broker refuses a creation for another reason than "already exists".
    pub async fn ensure(&self, tenant: &str) -> Result<()> {
        if self.ensured.lock().expect("topic cache").contains(tenant) {
            return Ok(());
        }
        let result = self.create(tenant).await;
        match &result {
            Ok(()) => {
                self.failed.lock().expect("topic failures").remove(tenant);
                self.ensured
                    .lock()
                    .expect("topic cache")
                    .insert(tenant.to_owned());
            }
            Err(e) => {
                self.failed
                    .lock()
                    .expect("topic failures")
                    .insert(tenant.to_owned(), e.to_string());
            }
        }
        result
    }

    /// Why the last attempt to create `tenant`'s topics failed, if it did.
    pub fn failure(&self, tenant: &str) -> Option<String> {
        self.failed
            .lock()
            .expect("topic failures")
            .get(tenant)
            .cloned()
    }

    /// Forgets `tenant` (its last `Webhook` is gone), so a returning tenant is checked again.
    pub fn forget(&self, tenant: &str) {
        self.ensured.lock().expect("topic cache").remove(tenant);
        self.failed.lock().expect("topic failures").remove(tenant);
    }

    async fn create(&self, tenant: &str) -> Result<()> {
        let topics = naming::topics(tenant);
        let configs = topic_configs(&topics, &self.min_insync, &self.dedup_retention_ms);
        let new: Vec<NewTopic> = configs
            .iter()
            .map(|(name, settings)| {
                settings.iter().fold(
                    NewTopic::new(
                        name,
                        self.partitions,
                        TopicReplication::Fixed(self.replication),
                    ),
                    |t, (k, v)| t.set(k, v),
                )
            })
            .collect();
        let opts = AdminOptions::new()
            .operation_timeout(Some(Duration::from_secs(15)))
            .request_timeout(Some(Duration::from_secs(20)));
        let results = self
            .admin
            .create_topics(&new, &opts)
            .await
            .map_err(|e| Error::Kafka(format!("creating topics of {tenant}: {e}")))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(Error::Kafka(format!("creating topic {topic}: {code}")));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_and_dead_letter_topics_admit_the_largest_record_a_dispatcher_writes() {
        let topics = naming::topics("acme");
        let configs = topic_configs(&topics, "1", "1");
        let max = |topic: &str| {
            configs
                .iter()
                .find(|(n, _)| *n == topic)
                .and_then(|(_, c)| c.iter().find(|(k, _)| *k == "max.message.bytes"))
                .map(|(_, v)| v.parse::<usize>().unwrap())
        };
        let wanted = hookline_core::kafka::max_message_bytes(
            hookline_core::envelope::DEFAULT_MAX_RECORD_BYTES,
        );
        for (_, tier) in &topics.retry {
            assert_eq!(max(tier), Some(wanted), "{tier}");
        }
        assert_eq!(max(&topics.dead_letter), Some(wanted));
        assert_eq!(max(&topics.events), None, "the broker's default");
    }

    #[test]
    fn min_insync_replicas_defaults_to_two_capped_at_the_replication_factor() {
        assert_eq!(min_insync_replicas(3, None), Ok(2));
        assert_eq!(min_insync_replicas(5, None), Ok(2));
        assert_eq!(min_insync_replicas(2, None), Ok(2));
        assert_eq!(min_insync_replicas(1, None), Ok(1));
    }

    #[test]
    fn min_insync_replicas_above_the_replication_factor_is_refused() {
        assert_eq!(min_insync_replicas(3, Some(3)), Ok(3));
        assert_eq!(min_insync_replicas(3, Some(1)), Ok(1));
        let err = min_insync_replicas(1, Some(2)).unwrap_err();
        assert!(
            err.contains("between 1 and their replication factor 1"),
            "{err}"
        );
        assert!(min_insync_replicas(3, Some(0)).is_err());
    }

    #[test]
    fn every_tenant_topic_gets_min_insync_replicas_and_its_own_retention() {
        let topics = naming::topics("acme");
        let configs = topic_configs(&topics, "2", "90000000");
        assert_eq!(configs.len(), topics.all().len());
        let get = |topic: &str, key: &str| {
            configs
                .iter()
                .find(|(n, _)| *n == topic)
                .and_then(|(_, c)| c.iter().find(|(k, _)| *k == key))
                .map(|(_, v)| v.clone())
        };
        for (name, _) in &configs {
            assert_eq!(
                get(name, "min.insync.replicas").as_deref(),
                Some("2"),
                "{name}"
            );
        }
        assert_eq!(get(&topics.events, "retention.ms"), None);
        assert_eq!(
            get(&topics.dead_letter, "retention.ms").as_deref(),
            Some("1209600000")
        );
        assert_eq!(
            get(&topics.attempts, "retention.ms").as_deref(),
            Some("1209600000")
        );
        assert_eq!(
            get(&topics.dedup, "cleanup.policy").as_deref(),
            Some("compact,delete")
        );
        assert_eq!(
            get(&topics.dedup, "retention.ms").as_deref(),
            Some("90000000")
        );
    }
}

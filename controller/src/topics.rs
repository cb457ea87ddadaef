//! Kafka topics of each tenant, made with the admin API: created when missing with the
//! platform's partitions and replication, never shrunk, never deleted (a deleted `Webhook`
//! leaves its tenant's data in place; see the README for retention and purging). The tenant
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

/// Creates and remembers tenant topics.
pub struct TopicManager {
    admin: std::sync::Arc<AdminClient<DefaultClientContext>>,
    partitions: i32,
    replication: i32,
    dedup_retention_ms: String,
    ensured: Mutex<HashSet<String>>,
    failed: Mutex<HashMap<String, String>>,
}

impl TopicManager {
    /// A manager talking to `bootstrap`, with extra librdkafka settings (TLS/SASL) from
    /// `HOOKLINE_KAFKA_*` environment variables (`HOOKLINE_KAFKA_SASL_MECHANISM` →
    /// `sasl.mechanism`).
    ///
    /// # Errors
    /// When the client cannot be created (bad settings).
    pub fn new(
        bootstrap: &str,
        partitions: i32,
        replication: i32,
        dedup_window: Duration,
    ) -> Result<TopicManager> {
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
        let names = topics.all();
        let new: Vec<NewTopic> = names
            .iter()
            .map(|n| {
                let t = NewTopic::new(
                    n,
                    self.partitions,
                    TopicReplication::Fixed(self.replication),
                );
                if *n == topics.dead_letter.as_str() || *n == topics.attempts.as_str() {
                    t.set("retention.ms", "1209600000") // 14 days
                } else if *n == topics.dedup.as_str() {
                    // Compacted (the latest record per id), and nothing older than the window
                    // (plus an hour of slack) is needed to restore what is remembered.
                    t.set("cleanup.policy", "compact,delete")
                        .set("retention.ms", &self.dedup_retention_ms)
                } else {
                    t
                }
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

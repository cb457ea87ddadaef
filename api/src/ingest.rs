//! From the tenants' attempts topics into the delivery log: every few seconds the topics named
//! `hookline.<tenant>.attempts` are listed and all their partitions assigned (a new tenant is
//! picked up without a restart), each from the position the store holds, or from the beginning
//! when it holds none; records are read in batches and stored with their positions by
//! [`DeliveryLog::apply`].
//!
//! # Guarantees
//! - No consumer-group offsets: positions live in the store, in the transaction of the rows
//!   they cover, so a kill at any instant neither loses nor double-counts an attempt, and a
//!   deleted store is rebuilt from the start of the topics.
//! - A record that is not an attempt record is skipped (counted in
//!   `hookline_api_ingest_skipped_total`) and its offset passed; it never stops ingestion.
//! - Every replica reads every partition: each has its own store, none depends on another.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hookline_core::naming::tenant_of_attempts_topic;
use hookline_core::retry_topics::AttemptRecord;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::ops::{Health, Metrics};
use crate::store::{Batch, DeliveryLog, Ingested, Position};

/// How often the attempts topics are listed again.
pub const REFRESH: Duration = Duration::from_secs(3);
/// Most records stored in one transaction.
///
/// Decision: 5,000 keeps a transaction well under 100 ms on the 2-core reference machine while
/// amortising the commit (see `BENCHMARKS.md`, delivery-log ingest).
pub const MAX_BATCH: usize = 5_000;
/// How long a batch waits to fill once its first record arrived.
pub const LINGER: Duration = Duration::from_millis(50);

/// Reads attempts topics into a [`DeliveryLog`].
pub struct Ingest {
    consumer: Arc<StreamConsumer>,
    store: Arc<dyn DeliveryLog>,
    metrics: Metrics,
    health: Arc<Health>,
    assigned: BTreeSet<(String, i32)>,
}

/// Every partition of every attempts topic in the cluster's metadata.
fn attempts_partitions(consumer: &StreamConsumer) -> anyhow::Result<BTreeSet<(String, i32)>> {
    let md = consumer.fetch_metadata(None, Duration::from_secs(10))?;
    Ok(md
        .topics()
        .iter()
        .filter(|t| tenant_of_attempts_topic(t.name()).is_some() && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| (t.name().to_owned(), p.id())))
        .collect())
}

/// Parses one record read at `topic`/`partition`/`offset`; `None` when it is not an attempt
/// record of a tenant's attempts topic.
pub fn parse(topic: &str, partition: i32, offset: i64, payload: Option<&[u8]>) -> Option<Ingested> {
    let tenant = tenant_of_attempts_topic(topic)?;
    let record: AttemptRecord = serde_json::from_slice(payload?).ok()?;
    Some(Ingested {
        tenant: tenant.to_owned(),
        topic: topic.to_owned(),
        partition,
        offset,
        record,
    })
}

impl Ingest {
    /// A reader with the Kafka client `config` (see [`hookline_core::kafka::delivery_log`]).
    ///
    /// # Errors
    /// When the consumer cannot be created.
    pub fn new(
        config: &ClientConfig,
        store: Arc<dyn DeliveryLog>,
        metrics: Metrics,
        health: Arc<Health>,
    ) -> anyhow::Result<Ingest> {
        Ok(Ingest {
            consumer: Arc::new(config.create()?),
            store,
            metrics,
            health,
            assigned: BTreeSet::new(),
        })
    }

    /// Assigns every attempts partition, each at its stored position, when the set changed.
    async fn refresh(&mut self) -> anyhow::Result<()> {
        let consumer = self.consumer.clone();
        let wanted = tokio::task::spawn_blocking(move || attempts_partitions(&consumer)).await??;
        if wanted == self.assigned {
            return Ok(());
        }
        let store = self.store.clone();
        let positions: BTreeMap<(String, i32), i64> =
            tokio::task::spawn_blocking(move || store.positions())
                .await??
                .into_iter()
                .map(|p| ((p.topic, p.partition), p.next_offset))
                .collect();
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in &wanted {
            let offset = positions
                .get(&(topic.clone(), *partition))
                .map_or(Offset::Beginning, |o| Offset::Offset(*o));
            tpl.add_partition_offset(topic, *partition, offset)?;
        }
        self.consumer.assign(&tpl)?;
        info!(
            partitions = wanted.len(),
            new = wanted.difference(&self.assigned).count(),
            "reading attempts topics"
        );
        self.metrics
            .partitions
            .set(i64::try_from(wanted.len()).unwrap_or(i64::MAX));
        self.assigned = wanted;
        Ok(())
    }

    /// Reads until `stop`; a Kafka or store error is logged and retried.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut refreshed: Option<Instant> = None;
        loop {
            self.health.beat();
            if refreshed.is_none_or(|t| t.elapsed() >= REFRESH) {
                if let Err(e) = self.refresh().await {
                    warn!(error = %e, "listing the attempts topics failed; retrying");
                }
                refreshed = Some(Instant::now());
            }
            let batch = tokio::select! {
                () = stop.cancelled() => return,
                b = self.next_batch() => b,
            };
            if batch.positions.is_empty() {
                continue;
            }
            let n = batch.records.len();
            let store = self.store.clone();
            let started = Instant::now();
            let mut batch = Some(batch);
            loop {
                let b = batch.take().expect("batch");
                let store = store.clone();
                match tokio::task::spawn_blocking(move || (store.apply(&b), b)).await {
                    Ok((Ok(()), _)) => break,
                    Ok((Err(e), b)) => {
                        warn!(error = %e, "storing attempt records failed; retrying");
                        batch = Some(b);
                    }
                    Err(e) => {
                        warn!(error = %e, "the store task failed; stopping ingestion");
                        return;
                    }
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            self.metrics
                .apply_seconds
                .observe(started.elapsed().as_secs_f64());
            self.metrics.ingested.inc_by(n as u64);
            debug!(records = n, "stored attempt records");
        }
    }

    /// Up to [`MAX_BATCH`] records: waits up to [`REFRESH`] for the first, then [`LINGER`].
    async fn next_batch(&self) -> Batch {
        let mut batch = Batch::default();
        let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
        let mut deadline = tokio::time::Instant::now() + REFRESH;
        while batch.records.len() < MAX_BATCH {
            let msg = match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Err(_) => break,
                Ok(Err(e)) => {
                    warn!(error = %e, "reading attempts failed");
                    // Kafka errors come back at once; do not spin on them.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    break;
                }
                Ok(Ok(m)) => m,
            };
            if next.is_empty() {
                deadline = tokio::time::Instant::now() + LINGER;
            }
            let (topic, partition, offset) = (msg.topic(), msg.partition(), msg.offset());
            next.insert((topic.to_owned(), partition), offset + 1);
            match parse(topic, partition, offset, msg.payload()) {
                Some(r) => batch.records.push(r),
                None => self
                    .metrics
                    .skipped
                    .with_label_values(&["unparsable"])
                    .inc(),
            }
        }
        batch.positions = next
            .into_iter()
            .map(|((topic, partition), next_offset)| Position {
                topic,
                partition,
                next_offset,
            })
            .collect();
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_attempt_records_of_attempts_topics_are_taken() {
        let json = br#"{"eventId":"e","eventType":"t","webhook":"w","attempt":1,"status":200,
                        "latencyMs":3,"outcome":"delivered","reason":null,"time":"2026-12-01T00:00:00Z"}"#;
        let got = parse("hookline.acme.attempts", 2, 7, Some(json)).unwrap();
        assert_eq!(
            (got.tenant.as_str(), got.partition, got.offset),
            ("acme", 2, 7)
        );
        assert!(parse("hookline.acme.events", 0, 0, Some(json)).is_none());
        assert!(parse("hookline.acme.attempts", 0, 0, Some(b"{not json")).is_none());
        assert!(parse("hookline.acme.attempts", 0, 0, None).is_none());
    }
}

//! Every record the dispatcher writes to Kafka goes through the [`Writer`]: retry records to
//! the delay tiers, dead letters, the ids remembered in the dedup topic, re-parked and forwarded records ([`Out`], retried until Kafka
//! acknowledges it: `acks=all`, idempotent producer) and the best-effort attempt records.
//!
//! Guarantees: [`Writer::write`] returns only once Kafka has acknowledged the record, so an
//! offset is settled only after that; a write that never succeeds is left to the caller's
//! shutdown, and the delivery is redelivered after a restart. Attempt records are never
//! awaited.

use std::time::Duration;

use bytes::Bytes;
use hookline_core::dedup::Remembered;
use hookline_core::envelope::Event;
use hookline_core::retry_topics::{AttemptRecord, DeadLetter, RetryMeta, Tiers};
use jiff::Timestamp;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tracing::{debug, warn};

/// A record to write, owned so that it can be retried.
pub struct Out {
    /// The topic.
    pub topic: String,
    /// The partition, when it must be that one.
    pub partition: Option<i32>,
    /// The key.
    pub key: Option<Vec<u8>>,
    /// The value.
    pub value: Bytes,
    /// The headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The record timestamp (Unix ms).
    pub timestamp: Option<i64>,
}

/// Writes the dispatcher's records.
pub struct Writer {
    /// The producer (`acks=all`, idempotent).
    pub producer: FutureProducer,
    /// The retry tiers.
    pub tiers: Tiers,
    /// The events topic (for dead-letter origins).
    pub events_topic: String,
    /// The dead-letter topic.
    pub dead_letter_topic: String,
    /// The attempts topic.
    pub attempts_topic: String,
    /// The dedup topic, when duplicates are suppressed.
    pub dedup_topic: Option<String>,
}

fn header_bytes(headers: Vec<(&'static str, String)>) -> Vec<(String, Vec<u8>)> {
    headers
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.into_bytes()))
        .collect()
}

impl Writer {
    /// Writes `out` and waits for Kafka's acknowledgement, retrying with
    /// backoff until it comes (the caller is aborted at the end of shutdown).
    pub async fn write(&self, mut out: Out) {
        let mut backoff = Duration::from_millis(200);
        loop {
            let mut headers = OwnedHeaders::new_with_capacity(out.headers.len());
            for (k, v) in &out.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v),
                });
            }
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&out.topic)
                .payload(&out.value[..])
                .headers(headers);
            if let Some(k) = &out.key {
                record = record.key(&k[..]);
            }
            if let Some(p) = out.partition {
                record = record.partition(p);
            }
            if let Some(ts) = out.timestamp {
                record = record.timestamp(ts);
            }
            match self.producer.send(record, Duration::from_secs(30)).await {
                Ok(_) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::UnknownPartition), _))
                    if out.partition.is_some() =>
                {
                    warn!(topic = %out.topic, "partition missing in the retry topic; letting Kafka choose (per-key order across replicas may suffer)");
                    out.partition = None;
                }
                Err((e, _)) => {
                    warn!(topic = %out.topic, error = %e, "writing to Kafka failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    /// The retry record of `event`, in the tier that fits `meta.due_ms`, on `partition` (the
    /// partition of the events topic it came from, so its lane stays on one replica).
    pub fn retry_record(
        &self,
        meta: &RetryMeta,
        partition: i32,
        event: &Event,
        now_ms: i64,
    ) -> Out {
        let tier = self.tiers.for_remaining(Duration::from_millis(
            u64::try_from(meta.due_ms - now_ms).unwrap_or(0),
        ));
        Out {
            topic: self.tiers.topic(tier).to_owned(),
            partition: Some(partition),
            key: event.key.as_ref().map(|k| k.as_bytes().to_vec()),
            value: event.to_envelope(),
            headers: header_bytes(meta.headers()),
            timestamp: Some(now_ms),
        }
    }

    /// The dead-letter record of `event`.
    pub fn dead_letter_record(&self, dl: &DeadLetter, event: &Event) -> Out {
        Out {
            topic: self.dead_letter_topic.clone(),
            partition: None,
            key: event.key.as_ref().map(|k| k.as_bytes().to_vec()),
            value: event.to_envelope(),
            headers: header_bytes(dl.headers(Timestamp::now())),
            timestamp: None,
        }
    }

    /// The record remembering `r` in the dedup topic, on the events record's `partition`.
    pub fn remember_record(&self, topic: &str, partition: i32, r: &Remembered) -> Out {
        Out {
            topic: topic.to_owned(),
            partition: Some(partition),
            key: Some(r.key().to_vec()),
            value: Bytes::copy_from_slice(&r.value()),
            headers: Vec::new(),
            timestamp: None,
        }
    }

    /// An attempt record to write with [`Writer::write`] (acknowledged), keyed by event id.
    pub fn attempt_out(&self, record: &AttemptRecord) -> Out {
        Out {
            topic: self.attempts_topic.clone(),
            partition: None,
            key: Some(record.event_id.as_bytes().to_vec()),
            value: Bytes::from(serde_json::to_vec(record).unwrap_or_default()),
            headers: Vec::new(),
            timestamp: None,
        }
    }

    /// Writes an attempt record, best effort: never awaited, dropped when the producer's queue
    /// is full.
    pub fn record_attempt(&self, record: &AttemptRecord) {
        let Ok(value) = serde_json::to_vec(record) else {
            return;
        };
        let fr: FutureRecord<'_, str, [u8]> = FutureRecord::to(&self.attempts_topic)
            .key(record.event_id.as_str())
            .payload(&value[..]);
        if let Err((e, _)) = self.producer.send_result(fr) {
            debug!(error = %e, "attempt record dropped");
        }
    }
}

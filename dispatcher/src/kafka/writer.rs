//! Every record the dispatcher writes to Kafka goes through the [`Writer`]: retry records to
//! the delay tiers, dead letters, the ids remembered in the dedup topic, re-parked and forwarded records ([`Out`], retried until Kafka
//! acknowledges it: `acks=all`, idempotent producer) and the best-effort attempt records.
//!
//! Guarantees: [`Writer::write`] returns only once Kafka has acknowledged the record, or has
//! refused it for good ([`Refused`]: too large for the producer or the topic, or invalid —
//! retrying cannot help), so an offset is settled only after one of them; a write that fails
//! for any other reason is retried until it succeeds or the caller is aborted at the end of
//! shutdown, and the delivery is redelivered after a restart. Attempt records are never
//! awaited.
//!
//! Decisions: a refused record of the retry or dead-letter path is replaced by a dead letter
//! that only refers to its event ([`Writer::reference`],
//! [`hookline_core::retry_topics::reference`]) rather than retried forever, which would stall
//! its partition: the event stays readable at its original offset while the topic keeps it.
//! Kafka refuses a whole batch, and librdkafka does not split it, so a refused record is sent
//! once more alone ([`Solo`]) before it counts as refused: a small record that shared a batch
//! with one too large for the topic goes through (seen under CPU load: the dead-letter
//! reference of one event refused with another event's too-large dead letter).

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use hookline_core::dedup::Remembered;
use hookline_core::envelope::{self, Event, Limits};
use hookline_core::retry_topics::{
    self, AttemptRecord, DeadLetter, RetryMeta, Tiers, headers, refused,
};
use jiff::Timestamp;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
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
    /// The producer of records sent alone.
    pub solo: Solo,
}

/// A producer that sends every record in a batch of its own
/// ([`hookline_core::kafka::solo_producer`]), made when a record first needs it.
pub struct Solo {
    config: ClientConfig,
    producer: OnceLock<Result<FutureProducer, String>>,
}

impl Solo {
    /// A producer with `config`, not made yet.
    pub fn new(config: ClientConfig) -> Self {
        Self {
            config,
            producer: OnceLock::new(),
        }
    }

    fn get(&self) -> Result<&FutureProducer, String> {
        self.producer
            .get_or_init(|| self.config.create().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(Clone::clone)
    }
}

fn header_bytes(headers: Vec<(&'static str, String)>) -> Vec<(String, Vec<u8>)> {
    headers
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.into_bytes()))
        .collect()
}

/// Kafka refused a record for good: retrying it cannot help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The dead-letter reason ([`refused::TOO_LARGE`], [`refused::INVALID`]).
    pub reason: &'static str,
    /// What Kafka said.
    pub error: String,
}

/// The dead-letter reason of a Kafka error that no retry can cure, `None` for one that may
/// pass (a broker away, a leader moving, a full queue, a timeout). The producer refuses a record
/// over its `message.max.bytes` itself, the broker one over the topic's `max.message.bytes`;
/// both say `MSG_SIZE_TOO_LARGE`.
pub fn permanent(e: &KafkaError) -> Option<&'static str> {
    match e.rdkafka_error_code()? {
        RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::MessageBatchTooLarge => {
            Some(refused::TOO_LARGE)
        }
        RDKafkaErrorCode::InvalidRecord => Some(refused::INVALID),
        _ => None,
    }
}

/// What kind of record `Out` is, by its topic: a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A retry record (a delay tier).
    Retry,
    /// A dead letter.
    DeadLetter,
    /// An attempt record.
    Attempt,
    /// A record of the dedup topic.
    Dedup,
}

impl Kind {
    /// `retry`, `dead_letter`, `attempt`, `dedup`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Retry => "retry",
            Kind::DeadLetter => "dead_letter",
            Kind::Attempt => "attempt",
            Kind::Dedup => "dedup",
        }
    }

    fn text(self) -> &'static str {
        match self {
            Kind::Retry => "retry record",
            Kind::DeadLetter => "dead letter",
            Kind::Attempt => "attempt record",
            Kind::Dedup => "dedup record",
        }
    }
}

/// The dead letter that stands in for a refused record ([`Writer::reference`]).
pub struct Reference {
    /// The record to write to the dead-letter topic.
    pub out: Out,
    /// Its headers' contents.
    pub dead_letter: DeadLetter,
    /// The event's id, when the refused record could be read as an event.
    pub event_id: Option<String>,
}

impl Out {
    /// Key, value and header bytes.
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len)
            + self.value.len()
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

impl Writer {
    /// Writes `out` and waits for Kafka's acknowledgement, retrying with backoff until it comes
    /// (the caller is aborted at the end of shutdown) — unless Kafka refuses it for good.
    ///
    /// A record Kafka refuses ([`permanent`]) is sent once more alone ([`Solo`]): the refusal
    /// may have been for another record of its batch.
    ///
    /// # Errors
    /// [`Refused`] when no retry can help: Kafka refused the record alone too, or the producer
    /// for that cannot be made or failed for good; the caller writes a [`Reference`] instead.
    pub async fn write(&self, out: &Out) -> Result<(), Refused> {
        let mut backoff = Duration::from_millis(200);
        let mut partition = out.partition;
        // Set once the record's batch was refused: what Kafka said then.
        let mut batch_refused: Option<Refused> = None;
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
            if let Some(p) = partition {
                record = record.partition(p);
            }
            if let Some(ts) = out.timestamp {
                record = record.timestamp(ts);
            }
            let producer = match &batch_refused {
                None => &self.producer,
                Some(first) => match self.solo.get() {
                    Ok(p) if p.client().fatal_error().is_none() => p,
                    Ok(_) | Err(_) => return Err(first.clone()),
                },
            };
            match producer.send(record, Duration::from_secs(30)).await {
                Ok(_) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::UnknownPartition), _))
                    if partition.is_some() =>
                {
                    warn!(topic = %out.topic, "partition missing in the retry topic; letting Kafka choose (per-key order across replicas may suffer)");
                    partition = None;
                }
                Err((e, _)) => {
                    if let Some(reason) = permanent(&e) {
                        let refused = Refused {
                            reason,
                            error: e.to_string(),
                        };
                        if batch_refused.is_some() {
                            return Err(refused);
                        }
                        debug!(topic = %out.topic, size = out.size(), error = %e, "Kafka refused the record's batch; sending the record alone");
                        batch_refused = Some(refused);
                        continue;
                    }
                    warn!(topic = %out.topic, error = %e, "writing to Kafka failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    /// The kind of `out`, by its topic.
    pub fn kind(&self, out: &Out) -> Kind {
        if out.topic == self.dead_letter_topic {
            Kind::DeadLetter
        } else if out.topic == self.attempts_topic {
            Kind::Attempt
        } else if self.dedup_topic.as_deref() == Some(out.topic.as_str()) {
            Kind::Dedup
        } else {
            Kind::Retry
        }
    }

    /// The dead letter to write instead of `out`, which Kafka refused for good: no value, the
    /// event's key, the origin its headers name, its webhook, attempts and status, the reason,
    /// and the event id when its value reads as an event. `None` for a record that names no
    /// event (an attempt or dedup record).
    pub fn reference(&self, out: &Out, refused: &Refused) -> Option<Reference> {
        let kind = self.kind(out);
        if matches!(kind, Kind::Attempt | Kind::Dedup) {
            return None;
        }
        let hs: Vec<(&str, &[u8])> = out
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        let dead_letter = retry_topics::reference(
            &hs,
            &self.events_topic,
            out.partition.unwrap_or(-1),
            (kind.text(), out.size(), &out.topic),
            refused.reason,
            &refused.error,
        )?;
        // The value is an envelope (a retry or a delivery's dead letter) or the record as it was
        // read, with its own headers (a record dead-lettered unparsed); size is no concern here.
        let event_id = envelope::parse(
            &envelope::Record {
                key: out.key.as_deref(),
                value: Some(&out.value[..]),
                headers: &hs,
                timestamp: None,
            },
            &Limits {
                max_record_bytes: usize::MAX,
            },
        )
        .ok()
        .map(|e| e.id);
        let mut reference_headers = header_bytes(dead_letter.headers(Timestamp::now()));
        if let Some(id) = &event_id {
            reference_headers.push((headers::EVENT_ID.to_owned(), id.clone().into_bytes()));
        }
        Some(Reference {
            out: Out {
                topic: self.dead_letter_topic.clone(),
                partition: None,
                key: out.key.clone(),
                value: Bytes::new(),
                headers: reference_headers,
                timestamp: None,
            },
            dead_letter,
            event_id,
        })
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

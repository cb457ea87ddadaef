//! The blocking Kafka side of a replay runner (the parent module describes the whole flow):
//! [`ranges`] fixes the source range, [`inject`] reads it and queues what matches in
//! transactions that commit the source position, and [`tally`] counts the replay's final
//! attempt records into [`Progress`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use hookline_core::dedup::{IdHash, id_hash};
use hookline_core::envelope::{self, Limits};
use hookline_core::ratelimit::{RateLimiter, default_burst};
use hookline_core::replay::{End, Filter, ReplayTag, Tally};
use hookline_core::retry_topics::{AttemptRecord, RetryMeta, headers as dl};
use hookline_crds::PartitionRange;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

/// Records per transaction at most.
pub const CHUNK: usize = 10_000;
/// A transaction is committed at least this often while records flow.
const CHUNK_TIME: Duration = Duration::from_millis(500);
/// How long Kafka calls may take before the runner gives up and restarts them.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);

/// What the two threads ([`inject`], [`tally`]) report.
#[derive(Default)]
pub struct Progress {
    /// Source records read.
    pub scanned: AtomicI64,
    /// Records taken (each event id once per partition).
    pub matched: AtomicI64,
    /// Replayed deliveries that ended delivered.
    pub delivered: AtomicI64,
    /// Replayed deliveries that ended failed.
    pub failed: AtomicI64,
    /// Every source range is read and queued.
    pub queued_all: AtomicBool,
    /// Set to stop both threads.
    pub stop: AtomicBool,
}

pub(crate) fn kafka_config(settings: hookline_core::kafka::Settings) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in settings {
        c.set(k, v);
    }
    c
}

/// Fixes each partition's range of `topic` (blocking).
///
/// # Errors
/// When the topic's metadata or offsets cannot be read.
pub fn ranges(
    config: &ClientConfig,
    topic: &str,
    window_ms: Option<(i64, i64)>,
) -> Result<Vec<PartitionRange>, String> {
    let consumer: BaseConsumer = config.create().map_err(|e| e.to_string())?;
    let md = consumer
        .fetch_metadata(Some(topic), KAFKA_TIMEOUT)
        .map_err(|e| format!("reading the metadata of {topic}: {e}"))?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(format!("topic {topic} has no partitions (does it exist?)"));
    }
    let mut out = Vec::new();
    let at = |ms: i64| -> Result<HashMap<i32, i64>, String> {
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            tpl.add_partition_offset(topic, *p, Offset::Offset(ms))
                .map_err(|e| e.to_string())?;
        }
        let found = consumer
            .offsets_for_times(tpl, KAFKA_TIMEOUT)
            .map_err(|e| format!("finding offsets by time in {topic}: {e}"))?;
        Ok(found
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect())
    };
    let (from, to) = match window_ms {
        Some((f, t)) => (Some(at(f)?), Some(at(t)?)),
        None => (None, None),
    };
    for p in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, KAFKA_TIMEOUT)
            .map_err(|e| format!("reading the offsets of {topic}/{p}: {e}"))?;
        let start = from
            .as_ref()
            .map_or(low, |m| m.get(&p).copied().unwrap_or(high))
            .max(low);
        let end = to
            .as_ref()
            .map_or(high, |m| m.get(&p).copied().unwrap_or(high))
            .min(high);
        out.push(PartitionRange {
            partition: p,
            start,
            end: end.max(start),
        });
    }
    Ok(out)
}

/// What [`inject`] reads and writes.
pub struct Injection {
    /// The source topic.
    pub topic: String,
    /// Its ranges.
    pub ranges: Vec<PartitionRange>,
    /// What is taken.
    pub filter: Filter,
    /// The replay.
    pub tag: ReplayTag,
    /// The first retry tier's topic.
    pub retry_topic: String,
    /// Records queued per second at most.
    pub rate: f64,
}

/// Where one source partition stands.
struct Part {
    end: i64,
    /// Next offset to read.
    next: i64,
    /// Committed (in a transaction) position: records below it were queued by an earlier run.
    committed: i64,
    seen: HashSet<IdHash>,
}

/// A source record the replay takes.
struct Taken {
    id: String,
    /// The events partition it came from.
    partition: i32,
    /// Its offset there.
    seq: i64,
    key: Option<Vec<u8>>,
    envelope: bytes::Bytes,
}

/// A source record as a retry record due now, or `None` when the filter does not take it.
fn take(
    msg: &rdkafka::message::BorrowedMessage<'_>,
    job: &Injection,
    is_dead_letter: bool,
) -> Option<Taken> {
    let hs: Vec<(&str, &[u8])> = msg
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key, h.value.unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    let header = |name: &str| -> Option<i64> {
        hs.iter()
            .rev()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
            .and_then(|v| v.parse().ok())
    };
    let (partition, seq) = if is_dead_letter {
        job.filter.dead_letter(&hs).ok()?;
        (
            i32::try_from(header(dl::ORIGINAL_PARTITION)?).ok()?,
            header(dl::ORIGINAL_OFFSET)?,
        )
    } else {
        (msg.partition(), msg.offset())
    };
    let time_ms = msg.timestamp().to_millis();
    // A dead letter's headers are Hookline's; an events record's may carry CloudEvents.
    let record_headers: &[(&str, &[u8])] = if is_dead_letter { &[] } else { &hs };
    let event = envelope::parse(
        &envelope::Record {
            key: msg.key(),
            value: msg.payload(),
            headers: record_headers,
            timestamp: time_ms.and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok()),
        },
        &Limits {
            max_record_bytes: usize::MAX,
        },
    )
    .ok()?;
    job.filter
        .event(time_ms, &event.id, &event.event_type)
        .ok()?;
    Some(Taken {
        id: event.id.clone(),
        partition,
        seq,
        key: event.key.as_ref().map(|k| k.as_bytes().to_vec()),
        envelope: event.to_envelope(),
    })
}

/// Reads the source ranges and queues what matches, in transactions (blocking; see the module
/// docs). Returns when every range is read, or `progress.stop`.
///
/// # Errors
/// A Kafka failure; the work is resumable (the position is committed with each chunk).
pub fn inject(
    reader: &ClientConfig,
    writer: &ClientConfig,
    job: &Injection,
    progress: &Progress,
) -> Result<(), String> {
    let consumer: BaseConsumer = reader.create().map_err(|e| e.to_string())?;
    let mut parts: HashMap<i32, Part> = HashMap::new();
    let mut ask = TopicPartitionList::new();
    for r in &job.ranges {
        ask.add_partition(&job.topic, r.partition);
    }
    let committed = consumer
        .committed_offsets(ask, KAFKA_TIMEOUT)
        .map_err(|e| format!("reading the replay's position: {e}"))?;
    let mut assign = TopicPartitionList::new();
    for r in &job.ranges {
        let done = committed
            .find_partition(&job.topic, r.partition)
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            })
            .unwrap_or(r.start);
        parts.insert(
            r.partition,
            Part {
                end: r.end,
                next: r.start,
                committed: done,
                seen: HashSet::new(),
            },
        );
        if r.start < r.end {
            assign
                .add_partition_offset(&job.topic, r.partition, Offset::Offset(r.start))
                .map_err(|e| e.to_string())?;
        }
    }
    let remaining = |parts: &HashMap<i32, Part>| parts.values().any(|p| p.next < p.end);
    if !remaining(&parts) {
        progress.queued_all.store(true, Ordering::Relaxed);
        return Ok(());
    }
    consumer.assign(&assign).map_err(|e| e.to_string())?;
    let producer: ThreadedProducer<DefaultProducerContext> =
        writer.create().map_err(|e| e.to_string())?;
    producer
        .init_transactions(KAFKA_TIMEOUT)
        .map_err(|e| format!("starting the replay's transactions: {e}"))?;
    let retry_partitions = {
        let md = producer
            .client()
            .fetch_metadata(Some(&job.retry_topic), KAFKA_TIMEOUT)
            .map_err(|e| e.to_string())?;
        md.topics().first().map_or(0, |t| t.partitions().len())
    };
    let group = consumer
        .group_metadata()
        .ok_or("the replay reader has no group metadata")?;
    let mut limiter = RateLimiter::new(job.rate, default_burst(job.rate), Instant::now())
        .map_err(|e| e.to_string())?;
    let is_dead_letter = job.topic.ends_with(".dlq");
    while remaining(&parts) {
        if progress.stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut open = false;
        let mut written = 0usize;
        let chunk_start = Instant::now();
        while written < CHUNK && chunk_start.elapsed() < CHUNK_TIME && remaining(&parts) {
            let Some(msg) = consumer.poll(Duration::from_millis(100)) else {
                // Idle: a final transaction marker (a transactional producer upstream) is never
                // handed over as a record, but moves the position past it.
                if let Ok(at) = consumer.position() {
                    for (p, part) in &mut parts {
                        if let Some(Offset::Offset(o)) =
                            at.find_partition(&job.topic, *p).map(|e| e.offset())
                        {
                            part.next = part.next.max(o.min(part.end));
                        }
                    }
                }
                continue;
            };
            let msg = msg.map_err(|e| format!("reading {}: {e}", job.topic))?;
            let Some(part) = parts.get_mut(&msg.partition()) else {
                continue;
            };
            if msg.offset() < part.next || msg.offset() >= part.end {
                continue;
            }
            part.next = msg.offset() + 1;
            progress.scanned.fetch_add(1, Ordering::Relaxed);
            let Some(Taken {
                id,
                partition,
                seq,
                key,
                envelope: value,
            }) = take(&msg, job, is_dead_letter)
            else {
                continue;
            };
            if !part.seen.insert(id_hash(&id)) {
                continue;
            }
            progress.matched.fetch_add(1, Ordering::Relaxed);
            if msg.offset() < part.committed {
                continue; // queued by an earlier run
            }
            while let Err(wait) = limiter.try_acquire(Instant::now()) {
                std::thread::sleep(wait);
            }
            if !open {
                producer
                    .begin_transaction()
                    .map_err(|e| format!("beginning a transaction: {e}"))?;
                open = true;
            }
            let now_ms = jiff::Timestamp::now().as_millisecond();
            let meta = RetryMeta {
                webhook: job.filter.webhook.clone(),
                attempts: 0,
                due_ms: now_ms,
                seq,
                replay: Some(job.tag.clone()),
            };
            let mut headers = OwnedHeaders::new();
            for (k, v) in meta.headers() {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                });
            }
            // Written one tier delay ago, so it is actionable as soon as it is read.
            let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&job.retry_topic)
                .payload(&value[..])
                .headers(headers)
                .timestamp(now_ms - 1_000);
            if let Some(k) = &key {
                record = record.key(&k[..]);
            }
            if usize::try_from(partition).is_ok_and(|p| p < retry_partitions) {
                record = record.partition(partition);
            }
            let mut record = record;
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((
                        rdkafka::error::KafkaError::MessageProduction(
                            rdkafka::types::RDKafkaErrorCode::QueueFull,
                        ),
                        back,
                    )) => {
                        record = back;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err((e, _)) => {
                        let _ = producer.abort_transaction(KAFKA_TIMEOUT);
                        return Err(format!("queueing a replayed event: {e}"));
                    }
                }
            }
            written += 1;
        }
        // Commit the position with the records: positions past what earlier runs committed.
        let mut positions = TopicPartitionList::new();
        for (p, part) in &parts {
            if part.next > part.committed {
                positions
                    .add_partition_offset(&job.topic, *p, Offset::Offset(part.next))
                    .map_err(|e| e.to_string())?;
            }
        }
        if positions.count() == 0 {
            if open {
                producer
                    .commit_transaction(KAFKA_TIMEOUT)
                    .map_err(|e| format!("committing a transaction: {e}"))?;
            }
            continue;
        }
        if !open {
            producer
                .begin_transaction()
                .map_err(|e| format!("beginning a transaction: {e}"))?;
        }
        let committed = producer
            .send_offsets_to_transaction(&positions, &group, KAFKA_TIMEOUT)
            .and_then(|()| producer.commit_transaction(KAFKA_TIMEOUT));
        if let Err(e) = committed {
            let _ = producer.abort_transaction(KAFKA_TIMEOUT);
            return Err(format!("committing a transaction: {e}"));
        }
        for part in parts.values_mut() {
            part.committed = part.committed.max(part.next);
        }
    }
    progress.queued_all.store(true, Ordering::Relaxed);
    Ok(())
}

/// Counts the replay's final attempt records from `from_ms` on (blocking) until
/// `progress.stop`.
///
/// # Errors
/// When the attempts topic cannot be read.
pub fn tally(
    config: &ClientConfig,
    attempts_topic: &str,
    from_ms: i64,
    uid: &str,
    progress: &Progress,
) -> Result<(), String> {
    let consumer: BaseConsumer = config.create().map_err(|e| e.to_string())?;
    let md = consumer
        .fetch_metadata(Some(attempts_topic), KAFKA_TIMEOUT)
        .map_err(|e| e.to_string())?;
    let mut tpl = TopicPartitionList::new();
    for t in md.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(attempts_topic, p.id(), Offset::Offset(from_ms.max(0)))
                .map_err(|e| e.to_string())?;
        }
    }
    let found = consumer
        .offsets_for_times(tpl, KAFKA_TIMEOUT)
        .map_err(|e| e.to_string())?;
    let mut start = TopicPartitionList::new();
    for e in found.elements_for_topic(attempts_topic) {
        let at = match e.offset() {
            Offset::Offset(o) => Offset::Offset(o),
            _ => Offset::End,
        };
        start
            .add_partition_offset(attempts_topic, e.partition(), at)
            .map_err(|e| e.to_string())?;
    }
    consumer.assign(&start).map_err(|e| e.to_string())?;
    let mut counted = Tally::default();
    while !progress.stop.load(Ordering::Relaxed) {
        let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let Ok(msg) = msg else { continue };
        let Some(rec) = msg
            .payload()
            .and_then(|v| serde_json::from_slice::<AttemptRecord>(v).ok())
        else {
            continue;
        };
        if rec.replay.as_deref() != Some(uid) {
            continue;
        }
        if let Some(end) = End::of_outcome(&rec.outcome) {
            counted.add(&rec.event_id, end);
            progress
                .delivered
                .store(counted.delivered(), Ordering::Relaxed);
            progress.failed.store(counted.failed(), Ordering::Relaxed);
        }
    }
    Ok(())
}

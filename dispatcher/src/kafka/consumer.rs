//! The Kafka consumer's edge: one consumer in one group reads the events
//! topic and every retry tier. Rebalances flow out of its [`Context`] as
//! [`Rebalanced`] messages to the pipeline (newly assigned partitions are
//! paused on the spot, until the pipeline has rebuilt their lanes); consumer
//! lag flows into the metrics from librdkafka's statistics; and
//! [`scan`] reads the retry partitions of a new assignment from the group's
//! committed offsets to their ends, to find the retries still pending.
//!
//! One group with the `range` assignor gives partition *i* of every topic
//! (which all have the same partition count, as the controller creates them)
//! to the same replica, and retries are written to the partition index of the
//! event's own partition: a key's events and its retries are therefore always
//! in one replica's hands, where its lane lives.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol, StreamConsumer,
};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Headers, Message};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext};
use tokio::sync::mpsc;
use tracing::{info, warn};

use hookline_core::dedup::{Remembered, Seen};
use hookline_core::ordering::SettledAbove;

use crate::ops::metrics::Metrics;
use hookline_core::retry_topics::RetryMeta;

/// A topic and partition.
pub type Tp = (String, i32);

/// A rebalance, as the pipeline learns of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rebalanced {
    /// These partitions are ours now (and paused).
    Assigned(Vec<Tp>),
    /// These partitions are being taken away: settle what is in flight, commit, then give them
    /// up with [`release`].
    Revoking(Vec<Tp>),
    /// These partitions are no longer ours (given up already).
    Revoked(Vec<Tp>),
}

/// A position to commit and its metadata (the settled offsets above it,
/// [`hookline_core::ordering::OffsetTracker::settled_metadata`]).
pub type Committed = (i64, String);

/// Positions committed by the pipeline, so that a revocation carried out at once (at shutdown)
/// can commit them again before the partitions go.
pub type Committable = Arc<Mutex<HashMap<Tp, Committed>>>;

/// `positions` as a list to commit, each with its metadata.
///
/// # Errors
/// When a partition cannot be added (an invalid offset).
pub fn commit_list<'a>(
    positions: impl IntoIterator<Item = (&'a Tp, &'a Committed)>,
) -> Result<TopicPartitionList, rdkafka::error::KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), (offset, metadata)) in positions {
        let mut e = tpl.add_partition(topic, *partition);
        e.set_offset(Offset::Offset(*offset))?;
        if !metadata.is_empty() {
            e.set_metadata(metadata);
        }
    }
    Ok(tpl)
}

/// The consumer's callbacks.
pub struct Context {
    events_topic: String,
    rebalances: mpsc::UnboundedSender<Rebalanced>,
    committable: Committable,
    metrics: Metrics,
    /// Whether revocations go to the pipeline (while it runs) or are carried out at once.
    defer: AtomicBool,
}

/// The consumer of the pipeline.
pub type KafkaConsumer = StreamConsumer<Context>;

fn list(tpl: &TopicPartitionList) -> Vec<Tp> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

impl ClientContext for Context {
    fn stats(&self, statistics: Statistics) {
        if let Some(topic) = statistics.topics.get(&self.events_topic) {
            let lag = topic
                .partitions
                .values()
                .filter(|p| p.partition >= 0 && p.consumer_lag >= 0)
                .map(|p| p.consumer_lag)
                .sum();
            self.metrics.set_lag(lag);
        }
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                warn!(facility = fac, "librdkafka: {log_message}");
            }
            _ => tracing::debug!(facility = fac, "librdkafka: {log_message}"),
        }
    }
}

impl Context {
    /// From now on revocations are carried out at once, in the callback: the pipeline is
    /// stopping and no longer settles what it holds (it committed what it could).
    pub fn stop_deferring(&self) {
        self.defer.store(false, Ordering::Relaxed);
    }

    /// The revocation as librdkafka used to carry it out: commit what was committable, give the
    /// partitions up, tell the pipeline they are gone.
    fn revoke_now(&self, consumer: &BaseConsumer<Self>, revoked: Vec<Tp>, lost: bool) {
        let mut commit = TopicPartitionList::new();
        if !lost {
            let positions = self.committable.lock().expect("committable lock");
            if let Ok(list) =
                commit_list(revoked.iter().filter_map(|tp| positions.get_key_value(tp)))
            {
                commit = list;
            }
        }
        if commit.count() > 0
            && let Err(e) = consumer.commit(&commit, CommitMode::Sync)
        {
            warn!(error = %e, "commit before revocation failed; those records will be delivered again");
        }
        if let Err(e) = release(consumer, &revoked) {
            warn!(error = %e, "cannot give the revoked partitions up");
        }
        info!(partitions = revoked.len(), lost, "partitions revoked");
        let _ = self.rebalances.send(Rebalanced::Revoked(revoked));
    }
}

impl ConsumerContext for Context {
    /// Assignments are taken at once (paused, until the pipeline rebuilt their lanes). A
    /// revocation is handed to the pipeline, which stops starting deliveries of those
    /// partitions, lets the requests in flight finish (bounded), commits and only then gives the
    /// partitions up ([`release`]): librdkafka waits for that call before it rejoins the group,
    /// so the next owner starts where this one really stopped, and a rebalance repeats nothing
    /// that was delivered. A lost assignment (the session timed out) is given up at once: its
    /// commits would be refused.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let assigned = match consumer.rebalance_protocol() {
                    RebalanceProtocol::Cooperative => consumer.incremental_assign(tpl),
                    _ => consumer.assign(tpl),
                };
                if let Err(e) = assigned {
                    warn!(error = %e, "cannot take the assigned partitions");
                    return;
                }
                if let Err(e) = consumer.pause(tpl) {
                    warn!(error = %e, "cannot pause newly assigned partitions");
                }
                info!(partitions = tpl.count(), "partitions assigned");
                let _ = self.rebalances.send(Rebalanced::Assigned(list(tpl)));
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let revoked = list(tpl);
                let lost = consumer.assignment_lost();
                if !lost && self.defer.load(Ordering::Relaxed) {
                    info!(
                        partitions = revoked.len(),
                        "partitions being revoked; settling what is in flight first"
                    );
                    if self
                        .rebalances
                        .send(Rebalanced::Revoking(revoked.clone()))
                        .is_ok()
                    {
                        return;
                    }
                }
                self.revoke_now(consumer, revoked, lost);
            }
            _ => {
                let code: RDKafkaErrorCode = err.into();
                warn!(error = %code, "rebalance error; giving the assignment up");
                let revoked = list(tpl);
                self.revoke_now(consumer, revoked, true);
            }
        }
    }
}

/// Gives `tps` up after a revocation ([`Rebalanced::Revoking`]): the whole assignment under
/// the eager protocol the `range` assignor uses, just those partitions under a cooperative one.
///
/// # Errors
/// When librdkafka refuses.
pub fn release<C: Consumer<X>, X: ConsumerContext>(
    consumer: &C,
    tps: &[Tp],
) -> Result<(), rdkafka::error::KafkaError> {
    match consumer.rebalance_protocol() {
        RebalanceProtocol::Cooperative => {
            let mut tpl = TopicPartitionList::new();
            for (t, p) in tps {
                tpl.add_partition(t, *p);
            }
            consumer.incremental_unassign(&tpl)
        }
        _ => consumer.unassign(),
    }
}

/// Waits until every topic of `topics` exists (the controller creates them
/// right after the dispatcher's Deployment; subscribing earlier would leave
/// the group without partitions until the next metadata refresh). Blocking.
///
/// # Errors
/// When the client cannot be created.
pub fn wait_for_topics(
    config: &ClientConfig,
    topics: &[&str],
    stop: &dyn Fn() -> bool,
) -> Result<(), rdkafka::error::KafkaError> {
    let probe: BaseConsumer = config.create()?;
    let mut pause = Duration::from_millis(200);
    loop {
        let missing: Vec<&str> = topics
            .iter()
            .copied()
            .filter(|t| {
                probe
                    .fetch_metadata(Some(t), Duration::from_secs(10))
                    .map_or(true, |m| {
                        m.topics()
                            .iter()
                            .all(|mt| mt.error().is_some() || mt.partitions().is_empty())
                    })
            })
            .collect();
        if missing.is_empty() || stop() {
            return Ok(());
        }
        info!(missing = ?missing, "waiting for the tenant's topics");
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// Creates the consumer and subscribes it to `topics`.
///
/// # Errors
/// When the client cannot be created or subscribed.
pub fn subscribe(
    config: &ClientConfig,
    events_topic: &str,
    topics: &[&str],
    metrics: Metrics,
) -> Result<
    (
        Arc<KafkaConsumer>,
        mpsc::UnboundedReceiver<Rebalanced>,
        Committable,
    ),
    rdkafka::error::KafkaError,
> {
    let (tx, rx) = mpsc::unbounded_channel();
    let committable = Committable::default();
    let context = Context {
        events_topic: events_topic.to_owned(),
        rebalances: tx,
        committable: committable.clone(),
        metrics,
        defer: AtomicBool::new(true),
    };
    let consumer: KafkaConsumer = config.create_with_context(context)?;
    consumer.subscribe(topics)?;
    Ok((Arc::new(consumer), rx, committable))
}

/// A retry found pending by [`scan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRetry {
    /// Its partition (that of its events-topic partition).
    pub partition: i32,
    /// Its key.
    pub key: String,
    /// Its headers.
    pub meta: RetryMeta,
}

/// Reads `partitions` (retry tiers) from the group's committed offsets to
/// their current ends and returns the retries found, for the lanes, leaving out
/// those `settled` already ([`settled_above`]). Blocking:
/// run it on a blocking thread. Gives up after `deadline` with what it found.
/// Transient failures (a topic whose leader is still being elected) are
/// retried a few times.
///
/// # Errors
/// When the committed offsets or watermarks cannot be read.
pub fn scan(
    config: &ClientConfig,
    main: &KafkaConsumer,
    partitions: &[Tp],
    settled: &HashMap<Tp, SettledAbove>,
    deadline: Duration,
) -> Result<Vec<PendingRetry>, rdkafka::error::KafkaError> {
    let mut tries = 0;
    loop {
        tries += 1;
        match scan_once(config, main, partitions, settled, deadline) {
            Err(e) if tries < 10 => {
                tracing::debug!(error = %e, "scanning the retry topics; trying again");
                std::thread::sleep(Duration::from_millis(500 * tries));
            }
            result => return result,
        }
    }
}

fn scan_once(
    config: &ClientConfig,
    main: &KafkaConsumer,
    partitions: &[Tp],
    settled: &HashMap<Tp, SettledAbove>,
    deadline: Duration,
) -> Result<Vec<PendingRetry>, rdkafka::error::KafkaError> {
    if partitions.is_empty() {
        return Ok(Vec::new());
    }
    let mut tpl = TopicPartitionList::new();
    for (t, p) in partitions {
        tpl.add_partition(t, *p);
    }
    let committed = main.committed_offsets(tpl, Duration::from_secs(15))?;
    let scanner: BaseConsumer = config.create()?;
    let mut assign = TopicPartitionList::new();
    let mut ends: HashMap<Tp, i64> = HashMap::new();
    for e in committed.elements() {
        let (low, high) =
            scanner.fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(15))?;
        let start = match e.offset() {
            Offset::Offset(o) if o >= low => o,
            _ => low,
        };
        if start < high {
            assign.add_partition_offset(e.topic(), e.partition(), Offset::Offset(start))?;
            ends.insert((e.topic().to_owned(), e.partition()), high);
        }
    }
    let mut found = Vec::new();
    if ends.is_empty() {
        return Ok(found);
    }
    scanner.assign(&assign)?;
    let until = Instant::now() + deadline;
    while !ends.is_empty() && Instant::now() < until {
        let Some(result) = scanner.poll(Duration::from_millis(500)) else {
            // Idle: the end may be a transaction marker (a replay's records are written in
            // transactions), which is never handed over as a record but moves the position.
            if let Ok(at) = scanner.position() {
                ends.retain(|(t, p), end| {
                    !matches!(at.find_partition(t, *p).map(|e| e.offset()), Some(Offset::Offset(o)) if o >= *end)
                });
            }
            continue;
        };
        let msg = match result {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "scanning the retry topics");
                continue;
            }
        };
        let tp = (msg.topic().to_owned(), msg.partition());
        if ends.get(&tp).is_some_and(|end| msg.offset() + 1 >= *end) {
            ends.remove(&tp);
        }
        // Settled before the crash or rebalance: skipped when read, so it holds no key.
        if settled.get(&tp).is_some_and(|s| s.contains(msg.offset())) {
            continue;
        }
        let headers: Vec<(&str, &[u8])> = msg
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key, h.value.unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default();
        if let (Ok(meta), Some(key)) = (RetryMeta::from_headers(&headers), msg.key()) {
            found.push(PendingRetry {
                partition: msg.partition(),
                key: String::from_utf8_lossy(key).into_owned(),
                meta,
            });
        }
    }
    if !ends.is_empty() {
        warn!(
            partitions = ends.len(),
            "scan of the retry topics incomplete; per-key order of those retries is best effort"
        );
    }
    Ok(found)
}

/// The offsets above the committed positions of `tps` that were settled when those positions
/// were committed, from the commits' metadata; partitions without any (nothing committed, or
/// metadata of another format) are left out.
///
/// # Errors
/// When the committed offsets cannot be read.
pub fn settled_above(
    main: &KafkaConsumer,
    tps: &[Tp],
) -> Result<HashMap<Tp, SettledAbove>, rdkafka::error::KafkaError> {
    if tps.is_empty() {
        return Ok(HashMap::new());
    }
    let mut tpl = TopicPartitionList::new();
    for (t, p) in tps {
        tpl.add_partition(t, *p);
    }
    let committed = main.committed_offsets(tpl, Duration::from_secs(15))?;
    Ok(committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(position) => SettledAbove::decode(position, e.metadata())
                .filter(|s| !s.is_empty())
                .map(|s| ((e.topic().to_owned(), e.partition()), s)),
            _ => None,
        })
        .collect())
}

/// What the dedup topic remembers for `partitions` of the events topic: each partition of
/// `topic` read from its start to its end when called, ids outside `window` skipped.
///
/// # Errors
/// When the watermarks cannot be read, a read fails, or the end is not reached by `deadline`.
pub fn restore_seen(
    config: &ClientConfig,
    topic: &str,
    partitions: &[i32],
    window: Duration,
    deadline: Duration,
) -> Result<Vec<(i32, Seen)>, rdkafka::error::KafkaError> {
    let now_s = jiff::Timestamp::now().as_second().try_into().unwrap_or(0);
    let mut out: HashMap<i32, Seen> = partitions.iter().map(|p| (*p, Seen::new(window))).collect();
    let reader: BaseConsumer = config.create()?;
    let mut assign = TopicPartitionList::new();
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for p in partitions {
        let (low, high) = reader.fetch_watermarks(topic, *p, Duration::from_secs(15))?;
        if low < high {
            assign.add_partition_offset(topic, *p, Offset::Offset(low))?;
            ends.insert(*p, high);
        }
    }
    if !ends.is_empty() {
        reader.assign(&assign)?;
    }
    let until = Instant::now() + deadline;
    while !ends.is_empty() {
        if Instant::now() >= until {
            return Err(rdkafka::error::KafkaError::MessageConsumption(
                rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
            ));
        }
        let Some(result) = reader.poll(Duration::from_millis(500)) else {
            // Idle: past a final transaction marker only the position says the end is reached.
            if let Ok(at) = reader.position() {
                ends.retain(|p, end| {
                    !matches!(at.find_partition(topic, *p).map(|e| e.offset()), Some(Offset::Offset(o)) if o >= *end)
                });
            }
            continue;
        };
        let msg = result?;
        let p = msg.partition();
        if let (Some(k), Some(v), Some(seen)) = (msg.key(), msg.payload(), out.get_mut(&p))
            && let Some(r) = Remembered::read(k, v)
        {
            seen.restore(r, now_s);
        }
        if ends.get(&p).is_some_and(|end| msg.offset() + 1 >= *end) {
            ends.remove(&p);
        }
    }
    Ok(out.into_iter().collect())
}

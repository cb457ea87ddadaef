//! Records into jobs: an events record is parsed and fanned out to the
//! endpoints whose patterns match its type (or dead-lettered as it was, with
//! the reason, when it cannot be parsed); a retry record is re-parked in
//! another tier when its due time is further off, dropped when its `Webhook`
//! is gone, or turned into a job for its one endpoint. Every record is
//! tracked in its partition's [`OffsetTracker`](hookline_core::ordering::OffsetTracker)
//! with the number of jobs it fanned out to. Each function answers with the record's [`Fate`];
//! the pipeline tracks and routes it.

use std::sync::Arc;

use hookline_core::dedup::{Check, Remembered, Seen, id_hash};
use hookline_core::envelope::{self, Event, Limits};
use hookline_core::lanes::Origin;
use hookline_core::replay::{ReplayTag, done_hash};
use hookline_core::retry_topics::{AttemptRecord, DUPLICATE, DeadLetter, RetryMeta, Step};
use rdkafka::message::{Headers, Message, OwnedMessage};
use tracing::{debug, info};

use crate::delivery::attempt::Shared;
use crate::delivery::job::{Held, InMemory, Job, Source, Weight, now_ms};
use crate::kafka::writer::Out;
use crate::tenant::endpoints::{Endpoint, Registry};
use crate::tenant::replays::Replays;

/// A record's headers as (name, value) pairs.
pub fn header_pairs(msg: &OwnedMessage) -> Vec<(&str, &[u8])> {
    msg.headers()
        .map(|hs| {
            hs.iter()
                .map(|h| (h.key, h.value.unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default()
}

fn record<'a>(msg: &'a OwnedMessage, headers: &'a [(&'a str, &'a [u8])]) -> envelope::Record<'a> {
    envelope::Record {
        key: msg.key(),
        value: msg.payload(),
        headers,
        timestamp: msg
            .timestamp()
            .to_millis()
            .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok()),
    }
}

/// What a record becomes.
pub enum Fate {
    /// Jobs to route, one per matching endpoint (none: the record is settled at once).
    Jobs {
        /// The jobs.
        jobs: Vec<Job>,
        /// Where they were read (a retry record's due time tells a superseded copy).
        origin: Origin,
        /// The dedup-topic record remembering the event's id, to write before the record is
        /// settled (a first sighting, with dedup on).
        remember: Option<Out>,
    },
    /// A record to write as it is (a re-park in another tier, or a dead letter), settled once
    /// written.
    Forward(Out),
    /// A retry record dropped (its `Webhook` or its replay is gone, or its replayed delivery
    /// ended before a restart): settled at once, and its lane no longer waits for it.
    Dropped {
        /// Its lane, when its record has a key.
        lane: Option<hookline_core::lanes::LaneKey>,
        /// Its place in the lane.
        seq: i64,
    },
}

/// What turning records into jobs reads.
pub struct Context<'a> {
    /// The endpoints.
    pub registry: &'a Registry,
    /// Record size bound.
    pub limits: &'a Limits,
    /// Metrics and the writer's topics and tiers.
    pub shared: &'a Shared,
    /// Jobs and their bytes in memory, counted by each job's [`Held`].
    pub in_memory: &'a Arc<InMemory>,
    /// The tenant's replays, to drop the deliveries of one that was deleted.
    pub replays: &'a Replays,
}

/// An events record: parsed and fanned out to the endpoints whose patterns match its type, or
/// dead-lettered as it was, with the reason, when it cannot be parsed. With `seen` (dedup on), a
/// record whose id the partition saw at another offset within the window fans out to nothing
/// (one `duplicate` attempt record per matching endpoint says so), and a first one comes with
/// the record that remembers it.
pub fn from_event(
    msg: &OwnedMessage,
    source: &Source,
    cx: &Context<'_>,
    seen: Option<&mut Seen>,
) -> Fate {
    let headers = header_pairs(msg);
    let event = match envelope::parse(&record(msg, &headers), cx.limits) {
        Ok(event) => Arc::new(event),
        Err(e) => {
            cx.shared.metrics.record("malformed");
            info!(topic = %source.topic, partition = source.partition, offset = source.offset, reason = e.reason(), "malformed record dead-lettered");
            return bury_raw(msg, &headers, source, e.reason(), &e.to_string(), None, cx);
        }
    };
    let targets: Vec<Arc<Endpoint>> = cx
        .registry
        .snapshot()
        .into_iter()
        // A disabled endpoint gets its job too: the attempt dead-letters it with reason
        // `webhook_disabled` (nothing is dropped silently; it can be replayed).
        .filter(|e| {
            e.settings()
                .is_ok_and(|s| s.matcher.matches(&event.event_type))
        })
        .collect();
    let mut remember = None;
    if let Some(seen) = seen {
        let now_s = u64::try_from(jiff::Timestamp::now().as_second()).unwrap_or(0);
        let hash = id_hash(&event.id);
        match seen.check(hash, source.offset, now_s) {
            Check::Duplicate { first_offset } => {
                cx.shared.metrics.record("duplicate");
                info!(event_id = %event.id, partition = source.partition, offset = source.offset, first_offset, "duplicate event not delivered");
                for endpoint in &targets {
                    cx.shared
                        .writer
                        .record_attempt(&duplicate(&event, endpoint, first_offset));
                }
                return Fate::Jobs {
                    jobs: Vec::new(),
                    origin: Origin::Events,
                    remember: None,
                };
            }
            Check::First => {
                remember = cx.shared.writer.dedup_topic.as_deref().map(|topic| {
                    cx.shared.writer.remember_record(
                        topic,
                        source.partition,
                        &Remembered {
                            hash,
                            offset: source.offset,
                            at_s: now_s,
                        },
                    )
                });
            }
            Check::Again => {}
        }
    }
    cx.shared.metrics.record("event");
    debug!(event_id = %event.id, event_type = %event.event_type, webhooks = targets.len(), "event");
    let payload = event.payload();
    let weight = weight(&event, &payload, cx);
    let jobs = targets
        .into_iter()
        .map(|endpoint| {
            job(
                endpoint,
                (event.clone(), payload.clone(), weight.clone()),
                0,
                source.clone(),
                source.offset,
                None,
            )
        })
        .collect();
    Fate::Jobs {
        jobs,
        origin: Origin::Events,
        remember,
    }
}

/// The attempt record saying that a copy of `event` was not delivered to `endpoint`.
fn duplicate(event: &Event, endpoint: &Endpoint, first_offset: i64) -> AttemptRecord {
    AttemptRecord {
        event_id: event.id.clone(),
        event_type: event.event_type.clone(),
        key: event.key.clone(),
        webhook: endpoint.name.to_string(),
        attempt: 0,
        sent: false,
        status: None,
        latency_ms: 0,
        outcome: DUPLICATE.to_owned(),
        reason: Some(DUPLICATE.to_owned()),
        error: Some(format!(
            "not delivered: the same event id was read at offset {first_offset} of this partition within the dedup window"
        )),
        next_attempt_at: None,
        dead_letter_reason: None,
        time: jiff::Timestamp::now().to_string(),
        replay: None,
    }
}

/// What a record's deliveries hold in memory: its event and its signed body.
fn weight(event: &Event, payload: &bytes::Bytes, cx: &Context<'_>) -> Arc<Weight> {
    let bytes = payload.len()
        + event.data.get().len()
        + event.id.len()
        + event.event_type.len()
        + event.key.as_ref().map_or(0, String::len);
    Weight::new(bytes, cx.in_memory)
}

fn job(
    endpoint: Arc<Endpoint>,
    (event, payload, weight): (Arc<Event>, bytes::Bytes, Arc<Weight>),
    attempts: u32,
    source: Source,
    seq: i64,
    replay: Option<ReplayTag>,
) -> Job {
    let per_key = endpoint.settings().is_ok_and(|s| s.per_key);
    let lane = event
        .key
        .clone()
        .filter(|_| per_key)
        .map(|k| (endpoint.name.clone(), k));
    Job {
        held: Held::new(endpoint.clone(), weight),
        endpoint,
        event,
        payload,
        attempts,
        source,
        seq,
        lane,
        replay: replay.map(Arc::new),
    }
}

/// A retry record whose tier let it through with `step`: re-parked in another tier when its
/// due time is further off, dropped when its `Webhook` is gone, or a job for its one endpoint.
/// A replay's record is also dropped when the replay was deleted (cancelled), or when `seen`
/// (the partition's dedup memory) says its delivery already ended before a restart.
pub fn from_retry(
    msg: &OwnedMessage,
    source: &Source,
    tier: usize,
    step: Step,
    cx: &Context<'_>,
    seen: Option<&Seen>,
) -> Fate {
    let headers = header_pairs(msg);
    let meta = match RetryMeta::from_headers(&headers) {
        Ok(m) => m,
        Err(e) => {
            return bury_raw(
                msg,
                &headers,
                source,
                "invalid_retry_record",
                &e.to_string(),
                None,
                cx,
            );
        }
    };
    if let Step::Repark(to) = step {
        cx.shared.metrics.record("repark");
        return Fate::Forward(Out {
            topic: cx.shared.writer.tiers.topic(to).to_owned(),
            partition: Some(source.partition),
            key: msg.key().map(<[u8]>::to_vec),
            value: bytes::Bytes::copy_from_slice(msg.payload().unwrap_or_default()),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.to_vec()))
                .collect(),
            timestamp: Some(now_ms()),
        });
    }
    debug!(tier, webhook = %meta.webhook, seq = meta.seq, "retry due");
    let dropped = Fate::Dropped {
        lane: msg.key().map(|k| {
            (
                Arc::from(meta.webhook.as_str()),
                String::from_utf8_lossy(k).into_owned(),
            )
        }),
        seq: meta.seq,
    };
    let Some(endpoint) = cx.registry.get(&meta.webhook) else {
        cx.shared.metrics.record("orphaned");
        info!(webhook = %meta.webhook, "retry for a Webhook that no longer exists dropped");
        return dropped;
    };
    let event = match envelope::parse(&record(msg, &headers), cx.limits) {
        Ok(event) => Arc::new(event),
        Err(e) => {
            return bury_raw(
                msg,
                &headers,
                source,
                e.reason(),
                &e.to_string(),
                Some(meta.webhook),
                cx,
            );
        }
    };
    if let Some(tag) = &meta.replay {
        if !cx.replays.active(tag) {
            cx.shared.metrics.record("replay_cancelled");
            debug!(replay = %tag.name, event_id = %event.id, "delivery of a deleted replay dropped");
            return dropped;
        }
        if seen.is_some_and(|s| s.contains(done_hash(&tag.uid, &event.id))) {
            cx.shared.metrics.record("replay_done");
            debug!(replay = %tag.name, event_id = %event.id, "replayed delivery already ended before a restart; not sent again");
            return dropped;
        }
        cx.shared.metrics.record("replay");
    } else {
        cx.shared.metrics.record("retry");
    }
    let origin = if meta.replay.is_some() {
        Origin::Replay
    } else {
        Origin::Retry {
            due_ms: meta.due_ms,
        }
    };
    let payload = event.payload();
    let weight = weight(&event, &payload, cx);
    let job = job(
        endpoint,
        (event, payload, weight),
        meta.attempts,
        source.clone(),
        meta.seq,
        meta.replay,
    );
    Fate::Jobs {
        jobs: vec![job],
        origin,
        remember: None,
    }
}

/// The dead letter of a record that cannot be handled, with its own headers and the reason.
fn bury_raw(
    msg: &OwnedMessage,
    headers: &[(&str, &[u8])],
    source: &Source,
    reason: &str,
    error: &str,
    webhook: Option<String>,
    cx: &Context<'_>,
) -> Fate {
    cx.shared
        .metrics
        .dead_letter(webhook.as_deref().unwrap_or(""), reason);
    let dl = DeadLetter {
        reason: reason.to_owned(),
        error: error.to_owned(),
        topic: source.topic.to_string(),
        partition: source.partition,
        offset: source.offset,
        webhook,
        attempts: None,
        status: None,
    };
    let mut hs: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.to_vec()))
        .collect();
    hs.extend(
        dl.headers(jiff::Timestamp::now())
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.into_bytes())),
    );
    Fate::Forward(Out {
        topic: cx.shared.writer.dead_letter_topic.clone(),
        partition: None,
        key: msg.key().map(<[u8]>::to_vec),
        value: bytes::Bytes::copy_from_slice(msg.payload().unwrap_or_default()),
        headers: hs,
        timestamp: None,
    })
}

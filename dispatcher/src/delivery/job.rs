//! The job model: a [`Job`] is one event for one `Webhook`, read at a [`Source`] it settles
//! when done, counted while it lives by [`Held`]; what becomes of it is a [`Done`], reported to
//! the pipeline as a [`Completion`]. Times are Unix milliseconds ([`now_ms`]), the unit of the
//! retry records.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hookline_core::dedup::IdHash;
use hookline_core::envelope::Event;
use hookline_core::lanes::LaneKey;
use hookline_core::replay::ReplayTag;
use jiff::Timestamp;
use tokio_util::sync::CancellationToken;

use crate::tenant::endpoints::Endpoint;

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    Timestamp::now().as_millisecond()
}

/// A duration in whole milliseconds, saturating.
pub fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Where a record was read, and so what to settle when it is done.
#[derive(Debug, Clone)]
pub struct Source {
    /// The topic.
    pub topic: Arc<str>,
    /// The partition (also the partition of the events topic the event came
    /// from, and so of its lane).
    pub partition: i32,
    /// The offset.
    pub offset: i64,
    /// The assignment epoch it was read under.
    pub epoch: u64,
    /// Cancelled when its partition is revoked: an attempt not started by then is abandoned.
    pub revoked: CancellationToken,
}

/// The deliveries held in memory, in all: how many, and the bytes of their records.
#[derive(Debug, Default)]
pub struct InMemory {
    /// Deliveries.
    pub jobs: AtomicUsize,
    /// Bytes of their records, each record counted once however many deliveries share it
    /// ([`Weight`]).
    pub bytes: AtomicUsize,
}

/// The bytes one record's deliveries hold (its event and signed body), counted in
/// [`InMemory::bytes`] while any of them lives.
#[derive(Debug)]
pub struct Weight {
    bytes: usize,
    in_memory: Arc<InMemory>,
}

impl Weight {
    /// Counts `bytes` until the last delivery holding the weight is gone.
    pub fn new(bytes: usize, in_memory: &Arc<InMemory>) -> Arc<Weight> {
        in_memory.bytes.fetch_add(bytes, Ordering::Relaxed);
        Arc::new(Weight {
            bytes,
            in_memory: in_memory.clone(),
        })
    }
}

impl Drop for Weight {
    fn drop(&mut self) {
        self.in_memory
            .bytes
            .fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// Counts a delivery held in memory, per endpoint and in all, and its record's bytes, while
/// it lives.
pub struct Held {
    endpoint: Arc<Endpoint>,
    weight: Arc<Weight>,
}

impl Held {
    /// Counts one more, of a record weighing `weight`.
    pub fn new(endpoint: Arc<Endpoint>, weight: Arc<Weight>) -> Held {
        endpoint.in_memory.fetch_add(1, Ordering::Relaxed);
        weight.in_memory.jobs.fetch_add(1, Ordering::Relaxed);
        Held { endpoint, weight }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.endpoint.in_memory.fetch_sub(1, Ordering::Relaxed);
        self.weight.in_memory.jobs.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One event to deliver to one `Webhook`.
pub struct Job {
    /// The endpoint.
    pub endpoint: Arc<Endpoint>,
    /// The event, shared by every job of its record.
    pub event: Arc<Event>,
    /// Its Standard Webhooks body, shared likewise.
    pub payload: Bytes,
    /// Attempts already made.
    pub attempts: u32,
    /// What to settle when it is done.
    pub source: Source,
    /// Its offset in the events topic: its place in its lane.
    pub seq: i64,
    /// Its lane, for `PerKey` webhooks and keyed events.
    pub lane: Option<LaneKey>,
    /// The replay it is part of (from a replay's retry record).
    pub replay: Option<Arc<ReplayTag>>,
    /// Keeps the memory counters.
    pub held: Held,
}

/// What became of a job or record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    /// Delivered, dead-lettered or dropped: the lane moves on.
    Finished,
    /// The job that held its lane is in the retry path, due then.
    Rescheduled {
        /// Unix ms.
        due_ms: i64,
    },
    /// Written to the retry path without holding its lane (the lane knew).
    Postponed,
    /// Was to be postponed without holding its lane, but Kafka refused its retry record for
    /// good and it was dead-lettered: the lane no longer waits for it.
    Withdrawn,
    /// Nothing durable happened (shutdown): do not settle.
    Abandoned,
}

/// A finished task, for the pipeline.
#[derive(Debug)]
pub struct Completion {
    /// What to settle.
    pub source: Source,
    /// The job's lane and seq, if it has one.
    pub lane: Option<(LaneKey, i64)>,
    /// The outcome.
    pub done: Done,
    /// A replayed delivery that ended: its done-marker ([`hookline_core::replay::done_hash`]),
    /// already in the dedup topic, for the partition's memory.
    pub replay_done: Option<IdHash>,
}

//! Partitions: what the consumer hands over is held per partition ([`Partitions::hold`]) and
//! let through in order when it may go ([`Partitions::next`]) — not while the partition's lanes
//! are being rebuilt after an assignment (the retry topics are scanned first), and for a retry
//! tier not before its head is actionable, when the partition is paused and a timer resumes it.
//! Each partition tracks its offsets ([`OffsetTracker`]) under the assignment epoch it was read
//! in, and says when it wants to be paused or resumed and which positions may be committed. No
//! Kafka call is made here: the pipeline makes them on these answers.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use hookline_core::ordering::OffsetTracker;
use hookline_core::retry_topics::{RetryMeta, Step, Tiers};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::records::header_pairs;
use crate::delivery::job::Source;
use crate::kafka::consumer::{Committed, PendingRetry, Tp};

/// Records an events partition holds at most, under back-pressure, before it is paused.
const READ_AHEAD: usize = 1_000;
/// Payload bytes an events partition holds at most before it is paused.
const READ_AHEAD_BYTES: usize = 4 << 20;

fn size(msg: &OwnedMessage) -> usize {
    msg.payload().map_or(0, <[u8]>::len)
}

/// The result of the scan of the retry topics that follows an assignment.
pub struct ScanDone {
    /// The assignment epoch it was made for.
    pub epoch: u64,
    /// The retries still pending, or why the scan failed.
    pub result: Result<Vec<PendingRetry>, KafkaError>,
    /// The ids each assigned events partition remembers, restored from the dedup topic (empty
    /// without one), or why they could not be.
    pub seen: Result<Vec<(i32, hookline_core::dedup::Seen)>, KafkaError>,
    /// The offsets above each assigned partition's committed position that were settled when
    /// it was committed (from the commit's metadata), or why they could not be read.
    pub settled: Result<HashMap<Tp, hookline_core::ordering::SettledAbove>, KafkaError>,
}

/// A record that may go now.
pub struct Ready {
    /// The record.
    pub msg: OwnedMessage,
    /// Where it was read.
    pub source: Source,
    /// Its retry tier (`None`: the events topic).
    pub tier: Option<usize>,
    /// What its tier says of it.
    pub step: Step,
}

struct PartState {
    epoch: u64,
    tier: Option<usize>,
    tracker: OffsetTracker,
    held: VecDeque<OwnedMessage>,
    /// Payload bytes in `held`.
    held_bytes: usize,
    hold_until: Option<i64>,
    scanning: bool,
    paused: bool,
    /// Being revoked: nothing more is let through.
    revoking: bool,
    /// Tasks running with a job of this partition (and epoch).
    running: usize,
    /// Cancelled on revocation: attempts of this partition that have not started stop.
    revoked: CancellationToken,
}

impl PartState {
    fn new(epoch: u64, tier: Option<usize>, held: VecDeque<OwnedMessage>, paused: bool) -> Self {
        let held_bytes = held.iter().map(size).sum();
        PartState {
            epoch,
            tier,
            tracker: OffsetTracker::new(),
            held,
            held_bytes,
            hold_until: None,
            scanning: true,
            paused,
            revoking: false,
            running: 0,
            revoked: CancellationToken::new(),
        }
    }
}

/// Every assigned partition of the events and retry topics.
#[derive(Default)]
pub struct Partitions {
    map: HashMap<Tp, PartState>,
    epoch: u64,
}

impl Partitions {
    /// The current assignment epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Every partition.
    pub fn tps(&self) -> Vec<Tp> {
        self.map.keys().cloned().collect()
    }

    /// Holds a record handed over by the consumer (`tier`: its retry tier, if any); drops it
    /// when its partition is being revoked (the next owner reads it again).
    pub fn hold(&mut self, msg: OwnedMessage, tier: Option<usize>) -> Tp {
        let tp = (msg.topic().to_owned(), msg.partition());
        let epoch = self.epoch;
        let part = self
            .map
            .entry(tp.clone())
            .or_insert_with(|| PartState::new(epoch, tier, VecDeque::new(), false));
        if part.revoking {
            return tp;
        }
        part.held_bytes += size(&msg);
        part.held.push_back(msg);
        tp
    }

    /// The next record of `tp` that may go at `now`, taken off the partition; `None` while it is
    /// being scanned, empty, or its retry head is not actionable yet (then remembered as
    /// [`Partitions::next_hold_until`]).
    pub fn next(&mut self, tp: &Tp, tiers: &Tiers, now: i64) -> Option<Ready> {
        let part = self.map.get_mut(tp)?;
        if part.scanning || part.revoking {
            return None;
        }
        let Some(front) = part.held.front() else {
            part.hold_until = None;
            return None;
        };
        let step = match part.tier {
            None => Step::Deliver,
            Some(tier) => match RetryMeta::from_headers(&header_pairs(front)) {
                Ok(meta) => {
                    let written = front.timestamp().to_millis().unwrap_or(now);
                    tiers.step(tier, written, meta.due_ms, now)
                }
                Err(_) => Step::Deliver,
            },
        };
        if let Step::Hold(until) = step {
            part.hold_until = Some(until);
            return None;
        }
        part.hold_until = None;
        let msg = part.held.pop_front()?;
        part.held_bytes = part.held_bytes.saturating_sub(size(&msg));
        let source = Source {
            topic: Arc::from(tp.0.as_str()),
            partition: tp.1,
            offset: msg.offset(),
            epoch: part.epoch,
            revoked: part.revoked.clone(),
        };
        Some(Ready {
            msg,
            source,
            tier: part.tier,
            step,
        })
    }

    /// When the first held retry head becomes actionable (Unix ms), among partitions not
    /// being scanned.
    pub fn next_hold_until(&self) -> Option<i64> {
        self.map
            .values()
            .filter(|p| !p.scanning)
            .filter_map(|p| p.hold_until)
            .min()
    }

    /// Forgets a revoked partition.
    pub fn revoke(&mut self, tp: &Tp) {
        self.map.remove(tp);
    }

    /// Starts revoking `tps`: what they hold is dropped, nothing more is let through, and their
    /// attempts that have not sent a request yet are cancelled (abandoned, so not settled: the
    /// next owner reads them again). Requests already sent run to their end and settle.
    pub fn start_revoke(&mut self, tps: &[Tp]) {
        for tp in tps {
            if let Some(part) = self.map.get_mut(tp) {
                part.revoking = true;
                part.held.clear();
                part.held_bytes = 0;
                part.hold_until = None;
                part.revoked.cancel();
            }
        }
    }

    /// Whether no task runs with a job of a partition being revoked.
    pub fn revocation_settled(&self) -> bool {
        self.map
            .values()
            .filter(|p| p.revoking)
            .all(|p| p.running == 0)
    }

    /// A task started with a job read at `source`.
    pub fn started(&mut self, source: &Source) {
        if let Some(part) = self.current(source) {
            part.running += 1;
        }
    }

    /// A task with a job read at `source` ended.
    pub fn ended(&mut self, source: &Source) {
        if let Some(part) = self.current(source) {
            part.running = part.running.saturating_sub(1);
        }
    }

    /// The state of `source`'s partition, if it is still of the assignment `source` was read in.
    fn current(&mut self, source: &Source) -> Option<&mut PartState> {
        self.map
            .get_mut(&(source.topic.to_string(), source.partition))
            .filter(|p| p.epoch == source.epoch)
    }

    /// Starts a new assignment epoch with `tps` (paused and being scanned); returns the epoch
    /// and the retry partitions to scan. Records of a revoked partition are never handed over
    /// after the revocation (librdkafka drops them), so what is held for an assigned partition
    /// arrived for this assignment and is kept.
    pub fn assign(&mut self, tps: &[Tp], tiers: &Tiers) -> (u64, Vec<Tp>) {
        self.epoch += 1;
        let epoch = self.epoch;
        let mut retry_tps = Vec::new();
        for tp in tps {
            let tier = tiers.index_of(&tp.0);
            if tier.is_some() {
                retry_tps.push(tp.clone());
            }
            let held = self.map.remove(tp).map(|p| p.held).unwrap_or_default();
            self.map
                .insert(tp.clone(), PartState::new(epoch, tier, held, true));
        }
        (epoch, retry_tps)
    }

    /// The scan of `epoch` is over: its partitions may go.
    pub fn scanned(&mut self, epoch: u64) {
        for part in self.map.values_mut().filter(|p| p.epoch == epoch) {
            part.scanning = false;
        }
    }

    /// Whether `tp` should now be paused (`Some(true)`) or resumed (`Some(false)`); `None`
    /// when it already is as it should be. Everything pauses when `stopping`.
    ///
    /// An events partition reads a little ahead under back-pressure, so that records are at
    /// hand the moment memory has room again: pausing drops what librdkafka had fetched, and
    /// fetching it again cost more than the deliveries (BENCHMARKS.md). Retry tiers, whose heads
    /// may wait for an hour, and partitions being scanned pause at once.
    pub fn pause_change(&self, tp: &Tp, stopping: bool) -> Option<bool> {
        let part = self.map.get(tp)?;
        let want = stopping
            || part.scanning
            || part.revoking
            || match part.tier {
                Some(_) => !part.held.is_empty(),
                None => part.held.len() >= READ_AHEAD || part.held_bytes >= READ_AHEAD_BYTES,
            };
        (want != part.paused).then_some(want)
    }

    /// Notes that `tp` was paused or resumed.
    pub fn set_paused(&mut self, tp: &Tp, paused: bool) {
        if let Some(part) = self.map.get_mut(tp) {
            part.paused = paused;
        }
    }

    /// Notes that the record at `source` fanned out to `jobs` jobs (settled at once when 0).
    pub fn track(&mut self, source: &Source, jobs: usize) {
        let tp = (source.topic.to_string(), source.partition);
        if let Some(part) = self.map.get_mut(&tp)
            && let Err(e) = part.tracker.track(source.offset, jobs)
        {
            warn!(error = %e, topic = %tp.0, partition = tp.1, "offset bookkeeping");
        }
    }

    /// One job of the record at `source` is settled; ignored when the partition was revoked or
    /// reassigned since it was read.
    pub fn settle(&mut self, source: &Source) {
        if let Some(part) = self.current(source)
            && let Err(e) = part.tracker.settle(source.offset)
        {
            warn!(error = %e, topic = %source.topic, partition = source.partition, "offset bookkeeping");
        }
    }

    /// The positions, with the settled offsets above them as commit metadata, that changed
    /// since the last call.
    pub fn take_commits(&mut self) -> Vec<(Tp, Committed)> {
        self.map
            .iter_mut()
            .filter_map(|(tp, part)| part.tracker.take_commit().map(|c| (tp.clone(), c)))
            .collect()
    }
}

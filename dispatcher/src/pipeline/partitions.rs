//! Partitions: what the consumer hands over is held per partition and let
//! through in order when it may go — not while the partition's lanes are
//! being rebuilt after an assignment (the retry topics are scanned first),
//! not under back-pressure, and for a retry tier not before its head is
//! actionable, when the partition is paused and a timer resumes it. Also
//! here: rebalances, the scan's result, pause/resume and commits.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message, OwnedMessage};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tracing::{debug, info, warn};

use super::records::header_pairs;
use super::{Pipeline, SCAN_DEADLINE};
use crate::consumer::{self, PendingRetry, Rebalanced, Tp};
use crate::ordering::OffsetTracker;
use crate::retry_topics::{RetryMeta, Step};
use crate::worker::{Source, now_ms};

pub(super) struct PartState {
    pub(super) epoch: u64,
    pub(super) tier: Option<usize>,
    pub(super) tracker: OffsetTracker,
    pub(super) held: VecDeque<OwnedMessage>,
    /// Payload bytes in `held`.
    pub(super) held_bytes: usize,
    pub(super) hold_until: Option<i64>,
    pub(super) scanning: bool,
    pub(super) paused: bool,
}

/// Records an events partition holds at most, under back-pressure, before it is paused.
pub(super) const READ_AHEAD: usize = 1_000;
/// Payload bytes an events partition holds at most before it is paused.
pub(super) const READ_AHEAD_BYTES: usize = 4 << 20;

fn size(msg: &OwnedMessage) -> usize {
    msg.payload().map_or(0, <[u8]>::len)
}

pub(super) struct ScanDone {
    pub(super) epoch: u64,
    pub(super) result: Result<Vec<PendingRetry>, KafkaError>,
}

impl Pipeline {
    pub(super) fn on_message(&mut self, msg: Result<BorrowedMessage<'_>, KafkaError>) {
        let msg = match msg {
            Ok(m) => m.detach(),
            Err(e) => {
                warn!(error = %e, "Kafka consumer error");
                return;
            }
        };
        let tp = (msg.topic().to_owned(), msg.partition());
        let tier = self.p.shared.tiers.index_of(&tp.0);
        let epoch = self.epoch;
        let part = self.parts.entry(tp.clone()).or_insert_with(|| PartState {
            epoch,
            tier,
            tracker: OffsetTracker::new(),
            held: VecDeque::new(),
            held_bytes: 0,
            hold_until: None,
            scanning: true,
            paused: false,
        });
        part.held_bytes += size(&msg);
        part.held.push_back(msg);
        self.drain(&tp);
    }

    pub(super) fn drain_all(&mut self) {
        let tps: Vec<Tp> = self.parts.keys().cloned().collect();
        for tp in tps {
            self.drain(&tp);
        }
    }

    /// Handles the held records of a partition that may go now, in order.
    pub(super) fn drain(&mut self, tp: &Tp) {
        let now = now_ms();
        loop {
            let blocked = self.backpressure || self.stopping;
            let Some(part) = self.parts.get_mut(tp) else {
                return;
            };
            if part.scanning || blocked {
                break;
            }
            let Some(front) = part.held.front() else {
                part.hold_until = None;
                break;
            };
            let step = match part.tier {
                None => Step::Deliver,
                Some(tier) => match RetryMeta::from_headers(&header_pairs(front)) {
                    Ok(meta) => {
                        let written = front.timestamp().to_millis().unwrap_or(now);
                        self.p.shared.tiers.step(tier, written, meta.due_ms, now)
                    }
                    Err(_) => Step::Deliver,
                },
            };
            if let Step::Hold(until) = step {
                part.hold_until = Some(until);
                break;
            }
            part.hold_until = None;
            let (epoch, tier) = (part.epoch, part.tier);
            let Some(msg) = part.held.pop_front() else {
                break;
            };
            part.held_bytes = part.held_bytes.saturating_sub(size(&msg));
            let source = Source {
                topic: Arc::from(tp.0.as_str()),
                partition: tp.1,
                offset: msg.offset(),
                epoch,
            };
            match tier {
                None => self.on_event(&msg, source),
                Some(tier) => self.on_retry(&msg, source, tier, step),
            }
            // Back-pressure as soon as memory is full, not at the next tick:
            // a backlog is read far faster than it is delivered, and a second
            // of reading ahead pushed most of it through the overflow path
            // (a retry-topic write and read per event; see BENCHMARKS.md).
            if self.total.load(Ordering::Relaxed) > self.p.max_pending {
                self.check_backpressure();
            }
        }
        self.sync_pause(tp);
    }

    pub(super) fn on_rebalance(&mut self, r: Rebalanced) {
        match r {
            Rebalanced::Revoked(tps) => {
                for tp in &tps {
                    self.parts.remove(tp);
                    self.p
                        .committable
                        .lock()
                        .expect("committable lock")
                        .remove(tp);
                    if tp.0 == self.p.shared.events_topic.as_ref() {
                        self.lanes.revoke(tp.1);
                    }
                }
            }
            Rebalanced::Assigned(tps) => {
                self.epoch += 1;
                let epoch = self.epoch;
                let mut retry_tps = Vec::new();
                for tp in &tps {
                    let tier = self.p.shared.tiers.index_of(&tp.0);
                    if tier.is_some() {
                        retry_tps.push(tp.clone());
                    }
                    // Records of a revoked partition are never handed over
                    // after the revocation (librdkafka drops them), so what is
                    // held here arrived for this assignment: keep it.
                    let held = self.parts.remove(tp).map(|p| p.held).unwrap_or_default();
                    let held_bytes = held.iter().map(size).sum();
                    self.parts.insert(
                        tp.clone(),
                        PartState {
                            epoch,
                            tier,
                            tracker: OffsetTracker::new(),
                            held,
                            held_bytes,
                            hold_until: None,
                            scanning: true,
                            paused: true,
                        },
                    );
                    if tp.0 == self.p.shared.events_topic.as_ref() {
                        self.lanes.assign(tp.1, epoch);
                    }
                }
                let (consumer, config, tx) = (
                    self.p.consumer.clone(),
                    self.p.scanner.clone(),
                    self.scans.0.clone(),
                );
                tokio::task::spawn_blocking(move || {
                    let result = consumer::scan(&config, &consumer, &retry_tps, SCAN_DEADLINE);
                    let _ = tx.send(ScanDone { epoch, result });
                });
            }
        }
    }

    pub(super) fn on_scan(&mut self, s: ScanDone) {
        if s.epoch != self.epoch {
            return;
        }
        match s.result {
            Ok(found) => {
                let count = found.len();
                for r in found {
                    let per_key = self
                        .p
                        .registry
                        .get(&r.meta.webhook)
                        .is_none_or(|e| e.settings().is_ok_and(|s| s.per_key));
                    if per_key {
                        self.lanes.add_pending(
                            r.partition,
                            (Arc::from(r.meta.webhook.as_str()), r.key),
                            r.meta.seq,
                            r.meta.due_ms,
                        );
                    }
                }
                info!(pending = count, "retry topics scanned; consuming");
            }
            Err(e) => {
                warn!(error = %e, "cannot scan the retry topics; per-key order of retries pending from before is best effort")
            }
        }
        for part in self.parts.values_mut().filter(|p| p.epoch == s.epoch) {
            part.scanning = false;
        }
        self.drain_all();
    }

    pub(super) fn sync_pause(&mut self, tp: &Tp) {
        let Some(part) = self.parts.get_mut(tp) else {
            return;
        };
        // An events partition reads a little ahead under back-pressure, so
        // that records are at hand the moment memory has room again: pausing
        // drops what librdkafka had fetched, and fetching it again cost more
        // than the deliveries (BENCHMARKS.md). Retry tiers, whose heads may
        // wait for an hour, and partitions being scanned pause at once.
        let want = self.stopping
            || part.scanning
            || match part.tier {
                Some(_) => !part.held.is_empty(),
                None => part.held.len() >= READ_AHEAD || part.held_bytes >= READ_AHEAD_BYTES,
            };
        if want == part.paused {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&tp.0, tp.1);
        let result = if want {
            self.p.consumer.pause(&tpl)
        } else {
            self.p.consumer.resume(&tpl)
        };
        match result {
            Ok(()) => part.paused = want,
            Err(e) => debug!(error = %e, topic = %tp.0, partition = tp.1, "pause/resume"),
        }
    }

    pub(super) fn check_backpressure(&mut self) {
        let total = self.total.load(Ordering::Relaxed);
        let was = self.backpressure;
        if total > self.p.max_pending {
            self.backpressure = true;
        } else if total <= self.p.max_pending * 8 / 10 {
            self.backpressure = false;
        }
        if was != self.backpressure {
            // Debug: while a backlog drains this flips several times a second.
            debug!(
                in_memory = total,
                paused = self.backpressure,
                "back-pressure"
            );
            let metrics = &self.p.shared.metrics;
            metrics.backpressure.set(i64::from(self.backpressure));
            if self.backpressure {
                metrics.backpressure_engaged.inc();
            }
            let tps: Vec<Tp> = self.parts.keys().cloned().collect();
            for tp in tps {
                self.sync_pause(&tp);
            }
        }
    }

    pub(super) fn commit(&mut self, mode: CommitMode) {
        let mut tpl = TopicPartitionList::new();
        {
            let mut committable = self.p.committable.lock().expect("committable lock");
            for (tp, part) in &mut self.parts {
                if let Some(position) = part.tracker.take_commit() {
                    let _ = tpl.add_partition_offset(&tp.0, tp.1, Offset::Offset(position));
                    committable.insert(tp.clone(), position);
                }
            }
        }
        if tpl.count() > 0
            && let Err(e) = self.p.consumer.commit(&tpl, mode)
        {
            warn!(error = %e, "commit failed; retried with the next one");
        }
    }
}

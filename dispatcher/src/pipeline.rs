//! The heart of the dispatcher: one loop that owns all mutable delivery state
//! and never waits on a delivery. Records flow in from the consumer; an
//! events record is parsed ([`crate::envelope`]), matched to endpoints and
//! fanned out into one [`Job`] per endpoint, a retry record is held until its
//! tier makes it actionable, re-parked if its due time is further off, or
//! turned into a job for its one endpoint. Jobs pass the endpoint's state and
//! their [`Lanes`] and are spawned as [`worker`] tasks; their [`Completion`]s
//! flow back to settle offsets ([`crate::ordering::OffsetTracker`]) and move lanes on, and a
//! tick commits what is settled.
//!
//! # Guarantees
//! - At least once: an offset is committed only when every job it fanned out
//!   to was delivered, durably scheduled for retry, or dead-lettered, and a
//!   malformed record only once its dead letter is acknowledged.
//! - Isolation: nothing waits in the loop; each job waits in its own task for
//!   its endpoint's slot, token and circuit. Once jobs in memory pass half of
//!   `--max-pending`, a job for a `Webhook` holding more than its fair share
//!   ([`overflows`]) and draining too slowly to clear it within the
//!   postponement ([`crate::drain`]) is postponed through the retry path instead of queueing,
//!   so one slow URL cannot fill the memory the others need; the consumer
//!   pauses as soon as all jobs together exceed `--max-pending` and resumes
//!   as soon as they fall to 80 % of it (checked per record and per
//!   completion, not per tick: a backlog read ahead for a whole tick would
//!   overflow a healthy URL).
//! - A retry partition whose head is not actionable yet is paused and
//!   resumed by a timer, not polled.
//!
//! # Decisions
//! - Paused `Webhook`s (and ones whose spec the dispatcher cannot use): their
//!   deliveries are parked in the retry path with their attempt count
//!   unchanged and looked at again when due, for as long as the `Webhook` has
//!   been paused so far (at least 10 s, at most the longest tier, 1 h). Events
//!   that arrive while paused are kept and go out after the resume within
//!   about as long as the pause lasted, at most an hour; parking costs one
//!   retry-topic write per event per look, and looks grow further apart the
//!   longer the pause.
//! - A `Webhook` without a usable signing key yet: postponed 10 s at a time.
//! - Disabled (410 Gone): new events are not matched to it; its retries are
//!   dead-lettered with reason `webhook_disabled`.
//! - A retry for a `Webhook` that no longer exists is dropped (logged, counted
//!   as `orphaned`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::producer::Producer;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::consumer::{Committable, KafkaConsumer, Rebalanced, Tp};
use crate::envelope::Limits;
use crate::lanes::{Admit, Lanes, Place};
use crate::server::Health;
use crate::webhooks::{Availability, Registry};
use crate::worker::{
    self, Completion, Done, Job, NO_KEYS_POSTPONE, OVERFLOW_POSTPONE, Shared, Source, now_ms,
};

mod partitions;
mod records;

use partitions::{PartState, ScanDone};

/// How often settled offsets are committed.
pub const COMMIT_INTERVAL: Duration = Duration::from_secs(1);
/// How long the start-up scan of the retry topics may take.
pub const SCAN_DEADLINE: Duration = Duration::from_secs(60);

/// Least fair share of a `Webhook`, in jobs.
pub const MIN_SHARE: usize = 128;

/// Whether a `Webhook` holding `held` jobs is over its share when `total`
/// jobs are in memory across `endpoints` `Webhook`s: only under pressure
/// (more than half of `max_pending` in memory), and then above
/// `max_pending / endpoints` (at least [`MIN_SHARE`]). A burst on a healthy
/// URL queues in memory; a slow URL's excess is postponed. A lone `Webhook`
/// has no one to make room for: back-pressure alone bounds it. The caller
/// also asks whether the `Webhook` drains so slowly that its jobs would wait
/// longer in memory than the postponement ([`crate::drain`]): a busy,
/// healthy receiver above its share under a backlog is not postponed.
pub fn overflows(held: usize, total: usize, endpoints: usize, max_pending: usize) -> bool {
    endpoints > 1 && total > max_pending / 2 && held > (max_pending / endpoints).max(MIN_SHARE)
}

/// What the pipeline is built from.
pub struct Parts {
    /// The subscribed consumer.
    pub consumer: Arc<KafkaConsumer>,
    /// Its rebalances.
    pub rebalances: mpsc::UnboundedReceiver<Rebalanced>,
    /// Positions to commit on revocation.
    pub committable: Committable,
    /// Configuration of the start-up scanner.
    pub scanner: ClientConfig,
    /// What the tasks share.
    pub shared: Arc<Shared>,
    /// Where the tasks report.
    pub completions: mpsc::UnboundedReceiver<Completion>,
    /// The endpoints.
    pub registry: Arc<Registry>,
    /// Health flags.
    pub health: Arc<Health>,
    /// Jobs in memory above which consumption pauses.
    pub max_pending: usize,
    /// Record size bound.
    pub limits: Limits,
    /// How long deliveries may finish on shutdown.
    pub grace: Duration,
}

/// The running pipeline.
pub struct Pipeline {
    p: Parts,
    lanes: Lanes<Job>,
    parts: HashMap<Tp, PartState>,
    epoch: u64,
    total: Arc<AtomicUsize>,
    tasks: JoinSet<()>,
    scans: (
        mpsc::UnboundedSender<ScanDone>,
        mpsc::UnboundedReceiver<ScanDone>,
    ),
    backpressure: bool,
    stopping: bool,
}

impl Pipeline {
    /// A pipeline over `parts`.
    pub fn new(parts: Parts) -> Pipeline {
        // Parked jobs count towards `max_pending`, so back-pressure bounds
        // them; the lanes' own limit is a safety net above it. Equal to it,
        // a partition whose jobs all sat behind busy keys hit the limit first
        // and postponed healthy deliveries through the retry topics.
        let max_parked = parts.max_pending.saturating_mul(2);
        Pipeline {
            p: parts,
            lanes: Lanes::new(max_parked),
            parts: HashMap::new(),
            epoch: 0,
            total: Arc::new(AtomicUsize::new(0)),
            tasks: JoinSet::new(),
            scans: mpsc::unbounded_channel(),
            backpressure: false,
            stopping: false,
        }
    }

    /// Runs until `stop`, then shuts down: stops consuming, lets running
    /// deliveries finish (or be scheduled) within the grace period, commits.
    pub async fn run(mut self, stop: CancellationToken) {
        let consumer = self.p.consumer.clone();
        let mut tick = tokio::time::interval(COMMIT_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.p.health.beat();
            let wake = self.next_wake();
            tokio::select! {
                () = stop.cancelled() => break,
                Some(c) = self.p.completions.recv() => self.on_completion(c),
                Some(r) = self.p.rebalances.recv() => self.on_rebalance(r),
                Some(s) = self.scans.1.recv() => self.on_scan(s),
                Some(joined) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    if let Err(e) = joined && e.is_panic() {
                        warn!(error = %e, "a delivery task panicked; its record will be delivered again after a restart");
                    }
                }
                msg = consumer.recv() => self.on_message(msg),
                _ = tick.tick() => {
                    self.commit(CommitMode::Async);
                    self.check_backpressure();
                    self.drain_all();
                }
                () = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => self.drain_all(),
            }
        }
        self.shutdown().await;
    }

    /// When the first held retry head becomes actionable; `None` while nothing
    /// could be let through anyway (so the timer never spins).
    fn next_wake(&self) -> Option<Instant> {
        if self.backpressure || self.stopping {
            return None;
        }
        let until = self
            .parts
            .values()
            .filter(|p| !p.scanning)
            .filter_map(|p| p.hold_until)
            .min()?;
        let wait = Duration::from_millis(u64::try_from(until - now_ms()).unwrap_or(0));
        Some(Instant::now() + wait)
    }

    fn track(&mut self, source: &Source, jobs: usize) {
        let tp = (source.topic.to_string(), source.partition);
        if let Some(part) = self.parts.get_mut(&tp)
            && let Err(e) = part.tracker.track(source.offset, jobs)
        {
            warn!(error = %e, topic = %tp.0, partition = tp.1, "offset bookkeeping");
        }
    }

    fn settle(&mut self, source: &Source) {
        let tp = (source.topic.to_string(), source.partition);
        if let Some(part) = self.parts.get_mut(&tp).filter(|p| p.epoch == source.epoch)
            && let Err(e) = part.tracker.settle(source.offset)
        {
            warn!(error = %e, topic = %tp.0, partition = tp.1, "offset bookkeeping");
        }
    }

    /// Sends a job on its way: postponed, parked in its lane, or delivered.
    fn route(&mut self, job: Job, from_retry: bool) {
        let now = now_ms();
        let longest = self.p.shared.tiers.delay(self.p.shared.tiers.longest());
        let wait = match job.endpoint.availability() {
            Availability::Paused => Some(job.endpoint.park_delay(longest)),
            Availability::Invalid => Some(longest),
            Availability::NoKeys => Some(NO_KEYS_POSTPONE),
            Availability::Ready | Availability::Disabled => None,
        };
        let wait = wait.or_else(|| {
            let held = job.endpoint.in_memory.load(Ordering::Relaxed);
            let total = self.total.load(Ordering::Relaxed);
            (overflows(held, total, self.p.registry.len(), self.p.max_pending)
                && job.endpoint.drains_slower_than(
                    held,
                    OVERFLOW_POSTPONE,
                    std::time::Instant::now(),
                ))
            .then_some(OVERFLOW_POSTPONE)
        });
        if let Some(wait) = wait {
            let due = now.saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX));
            if let Some(lane) = job.lane.clone() {
                self.lanes
                    .note_pending(job.source.partition, job.source.epoch, lane, job.seq, due);
            }
            self.tasks
                .spawn(worker::postpone(job, due, self.p.shared.clone()));
            return;
        }
        let Some(lane) = job.lane.clone() else {
            return self.spawn_delivery(job);
        };
        let place = Place {
            partition: job.source.partition,
            epoch: job.source.epoch,
        };
        let (seq, source) = (job.seq, job.source.clone());
        match self.lanes.admit(place, lane, seq, job, from_retry, now) {
            Admit::Go(job) => self.spawn_delivery(job),
            Admit::Parked => {}
            Admit::Postpone(job, due) => {
                self.tasks
                    .spawn(worker::postpone(job, due, self.p.shared.clone()));
            }
            Admit::Duplicate => self.settle(&source),
        }
    }

    fn spawn_delivery(&mut self, job: Job) {
        if self.stopping {
            return; // not settled: delivered again after the restart
        }
        self.tasks
            .spawn(worker::deliver(job, self.p.shared.clone()));
    }

    fn on_completion(&mut self, c: Completion) {
        if c.done != Done::Abandoned {
            self.settle(&c.source);
        }
        // Consume again as soon as memory has room, not at the next tick.
        if self.backpressure && self.total.load(Ordering::Relaxed) <= self.p.max_pending * 8 / 10 {
            self.check_backpressure();
            self.drain_all();
        }
        let Some((lane, seq)) = c.lane else { return };
        let (partition, epoch) = (c.source.partition, c.source.epoch);
        match c.done {
            Done::Finished => {
                if let Some(next) = self.lanes.finish(partition, epoch, &lane, seq) {
                    self.spawn_delivery(next);
                }
            }
            Done::Rescheduled { due_ms } => {
                for (job, due) in self.lanes.reschedule(partition, epoch, &lane, seq, due_ms) {
                    self.tasks
                        .spawn(worker::postpone(job, due, self.p.shared.clone()));
                }
            }
            Done::Postponed | Done::Abandoned => {}
        }
    }

    async fn shutdown(mut self) {
        info!(
            running = self.tasks.len(),
            "stopping: no new records; finishing running deliveries"
        );
        self.stopping = true;
        self.p.health.set_stopping();
        self.p.shared.stop.cancel();
        let tps: Vec<Tp> = self.parts.keys().cloned().collect();
        for tp in tps {
            self.sync_pause(&tp);
        }
        let deadline = Instant::now() + self.p.grace;
        while !self.tasks.is_empty() {
            tokio::select! {
                Some(c) = self.p.completions.recv() => self.on_completion(c),
                Some(_) = self.tasks.join_next() => {}
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        while let Ok(c) = self.p.completions.try_recv() {
            self.on_completion(c);
        }
        if !self.tasks.is_empty() {
            warn!(
                left = self.tasks.len(),
                "grace period over; the rest is delivered again after the restart"
            );
            self.tasks.abort_all();
        }
        self.commit(CommitMode::Sync);
        let producer = self.p.shared.producer.clone();
        let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10))).await;
        self.p.consumer.unsubscribe();
        info!("pipeline stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_queues_in_memory_while_there_is_room() {
        assert!(!overflows(4_000, 4_000, 1, 10_000));
        assert!(
            !overflows(9_000, 9_000, 1, 10_000),
            "a lone Webhook may use it all"
        );
        assert!(
            !overflows(10_001, 10_001, 1, 10_000),
            "a lone Webhook is bounded by back-pressure, never postponed"
        );
        assert!(overflows(10_001, 10_001, 2, 10_000));
    }

    #[test]
    fn under_pressure_the_webhook_over_its_fair_share_overflows() {
        assert!(overflows(4_000, 6_000, 4, 10_000));
        assert!(!overflows(2_000, 6_000, 4, 10_000), "within 10000 / 4");
        assert!(
            !overflows(100, 9_000, 1_000, 10_000),
            "never below the minimum share"
        );
    }
}

//! The heart of the dispatcher: one loop that owns all mutable delivery state
//! and never waits on a delivery. Records flow in from the consumer; an
//! events record is parsed ([`hookline_core::envelope`]), matched to endpoints and
//! fanned out into one [`Job`] per endpoint, a retry record is held until its
//! tier makes it actionable, re-parked if its due time is further off, or
//! turned into a job for its one endpoint. Jobs pass the endpoint's state and
//! their [`Lanes`] and are spawned as [`attempt`] tasks; their [`Completion`]s
//! flow back to settle offsets ([`hookline_core::ordering::OffsetTracker`]) and move lanes on, and a
//! tick commits what is settled. [`partitions`] holds what the consumer hands over per
//! partition, [`records`] turns records into jobs, [`pressure`] decides back-pressure.
//!
//! # Guarantees
//! - At least once: an offset is committed only when every job it fanned out
//!   to was delivered, durably scheduled for retry, or dead-lettered, and a
//!   malformed record only once its dead letter is acknowledged.
//! - Isolation: nothing waits in the loop; each job waits in its own task for
//!   its endpoint's slot, token and circuit. Once jobs in memory pass half of
//!   `--max-pending`, a job for a `Webhook` holding more than its fair share
//!   ([`Pressure::overflows`]) and draining too slowly to clear it within the
//!   postponement ([`hookline_core::drain`]) is postponed through the retry path instead of queueing,
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
//!   been paused so far (at least 10 s, at most the longest tier, 1 h) —
//!   [`hookline_core::status::hold`], asked here before a job is queued and
//!   again by the attempt when a queued job gets its turn, so both agree. Events
//!   that arrive while paused are kept and go out after the resume within
//!   about as long as the pause lasted, at most an hour; parking costs one
//!   retry-topic write per event per look, and looks grow further apart the
//!   longer the pause.
//! - A `Webhook` without a usable signing key yet: postponed 10 s at a time.
//! - Disabled (410 Gone): its new events and its retries are dead-lettered with
//!   reason `webhook_disabled` — not delivered, not dropped: they can be replayed
//!   once the receiver is back.
//! - A retry for a `Webhook` that no longer exists is dropped (logged, counted
//!   as `orphaned`).
//! - Duplicates ([`hookline_core::dedup`]): an events record whose id its partition saw within
//!   `--dedup-window` at another offset is not delivered (counted as `duplicate`, and in the
//!   delivery log); a first one is remembered in the dedup topic, and its offset is committed
//!   only once that write is acknowledged, so what a committed offset covers is remembered
//!   after a restart or a rebalance. A crash may still deliver the *same* record twice (at
//!   least once, as before); ids are per partition (see the module).
//! - Rebalances ([`consumer`]): a revoked partition lets nothing more through, its attempts
//!   that have not sent their request are cancelled, and the partitions are given up only once
//!   the requests in flight ended and what they settled is committed (at most
//!   [`REVOKE_GRACE`]), so the next owner repeats none of them. Settled positions are
//!   committed within [`COMMIT_GAP`] of settling, which bounds what a crash repeats.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::Producer;
use rdkafka::topic_partition_list::TopicPartitionList;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use hookline_core::dedup::Seen;
use hookline_core::envelope::Limits;
use hookline_core::lanes::{Admit, Lanes, Origin, Place};
use hookline_core::ordering::SettledAbove;
use hookline_core::status::Hold;

use crate::delivery::attempt::{self, OVERFLOW_POSTPONE, Shared};
use crate::delivery::job::{Completion, Done, InMemory, Job, Source, ms, now_ms};
use crate::kafka::consumer::{self, Committable, KafkaConsumer, Rebalanced, Tp};
use crate::kafka::writer::Out;
use crate::ops::health::Health;
use crate::tenant::endpoints::Registry;
use crate::tenant::replays::Replays;

pub mod partitions;
pub mod pressure;
pub mod records;

use partitions::{Partitions, Ready, ScanDone};
use pressure::{Load, Pressure};
use records::{Context, Fate};

/// How often the loop looks at commits, back-pressure and revocations when nothing else
/// happens.
pub const TICK: Duration = Duration::from_millis(100);
/// Settled positions are committed at most this long after they settle (asynchronously; a
/// crash delivers again what settled since the last commit, so this bounds the repeats).
pub const COMMIT_GAP: Duration = Duration::from_millis(20);
/// How long a revocation waits for the requests in flight of its partitions to end before it
/// gives them up anyway (what is still in flight then may be delivered again by the next
/// owner). The whole group waits this long at most.
pub const REVOKE_GRACE: Duration = Duration::from_secs(10);
/// How long a stopping pipeline waits for its revocation after unsubscribing.
pub const LEAVE_WAIT: Duration = Duration::from_secs(3);
/// How long it then lets librdkafka's thread send LeaveGroup before the process goes on to exit.
const LEAVE_SEND: Duration = Duration::from_millis(300);
/// A Kafka client of the pipeline failed for good (librdkafka's fatal error).
#[derive(Debug, thiserror::Error)]
#[error("fatal error of the Kafka {client}: {code}: {reason}")]
pub struct FatalKafka {
    /// `consumer` or `producer`.
    pub client: &'static str,
    /// librdkafka's error code.
    pub code: String,
    /// Its description.
    pub reason: String,
}

/// How long the start-up scan of the retry topics may take.
pub const SCAN_DEADLINE: Duration = Duration::from_secs(60);

/// What the pipeline is wired to: its inputs, the tasks' shared parts and its limits.
pub struct Wiring {
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
    /// Back-pressure thresholds (from `--max-pending`).
    pub pressure: Pressure,
    /// Record size bound.
    pub limits: Limits,
    /// How long deliveries may finish on shutdown.
    pub grace: Duration,
    /// How long event ids are remembered (with `shared.writer.dedup_topic`).
    pub dedup_window: Duration,
    /// The tenant's replays.
    pub replays: Replays,
}

/// The running pipeline.
pub struct Pipeline {
    wiring: Wiring,
    lanes: Lanes<Job>,
    partitions: Partitions,
    in_memory: Arc<InMemory>,
    tasks: JoinSet<()>,
    scans: (
        mpsc::UnboundedSender<ScanDone>,
        mpsc::UnboundedReceiver<ScanDone>,
    ),
    backpressure: bool,
    stopping: bool,
    /// A revocation under way: its partitions and its deadline.
    revoking: Option<(Vec<Tp>, Instant)>,
    last_commit: Instant,
    /// The event ids each assigned events partition has seen (none without a dedup topic).
    dedup: HashMap<i32, Seen>,
    /// Offsets of assigned partitions that were settled above the committed position (by the
    /// previous owner, or this process before a crash): skipped when read again.
    settled: HashMap<Tp, SettledAbove>,
}

impl Pipeline {
    /// A pipeline wired to `wiring`.
    pub fn new(wiring: Wiring) -> Pipeline {
        let max_parked = wiring.pressure.max_parked();
        Pipeline {
            wiring,
            lanes: Lanes::new(max_parked),
            partitions: Partitions::default(),
            in_memory: Arc::new(InMemory::default()),
            tasks: JoinSet::new(),
            scans: mpsc::unbounded_channel(),
            backpressure: false,
            stopping: false,
            revoking: None,
            last_commit: Instant::now(),
            dedup: HashMap::new(),
            settled: HashMap::new(),
        }
    }

    /// Runs until `stop`, then shuts down: stops consuming, lets running
    /// deliveries finish (or be scheduled) within the grace period, commits.
    ///
    /// # Errors
    /// When the consumer or the producer had a fatal error (librdkafka's clients are unusable
    /// after one, e.g. a static member fenced by its own rejoin after its group coordinator was
    /// lost): it shuts down the same way and says why, so that the process exits non-zero and is
    /// restarted with fresh clients instead of idling for ever.
    pub async fn run(mut self, stop: CancellationToken) -> Result<(), FatalKafka> {
        let consumer = self.wiring.consumer.clone();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let fatal = loop {
            self.wiring.health.beat();
            let wake = self.next_wake();
            tokio::select! {
                () = stop.cancelled() => break None,
                Some(c) = self.wiring.completions.recv() => self.on_completion(c),
                Some(r) = self.wiring.rebalances.recv() => self.on_rebalance(r),
                Some(s) = self.scans.1.recv() => self.on_scan(s),
                Some(joined) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    if let Err(e) = joined && e.is_panic() {
                        warn!(error = %e, "a delivery task panicked; its record will be delivered again after a restart");
                    }
                }
                msg = consumer.recv() => self.on_message(msg),
                _ = tick.tick() => {
                    if let Some(fatal) = self.fatal_error() {
                        break Some(fatal);
                    }
                    self.commit(CommitMode::Async);
                    self.finish_revoke(false);
                    self.check_backpressure();
                    self.drain_all();
                }
                () = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => self.drain_all(),
            }
        };
        if let Some(fatal) = &fatal {
            error!(error = %fatal, "a Kafka client failed for good; stopping so that a new process starts with new clients");
        }
        self.shutdown().await;
        fatal.map_or(Ok(()), Err)
    }

    /// The fatal error of the consumer or of the producer, if one had any.
    fn fatal_error(&self) -> Option<FatalKafka> {
        let consumer = self.wiring.consumer.client().fatal_error();
        let producer = || self.wiring.shared.writer.producer.client().fatal_error();
        let (client, (code, reason)) = match consumer {
            Some(e) => ("consumer", e),
            None => ("producer", producer()?),
        };
        Some(FatalKafka {
            client,
            code: format!("{code:?}"),
            reason,
        })
    }

    /// When the first held retry head becomes actionable; `None` while nothing
    /// could be let through anyway (so the timer never spins).
    fn next_wake(&self) -> Option<Instant> {
        if self.backpressure || self.stopping {
            return None;
        }
        let until = self.partitions.next_hold_until()?;
        let wait = Duration::from_millis(u64::try_from(until - now_ms()).unwrap_or(0));
        Some(Instant::now() + wait)
    }

    /// Sends a job on its way: postponed, parked in its lane, or delivered.
    fn route(&mut self, job: Job, origin: Origin) {
        let now = now_ms();
        let longest = self
            .wiring
            .shared
            .writer
            .tiers
            .delay(self.wiring.shared.writer.tiers.longest());
        let wait = match job.endpoint.hold(longest) {
            Hold::Postpone(wait) => Some(wait),
            // The attempt dead-letters it at once: never postponed for memory.
            Hold::DeadLetter { .. } => None,
            Hold::Deliver => self.overflow_wait(&job),
        };
        if let Some(wait) = wait {
            let due = now.saturating_add(ms(wait));
            if let Some(lane) = job.lane.clone() {
                self.lanes
                    .note_pending(job.source.partition, job.source.epoch, lane, job.seq, due);
            }
            self.spawn_postpone(job, due);
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
        match self.lanes.admit(place, lane, seq, job, origin, now) {
            Admit::Go(job) => self.spawn_delivery(job),
            Admit::Parked => {}
            Admit::Postpone(job, due) => self.spawn_postpone(job, due),
            Admit::Duplicate => self.partitions.settle(&source),
        }
    }

    /// How long to postpone a deliverable job whose endpoint holds more than its share of
    /// memory and drains too slowly to clear it within the postponement; `None` to go on.
    fn overflow_wait(&self, job: &Job) -> Option<Duration> {
        let held = job.endpoint.in_memory.load(Ordering::Relaxed);
        let total = self.in_memory.jobs.load(Ordering::Relaxed);
        (self
            .wiring
            .pressure
            .overflows(held, total, self.wiring.registry.len())
            && job
                .endpoint
                .drains_slower_than(held, OVERFLOW_POSTPONE, std::time::Instant::now()))
        .then_some(OVERFLOW_POSTPONE)
    }

    fn spawn_delivery(&mut self, job: Job) {
        if self.stopping {
            return; // not settled: delivered again after the restart
        }
        self.partitions.started(&job.source);
        self.tasks
            .spawn(attempt::deliver(job, self.wiring.shared.clone()));
    }

    fn spawn_postpone(&mut self, job: Job, due: i64) {
        self.partitions.started(&job.source);
        self.tasks
            .spawn(attempt::postpone(job, due, self.wiring.shared.clone()));
    }

    fn spawn_forward(&mut self, out: Out, source: Source) {
        self.partitions.started(&source);
        self.tasks
            .spawn(attempt::forward(out, source, self.wiring.shared.clone()));
    }

    fn on_completion(&mut self, c: Completion) {
        self.partitions.ended(&c.source);
        if c.done != Done::Abandoned {
            self.partitions.settle(&c.source);
        }
        if self.last_commit.elapsed() >= COMMIT_GAP {
            self.commit(CommitMode::Async);
        }
        if self.revoking.is_some() {
            self.finish_revoke(false);
        }
        if let (Some(hash), Some(seen)) = (c.replay_done, self.dedup.get_mut(&c.source.partition)) {
            let now_s = u64::try_from(jiff::Timestamp::now().as_second()).unwrap_or(0);
            seen.check(hash, c.source.offset, now_s);
        }
        // Consume again as soon as memory has room, not at the next tick.
        if self.backpressure && self.wiring.pressure.relieved(self.load()) {
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
                    self.spawn_postpone(job, due);
                }
            }
            Done::Withdrawn => self.lanes.forget_pending(partition, epoch, &lane, seq),
            Done::Postponed | Done::Abandoned => {}
        }
    }

    fn on_message(&mut self, msg: Result<BorrowedMessage<'_>, KafkaError>) {
        let msg = match msg {
            Ok(m) => m.detach(),
            Err(e) => {
                warn!(error = %e, "Kafka consumer error");
                return;
            }
        };
        let tier = self.wiring.shared.writer.tiers.index_of(msg.topic());
        let tp = self.partitions.hold(msg, tier);
        self.drain(&tp);
    }

    fn drain_all(&mut self) {
        for tp in self.partitions.tps() {
            self.drain(&tp);
        }
    }

    /// Handles the held records of a partition that may go now, in order.
    fn drain(&mut self, tp: &Tp) {
        let now = now_ms();
        while !(self.backpressure || self.stopping) {
            let Some(ready) = self
                .partitions
                .next(tp, &self.wiring.shared.writer.tiers, now)
            else {
                break;
            };
            self.on_record(ready);
            // Back-pressure as soon as memory is full, not at the next tick:
            // a backlog is read far faster than it is delivered, and a second
            // of reading ahead pushed most of it through the overflow path
            // (a retry-topic write and read per event; see BENCHMARKS.md).
            if self.wiring.pressure.over(self.load()) {
                self.check_backpressure();
            }
        }
        self.sync_pause(tp);
    }

    /// Whether the record at `source` was settled before this assignment read it (above the
    /// committed position, by the commit's metadata): it is neither delivered nor remembered
    /// again. What is left to skip is forgotten once the partition is read past it.
    fn settled_before(&mut self, source: &Source) -> bool {
        if self.settled.is_empty() {
            return false;
        }
        let tp = (source.topic.to_string(), source.partition);
        let Some(settled) = self.settled.get(&tp) else {
            return false;
        };
        let skip = settled.contains(source.offset);
        if settled.exhausted_at(source.offset + 1) {
            self.settled.remove(&tp);
        }
        skip
    }

    /// Turns a record into its [`Fate`], tracks it and sends it on its way.
    fn on_record(&mut self, ready: Ready) {
        let Ready {
            msg,
            source,
            tier,
            step,
        } = ready;
        let settled_before = self.settled_before(&source);
        let fate = {
            let cx = Context {
                registry: &self.wiring.registry,
                limits: &self.wiring.limits,
                shared: &self.wiring.shared,
                in_memory: &self.in_memory,
                replays: &self.wiring.replays,
            };
            match tier {
                // Left out of the retry scan, so no lane holds it.
                _ if settled_before => {
                    cx.shared.metrics.record("settled_before");
                    Fate::Dropped { lane: None, seq: 0 }
                }
                None => {
                    records::from_event(&msg, &source, &cx, self.dedup.get_mut(&source.partition))
                }
                Some(tier) => records::from_retry(
                    &msg,
                    &source,
                    tier,
                    step,
                    &cx,
                    self.dedup.get(&source.partition),
                ),
            }
        };
        match fate {
            Fate::Jobs {
                jobs,
                origin,
                remember,
            } => {
                // Remembering the id is part of settling the record: its offset is committed
                // only once the dedup topic has it.
                self.partitions
                    .track(&source, jobs.len() + usize::from(remember.is_some()));
                if let Some(out) = remember {
                    self.spawn_forward(out, source.clone());
                }
                for job in jobs {
                    self.route(job, origin);
                }
            }
            Fate::Dropped { lane, seq } => {
                self.partitions.track(&source, 0);
                if let Some(lane) = lane {
                    self.lanes
                        .forget_pending(source.partition, source.epoch, &lane, seq);
                }
            }
            Fate::Forward(out) => {
                self.partitions.track(&source, 1);
                self.spawn_forward(out, source);
            }
        }
    }

    fn on_rebalance(&mut self, r: Rebalanced) {
        let events_topic = self.wiring.shared.writer.events_topic.clone();
        match r {
            Rebalanced::Revoking(tps) => {
                self.partitions.start_revoke(&tps);
                for tp in &tps {
                    if tp.0 == events_topic {
                        // Parked jobs were never sent: the next owner reads them again.
                        self.lanes.revoke(tp.1);
                    }
                    self.sync_pause(tp);
                }
                self.revoking = Some((tps, Instant::now() + REVOKE_GRACE));
                self.finish_revoke(false);
            }
            Rebalanced::Revoked(tps) => self.forget(&tps),
            Rebalanced::Assigned(tps) => {
                let (epoch, retry_tps) = self
                    .partitions
                    .assign(&tps, &self.wiring.shared.writer.tiers);
                for tp in tps.iter().filter(|tp| tp.0 == events_topic) {
                    self.lanes.assign(tp.1, epoch);
                }
                let events: Vec<i32> = tps
                    .iter()
                    .filter(|tp| tp.0 == events_topic)
                    .map(|tp| tp.1)
                    .collect();
                let (consumer, config, tx) = (
                    self.wiring.consumer.clone(),
                    self.wiring.scanner.clone(),
                    self.scans.0.clone(),
                );
                let (dedup_topic, window) = (
                    self.wiring.shared.writer.dedup_topic.clone(),
                    self.wiring.dedup_window,
                );
                tokio::task::spawn_blocking(move || {
                    let settled = consumer::settled_above(&consumer, &tps);
                    let empty = HashMap::new();
                    let result = consumer::scan(
                        &config,
                        &consumer,
                        &retry_tps,
                        settled.as_ref().unwrap_or(&empty),
                        SCAN_DEADLINE,
                    );
                    let seen = match &dedup_topic {
                        Some(topic) => {
                            consumer::restore_seen(&config, topic, &events, window, SCAN_DEADLINE)
                        }
                        None => Ok(Vec::new()),
                    };
                    let _ = tx.send(ScanDone {
                        epoch,
                        result,
                        seen,
                        settled,
                    });
                });
            }
        }
    }

    fn on_scan(&mut self, s: ScanDone) {
        if s.epoch != self.partitions.epoch() {
            return;
        }
        match s.result {
            Ok(found) => {
                let count = found.len();
                for r in found {
                    let per_key = self
                        .wiring
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
        match s.seen {
            Ok(seen) => {
                let ids: usize = seen.iter().map(|(_, s)| s.len()).sum();
                if self.wiring.shared.writer.dedup_topic.is_some() {
                    info!(
                        partitions = seen.len(),
                        ids, "event ids seen within the dedup window restored"
                    );
                }
                self.dedup.extend(seen);
            }
            Err(e) => {
                // Dedup goes on from what this process sees; duplicates of what came before
                // the restart may be delivered (at least once still holds).
                warn!(error = %e, "cannot restore the event ids seen; duplicates of earlier events may be delivered");
                let events_topic = self.wiring.shared.writer.events_topic.clone();
                for tp in self
                    .partitions
                    .tps()
                    .into_iter()
                    .filter(|tp| tp.0 == events_topic)
                {
                    self.dedup
                        .entry(tp.1)
                        .or_insert_with(|| Seen::new(self.wiring.dedup_window));
                }
            }
        }
        match s.settled {
            Ok(settled) => {
                let offsets: u64 = settled.values().map(SettledAbove::len).sum();
                if offsets > 0 {
                    info!(
                        partitions = settled.len(),
                        offsets, "offsets settled above the committed positions are skipped"
                    );
                }
                self.settled.extend(settled);
            }
            // Everything from the committed positions on is delivered (again): at least once.
            Err(e) => warn!(error = %e, "cannot read the committed positions' metadata"),
        }
        self.partitions.scanned(s.epoch);
        self.drain_all();
    }

    /// Gives the partitions of the revocation under way up once no request of theirs is in
    /// flight any more, or its grace is over, or `now`: commits what they settled, then
    /// [`consumer::release`]s them.
    fn finish_revoke(&mut self, now: bool) {
        let Some((_, deadline)) = &self.revoking else {
            return;
        };
        let settled = self.partitions.revocation_settled();
        if !(now || settled || Instant::now() >= *deadline) {
            return;
        }
        let Some((tps, _)) = self.revoking.take() else {
            return;
        };
        if !settled {
            warn!(
                partitions = tps.len(),
                "requests still in flight when the revocation's grace ended; they may be delivered again by the next owner"
            );
        }
        self.commit(CommitMode::Sync);
        if let Err(e) = consumer::release(self.wiring.consumer.as_ref(), &tps) {
            warn!(error = %e, "cannot give the revoked partitions up");
        }
        info!(partitions = tps.len(), settled, "partitions revoked");
        self.forget(&tps);
    }

    /// Forgets revoked partitions.
    fn forget(&mut self, tps: &[Tp]) {
        let events_topic = &self.wiring.shared.writer.events_topic;
        for tp in tps {
            self.partitions.revoke(tp);
            self.settled.remove(tp);
            self.wiring
                .committable
                .lock()
                .expect("committable lock")
                .remove(tp);
            if &tp.0 == events_topic {
                self.lanes.revoke(tp.1);
                self.dedup.remove(&tp.1);
            }
        }
    }

    /// Pauses or resumes `tp` as [`Partitions::pause_change`] says.
    fn sync_pause(&mut self, tp: &Tp) {
        let Some(want) = self.partitions.pause_change(tp, self.stopping) else {
            return;
        };
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&tp.0, tp.1);
        let result = if want {
            self.wiring.consumer.pause(&tpl)
        } else {
            self.wiring.consumer.resume(&tpl)
        };
        match result {
            Ok(()) => self.partitions.set_paused(tp, want),
            Err(e) => debug!(error = %e, topic = %tp.0, partition = tp.1, "pause/resume"),
        }
    }

    /// What the deliveries in memory hold now.
    fn load(&self) -> Load {
        Load {
            jobs: self.in_memory.jobs.load(Ordering::Relaxed),
            bytes: self.in_memory.bytes.load(Ordering::Relaxed),
        }
    }

    fn check_backpressure(&mut self) {
        let load = self.load();
        self.wiring
            .shared
            .metrics
            .held_bytes
            .set(i64::try_from(load.bytes).unwrap_or(i64::MAX));
        let was = self.backpressure;
        self.backpressure = self.wiring.pressure.next(was, load);
        if was != self.backpressure {
            // Debug: while a backlog drains this flips several times a second.
            debug!(
                in_memory = load.jobs,
                bytes = load.bytes,
                paused = self.backpressure,
                "back-pressure"
            );
            let metrics = &self.wiring.shared.metrics;
            metrics.backpressure.set(i64::from(self.backpressure));
            if self.backpressure {
                metrics.backpressure_engaged.inc();
            }
            for tp in self.partitions.tps() {
                self.sync_pause(&tp);
            }
        }
    }

    fn commit(&mut self, mode: CommitMode) {
        let positions = self.partitions.take_commits();
        if positions.is_empty() {
            return;
        }
        self.last_commit = Instant::now();
        let tpl = match consumer::commit_list(positions.iter().map(|(tp, c)| (tp, c))) {
            Ok(tpl) => tpl,
            Err(e) => {
                warn!(error = %e, "cannot list the positions to commit");
                return;
            }
        };
        self.wiring
            .committable
            .lock()
            .expect("committable lock")
            .extend(positions);
        if let Err(e) = self.wiring.consumer.commit(&tpl, mode) {
            warn!(error = %e, "commit failed; retried with the next one");
        }
    }

    async fn shutdown(mut self) {
        info!(
            running = self.tasks.len(),
            "stopping: no new records; finishing running deliveries"
        );
        self.stopping = true;
        self.wiring.consumer.context().stop_deferring();
        self.wiring.health.set_stopping();
        self.wiring.shared.stop.cancel();
        for tp in self.partitions.tps() {
            self.sync_pause(&tp);
        }
        let deadline = Instant::now() + self.wiring.grace;
        while !self.tasks.is_empty() {
            tokio::select! {
                Some(c) = self.wiring.completions.recv() => self.on_completion(c),
                Some(_) = self.tasks.join_next() => {}
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        while let Ok(c) = self.wiring.completions.try_recv() {
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
        self.finish_revoke(true);
        let producer = self.wiring.shared.writer.producer.clone();
        let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10))).await;
        self.wiring.consumer.unsubscribe();
        self.leave().await;
        info!("pipeline stopped");
    }

    /// Serves the revocation that unsubscribing starts (revocations are served while the
    /// consumer is polled), after which librdkafka sends LeaveGroup: the partitions go to the
    /// other replicas at once. Without it the process would close its consumer still assigned,
    /// and a static member sends no LeaveGroup when it closes (KIP-345), so its partitions
    /// would wait for its session to time out. Records read meanwhile are dropped: they were
    /// never tracked, and whoever reads the partitions next reads them.
    async fn leave(&self) {
        let consumer = &self.wiring.consumer;
        let deadline = Instant::now() + LEAVE_WAIT;
        let mut left_at = None;
        while Instant::now() < deadline {
            let assigned = consumer.assignment().map_or(0, |a| a.count());
            if assigned == 0 {
                // LeaveGroup goes out from librdkafka's thread once the unassignment is done.
                let at = *left_at.get_or_insert_with(Instant::now);
                if at.elapsed() >= LEAVE_SEND {
                    return;
                }
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), consumer.recv()).await;
        }
        warn!(
            wait = ?LEAVE_WAIT,
            "still assigned after unsubscribing; the partitions wait for the session timeout"
        );
    }
}

//! Runs `WebhookReplay`s: the reconciler starts one runner per replay (by uid) on the leading
//! replica; the runner fixes the source range, queues the matching events for delivery and
//! counts their outcomes into the status until every matched event has ended.
//!
//! # How a runner works
//! - **Source range.** At the start, each source partition's range is fixed in the status:
//!   the dead-letter topic from its low to its high watermark, or the events topic between the
//!   offsets of `from` and `to` (Kafka's time index). Later records are not part of the replay.
//! - **Queueing** ([`inject`], a blocking thread). The range is read in order per partition;
//!   what [`Filter`] accepts, each event id once per partition, is written as a retry record due
//!   now to the first retry tier, with [`ReplayTag`] headers, on the events partition it came
//!   from and with its key (so its delivery keeps per-key order). Records go in Kafka
//!   transactions of up to [`CHUNK`] records, each committing the source position with it
//!   (`send_offsets_to_transaction`, group `hookline-replay.<uid>`): a runner that restarts —
//!   after a controller crash or a new leader — reads the range again from its start to
//!   recount (`matched` is exact) but writes only past the committed position, so no event is
//!   queued twice. A second runner of the same replay fences the first (same transactional id).
//! - **Counting** ([`tally`], a blocking thread). The dispatcher writes each replayed delivery's
//!   final attempt record (carrying the replay's uid) before it settles the delivery; the
//!   runner reads the tenant's attempts topic from the replay's start and counts each event id
//!   once ([`Tally`]).
//! - **Status** every second; `Succeeded` when every matched event was delivered, `Failed` when
//!   some failed again (dead-lettered again), the `Webhook` was deleted, or the source cannot be
//!   read. Deleting the `WebhookReplay` stops the runner at its next status write (the
//!   dispatcher drops the replay's deliveries not yet started).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hookline_core::dedup::{IdHash, id_hash};
use hookline_core::envelope::{self, Limits};
use hookline_core::matching::Matcher;
use hookline_core::naming;
use hookline_core::ratelimit::{RateLimiter, default_burst};
use hookline_core::replay::{End, Filter, ReplayTag, Tally};
use hookline_core::retry_topics::{AttemptRecord, RetryMeta, headers as dl};
use hookline_crds::{
    PartitionRange, REPLAY_COMPLETE, REPLAY_PROGRESSING, ReplayPhase, Webhook, WebhookReplay,
    WebhookReplayStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::context::Context;
use crate::error::Error;

/// Records per transaction at most.
pub const CHUNK: usize = 10_000;
/// A transaction is committed at least this often while records flow.
const CHUNK_TIME: Duration = Duration::from_millis(500);
/// Default pace when the spec sets none.
pub const DEFAULT_RATE: f64 = 1_000.0;
/// How long Kafka calls may take before the runner gives up and restarts them.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);
const FIELD_MANAGER: &str = "hookline.dev/controller";

/// The reconciler's context: the controller's, and the runners by replay uid.
pub struct ReplayContext {
    /// The controller's context.
    pub ctx: Arc<Context>,
    runners: Mutex<HashMap<String, CancellationToken>>,
}

impl ReplayContext {
    /// No runner yet.
    pub fn new(ctx: Arc<Context>) -> ReplayContext {
        ReplayContext {
            ctx,
            runners: Mutex::new(HashMap::new()),
        }
    }

    fn forget(&self, uid: &str) {
        self.runners.lock().expect("runners").remove(uid);
    }
}

impl Drop for ReplayContext {
    fn drop(&mut self) {
        for stop in self.runners.lock().expect("runners").values() {
            stop.cancel();
        }
    }
}

/// Starts a runner for a replay that has none and has not ended.
///
/// # Errors
/// When its `Webhook` cannot be looked up.
pub async fn reconcile(r: Arc<WebhookReplay>, rc: Arc<ReplayContext>) -> Result<Action, Error> {
    if r.status
        .as_ref()
        .and_then(|s| s.phase)
        .is_some_and(ReplayPhase::is_final)
        || r.meta().deletion_timestamp.is_some()
    {
        return Ok(Action::await_change());
    }
    let (Some(ns), Some(uid)) = (r.namespace(), r.uid()) else {
        return Ok(Action::await_change());
    };
    if rc.runners.lock().expect("runners").contains_key(&uid) {
        return Ok(Action::requeue(Duration::from_secs(60)));
    }
    let wanted = ObjectRef::<Webhook>::new(&r.spec.webhook_ref.name).within(&ns);
    let Some(webhook) = rc.ctx.webhooks.get(&wanted) else {
        let api = Api::<Webhook>::namespaced(rc.ctx.client.clone(), &ns);
        if let Some(found) = api.get_opt(&r.spec.webhook_ref.name).await? {
            if !rc.ctx.settings.serves(found.labels()) {
                // Another Hookline instance's Webhook: its controller runs this replay.
                return Ok(Action::await_change());
            }
            // Ours, but not in the store yet: it is still being filled after a (re)start, and
            // waiting for a change here would leave a replay under way unresumed.
            return Ok(Action::requeue(Duration::from_secs(2)));
        }
        let status = WebhookReplayStatus {
            phase: Some(ReplayPhase::Pending),
            conditions: vec![condition(
                REPLAY_COMPLETE,
                "False",
                "WebhookNotFound",
                &format!(
                    "Webhook {:?} does not exist in namespace {ns}; the replay starts when it does",
                    r.spec.webhook_ref.name
                ),
            )],
            ..WebhookReplayStatus::default()
        };
        patch_status(&rc.ctx, &r, &status).await?;
        return Ok(Action::requeue(Duration::from_secs(10)));
    };
    let stop = CancellationToken::new();
    rc.runners
        .lock()
        .expect("runners")
        .insert(uid.clone(), stop.clone());
    let rc2 = rc.clone();
    tokio::spawn(async move {
        let name = r.name_any();
        if let Err(e) = run(&rc2.ctx, &r, &webhook, &stop).await {
            warn!(namespace = %ns, replay = %name, error = %e, "replay runner stopped; it resumes at the next reconcile");
        }
        rc2.forget(&uid);
    });
    Ok(Action::requeue(Duration::from_secs(60)))
}

/// Retries a failed reconcile after a pause.
pub fn error_policy(r: Arc<WebhookReplay>, e: &Error, _rc: Arc<ReplayContext>) -> Action {
    warn!(replay = %r.name_any(), error = %e, "replay reconcile failed");
    Action::requeue(Duration::from_secs(10))
}

fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        last_transition_time: Time(jiff::Timestamp::now()),
        observed_generation: None,
    }
}

/// Writes `status` (merge patch, guarded by the replay's uid so a re-created namesake is never
/// written); `Ok(false)` when the replay is gone.
async fn patch_status(
    ctx: &Context,
    r: &WebhookReplay,
    status: &WebhookReplayStatus,
) -> Result<bool, Error> {
    let api =
        Api::<WebhookReplay>::namespaced(ctx.client.clone(), &r.namespace().unwrap_or_default());
    let patch = json!({
        "metadata": {"uid": r.uid()},
        "status": status,
    });
    match api
        .patch_status(
            &r.name_any(),
            &PatchParams {
                field_manager: Some(FIELD_MANAGER.to_owned()),
                ..PatchParams::default()
            },
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// What the two threads report.
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

fn kafka_config(settings: hookline_core::kafka::Settings) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in settings {
        c.set(k, v);
    }
    c
}

fn base(ctx: &Context) -> hookline_core::kafka::Settings {
    hookline_core::kafka::base(&ctx.settings.kafka_bootstrap, std::env::vars())
}

/// The source of a replay: its topic and what it takes.
fn source(r: &WebhookReplay, webhook: &Webhook, ns: &str) -> Result<(String, Filter), String> {
    let topics = naming::topics(ns);
    let patterns = |p: &[String]| -> Result<Option<Matcher>, String> {
        if p.is_empty() {
            Ok(None)
        } else {
            Matcher::new(p).map(Some).map_err(|e| e.to_string())
        }
    };
    let mut filter = Filter {
        webhook: r.spec.webhook_ref.name.clone(),
        reasons: Vec::new(),
        event_types: patterns(&r.spec.event_types)?,
        subscribed: None,
        ids: r.spec.event_ids.clone(),
        window_ms: None,
    };
    if let Some(d) = &r.spec.source.dead_letters {
        filter.reasons = d.reasons.clone();
        Ok((topics.dead_letter, filter))
    } else if let Some(t) = &r.spec.source.time_range {
        filter.subscribed = patterns(&webhook.spec.event_types)?;
        filter.window_ms = Some((t.from.0.as_millisecond(), t.to.0.as_millisecond()));
        Ok((topics.events, filter))
    } else {
        Err("source sets neither deadLetters nor timeRange".to_owned())
    }
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

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Kafka(e.to_string()))?
        .map_err(Error::Kafka)
}

async fn run(
    ctx: &Arc<Context>,
    r: &WebhookReplay,
    webhook: &Webhook,
    stop: &CancellationToken,
) -> Result<(), Error> {
    let ns = r.namespace().unwrap_or_default();
    let uid = r.uid().unwrap_or_default();
    let tag = ReplayTag {
        name: r.name_any(),
        uid: uid.clone(),
    };
    let mut status = r.status.clone().unwrap_or_default();
    let (topic, filter) = match source(r, webhook, &ns) {
        Ok(s) => s,
        Err(e) => return finish(ctx, r, status, "InvalidSpec", &e).await,
    };
    if status.source_ranges.is_empty() || status.start_time.is_none() {
        let config = kafka_config(hookline_core::kafka::replay_reader(
            &base(ctx),
            &format!("hookline-replay.{uid}"),
        ));
        let (t, w) = (topic.clone(), filter.window_ms);
        let ranges = blocking(move || ranges(&config, &t, w)).await?;
        status.source_topic = Some(topic.clone());
        status.total = Some(ranges.iter().map(|r| r.end - r.start).sum());
        status.source_ranges = ranges;
        status.start_time = Some(Time(jiff::Timestamp::now()));
        status.phase = Some(ReplayPhase::Running);
        status.conditions = vec![
            condition(
                REPLAY_COMPLETE,
                "False",
                "Running",
                "reading the source and re-delivering",
            ),
            condition(
                REPLAY_PROGRESSING,
                "True",
                "Started",
                &format!("replaying from {topic}"),
            ),
        ];
        if !patch_status(ctx, r, &status).await? {
            return Ok(());
        }
        ctx.event(
            &r.object_ref(&()),
            EventType::Normal,
            "Started",
            format!(
                "replaying {} records of {topic} to Webhook {}",
                status.total.unwrap_or(0),
                r.spec.webhook_ref.name
            ),
        )
        .await;
        info!(namespace = %ns, replay = %tag.name, topic = %topic, total = status.total, "replay started");
    }
    let progress = Arc::new(Progress::default());
    let started_ms = status
        .start_time
        .as_ref()
        .map_or(0, |t| t.0.as_millisecond());
    let tally_thread = {
        let config = kafka_config(hookline_core::kafka::replay_reader(
            &base(ctx),
            &format!("hookline-replay-tally.{uid}"),
        ));
        let (attempts, uid, p) = (naming::topics(&ns).attempts, uid.clone(), progress.clone());
        tokio::task::spawn_blocking(move || {
            tally(&config, &attempts, started_ms - 60_000, &uid, &p)
        })
    };
    let inject_thread = {
        let reader = kafka_config(hookline_core::kafka::replay_reader(
            &base(ctx),
            &format!("hookline-replay.{uid}"),
        ));
        let writer = kafka_config(hookline_core::kafka::replay_writer(
            &base(ctx),
            &format!("hookline-replay.{uid}"),
        ));
        let job = Injection {
            topic,
            ranges: status.source_ranges.clone(),
            filter,
            tag,
            retry_topic: naming::topics(&ns).retry[0].1.clone(),
            rate: r
                .spec
                .rate_limit
                .as_ref()
                .map_or(DEFAULT_RATE, |l| f64::from(l.per_second.max(1))),
        };
        let p = progress.clone();
        tokio::task::spawn_blocking(move || inject(&reader, &writer, &job, &p))
    };
    let outcome = watch(ctx, r, status, &progress, inject_thread, stop).await;
    progress.stop.store(true, Ordering::Relaxed);
    let _ = tally_thread.await;
    outcome
}

/// Writes the status every second until the replay ends, is deleted, or `stop`.
async fn watch(
    ctx: &Arc<Context>,
    r: &WebhookReplay,
    mut status: WebhookReplayStatus,
    progress: &Progress,
    mut inject_thread: tokio::task::JoinHandle<Result<(), String>>,
    stop: &CancellationToken,
) -> Result<(), Error> {
    let ns = r.namespace().unwrap_or_default();
    let mut injecting = true;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            _ = tick.tick() => {}
            done = &mut inject_thread, if injecting => {
                injecting = false;
                match done {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        progress.stop.store(true, Ordering::Relaxed);
                        return Err(Error::Kafka(e));
                    }
                    Err(e) => return Err(Error::Kafka(e.to_string())),
                }
            }
        }
        let load = |a: &AtomicI64| Some(a.load(Ordering::Relaxed));
        status.scanned = load(&progress.scanned);
        status.matched = load(&progress.matched);
        status.delivered = load(&progress.delivered);
        status.failed = load(&progress.failed);
        let wanted = ObjectRef::<Webhook>::new(&r.spec.webhook_ref.name).within(&ns);
        if ctx.webhooks.get(&wanted).is_none() {
            return finish(
                ctx,
                r,
                status,
                "WebhookDeleted",
                "the Webhook was deleted during the replay",
            )
            .await;
        }
        let queued_all = progress.queued_all.load(Ordering::Relaxed);
        let matched = progress.matched.load(Ordering::Relaxed);
        let ended =
            progress.delivered.load(Ordering::Relaxed) + progress.failed.load(Ordering::Relaxed);
        if queued_all && ended >= matched {
            let failed = progress.failed.load(Ordering::Relaxed);
            let (reason, message) = if matched == 0 {
                (
                    "NothingMatched",
                    "no event in the source matched".to_owned(),
                )
            } else if failed == 0 {
                (
                    "Succeeded",
                    format!("all {matched} matched events were delivered again"),
                )
            } else {
                (
                    "EventsFailed",
                    format!(
                        "{failed} of {matched} matched events failed again and were dead-lettered again"
                    ),
                )
            };
            return finish(ctx, r, status, reason, &message).await;
        }
        if !patch_status(ctx, r, &status).await? {
            info!(namespace = %ns, replay = %r.name_any(), "replay deleted: cancelled");
            return Ok(());
        }
    }
}

/// Ends the replay with `reason` (Succeeded and NothingMatched succeed; anything else fails).
async fn finish(
    ctx: &Context,
    r: &WebhookReplay,
    mut status: WebhookReplayStatus,
    reason: &str,
    message: &str,
) -> Result<(), Error> {
    let ok = matches!(reason, "Succeeded" | "NothingMatched");
    status.phase = Some(if ok {
        ReplayPhase::Succeeded
    } else {
        ReplayPhase::Failed
    });
    status.completion_time = Some(Time(jiff::Timestamp::now()));
    status.conditions = vec![
        condition(REPLAY_COMPLETE, "True", reason, message),
        condition(REPLAY_PROGRESSING, "False", reason, message),
    ];
    if patch_status(ctx, r, &status).await? {
        ctx.event(
            &r.object_ref(&()),
            if ok {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason,
            message.to_owned(),
        )
        .await;
        info!(namespace = %r.namespace().unwrap_or_default(), replay = %r.name_any(), reason, message, "replay ended");
    }
    Ok(())
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

//! The delivery side of the publishing benchmark: a tenant whose only `Webhook` is labelled for
//! another controller instance (`hookline.dev/instance`), so the chart's controller leaves it
//! alone and runs no (debug) dispatcher for it; its topics are made here as the controller would
//! make them (the dedup topic compacted), and a release `hookline-dispatcher` of the benchmark's
//! own reads them and delivers to the bench sink. Events flow `POST` (or a raw producer) →
//! `hookline.<ns>.events` → dispatcher → sink, which records each first arrival and its latency
//! from the `"t"` in the event ([`end_to_end`]). [`drain`] is the duplicate-suppression A/B: a
//! backlog produced straight to run topics of its own, drained by a dispatcher with or without
//! `--dedup-topic`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hookline_bench::cluster::{self, Env, RunTopics, SIGNING_SECRET};
use hookline_bench::dispatcher::{Counters, Dispatcher, Options};
use hookline_bench::procstat::{CpuSplit, Snapshot, Watched};
use hookline_bench::sink::{Recorder, Sink};
use hookline_bench::stats::{self, Latency};
use hookline_core::naming;
use hookline_crds::Webhook;
use kube::api::PostParams;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::FutureProducer;
use serde::Serialize;
use serde_json::json;

use crate::load::{self, Done, Sender};

/// The label that keeps the chart's controller (the unnamed instance) away from a `Webhook`.
const INSTANCE_LABEL: &str = "hookline.dev/instance";

/// Creates `names` with `partitions` partitions; `compacted` ones as the controller makes a
/// dedup topic (`cleanup.policy=compact,delete`).
///
/// # Errors
/// When Kafka refuses one.
pub async fn create_topics(
    env: &Env,
    names: &[String],
    compacted: &[String],
    partitions: i32,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &env.kafka_bootstrap)
        .create()?;
    let new: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| {
            let t = NewTopic::new(n, partitions, TopicReplication::Fixed(1));
            if compacted.contains(n) {
                t.set("cleanup.policy", "compact,delete")
                    .set("retention.ms", "90000000")
            } else {
                t
            }
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in admin.create_topics(&new, &opts).await? {
        if let Err((topic, code)) = r {
            anyhow::bail!("creating topic {topic}: {code}");
        }
    }
    Ok(())
}

/// The tenant's topics as a bench dispatcher is told them, with a consumer group of its own.
pub fn tenant_topics(ns: &str, group: &str) -> RunTopics {
    let t = naming::topics(ns);
    RunTopics {
        events: t.events,
        retry: t
            .retry
            .iter()
            .zip(naming::RETRY_TIERS)
            .map(|((_, topic), (_, tier))| ((*tier).to_owned(), topic.clone()))
            .collect(),
        dead_letter: t.dead_letter,
        attempts: t.attempts,
        group: group.to_owned(),
    }
}

/// Creates `Webhook` `bench` (every `bench.*` event → `url`, the shared signing Secret),
/// labelled for instance `instance`.
///
/// # Errors
/// When the API server refuses.
pub async fn create_webhook(t: &cluster::Tenant, url: &str, instance: &str) -> anyhow::Result<()> {
    let wh: Webhook = serde_json::from_value(json!({
        "apiVersion": "hookline.dev/v1alpha1", "kind": "Webhook",
        "metadata": {"name": "bench", "labels": {INSTANCE_LABEL: instance}},
        "spec": {"url": url, "eventTypes": ["bench.*"], "secretRef": {"name": SIGNING_SECRET}},
    }))?;
    t.inner.api.create(&PostParams::default(), &wh).await?;
    Ok(())
}

/// What the machinery of a delivery run needs.
pub struct Ctx<'a> {
    /// The environment.
    pub env: &'a Env,
    /// The tenant namespace (with `Webhook` `bench`).
    pub ns: &'a str,
    /// The sink the `Webhook` points at.
    pub sink: &'a Sink,
    /// The dispatcher binary.
    pub bin: &'a std::path::Path,
    /// Where dispatcher logs go.
    pub logs: &'a std::path::Path,
    /// Processes to watch besides the dispatcher.
    pub watched: &'a Watched,
}

impl Ctx<'_> {
    /// Starts a release dispatcher on `topics` (with `dedup`, if any) and waits until ready;
    /// also returns how long that took.
    ///
    /// # Errors
    /// When it does not get ready within a minute.
    pub async fn dispatcher(
        &self,
        topics: &RunTopics,
        dedup: Option<&str>,
        log: &str,
    ) -> anyhow::Result<(Dispatcher, f64)> {
        let opts = Options {
            bin: self.bin.to_owned(),
            namespace: self.ns.to_owned(),
            topics: topics.clone(),
            env: Vec::new(),
            log: self.logs.join(format!("{log}.log")),
        };
        let t0 = Instant::now();
        let mut d = Dispatcher::start_with_dedup(self.env, &opts, dedup)?;
        d.wait_ready(Duration::from_secs(60)).await?;
        Ok((d, t0.elapsed().as_secs_f64()))
    }

    fn watched_with(&self, d: &Dispatcher) -> Watched {
        let mut w = self.watched.clone();
        w.pids.push(("dispatcher".into(), d.pid));
        w
    }
}

/// Waits until `rec` has `n` first arrivals or `limit` passes.
pub async fn wait_for(rec: &Recorder, n: u64, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if rec.unique() >= n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rec.unique() >= n
}

/// One end-to-end run.
#[derive(Debug, Clone, Serialize)]
pub struct EndToEnd {
    /// `api` (POST → 202 → … → receiver) or `kafka` (raw producer → … → receiver).
    pub system: String,
    /// The sending side (POST → 202, or produce → ack, from the due time).
    pub sent: Done,
    /// First arrivals expected.
    pub expected: u64,
    /// First arrivals.
    pub delivered: u64,
    /// Repeated arrivals.
    pub duplicates: u64,
    /// Due time → first arrival at the receiver.
    pub e2e: Latency,
    /// CPU over the run.
    pub cpu: CpuSplit,
}

/// `n` events at `rate`/s through `sender` (whose prefix is `prefix`) into the tenant's events
/// topic and through the running dispatcher `d` to the sink.
pub async fn end_to_end<S: Sender>(
    ctx: &Ctx<'_>,
    d: &Dispatcher,
    system: &str,
    sender: Arc<S>,
    prefix: &str,
    rate: f64,
    n: usize,
) -> EndToEnd {
    let rec = Arc::new(Recorder::new(prefix, n, 1, true, 0));
    ctx.sink.set_recorder(rec.clone());
    let watched = ctx.watched_with(d);
    let a = Snapshot::take(&watched);
    let sent = load::open(sender, 0, n, rate, 2_000).await;
    wait_for(&rec, n as u64, Duration::from_secs(30)).await;
    let cpu = CpuSplit::between(&a, &Snapshot::take(&watched));
    EndToEnd {
        system: system.to_owned(),
        sent,
        expected: n as u64,
        delivered: rec.unique(),
        duplicates: rec.duplicates.load(std::sync::atomic::Ordering::Relaxed),
        e2e: stats::latency(rec.latencies()),
        cpu,
    }
}

/// One drain of the duplicate-suppression A/B.
#[derive(Debug, Clone, Serialize)]
pub struct Drain {
    /// Whether the dispatcher had `--dedup-topic`.
    pub dedup: bool,
    /// Events in the backlog.
    pub events: u64,
    /// First arrivals.
    pub delivered: u64,
    /// Sustained deliveries per second, 5–95 % window.
    pub rate: f64,
    /// Dispatcher start → ready.
    pub ready_s: f64,
    /// Ready → last delivery.
    pub drain_s: f64,
    /// Dispatcher CPU-ms per 1,000 deliveries (ready → last delivery).
    pub cpu_ms_per_1k: f64,
    /// CPU from ready to the last delivery.
    pub cpu: CpuSplit,
    /// The dispatcher's counters at the end.
    pub counters: Option<Counters>,
}

/// A backlog of `events` produced by `producer` to fresh run topics `run` (with a compacted
/// dedup topic), drained by a dispatcher with `--dedup-topic` when `dedup`, else without.
///
/// # Errors
/// When topics cannot be made or the dispatcher does not start.
pub async fn drain(
    ctx: &Ctx<'_>,
    producer: &FutureProducer,
    run: &str,
    events: usize,
    bytes: usize,
    dedup: bool,
) -> anyhow::Result<Drain> {
    let topics = RunTopics::new(ctx.ns, run);
    let dedup_topic = format!("hlb.{}.{run}.dedup", ctx.ns);
    let mut all = topics.all();
    all.push(dedup_topic.clone());
    create_topics(ctx.env, &all, std::slice::from_ref(&dedup_topic), 6).await?;
    let result = drain_inner(
        ctx,
        producer,
        run,
        &topics,
        &dedup_topic,
        events,
        bytes,
        dedup,
    )
    .await;
    hookline_tests::kafka::delete_topics(ctx.env, &all).await;
    result
}

#[allow(clippy::too_many_arguments)]
async fn drain_inner(
    ctx: &Ctx<'_>,
    producer: &FutureProducer,
    run: &str,
    topics: &RunTopics,
    dedup_topic: &str,
    events: usize,
    bytes: usize,
    dedup: bool,
) -> anyhow::Result<Drain> {
    use futures::StreamExt as _;
    let prefix = format!("{run}-e");
    let failed = futures::stream::iter(0..events)
        .map(|seq| {
            let mut v = Vec::with_capacity(bytes);
            load::event(&prefix, seq, hookline_bench::clock::now_us(), bytes, &mut v);
            let key = format!("{prefix}{seq}");
            let topic = topics.events.clone();
            async move {
                producer
                    .send(
                        rdkafka::producer::FutureRecord::<str, [u8]>::to(&topic)
                            .key(&key)
                            .payload(&v),
                        Duration::from_secs(60),
                    )
                    .await
                    .is_err()
            }
        })
        .buffer_unordered(5_000)
        .filter(|failed| std::future::ready(*failed))
        .count()
        .await;
    anyhow::ensure!(failed == 0, "{failed} backlog records were not produced");
    let rec = Arc::new(Recorder::new(&prefix, events, 1, false, 0));
    ctx.sink.set_recorder(rec.clone());
    let (d, ready_s) = ctx
        .dispatcher(topics, dedup.then_some(dedup_topic), run)
        .await?;
    let watched = ctx.watched_with(&d);
    let a = Snapshot::take(&watched);
    let t0 = Instant::now();
    wait_for(&rec, events as u64, Duration::from_secs(180)).await;
    let (b, drain_s) = (Snapshot::take(&watched), t0.elapsed().as_secs_f64());
    let counters = d.counters().await.ok();
    d.stop(Duration::from_secs(30)).await;
    let cpu = CpuSplit::between(&a, &b);
    let delivered = rec.unique();
    let w = stats::window(&rec.timeline(), delivered, 0.05, 0.95);
    Ok(Drain {
        dedup,
        events: events as u64,
        delivered,
        rate: w.rate,
        ready_s,
        drain_s,
        cpu_ms_per_1k: cpu.cpu_s("dispatcher") * 1e6 / (delivered.max(1) as f64),
        cpu,
        counters,
    })
}

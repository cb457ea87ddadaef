//! One run of a scenario, end to end: fresh run topics and consumer group ([`RunTopics`]), a
//! fresh request [`Log`] in the receiver, a release dispatcher started as replica
//! [`POD_A`] (its `POD_NAME`, as the Deployment's Pod would have it) and warmed up until every
//! events partition has delivered once; then `events` keyed events produced open-loop at
//! `rate` on a thread of their own while this task disturbs the consumer group on schedule:
//!
//! - **kill**: SIGKILL the replica at each `--kill-at` second and start it again at once with
//!   the same `POD_NAME`, as the kubelet restarts a container in its Pod;
//! - **scale**: start a second replica [`POD_B`] at `--scale-up-at` and SIGTERM it at
//!   `--scale-down-at`, as a Deployment scaled to 2 and back to 1.
//!
//! Then the drain (until every acknowledged event was answered 2xx, at most `--drain-s`), a
//! quiet period (`--quiet-s` without any request, so late duplicates are counted), and the
//! figures of [`crate::analysis`]. The producer records each event's partition from its
//! delivery report, so fail-over is measured per events partition.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hookline_bench::clock;
use hookline_bench::cluster::{Env, RunTopics};
use hookline_bench::dispatcher::{Counters, Dispatcher, Options};
use hookline_bench::procstat::{CpuSplit, Snapshot, Watched};
use hookline_bench::producer::{Shape, event, on_thread};
use hookline_bench::report::loadavg;
use hookline_bench::stats::{self, Latency};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rdkafka::ClientConfig;
use rdkafka::Message as _;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer,
};
use serde::Serialize;

use crate::Cli;
use crate::analysis::{self, Duplicates, Produced};
use crate::receiver::{Behaviour, Log, Receiver};

/// The `POD_NAME` of the replica that is killed (and of its restarts).
pub const POD_A: &str = "hookline-dispatcher-failover-a";
/// The `POD_NAME` of the replica the scale scenario adds and removes.
pub const POD_B: &str = "hookline-dispatcher-failover-b";

/// The two scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// SIGKILL and restart with the same `POD_NAME`, flaky receiver.
    Kill,
    /// A second replica added and removed, slow receiver.
    Scale,
}

impl Scenario {
    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Kill => "kill",
            Scenario::Scale => "scale",
        }
    }
}

/// What a run needs.
pub struct Ctx<'a> {
    /// The environment.
    pub env: &'a Env,
    /// The tenant namespace, with the `Webhook` to the receiver.
    pub ns: &'a str,
    /// The receiver.
    pub receiver: &'a Receiver,
    /// The dispatcher binary.
    pub bin: &'a Path,
    /// Where dispatcher logs go.
    pub logs: &'a Path,
    /// The settings.
    pub cli: &'a Cli,
    /// Kafka and this process, for the CPU figures.
    pub watched: &'a Watched,
}

/// One kill.
#[derive(Debug, Clone, Serialize)]
pub struct Kill {
    /// Seconds into production.
    pub at_s: f64,
    /// Per events partition: kill → first arrival of an event produced after the kill
    /// (`None`: no such event arrived).
    pub failover_s: Vec<Option<f64>>,
    /// The largest of them (`None` when a partition never came back).
    pub max_s: Option<f64>,
    /// Partitions consumed again within 10 s.
    pub within_10s: usize,
}

/// The producer's side.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Sent {
    /// Events handed to the producer.
    pub sent: usize,
    /// Events Kafka acknowledged.
    pub acked: u64,
    /// Events that failed.
    pub failed: u64,
    /// First send → last acknowledgement.
    pub elapsed_s: f64,
    /// How far behind its schedule the producer fell at worst, ms.
    pub max_lag_ms: f64,
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// `kill` or `scale`.
    pub scenario: Scenario,
    /// Run number, from 1.
    pub run: usize,
    /// Its id (topic and event id prefix).
    pub id: String,
    /// The producer.
    pub sent: Sent,
    /// Kill scenario: every kill.
    pub kills: Vec<Kill>,
    /// Kill scenario: the largest fail-over of any kill, s.
    pub failover_max_s: Option<f64>,
    /// Scale scenario: second replica start and SIGTERM, seconds into production.
    pub scale_s: Option<(f64, f64)>,
    /// Scale scenario: second replica start → `/readyz`, s.
    pub second_ready_s: Option<f64>,
    /// Requests for measured events.
    pub requests: u64,
    /// Of them, answered 500.
    pub failed_answers: u64,
    /// Requests with ids of no measured event of this run (warm-up events, strangers).
    pub foreign: u64,
    /// Events answered 2xx more than once.
    pub duplicates: Duplicates,
    /// Extra 2xx answers ÷ acknowledged events.
    pub duplicate_ratio: f64,
    /// Acknowledged events never answered 2xx.
    pub lost: u64,
    /// Production end → every acknowledged event answered 2xx (`None`: not within the bound).
    pub drained_s: Option<f64>,
    /// Per events partition: the longest time between two first arrivals, s.
    pub max_gap_s: Vec<f64>,
    /// Produce → first arrival.
    pub latency: Latency,
    /// CPU from the start of production to the end of the quiet period.
    pub cpu: CpuSplit,
    /// Load average before production.
    pub loadavg_before: String,
    /// Load average after the quiet period.
    pub loadavg_after: String,
    /// The last incarnation of replica A: its counters at the end.
    pub counters: Option<Counters>,
    /// Anything a reader should know.
    pub notes: Vec<String>,
}

impl Run {
    /// The largest of [`Run::max_gap_s`].
    pub fn max_gap(&self) -> f64 {
        self.max_gap_s.iter().copied().fold(0.0, f64::max)
    }
}

/// Counts acknowledgements and keeps each event's partition (opaque = sequence number).
struct Acks {
    partition: Vec<AtomicI32>,
    acked: AtomicU64,
    failed: AtomicU64,
}

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = usize;
    fn delivery(&self, result: &DeliveryResult<'_>, seq: usize) {
        match result {
            Ok(m) => {
                if let Some(p) = self.partition.get(seq) {
                    p.store(m.partition(), Ordering::Relaxed);
                }
                self.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// An `acks=all`, idempotent producer (as the library's, `linger.ms=0`) that remembers where
/// each event went.
struct Load {
    inner: ThreadedProducer<Acks>,
}

impl Load {
    fn new(bootstrap: &str, slots: usize) -> anyhow::Result<Load> {
        let acks = Acks {
            partition: (0..slots).map(|_| AtomicI32::new(-1)).collect(),
            acked: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        };
        let inner = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "0")
            .set("compression.type", "none")
            .set("message.timeout.ms", "60000")
            .create_with_context(acks)?;
        Ok(Load { inner })
    }

    /// Enqueues event `seq`, waiting up to 10 s while the local queue is full.
    fn send(
        &self,
        topic: &str,
        seq: usize,
        key: &str,
        value: &[u8],
        partition: Option<i32>,
    ) -> bool {
        let mut record = BaseRecord::<str, [u8], usize>::with_opaque_to(topic, seq)
            .key(key)
            .payload(value);
        if let Some(p) = partition {
            record = record.partition(p);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.inner.send(record) {
                Ok(()) => return true,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r))
                    if Instant::now() < deadline =>
                {
                    record = r;
                    std::thread::sleep(Duration::from_micros(500));
                }
                Err(_) => {
                    self.inner.context().failed.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
            }
        }
    }

    /// One warm-up event (`seq` from `n`) into each partition.
    fn warm_up(
        &self,
        topic: &str,
        shape: &Shape,
        n: usize,
        partitions: usize,
    ) -> anyhow::Result<()> {
        let mut buf = Vec::new();
        for p in 0..partitions {
            event(shape, n + p, clock::now_us(), &mut buf);
            let part = i32::try_from(p)?;
            anyhow::ensure!(
                self.send(topic, n + p, "warm-up", &buf, Some(part)),
                "warm-up send"
            );
        }
        self.inner.flush(Duration::from_secs(30))?;
        Ok(())
    }

    /// Events `0..n` open-loop at `rate`/s from `start_us` (each due at `start_us + i/rate`,
    /// which is its `"t"`); keys `k<seq % keys>`; waits for every acknowledgement.
    fn open_loop(&self, topic: &str, shape: &Shape, n: usize, rate: f64, start_us: u64) -> Sent {
        let (acked0, failed0) = (self.acked(), self.failed());
        let mut buf = Vec::with_capacity(shape.value_bytes + 64);
        let (mut sent, mut max_lag_us) = (0, 0u64);
        let started = Instant::now();
        for seq in 0..n {
            let due_us = due(start_us, seq, rate);
            let now = clock::now_us();
            if now < due_us {
                std::thread::sleep(Duration::from_micros(due_us - now));
            } else {
                max_lag_us = max_lag_us.max(now - due_us);
            }
            event(shape, seq, due_us, &mut buf);
            let key = format!("k{}", seq % shape.keys.max(1));
            if !self.send(topic, seq, &key, &buf, None) {
                break;
            }
            sent += 1;
        }
        let _ = self.inner.flush(Duration::from_secs(60));
        Sent {
            sent,
            acked: self.acked() - acked0,
            failed: self.failed() - failed0,
            elapsed_s: started.elapsed().as_secs_f64(),
            max_lag_ms: max_lag_us as f64 / 1e3,
        }
    }

    fn acked(&self) -> u64 {
        self.inner.context().acked.load(Ordering::Relaxed)
    }

    fn failed(&self) -> u64 {
        self.inner.context().failed.load(Ordering::Relaxed)
    }

    /// Events `0..n` as Kafka acknowledged them.
    fn produced(&self, n: usize, start_us: u64, rate: f64) -> Vec<Option<Produced>> {
        self.inner.context().partition[..n]
            .iter()
            .enumerate()
            .map(|(seq, p)| {
                let p = usize::try_from(p.load(Ordering::Relaxed)).ok()?;
                Some(Produced {
                    partition: p,
                    t_us: due(start_us, seq, rate),
                })
            })
            .collect()
    }
}

fn due(start_us: u64, seq: usize, rate: f64) -> u64 {
    start_us + (seq as f64 * 1e6 / rate) as u64
}

/// `at_s` seconds after `start_us`, as a tokio instant.
fn instant(start_us: u64, at_s: f64) -> tokio::time::Instant {
    tokio::time::Instant::from_std(clock::at_us(start_us + (at_s * 1e6) as u64))
}

fn since(start_us: u64, us: u64) -> f64 {
    us.saturating_sub(start_us) as f64 / 1e6
}

impl Ctx<'_> {
    fn start(&self, topics: &RunTopics, pod: &str, log: &str) -> anyhow::Result<Dispatcher> {
        let opts = Options {
            bin: self.bin.to_owned(),
            namespace: self.ns.to_owned(),
            topics: topics.clone(),
            env: vec![("POD_NAME".to_owned(), pod.to_owned())],
            log: self.logs.join(format!("{log}.log")),
        };
        Dispatcher::start(self.env, &opts)
    }
}

/// One run of `scenario` on run topics of its own (deleted afterwards).
///
/// # Errors
/// When topics cannot be made, a dispatcher does not start, or the warm-up does not come
/// through.
pub async fn run(ctx: &Ctx<'_>, scenario: Scenario, run: usize) -> anyhow::Result<Run> {
    let id = format!(
        "{}{run}-{}",
        &scenario.name()[..1],
        &hookline_tests::random_suffix()[..5]
    );
    let topics = RunTopics::new(ctx.ns, &id);
    topics.create(ctx.env, ctx.cli.partitions).await?;
    let result = run_on(ctx, scenario, run, &id, &topics).await;
    topics.delete(ctx.env).await;
    result
}

async fn run_on(
    ctx: &Ctx<'_>,
    scenario: Scenario,
    run: usize,
    id: &str,
    topics: &RunTopics,
) -> anyhow::Result<Run> {
    let cli = ctx.cli;
    let (n, parts) = (cli.events, usize::try_from(cli.partitions)?);
    let prefix = format!("{id}-");
    let behaviour = match scenario {
        Scenario::Kill => Behaviour::Flaky {
            fail_percent: cli.fail_percent,
        },
        Scenario::Scale => Behaviour::Slow {
            latency: Duration::from_millis(cli.latency_ms),
        },
    };
    // The same salt for run r of every build: before and after meet the same receiver.
    let log = Arc::new(Log::new(&prefix, n, n + parts, behaviour, run as u64));
    ctx.receiver.set_log(log.clone());
    let shape = Shape {
        prefix: prefix.clone(),
        types: vec![format!("failover.{}", scenario.name())],
        value_bytes: cli.bytes,
        keys: cli.keys,
    };
    let load = Arc::new(Load::new(&ctx.env.kafka_bootstrap, n + parts)?);
    let mut notes = Vec::new();

    let mut a = ctx.start(topics, POD_A, &format!("{id}-a0"))?;
    a.wait_ready(Duration::from_secs(60)).await?;
    {
        let (load, topic, shape) = (load.clone(), topics.events.clone(), shape.clone());
        on_thread(move || load.warm_up(&topic, &shape, n, parts)).await??;
    }
    let warm_limit = Instant::now() + Duration::from_secs(90);
    while !(n..n + parts).all(|s| log.arrived(s)) {
        anyhow::ensure!(
            Instant::now() < warm_limit,
            "warm-up: not every partition delivered within 90 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let loadavg_before = loadavg();
    let snap0 = Snapshot::take(ctx.watched);
    let start_us = clock::now_us() + 200_000;
    let producing = {
        let (load, topic, shape, rate) =
            (load.clone(), topics.events.clone(), shape.clone(), cli.rate);
        tokio::spawn(on_thread(move || {
            load.open_loop(&topic, &shape, n, rate, start_us)
        }))
    };
    let mut reaped = Vec::new();
    let mut kills_us = Vec::new();
    let (mut scale_s, mut second_ready_s) = (None, None);
    match scenario {
        Scenario::Kill => {
            for (i, at) in cli.kill_at.iter().enumerate() {
                tokio::time::sleep_until(instant(start_us, *at)).await;
                let _ = kill(Pid::from_raw(i32::try_from(a.pid)?), Signal::SIGKILL);
                kills_us.push(clock::now_us());
                // Restarted at once, as the same member.
                let next = ctx.start(topics, POD_A, &format!("{id}-a{}", i + 1))?;
                let old = std::mem::replace(&mut a, next);
                reaped.push(tokio::spawn(old.stop(Duration::from_secs(5))));
            }
        }
        Scenario::Scale => {
            tokio::time::sleep_until(instant(start_us, cli.scale_up_at)).await;
            let up_us = clock::now_us();
            let mut b = ctx.start(topics, POD_B, &format!("{id}-b"))?;
            let down = instant(start_us, cli.scale_down_at);
            let left = down.saturating_duration_since(tokio::time::Instant::now());
            if b.wait_ready(left).await.is_ok() {
                second_ready_s = Some(since(up_us, clock::now_us()));
            } else {
                notes.push("the second replica was not ready before its SIGTERM".to_owned());
            }
            tokio::time::sleep_until(down).await;
            scale_s = Some((since(start_us, up_us), since(start_us, clock::now_us())));
            reaped.push(tokio::spawn(b.stop(Duration::from_secs(30))));
        }
    }
    let sent = producing.await??;
    let end = Instant::now();

    let deadline = end + Duration::from_secs(cli.drain_s);
    while log.ok_unique.load(Ordering::Relaxed) < sent.acked && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drained = log.ok_unique.load(Ordering::Relaxed) >= sent.acked;
    let drained_s = drained.then(|| end.elapsed().as_secs_f64());
    let quiet_us = cli.quiet_s * 1_000_000;
    let quiet_limit = Instant::now() + Duration::from_secs(cli.quiet_s * 3);
    while clock::now_us().saturating_sub(log.last_us.load(Ordering::Relaxed)) < quiet_us
        && Instant::now() < quiet_limit
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reqs = log.requests();
    let cpu = CpuSplit::between(&snap0, &Snapshot::take(ctx.watched));
    let loadavg_after = loadavg();
    if !a.running() {
        notes.push("replica A was not running at the end".to_owned());
    }
    let counters = a.counters().await.ok();
    a.stop(Duration::from_secs(30)).await;
    for r in reaped {
        let _ = r.await;
    }

    let events = load.produced(n, start_us, cli.rate);
    let first = analysis::first_arrivals(&reqs, n);
    let kills: Vec<Kill> = kills_us
        .iter()
        .map(|k| {
            let failover_s = analysis::failover(*k, &events, &first, parts);
            let max_s = failover_s
                .iter()
                .copied()
                .collect::<Option<Vec<f64>>>()
                .map(|v| v.into_iter().fold(0.0, f64::max));
            Kill {
                at_s: since(start_us, *k),
                within_10s: failover_s.iter().flatten().filter(|s| **s <= 10.0).count(),
                failover_s,
                max_s,
            }
        })
        .collect();
    let failover_max_s = if kills.is_empty() {
        None
    } else {
        kills
            .iter()
            .map(|k| k.max_s)
            .collect::<Option<Vec<f64>>>()
            .map(|v| v.into_iter().fold(0.0, f64::max))
    };
    if !kills.is_empty() && failover_max_s.is_none() {
        notes.push("a partition never delivered an event produced after a kill".to_owned());
    }
    let measured: Vec<_> = reqs.iter().filter(|r| (r.seq as usize) < n).collect();
    let duplicates = analysis::duplicates(&reqs, n);
    if !drained {
        notes.push(format!(
            "{} of {} acknowledged events answered 2xx within {} s of the end of production",
            log.ok_unique.load(Ordering::Relaxed),
            sent.acked,
            cli.drain_s
        ));
    }
    Ok(Run {
        scenario,
        run,
        id: id.to_owned(),
        kills,
        failover_max_s,
        scale_s,
        second_ready_s,
        requests: measured.len() as u64,
        failed_answers: measured.iter().filter(|r| !r.ok).count() as u64,
        foreign: log.foreign.load(Ordering::Relaxed) + (reqs.len() - measured.len()) as u64,
        duplicate_ratio: duplicates.extra as f64 / sent.acked.max(1) as f64,
        duplicates,
        lost: analysis::lost(&reqs, &events),
        drained_s,
        max_gap_s: analysis::max_gaps(&events, &first, parts),
        latency: stats::latency(analysis::latencies_us(&events, &first)),
        sent,
        cpu,
        loadavg_before,
        loadavg_after,
        counters,
        notes,
    })
}

//! One measured run, of Hookline or of the baseline, end to end: a run gets
//! an id, its own topics and a fresh [`Recorder`] in the sink; the load flows
//! in (a pre-filled backlog, or an open-loop rate), a [`Sampler`] reads `/proc`
//! every 250 ms alongside the sink's count, and out comes a [`RunResult`]:
//! deliveries (unique, duplicates, retried), the sustained rate over the
//! 5–95 % window, latency percentiles, the CPU split over the measured window
//! and the dispatcher's RSS. Every wait is bounded by a deadline.
//!
//! This module holds what every run shares ([`Bench`], [`Setup`], filling in a
//! [`RunResult`]) and the baseline's runs; [`hookline`] the three kinds of
//! Hookline run (backlog, open-loop rate, recovery); [`crate::sampler`] the
//! sampling.

pub mod hookline;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::baseline::{self, Load, Sent};
use crate::cluster::{Env, RunTopics};
use crate::dispatcher::{Counters, Dispatcher, Options};
use crate::procstat::{CpuSplit, Watched};
use crate::producer::{Produced, Producer, Shape};
use crate::sampler::{Sample, Sampler, cpu_window, rss_mib};
use crate::sink::{Recorder, Sink};
use crate::stats::{self, Latency};

/// Ordering keys used round-robin by every load.
pub const KEYS: usize = 10_000;

/// What a point's runs share: where events go and what they look like.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The tenant namespace.
    pub ns: String,
    /// Webhook index space of the recorder (every webhook, dead ones too).
    pub webhooks: usize,
    /// Unique deliveries expected per event (the fan-out, or 1).
    pub per_event: usize,
    /// Event types, round-robin.
    pub types: Vec<String>,
    /// Record value size.
    pub value_bytes: usize,
    /// Baseline: one URL per healthy webhook.
    pub urls: Vec<String>,
    /// Baseline: every event to every URL (fan-out) or each to one, round-robin.
    pub fan_out: bool,
    /// Baseline: requests in flight (the dispatcher's `maxInFlight` × webhooks).
    pub concurrency: usize,
}

/// What one run measured.
#[derive(Debug, Clone, Serialize, Default)]
pub struct RunResult {
    /// `hookline` or `baseline`.
    pub system: String,
    /// The run id.
    pub run: String,
    /// Unique deliveries expected.
    pub expected: u64,
    /// Unique deliveries received.
    pub delivered: u64,
    /// Whether all expected arrived within the limit.
    pub complete: bool,
    /// Repeated deliveries.
    pub duplicates: u64,
    /// Arrivals with `hookline-attempt` > 1.
    pub retried_arrivals: u64,
    /// Requests held by a blackholed receiver.
    pub blackholed: u64,
    /// Sustained unique deliveries per second, 5–95 % window.
    pub rate: f64,
    /// Length of that window.
    pub window_s: f64,
    /// From the first to the last unique delivery.
    pub first_to_last_s: f64,
    /// Produce→receive latency (rate runs).
    pub latency: Option<Latency>,
    /// CPU over the measured window.
    pub cpu: Option<CpuSplit>,
    /// Dispatcher CPU-milliseconds per 1,000 deliveries in the window.
    pub dispatcher_cpu_ms_per_1k: Option<f64>,
    /// CPU over an idle period before the load (rate runs).
    pub idle: Option<CpuSplit>,
    /// Dispatcher RSS at the end, MiB.
    pub rss_mib: Option<f64>,
    /// Dispatcher peak RSS (VmHWM), MiB.
    pub rss_peak_mib: Option<f64>,
    /// Dispatcher RSS when idle (rate runs), MiB.
    pub rss_idle_mib: Option<f64>,
    /// Recovery: from the receiver's return to the last delivery.
    pub drain_after_return_s: Option<f64>,
    /// Dispatcher start → `/readyz`.
    pub ready_s: Option<f64>,
    /// The producer's side.
    pub produced: Option<Produced>,
    /// The baseline client's side.
    pub sent: Option<Sent>,
    /// The dispatcher's counters at the end.
    pub counters: Option<Counters>,
    /// Anything a reader should know about this run.
    pub notes: Vec<String>,
}

/// The benchmark's shared machinery.
pub struct Bench {
    /// The environment.
    pub env: Env,
    /// The sink.
    pub sink: Sink,
    /// Producer for open-loop loads (`linger.ms=0`).
    pub fast: Arc<Producer>,
    /// Producer for backlogs (`linger.ms=5`).
    pub bulk: Arc<Producer>,
    /// The dispatcher binary.
    pub bin: PathBuf,
    /// Where dispatcher logs go.
    pub logs: PathBuf,
    /// Partitions of each run topic.
    pub partitions: i32,
    /// Extra dispatcher environment.
    pub dispatcher_env: Vec<(String, String)>,
    /// Record a `perf` profile of the dispatcher in every Hookline run, into this directory.
    pub perf: Option<PathBuf>,
    counter: AtomicU32,
    tag: String,
}

impl Bench {
    /// The machinery over `env` and `sink`.
    ///
    /// # Errors
    /// When a producer cannot be created.
    pub fn new(
        env: Env,
        sink: Sink,
        bin: PathBuf,
        logs: PathBuf,
        partitions: i32,
        dispatcher_env: Vec<(String, String)>,
    ) -> anyhow::Result<Bench> {
        Ok(Bench {
            fast: Arc::new(Producer::new(&env.kafka_bootstrap, 0)?),
            bulk: Arc::new(Producer::new(&env.kafka_bootstrap, 5)?),
            env,
            sink,
            bin,
            logs,
            partitions,
            dispatcher_env,
            perf: None,
            counter: AtomicU32::new(0),
            tag: hookline_tests::random_suffix()[..4].to_owned(),
        })
    }

    fn next_run(&self) -> String {
        format!(
            "r{}{}",
            self.tag,
            self.counter.fetch_add(1, Ordering::Relaxed) + 1
        )
    }

    fn watched(&self, dispatcher: Option<u32>) -> Watched {
        let mut pids = vec![("bench".to_owned(), std::process::id())];
        if let Some(k) = crate::cluster::kafka_pid() {
            pids.push(("kafka".into(), k));
        }
        if let Some(d) = dispatcher {
            pids.push(("dispatcher".into(), d));
        }
        Watched { pids }
    }

    fn shape(s: &Setup, run: &str) -> Shape {
        Shape {
            prefix: format!("{run}-e"),
            types: s.types.clone(),
            value_bytes: s.value_bytes,
            keys: KEYS,
        }
    }

    async fn start_dispatcher(
        &self,
        s: &Setup,
        topics: &RunTopics,
        run: &str,
    ) -> anyhow::Result<(Dispatcher, f64)> {
        let opts = Options {
            bin: self.bin.clone(),
            namespace: s.ns.clone(),
            topics: topics.clone(),
            env: self.dispatcher_env.clone(),
            log: self.logs.join(format!("{run}.log")),
        };
        let t0 = Instant::now();
        let mut d = Dispatcher::start(&self.env, &opts)?;
        d.wait_ready(Duration::from_secs(60)).await?;
        Ok((d, t0.elapsed().as_secs_f64()))
    }

    /// Waits until `rec` has `n` unique deliveries, `limit` passes or the dispatcher dies.
    async fn wait_for(rec: &Recorder, n: u64, limit: Duration, d: Option<&mut Dispatcher>) -> bool {
        let end = Instant::now() + limit;
        let mut d = d;
        while Instant::now() < end {
            if rec.unique() >= n {
                return true;
            }
            if let Some(d) = d.as_deref_mut()
                && !d.running()
            {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        rec.unique() >= n
    }

    fn fill(r: &mut RunResult, rec: &Recorder, samples: &[Sample], window: (f64, f64)) {
        r.delivered = rec.unique();
        r.complete = r.delivered >= r.expected;
        r.duplicates = rec.duplicates.load(Ordering::Relaxed);
        r.retried_arrivals = rec.retried.load(Ordering::Relaxed);
        r.blackholed = rec.blackholed.load(Ordering::Relaxed);
        let first = rec.first_us.load(Ordering::Relaxed);
        let last = rec.last_us.load(Ordering::Relaxed);
        r.first_to_last_s = last.saturating_sub(first) as f64 / 1e6;
        let basis = if r.complete { r.expected } else { r.delivered };
        let w = stats::window(&rec.timeline(), basis, window.0, window.1);
        (r.rate, r.window_s) = (w.rate, w.seconds);
        if let Some((cpu, n)) = cpu_window(samples, basis, window.0, window.1) {
            if n > 0 && cpu.procs.contains_key("dispatcher") {
                r.dispatcher_cpu_ms_per_1k = Some(cpu.cpu_s("dispatcher") * 1e6 / n as f64);
            }
            r.cpu = Some(cpu);
        }
        if !r.complete {
            r.notes.push(format!(
                "incomplete: {} of {} within the limit",
                r.delivered, r.expected
            ));
        }
    }

    /// Reads the dispatcher's counters and RSS into `r`, then stops it (SIGTERM, 30 s grace).
    async fn stop_dispatcher(d: Dispatcher, r: &mut RunResult) {
        r.counters = d.counters().await.ok();
        if let Some((rss, peak)) = rss_mib(d.pid) {
            (r.rss_mib, r.rss_peak_mib) = (Some(rss), Some(peak));
        }
        d.stop(Duration::from_secs(30)).await;
    }

    /// Runs `f` with a new run id and topics of the run's own (created with
    /// [`Bench::partitions`] each), and deletes the topics afterwards, also on failure.
    async fn with_topics(
        &self,
        s: &Setup,
        f: impl AsyncFnOnce(&str, &RunTopics) -> anyhow::Result<RunResult>,
    ) -> anyhow::Result<RunResult> {
        let run = self.next_run();
        let topics = RunTopics::new(&s.ns, &run);
        topics.create(&self.env, self.partitions).await?;
        let result = f(&run, &topics).await;
        topics.delete(&self.env).await;
        result
    }

    /// The baseline sending `events` as fast as `s.concurrency` allows.
    ///
    /// # Errors
    /// When the client cannot be built.
    pub async fn baseline_backlog(
        &self,
        s: &Setup,
        events: usize,
        limit: Duration,
    ) -> anyhow::Result<RunResult> {
        self.baseline(s, events, None, limit).await
    }

    /// The baseline sending open-loop at `rate` for `secs`.
    ///
    /// # Errors
    /// When the client cannot be built.
    pub async fn baseline_rate(
        &self,
        s: &Setup,
        rate: f64,
        secs: f64,
    ) -> anyhow::Result<RunResult> {
        let events = (rate * secs) as usize;
        self.baseline(s, events, Some(rate), Duration::from_secs_f64(secs + 30.0))
            .await
    }

    async fn baseline(
        &self,
        s: &Setup,
        events: usize,
        rate: Option<f64>,
        limit: Duration,
    ) -> anyhow::Result<RunResult> {
        let run = self.next_run();
        let shape = Self::shape(s, &run);
        let skip = rate.map_or(0, |r| r as usize);
        let rec = Arc::new(Recorder::new(
            &shape.prefix,
            events,
            s.webhooks,
            rate.is_some(),
            skip,
        ));
        self.sink.set_recorder(rec.clone());
        let sampler = Sampler::start(self.watched(None), rec.clone());
        let sent = baseline::run(Load {
            urls: s.urls.clone(),
            shape,
            events,
            concurrency: s.concurrency,
            rate,
            fan_out: s.fan_out,
            limit,
        })
        .await?;
        let samples = sampler.finish().await;
        let per = if s.fan_out { s.urls.len() } else { 1 };
        let mut r = RunResult {
            system: "baseline".into(),
            run,
            expected: (events * per) as u64,
            sent: Some(sent),
            ..RunResult::default()
        };
        let window = if rate.is_some() {
            (0.0, 1.0)
        } else {
            (0.05, 0.95)
        };
        Self::fill(&mut r, &rec, &samples, window);
        if rate.is_some() {
            r.latency = Some(stats::latency(rec.latencies()));
        }
        Ok(r)
    }
}

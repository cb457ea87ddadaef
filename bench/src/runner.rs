//! One measured run, of Hookline or of the baseline, end to end: a run gets
//! an id, its own topics and a fresh [`Recorder`] in the sink; the load flows
//! in (a pre-filled backlog, or an open-loop rate), a sampler reads `/proc`
//! every 250 ms alongside the sink's count, and out comes a [`RunResult`]:
//! deliveries (unique, duplicates, retried), the sustained rate over the
//! 5–95 % window, latency percentiles, the CPU split over the measured window
//! and the dispatcher's RSS. Every wait is bounded by a deadline.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::baseline::{self, Load, Sent};
use crate::clock;
use crate::cluster::{Env, RunTopics};
use crate::dispatcher::{Counters, Dispatcher, Options};
use crate::procstat::{CpuSplit, Snapshot, Watched, rss_kib};
use crate::producer::{self, Produced, Producer, Shape};
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

struct Sample {
    unique: u64,
    snap: Snapshot,
}

struct Sampler {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Vec<Sample>>,
}

impl Sampler {
    fn start(watched: Watched, rec: Arc<Recorder>) -> Sampler {
        let stop = CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let mut out = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tokio::select! {
                    () = s.cancelled() => break,
                    _ = tick.tick() => {}
                }
                out.push(Sample {
                    unique: rec.unique(),
                    snap: Snapshot::take(&watched),
                });
                if out.len() > 20_000 {
                    break;
                }
            }
            out.push(Sample {
                unique: rec.unique(),
                snap: Snapshot::take(&watched),
            });
            out
        });
        Sampler { stop, task }
    }

    async fn finish(self) -> Vec<Sample> {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}

/// CPU between the samples where `lo` and `hi` of `total` had arrived, and
/// the deliveries between them.
fn cpu_window(samples: &[Sample], total: u64, lo: f64, hi: f64) -> Option<(CpuSplit, u64)> {
    let lo_n = (total as f64 * lo) as u64;
    let hi_n = (total as f64 * hi).ceil() as u64;
    let a = samples.iter().position(|s| s.unique >= lo_n.max(1))?;
    let b = samples
        .iter()
        .position(|s| s.unique >= hi_n)
        .unwrap_or(samples.len() - 1);
    let a = if b > a { a } else { a.checked_sub(1)? };
    Some((
        CpuSplit::between(&samples[a].snap, &samples[b].snap),
        samples[b].unique - samples[a].unique,
    ))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
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

/// `perf record` of one process, stopped with SIGINT.
struct Perf(Option<std::process::Child>);

impl Perf {
    fn start(dir: Option<&PathBuf>, pid: u32, run: &str) -> Perf {
        let Some(dir) = dir else { return Perf(None) };
        let _ = std::fs::create_dir_all(dir);
        let child = std::process::Command::new("perf")
            .args([
                "record",
                "-q",
                "-e",
                "cpu-clock",
                "-F",
                "499",
                "--call-graph",
                "dwarf,16384",
                "-p",
            ])
            .arg(pid.to_string())
            .arg("-o")
            .arg(dir.join(format!("{run}.perf.data")))
            .stdout(std::process::Stdio::null())
            .stderr(
                std::fs::File::create(dir.join(format!("{run}.perf.log")))
                    .map_or_else(|_| std::process::Stdio::null(), std::process::Stdio::from),
            )
            .spawn();
        if let Err(e) = &child {
            eprintln!("  perf record could not start: {e}");
        }
        // Let perf attach before the load starts (an early SIGINT leaves an empty file).
        std::thread::sleep(std::time::Duration::from_secs(1));
        Perf(child.ok())
    }

    fn stop(self) {
        if let Some(mut c) = self.0 {
            if let Ok(pid) = i32::try_from(c.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGINT,
                );
            }
            let _ = c.wait();
        }
    }
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
            tag: crate::cluster::suffix()[..4].to_owned(),
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
        if let Some(k) = self.env.kafka_pid() {
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

    /// Hookline draining a backlog of `events` pre-filled before it starts.
    ///
    /// # Errors
    /// When topics, the producer or the dispatcher cannot be set up.
    pub async fn hookline_backlog(
        &self,
        s: &Setup,
        events: usize,
        limit: Duration,
    ) -> anyhow::Result<RunResult> {
        let run = self.next_run();
        let topics = RunTopics::new(&s.ns, &run);
        topics.create(&self.env, self.partitions).await?;
        let result = self.backlog_inner(s, events, limit, &run, &topics).await;
        topics.delete(&self.env).await;
        result
    }

    async fn backlog_inner(
        &self,
        s: &Setup,
        events: usize,
        limit: Duration,
        run: &str,
        topics: &RunTopics,
    ) -> anyhow::Result<RunResult> {
        let shape = Self::shape(s, run);
        let rec = Arc::new(Recorder::new(&shape.prefix, events, s.webhooks, false, 0));
        self.sink.set_recorder(rec.clone());
        let (p, topic) = (self.bulk.clone(), topics.events.clone());
        let produced = producer::on_thread(move || {
            producer::produce_max(&p, &topic, &shape, 0, events, Duration::from_secs(180))
        })
        .await?;
        let (mut d, ready_s) = self.start_dispatcher(s, topics, run).await?;
        let perf = Perf::start(self.perf.as_ref(), d.pid, run);
        let sampler = Sampler::start(self.watched(Some(d.pid)), rec.clone());
        let mut r = RunResult {
            system: "hookline".into(),
            run: run.to_owned(),
            expected: (events * s.per_event) as u64,
            ready_s: Some(ready_s),
            ..RunResult::default()
        };
        Self::wait_for(&rec, r.expected, limit, Some(&mut d)).await;
        let samples = sampler.finish().await;
        perf.stop();
        r.counters = d.counters().await.ok();
        if let Some((rss, hwm)) = rss_kib(d.pid) {
            (r.rss_mib, r.rss_peak_mib) = (Some(mib(rss)), Some(mib(hwm)));
        }
        d.stop(Duration::from_secs(30)).await;
        Self::fill(&mut r, &rec, &samples, (0.05, 0.95));
        r.produced = Some(produced);
        Ok(r)
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

    /// Hookline under an open-loop load of `rate` events/s for `secs`,
    /// after `idle_secs` of measured idleness.
    ///
    /// # Errors
    /// When topics, the producer or the dispatcher cannot be set up.
    pub async fn hookline_rate(
        &self,
        s: &Setup,
        rate: f64,
        secs: f64,
        idle_secs: f64,
    ) -> anyhow::Result<RunResult> {
        let run = self.next_run();
        let topics = RunTopics::new(&s.ns, &run);
        topics.create(&self.env, self.partitions).await?;
        let result = self
            .rate_inner(s, rate, secs, idle_secs, &run, &topics)
            .await;
        topics.delete(&self.env).await;
        result
    }

    async fn rate_inner(
        &self,
        s: &Setup,
        rate: f64,
        secs: f64,
        idle_secs: f64,
        run: &str,
        topics: &RunTopics,
    ) -> anyhow::Result<RunResult> {
        const WARM: usize = 20;
        let n = (rate * secs) as usize;
        let shape = Self::shape(s, run);
        // Latencies from the second second on: the first one warms connections.
        let rec = Arc::new(Recorder::new(
            &shape.prefix,
            WARM + n,
            s.webhooks,
            true,
            WARM + rate as usize,
        ));
        self.sink.set_recorder(rec.clone());
        let (mut d, ready_s) = self.start_dispatcher(s, topics, run).await?;
        let mut r = RunResult {
            system: "hookline".into(),
            run: run.to_owned(),
            expected: ((WARM + n) * s.per_event) as u64,
            ready_s: Some(ready_s),
            ..RunResult::default()
        };
        let (p, topic, sh) = (self.fast.clone(), topics.events.clone(), shape.clone());
        producer::on_thread(move || {
            producer::produce_max(&p, &topic, &sh, 0, WARM, Duration::from_secs(30))
        })
        .await?;
        if !Self::wait_for(
            &rec,
            (WARM * s.per_event) as u64,
            Duration::from_secs(60),
            Some(&mut d),
        )
        .await
        {
            r.notes
                .push("warm-up events were not all delivered within 60 s".into());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let watched = self.watched(Some(d.pid));
        let a = Snapshot::take(&watched);
        tokio::time::sleep(Duration::from_secs_f64(idle_secs)).await;
        r.idle = Some(CpuSplit::between(&a, &Snapshot::take(&watched)));
        r.rss_idle_mib = rss_kib(d.pid).map(|(rss, _)| mib(rss));
        let perf = Perf::start(self.perf.as_ref(), d.pid, run);
        let sampler = Sampler::start(watched, rec.clone());
        let (p, topic) = (self.fast.clone(), topics.events.clone());
        let produced = producer::on_thread(move || {
            producer::produce_rate(
                &p,
                &topic,
                &shape,
                WARM,
                n,
                rate,
                Duration::from_secs_f64(secs + 10.0),
            )
        })
        .await?;
        Self::wait_for(&rec, r.expected, Duration::from_secs(30), Some(&mut d)).await;
        let samples = sampler.finish().await;
        perf.stop();
        r.counters = d.counters().await.ok();
        if let Some((rss, hwm)) = rss_kib(d.pid) {
            (r.rss_mib, r.rss_peak_mib) = (Some(mib(rss)), Some(mib(hwm)));
        }
        d.stop(Duration::from_secs(30)).await;
        Self::fill(&mut r, &rec, &samples, (0.0, 1.0));
        if let (Some(first), Some(last)) = (samples.first(), samples.last()) {
            let cpu = CpuSplit::between(&first.snap, &last.snap);
            let n = last.unique.saturating_sub(first.unique);
            // Under an open-loop load the rate is the load's; kept for completeness.
            r.rate = n as f64 / cpu.wall_s;
            r.window_s = cpu.wall_s;
            if n > 0 {
                r.dispatcher_cpu_ms_per_1k = Some(cpu.cpu_s("dispatcher") * 1e6 / n as f64);
            }
            r.cpu = Some(cpu);
        }
        r.latency = Some(stats::latency(rec.latencies()));
        if produced.max_lag_us > 5_000 {
            r.notes.push(format!(
                "the producer fell {} ms behind its schedule at worst",
                produced.max_lag_us / 1000
            ));
        }
        r.produced = Some(produced);
        Ok(r)
    }

    /// Hookline with the receiver refusing connections while `events` are
    /// produced, then back: how long the backlog takes to drain.
    ///
    /// # Errors
    /// When topics, the producer or the dispatcher cannot be set up.
    pub async fn hookline_recovery(
        &self,
        s: &Setup,
        port: usize,
        events: usize,
        down: Duration,
        limit: Duration,
    ) -> anyhow::Result<RunResult> {
        let run = self.next_run();
        let topics = RunTopics::new(&s.ns, &run);
        topics.create(&self.env, self.partitions).await?;
        let result = self
            .recovery_inner(s, port, events, (down, limit), &run, &topics)
            .await;
        let _ = self.sink.set_mode(port, crate::sink::Mode::Ok).await;
        topics.delete(&self.env).await;
        result
    }

    async fn recovery_inner(
        &self,
        s: &Setup,
        port: usize,
        events: usize,
        (down, limit): (Duration, Duration),
        run: &str,
        topics: &RunTopics,
    ) -> anyhow::Result<RunResult> {
        let shape = Self::shape(s, run);
        let rec = Arc::new(Recorder::new(&shape.prefix, events, s.webhooks, false, 0));
        self.sink.set_recorder(rec.clone());
        self.sink.set_mode(port, crate::sink::Mode::Down).await?;
        let (mut d, ready_s) = self.start_dispatcher(s, topics, run).await?;
        let down_since = Instant::now();
        let mut r = RunResult {
            system: "hookline".into(),
            run: run.to_owned(),
            expected: events as u64,
            ready_s: Some(ready_s),
            ..RunResult::default()
        };
        let (p, topic) = (self.bulk.clone(), topics.events.clone());
        let produced = producer::on_thread(move || {
            producer::produce_max(&p, &topic, &shape, 0, events, Duration::from_secs(180))
        })
        .await?;
        // Down for `down` at least, and 2 s after the last event at least.
        let until = (down_since + down).max(Instant::now() + Duration::from_secs(2));
        tokio::time::sleep_until(until.into()).await;
        let down_s = down_since.elapsed().as_secs_f64();
        let before = d.counters().await.ok();
        self.sink.set_mode(port, crate::sink::Mode::Ok).await?;
        let up_us = clock::now_us();
        let sampler = Sampler::start(self.watched(Some(d.pid)), rec.clone());
        Self::wait_for(&rec, r.expected, limit, Some(&mut d)).await;
        let samples = sampler.finish().await;
        r.counters = d.counters().await.ok();
        if let Some((rss, hwm)) = rss_kib(d.pid) {
            (r.rss_mib, r.rss_peak_mib) = (Some(mib(rss)), Some(mib(hwm)));
        }
        d.stop(Duration::from_secs(30)).await;
        Self::fill(&mut r, &rec, &samples, (0.05, 0.95));
        let last = rec.last_us.load(Ordering::Relaxed);
        let drain_s = last.saturating_sub(up_us) as f64 / 1e6;
        r.notes.push(format!(
            "receiver down for {:.1} s while {} events were produced; all delivered {:.1} s after it came back ({:.0} events/s overall)",
            down_s,
            produced.acked,
            drain_s,
            r.delivered as f64 / drain_s.max(1e-3)
        ));
        if let Some(b) = before {
            r.notes.push(format!(
                "while down: {} attempts failed, {} retries scheduled",
                b.deliveries
                    .iter()
                    .filter(|(k, _)| k.as_str() != "delivered")
                    .map(|(_, v)| v)
                    .sum::<f64>(),
                b.retries_scheduled.values().sum::<f64>()
            ));
        }
        r.drain_after_return_s = Some(drain_s);
        r.produced = Some(produced);
        Ok(r)
    }
}

//! The three kinds of Hookline run, each on topics of its own with a
//! release dispatcher the run starts and stops: a backlog produced first and
//! then drained ([`Bench::hookline_backlog`]), an open-loop rate after a
//! measured idle period ([`Bench::hookline_rate`]), and a backlog built while
//! the receiver refuses connections, drained after it comes back
//! ([`Bench::hookline_recovery`]). Events flow producer → Kafka → dispatcher
//! → sink; the sampler and the dispatcher's `/metrics` say what it cost.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Bench, RunResult, Setup};
use crate::clock;
use crate::cluster::RunTopics;
use crate::procstat::{CpuSplit, Snapshot};
use crate::producer;
use crate::sampler::{Perf, Sampler, rss_mib};
use crate::sink::{Mode, Recorder};
use crate::stats;

impl Bench {
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
        self.with_topics(s, async |run, topics| {
            self.backlog_inner(s, events, limit, run, topics).await
        })
        .await
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
        Self::stop_dispatcher(d, &mut r).await;
        Self::fill(&mut r, &rec, &samples, (0.05, 0.95));
        r.produced = Some(produced);
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
        self.with_topics(s, async |run, topics| {
            self.rate_inner(s, rate, secs, idle_secs, run, topics).await
        })
        .await
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
        r.rss_idle_mib = rss_mib(d.pid).map(|(rss, _)| rss);
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
        Self::stop_dispatcher(d, &mut r).await;
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
        self.with_topics(s, async |run, topics| {
            let result = self
                .recovery_inner(s, port, events, (down, limit), run, topics)
                .await;
            let _ = self.sink.set_mode(port, Mode::Ok).await;
            result
        })
        .await
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
        self.sink.set_mode(port, Mode::Down).await?;
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
        self.sink.set_mode(port, Mode::Ok).await?;
        let up_us = clock::now_us();
        let sampler = Sampler::start(self.watched(Some(d.pid)), rec.clone());
        Self::wait_for(&rec, r.expected, limit, Some(&mut d)).await;
        let samples = sampler.finish().await;
        Self::stop_dispatcher(d, &mut r).await;
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

//! Delivery-log ingest end to end: attempt records (JSON, as the dispatcher writes them) are
//! produced to a bench-owned attempts topic, then read either by a plain librdkafka consumer
//! that only counts them ([`raw_consume`], the baseline: what reading the topic costs) or by a
//! release `hookline-api` with a store of its own ([`api_ingest`]: parse, store, commit
//! positions). Progress of the API is read from its store's position for the bench topic every
//! 100 ms (exact, whatever else the API reads) together with `/proc` snapshots of the
//! processes; `hookline_api_ingested_attempts_total` is read at the end to confirm it.
//!
//! Decisions:
//! - The API reads every `hookline.*.attempts` topic of the cluster. Its store is made with
//!   the position of every other attempts partition at its end ([`other_positions`]), so the
//!   run reads the bench topic and only what other tenants write meanwhile.
//! - Every `hookline-api` already running in the environment (the chart's, tests') reads the
//!   bench topic too; [`wait_others_idle`] waits until they are done before a run, and their CPU
//!   during a run is reported.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hookline_api::store::sqlite::SqliteStore;
use hookline_api::store::{Batch, DeliveryLog, Position};
use hookline_core::naming::tenant_of_attempts_topic;
use hookline_tests::LogDump;
use hookline_tests::api::{ApiOptions, OwnApi};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::cluster::Env;
use crate::procstat::{CpuSplit, Snapshot, Watched};

fn config(bootstrap: &str, group: &str) -> ClientConfig {
    let base = hookline_core::kafka::base(bootstrap, std::iter::empty());
    let mut c = ClientConfig::new();
    for (k, v) in hookline_core::kafka::delivery_log(&base, group) {
        c.set(k, v);
    }
    c
}

/// The end of every partition of every attempts topic but `except`.
///
/// # Errors
/// When Kafka does not answer.
pub fn other_positions(bootstrap: &str, except: &str) -> anyhow::Result<Vec<Position>> {
    let c: BaseConsumer = config(bootstrap, "hlb-watermarks").create()?;
    let md = c.fetch_metadata(None, Duration::from_secs(10))?;
    let mut out = Vec::new();
    for t in md.topics() {
        if t.name() == except || tenant_of_attempts_topic(t.name()).is_none() {
            continue;
        }
        for p in t.partitions() {
            let (_, high) = c.fetch_watermarks(t.name(), p.id(), Duration::from_secs(10))?;
            out.push(Position {
                topic: t.name().to_owned(),
                partition: p.id(),
                next_offset: high,
            });
        }
    }
    Ok(out)
}

/// A new store at `path` (any old one removed) that holds `positions` and no records.
///
/// # Errors
/// When the store cannot be made.
pub fn seeded_store(path: &Path, positions: Vec<Position>) -> anyhow::Result<()> {
    remove_store(path);
    let store = SqliteStore::open(path)?;
    store.apply(&Batch {
        records: Vec::new(),
        positions,
    })?;
    Ok(())
}

/// Removes a store file and its WAL and shared-memory files.
pub fn remove_store(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

/// Records counted over time.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// `(seconds from the start, records so far)`, at least every 100 ms.
    pub marks: Vec<(f64, u64)>,
    /// Records in all.
    pub records: u64,
    /// From the start to the last record.
    pub elapsed_s: f64,
    /// `(records so far, /proc then)`, every 100 ms.
    pub samples: Vec<(u64, Snapshot)>,
}

impl Progress {
    fn count(&mut self, at: Duration, total: u64) {
        self.marks.push((at.as_secs_f64(), total));
        self.records = total;
        self.elapsed_s = at.as_secs_f64();
    }

    /// The sustained rate between the first marks at or past `lo` and `hi` of `total`, and
    /// the seconds between them.
    pub fn rate(&self, total: u64, lo: f64, hi: f64) -> (f64, f64) {
        let at = |q: f64| {
            self.marks
                .iter()
                .find(|(_, n)| *n as f64 >= total as f64 * q)
                .copied()
        };
        match (at(lo), at(hi)) {
            (Some((ta, na)), Some((tb, nb))) if tb > ta => ((nb - na) as f64 / (tb - ta), tb - ta),
            _ => (0.0, 0.0),
        }
    }

    /// The CPU between the samples where `lo` and `hi` of `total` records were in.
    pub fn cpu(&self, total: u64, lo: f64, hi: f64) -> Option<CpuSplit> {
        let a = self
            .samples
            .iter()
            .position(|(n, _)| *n as f64 >= total as f64 * lo)?;
        let b = self
            .samples
            .iter()
            .position(|(n, _)| *n as f64 >= total as f64 * hi)
            .unwrap_or(self.samples.len() - 1);
        (b > a).then(|| CpuSplit::between(&self.samples[a].1, &self.samples[b].1))
    }
}

/// Reads `n` records of `topic` (`partitions` partitions) from the beginning with a plain
/// consumer configured as the API's, counting them, for at most `limit`. Blocking.
///
/// # Errors
/// When the consumer cannot be made.
pub fn raw_consume(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    n: u64,
    limit: Duration,
    watched: &Watched,
) -> anyhow::Result<Progress> {
    let group = format!("hlb-raw-{}", hookline_tests::random_suffix());
    let c: BaseConsumer = config(bootstrap, &group).create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    let started = Instant::now();
    c.assign(&tpl)?;
    let mut prog = Progress::default();
    let mut got = 0u64;
    let mut next_sample = started;
    while got < n && started.elapsed() < limit {
        if let Some(Ok(_)) = c.poll(Duration::from_millis(100)) {
            got += 1;
            if got.is_multiple_of(2_000) {
                prog.count(started.elapsed(), got);
            }
        }
        if got >= n || Instant::now() >= next_sample {
            prog.count(started.elapsed(), got);
            prog.samples.push((got, Snapshot::take(watched)));
            next_sample += Duration::from_millis(100);
        }
    }
    Ok(prog)
}

/// What a `hookline-api` run did.
#[derive(Debug, Clone, Default)]
pub struct ApiRun {
    /// Progress on the bench topic, from the process start.
    pub progress: Progress,
    /// Process start to `/readyz`.
    pub ready_s: f64,
    /// `hookline_api_ingested_attempts_total` at the end (the bench topic and anything other
    /// tenants wrote meanwhile).
    pub metric: f64,
    /// Batches stored (`hookline_api_store_batch_seconds_count`) and their seconds (`_sum`).
    pub batches: (f64, f64),
    /// RSS at the end and peak, MiB.
    pub rss: Option<(f64, f64)>,
    /// The API's pid.
    pub pid: u32,
}

/// A metric's value (summed over label sets) from Prometheus text.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Starts a release `hookline-api` (`bin`) on the seeded store at `store`, and follows its
/// position on `topic` until `n` records are in (or `limit`); `watched` gets the API's pid
/// under the role `api`.
///
/// # Errors
/// When the API does not start or its store cannot be read.
#[allow(clippy::too_many_arguments)]
pub async fn api_ingest(
    env: &Env,
    admin: &kube::Client,
    bin: &Path,
    store: &Path,
    topic: &str,
    n: u64,
    limit: Duration,
    mut watched: Watched,
) -> anyhow::Result<ApiRun> {
    let mut dump = LogDump::new();
    let started = Instant::now();
    let api = OwnApi::start_built(
        env,
        admin,
        &mut dump,
        &[&format!("--store={}", store.display()), "--auth-cache=10s"],
        ApiOptions {
            binary: Some(bin.to_owned()),
            log_level: Some("info".into()),
        },
    )
    .await?;
    let ready_s = started.elapsed().as_secs_f64();
    let pid = api.pid().unwrap_or(0);
    watched.pids.push(("api".into(), pid));
    let (store_path, topic_name) = (store.to_owned(), topic.to_owned());
    let progress = tokio::task::spawn_blocking(move || {
        follow(&store_path, &topic_name, n, started, limit, &watched)
    })
    .await??;
    let text = hookline_tests::http_get(&api.ops, "/metrics").unwrap_or_default();
    let run = ApiRun {
        progress,
        ready_s,
        metric: metric(&text, "hookline_api_ingested_attempts_total"),
        batches: (
            metric(&text, "hookline_api_store_batch_seconds_count"),
            metric(&text, "hookline_api_store_batch_seconds_sum"),
        ),
        rss: crate::sampler::rss_mib(pid),
        pid,
    };
    drop(api);
    Ok(run)
}

/// Polls the store's position on `topic` every 100 ms until `n`.
fn follow(
    store: &Path,
    topic: &str,
    n: u64,
    started: Instant,
    limit: Duration,
    watched: &Watched,
) -> anyhow::Result<Progress> {
    let conn = rusqlite::Connection::open_with_flags(
        store,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let mut st =
        conn.prepare("SELECT coalesce(sum(next_offset), 0) FROM positions WHERE topic = ?1")?;
    let mut prog = Progress::default();
    let mut tick = Instant::now();
    loop {
        let at: i64 = st.query_row([topic], |r| r.get(0))?;
        let at = u64::try_from(at).unwrap_or(0);
        prog.count(started.elapsed(), at);
        prog.samples.push((at, Snapshot::take(watched)));
        if at >= n || started.elapsed() > limit {
            return Ok(prog);
        }
        tick += Duration::from_millis(100);
        std::thread::sleep(tick.saturating_duration_since(Instant::now()));
    }
}

/// Every running `hookline-api` but `except`.
pub fn other_apis(except: &[u32]) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| !except.contains(pid))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "hookline-api")
        })
        .collect()
}

/// The other `hookline-api` processes as watched roles `other-api-<i>`.
pub fn watch_others(w: &mut Watched, except: &[u32]) {
    for (i, pid) in other_apis(except).into_iter().enumerate() {
        w.pids.push((format!("other-api-{i}"), pid));
    }
}

/// Cores used by the `other-api-*` roles of `split`.
pub fn others_cores(split: &CpuSplit) -> f64 {
    split
        .procs
        .iter()
        .filter(|(role, _)| role.starts_with("other-api"))
        .map(|(_, p)| p.cores)
        .sum()
}

/// Waits until the other `hookline-api` processes use under 5 % of a core together (over 2 s),
/// at most `limit`; how long it waited.
pub async fn wait_others_idle(except: &[u32], limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let mut w = Watched::default();
        watch_others(&mut w, except);
        if w.pids.is_empty() {
            return started.elapsed();
        }
        let a = Snapshot::take(&w);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let b = Snapshot::take(&w);
        let busy = others_cores(&CpuSplit::between(&a, &b));
        if busy < 0.05 || started.elapsed() > limit {
            return started.elapsed();
        }
    }
}

/// The processes every run watches: Kafka and this one.
pub fn base_watched() -> Watched {
    let mut w = Watched::default();
    if let Some(k) = crate::cluster::kafka_pid() {
        w.pids.push(("kafka".into(), k));
    }
    w.pids.push(("bench".into(), std::process::id()));
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_summed_over_label_sets_and_prefixes_do_not_match() {
        let text = "# HELP x\nhookline_api_ingested_attempts_total 12\n\
                    hookline_api_store_batch_seconds_count 3\n\
                    hookline_api_store_batch_seconds_sum 0.5\n\
                    hookline_api_requests_total{route=\"a\"} 2\nhookline_api_requests_total{route=\"b\"} 5\n";
        assert_eq!(metric(text, "hookline_api_ingested_attempts_total"), 12.0);
        assert_eq!(metric(text, "hookline_api_store_batch_seconds"), 0.0);
        assert_eq!(metric(text, "hookline_api_requests_total"), 7.0);
    }

    #[test]
    fn the_rate_is_taken_between_the_marks_at_five_and_ninety_five_percent() {
        let mut p = Progress::default();
        for (ms, n) in [(0, 0), (100, 5), (200, 50), (1100, 95), (1500, 100)] {
            p.count(Duration::from_millis(ms), n);
        }
        let (rate, secs) = p.rate(100, 0.05, 0.95);
        assert!((secs - 1.0).abs() < 1e-9);
        assert!((rate - 90.0).abs() < 1e-9);
        assert_eq!(p.records, 100);
    }
}

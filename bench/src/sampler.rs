//! Process sampling during a run: while the load flows, a [`Sampler`] takes a
//! `/proc` [`Snapshot`] of the watched processes every 250 ms together with
//! the sink's count of unique deliveries; afterwards [`cpu_window`] turns the
//! samples between two delivery counts into the CPU split of that window. A
//! [`Perf`] optionally records a `perf` profile of the dispatcher alongside.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::procstat::{CpuSplit, Snapshot, Watched, rss_kib};
use crate::sink::Recorder;

/// One sample: unique deliveries so far, and the processes' counters then.
pub struct Sample {
    /// Unique deliveries the sink had counted.
    pub unique: u64,
    /// `/proc` at that moment.
    pub snap: Snapshot,
}

/// Samples every 250 ms until [`Sampler::finish`] (at most 20,000 samples).
pub struct Sampler {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Vec<Sample>>,
}

impl Sampler {
    /// Starts sampling `watched` and `rec`'s count.
    pub fn start(watched: Watched, rec: Arc<Recorder>) -> Sampler {
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

    /// Stops, takes a last sample, and returns them all.
    pub async fn finish(self) -> Vec<Sample> {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}

/// CPU between the samples where `lo` and `hi` of `total` had arrived, and
/// the deliveries between them.
pub fn cpu_window(samples: &[Sample], total: u64, lo: f64, hi: f64) -> Option<(CpuSplit, u64)> {
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

/// KiB to MiB.
pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The RSS of process `pid` now and its peak (VmHWM), MiB.
pub fn rss_mib(pid: u32) -> Option<(f64, f64)> {
    rss_kib(pid).map(|(rss, hwm)| (mib(rss), mib(hwm)))
}

/// `perf record` of one process, stopped with SIGINT.
pub struct Perf(Option<std::process::Child>);

impl Perf {
    /// Starts recording `pid` into `<dir>/<run>.perf.data` when `dir` is given; a no-op otherwise.
    pub fn start(dir: Option<&PathBuf>, pid: u32, run: &str) -> Perf {
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

    /// Stops recording (SIGINT, so perf writes its file) and waits for perf to exit.
    pub fn stop(self) {
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

//! Where the cores go, from `/proc`: a [`Snapshot`] reads the CPU ticks of
//! each watched process (in total and per thread, grouped by thread name:
//! `rdk:*` threads are librdkafka's, tokio workers, the main thread; see [`thread_group`]), the RSS of
//! each, and the machine's busy/total ticks. Two snapshots give a [`CpuSplit`]
//! in CPU-seconds and in cores over the interval between them.
//!
//! Caveat: a thread that exits between two snapshots drops out of the
//! per-thread split (the process total still counts it).

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;

/// Clock ticks per second of `/proc` CPU times (`getconf CLK_TCK`; 100 on Linux).
pub fn clk_tck() -> f64 {
    static TCK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// `(comm, utime + stime)` from the text of a `/proc/.../stat` file.
pub fn parse_stat(text: &str) -> Option<(String, u64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_owned();
    let fields: Vec<&str> = text[close + 2..].split_whitespace().collect();
    // After the comm: state(0) ppid(1) … utime(11) stime(12).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

fn process_ticks(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text).map(|(_, t)| t)
}

/// The group a thread's CPU is counted in: `librdkafka` (its `rdk:*` threads and
/// rust-rdkafka's producer polling thread), `workers` (tokio worker threads of the
/// dispatcher; the sink and baseline client in the bench process), `producer` (the
/// bench's producing thread), `main` (everything else: the dispatcher's main thread
/// runs its pipeline loop).
pub fn thread_group(comm: &str) -> &'static str {
    if comm.starts_with("rdk:") || comm.starts_with("producer poll") {
        "librdkafka"
    } else if comm.starts_with("bench-producer") {
        "producer"
    } else if comm.starts_with("tokio-runtime-w")
        || comm.starts_with("tokio-rt-worker")
        || comm.starts_with("bench-rt")
    {
        "workers"
    } else {
        "main"
    }
}

fn thread_ticks(pid: u32) -> BTreeMap<&'static str, u64> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for entry in dir.flatten() {
        let path = entry.path().join("stat");
        if let Ok(text) = std::fs::read_to_string(path)
            && let Some((comm, ticks)) = parse_stat(&text)
        {
            *out.entry(thread_group(&comm)).or_insert(0) += ticks;
        }
    }
    out
}

/// `(VmRSS, VmHWM)` of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

fn system_ticks() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Number of CPUs.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// The processes a benchmark watches, by role.
#[derive(Debug, Clone, Default)]
pub struct Watched {
    /// `(role, pid)`, e.g. `("dispatcher", 1234)`.
    pub pids: Vec<(String, u32)>,
}

/// CPU ticks of every watched process at one instant.
#[derive(Debug, Clone)]
pub struct Snapshot {
    at: Instant,
    procs: BTreeMap<String, (u64, BTreeMap<&'static str, u64>)>,
    system: (u64, u64),
}

impl Snapshot {
    /// Reads `/proc` now.
    pub fn take(w: &Watched) -> Snapshot {
        let procs = w
            .pids
            .iter()
            .filter_map(|(role, pid)| {
                Some((role.clone(), (process_ticks(*pid)?, thread_ticks(*pid))))
            })
            .collect();
        Snapshot {
            at: Instant::now(),
            procs,
            system: system_ticks(),
        }
    }
}

/// CPU used by one process over an interval.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ProcCpu {
    /// CPU-seconds.
    pub cpu_s: f64,
    /// Average cores busy (`cpu_s / wall_s`).
    pub cores: f64,
    /// Cores by thread group ([`thread_group`]).
    pub threads: BTreeMap<String, f64>,
}

/// CPU over an interval, per watched process and for the whole machine.
#[derive(Debug, Clone, Serialize, Default)]
pub struct CpuSplit {
    /// The interval.
    pub wall_s: f64,
    /// Per role.
    pub procs: BTreeMap<String, ProcCpu>,
    /// Average cores busy on the machine, all processes (including ones not watched).
    pub machine_cores: f64,
}

impl CpuSplit {
    /// The CPU used between `a` and `b`.
    pub fn between(a: &Snapshot, b: &Snapshot) -> CpuSplit {
        let wall_s = b.at.duration_since(a.at).as_secs_f64().max(1e-6);
        let tck = clk_tck();
        let mut procs = BTreeMap::new();
        for (role, (t1, th1)) in &b.procs {
            let Some((t0, th0)) = a.procs.get(role) else {
                continue;
            };
            let cpu_s = t1.saturating_sub(*t0) as f64 / tck;
            let threads = th1
                .iter()
                .map(|(g, v)| {
                    let before = th0.get(g).copied().unwrap_or(0);
                    (
                        (*g).to_owned(),
                        v.saturating_sub(before) as f64 / tck / wall_s,
                    )
                })
                .collect();
            procs.insert(
                role.clone(),
                ProcCpu {
                    cpu_s,
                    cores: cpu_s / wall_s,
                    threads,
                },
            );
        }
        let busy = b.system.0.saturating_sub(a.system.0) as f64;
        let total = b.system.1.saturating_sub(a.system.1) as f64;
        let machine_cores = if total > 0.0 {
            busy / total * cpus() as f64
        } else {
            0.0
        };
        CpuSplit {
            wall_s,
            procs,
            machine_cores,
        }
    }

    /// Cores used by `role`, 0 when not watched.
    pub fn cores(&self, role: &str) -> f64 {
        self.procs.get(role).map_or(0.0, |p| p.cores)
    }

    /// CPU-seconds used by `role`.
    pub fn cpu_s(&self, role: &str) -> f64 {
        self.procs.get(role).map_or(0.0, |p| p.cpu_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_spaces_in_the_name_are_read() {
        let line = "42 (rdk:broker 1) S 1 2 3 4 5 6 7 8 9 10 250 30 0 0 20 0 1 0";
        assert_eq!(parse_stat(line), Some(("rdk:broker 1".to_owned(), 280)));
    }

    #[test]
    fn this_process_is_seen() {
        let me = std::process::id();
        let w = Watched {
            pids: vec![("bench".into(), me)],
        };
        let a = Snapshot::take(&w);
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        let b = Snapshot::take(&w);
        let split = CpuSplit::between(&a, &b);
        assert!(split.procs.contains_key("bench"));
        assert!(rss_kib(me).unwrap().0 > 0);
        assert!(thread_group("rdk:main") == "librdkafka");
    }
}

//! The output: the [`Report`] (machine, plan, build, every run of every
//! point with its summary) is written as JSON under [`RUNS_DIR`] and
//! rendered as a human table ([`table`]) printed at the end and written next
//! to the JSON.
//!
//! Runs are many and stay local: [`RUNS_DIR`] is git-ignored. The figures a
//! release quotes in `BENCHMARKS.md` are one run, copied to
//! `bench/results/v<version>.{json,txt}` and committed, one per release.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::scenarios::{Plan, Point};
use crate::stats::Spread;

/// Where runs are written by default, relative to the repository root (git-ignored).
pub const RUNS_DIR: &str = "bench/results/runs";

/// The machine the figures come from.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPUs.
    pub cpus: usize,
    /// `/proc/cpuinfo` model name.
    pub model: String,
    /// Memory, MiB.
    pub mem_mib: u64,
    /// `uname -sr`.
    pub kernel: String,
    /// Load average when the benchmark started.
    pub loadavg_start: String,
}

impl Machine {
    /// Reads `/proc`.
    pub fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_default();
        let mem_mib = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kib| kib / 1024);
        let kernel = std::process::Command::new("uname")
            .arg("-sr")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        Machine {
            cpus: crate::procstat::cpus(),
            model,
            mem_mib,
            kernel,
            loadavg_start: loadavg(),
        }
    }
}

/// `/proc/loadavg` as it reads now (empty where there is none).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// The checkout's short commit, with `-dirty` when the tree has changes (empty without git).
pub fn git_describe() -> String {
    let out = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(hookline_tests::repo_root())
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let dirty = !out(&["status", "--porcelain"]).is_empty();
    format!(
        "{}{}",
        out(&["rev-parse", "--short", "HEAD"]),
        if dirty { "-dirty" } else { "" }
    )
}

/// Everything a benchmark invocation found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// When it started (UTC).
    pub started: String,
    /// When it finished (UTC).
    pub finished: String,
    /// The command line.
    pub command: String,
    /// The machine.
    pub machine: Machine,
    /// The dispatcher binary measured.
    pub dispatcher_bin: String,
    /// The `hookline-api` binary measured (scenario 7).
    pub api_bin: String,
    /// `git describe --always --dirty` of the checkout.
    pub git: String,
    /// Extra dispatcher environment (tuning), if any.
    pub dispatcher_env: Vec<(String, String)>,
    /// Partitions per topic.
    pub partitions: i32,
    /// Sizes and counts.
    pub plan: Plan,
    /// The points.
    pub points: Vec<Point>,
}

fn fmt_spread(s: Option<&Spread>, unit: &str, prec: usize) -> String {
    match s {
        None => "-".into(),
        Some(s) if s.runs.len() <= 1 => format!("{:.prec$}{unit}", s.median),
        Some(s) => format!(
            "{:.prec$}{unit} [{:.prec$}–{:.prec$}]",
            s.median, s.min, s.max
        ),
    }
}

fn med(p: &Point, k: &str) -> Option<f64> {
    p.summary.get(k).map(|s| s.median)
}

/// The human table.
pub fn table(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Hookline benchmark — {} — {} × {} ({} MiB), {} — git {}",
        r.started, r.machine.cpus, r.machine.model, r.machine.mem_mib, r.machine.kernel, r.git
    );
    let _ = writeln!(
        out,
        "dispatcher: {}   runs per point: {} (median [min–max])",
        r.dispatcher_bin, r.plan.runs
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<10} {:<40} {:<44} {:<26} {:<18} cores: dispatcher / kafka / bench (machine) · RSS peak",
        "scenario", "point", "hookline", "baseline", "ratio"
    );
    for p in &r.points {
        let (h, b) = match p.kind.as_str() {
            "latency" => (
                format!(
                    "p50 {} p99 {} max {}",
                    fmt_spread(p.summary.get("p50_ms"), "", 2),
                    fmt_spread(p.summary.get("p99_ms"), "", 1),
                    fmt_spread(p.summary.get("max_ms"), " ms", 0)
                ),
                if p.summary.contains_key("baseline_p50_ms") {
                    format!(
                        "p50 {} p99 {} ms",
                        fmt_spread(p.summary.get("baseline_p50_ms"), "", 2),
                        fmt_spread(p.summary.get("baseline_p99_ms"), "", 1)
                    )
                } else {
                    "-".into()
                },
            ),
            "recovery" => (
                format!(
                    "all in {} after return ({})",
                    fmt_spread(p.summary.get("drain_after_return_s"), " s", 1),
                    fmt_spread(p.summary.get("drain_rate"), "/s", 0)
                ),
                "-".into(),
            ),
            _ => (
                fmt_spread(p.summary.get("rate"), "/s", 0),
                fmt_spread(p.summary.get("baseline_rate"), "/s", 0),
            ),
        };
        let cpu = if let Some(api) = med(p, "api_cores") {
            // Scenario 7: hookline-api instead of the dispatcher (and the kube-apiserver).
            let apiserver =
                med(p, "apiserver_cores").map_or(String::new(), |c| format!(" / apiserver {c:.2}"));
            format!(
                "api {api:.2} / {:.2} / {:.2}{apiserver} ({:.2})",
                med(p, "kafka_cores").unwrap_or(0.0),
                med(p, "bench_cores").unwrap_or(0.0),
                med(p, "machine_cores").unwrap_or(0.0),
            )
        } else {
            format!(
                "{:.2} / {:.2} / {:.2} ({:.2}) · {:.0} MiB",
                med(p, "dispatcher_cores").unwrap_or(0.0),
                med(p, "kafka_cores").unwrap_or(0.0),
                med(p, "bench_cores").unwrap_or(0.0),
                med(p, "machine_cores").unwrap_or(0.0),
                med(p, "rss_peak_mib").unwrap_or(0.0),
            )
        };
        let _ = writeln!(
            out,
            "{:<10} {:<40} {:<44} {:<26} {:<18} {}",
            p.scenario,
            p.name,
            h,
            b,
            fmt_spread(p.summary.get("ratio"), "", 2),
            cpu
        );
        let mut extra = Vec::new();
        if let Some(v) = med(p, "dispatcher_cpu_ms_per_1k") {
            extra.push(format!("dispatcher {v:.0} CPU-ms per 1,000 deliveries"));
        }
        if let Some(v) = med(p, "idle_dispatcher_cores") {
            extra.push(format!("idle {:.1}% of a core", v * 100.0));
        }
        if let Some(v) = med(p, "rss_idle_mib") {
            extra.push(format!("idle RSS {v:.0} MiB"));
        }
        if let Some(s) = p.summary.get("controller_ready_s") {
            extra.push(format!(
                "controller: all Ready in {}",
                fmt_spread(Some(s), " s", 1)
            ));
        }
        if let Some(s) = p.summary.get("drain_after_return_s") {
            extra.push(format!(
                "drained {} after the receiver returned",
                fmt_spread(Some(s), " s", 1)
            ));
        }
        if let Some(s) = p.summary.get("store_mib_per_million") {
            extra.push(format!(
                "store {} per million attempts",
                fmt_spread(Some(s), " MiB", 0)
            ));
        }
        if let Some(s) = p.summary.get("cpu_rate") {
            extra.push(format!("{} per CPU-second", fmt_spread(Some(s), "", 0)));
        }
        if let Some(s) = p.summary.get("batch_p99_ms") {
            extra.push(format!("p99 per batch {}", fmt_spread(Some(s), " ms", 0)));
        }
        if let Some(s) = p.summary.get("baseline_apiserver_cores") {
            extra.push(format!(
                "baseline cores: apiserver {}",
                fmt_spread(Some(s), "", 2)
            ));
        }
        if let Some(s) = p.summary.get("other_api_cores") {
            extra.push(format!(
                "other hookline-api processes {} cores",
                fmt_spread(Some(s), "", 2)
            ));
        }
        if let Some(v) = med(p, "postponed").filter(|v| *v > 0.0) {
            extra.push(format!("{v:.0} written to retry topics"));
        }
        if let Some(v) = med(p, "duplicates").filter(|v| *v > 0.0) {
            extra.push(format!("{v:.0} duplicates"));
        }
        if p.kind == "latency" && med(p, "rate").is_some_and(|r| r > 0.0) {
            extra.push(format!(
                "throughput {}",
                fmt_spread(p.summary.get("rate"), "/s", 0)
            ));
        }
        if !extra.is_empty() {
            let _ = writeln!(out, "{:<10} {:<40} {}", "", "", extra.join(" · "));
        }
        for n in &p.notes {
            let _ = writeln!(out, "{:<10} {:<40} note: {n}", "", "");
        }
    }
    out
}

/// `text` with the home directory written `~`, so results name no one's machine paths.
pub fn home_relative(text: &str) -> String {
    match std::env::var("HOME") {
        Ok(home) if home.len() > 1 => text.replace(&format!("{home}/"), "~/"),
        _ => text.to_owned(),
    }
}

/// Writes `<dir>/<stamp>.json`, `<dir>/<stamp>.txt` and `<dir>/latest.{json,txt}`.
///
/// # Errors
/// When the files cannot be written.
pub fn write(r: &Report, dir: &Path, stamp: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_string_pretty(r)?;
    let text = table(r);
    let (jp, tp) = (
        dir.join(format!("{stamp}.json")),
        dir.join(format!("{stamp}.txt")),
    );
    std::fs::write(&jp, &json)?;
    std::fs::write(&tp, &text)?;
    std::fs::write(dir.join("latest.json"), &json)?;
    std::fs::write(dir.join("latest.txt"), &text)?;
    Ok((jp, tp))
}

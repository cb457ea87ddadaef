//! Memory limits, enforced as a kubelet and the kernel's OOM killer would. At start
//! [`Enforcer::detect`] picks how, in this order: a cgroup v2 memory controller the runner can
//! delegate to children, the cgroup v1 memory controller, else a watchdog. Each run of a
//! container with `resources.limits.memory` ([`container_limit`]) gets a [`Guard`] from
//! [`Enforcer::attach`]: a child cgroup of its own with the limit, which the process joins
//! right after it is spawned, or a watchdog task. [`Guard::finish`] says whether the kernel (or
//! the watchdog) OOM-killed it and removes the cgroup; the container then reports
//! `OOMKilled`. A container without a memory limit runs as before, in no cgroup of its own.
//!
//! **Layout.** `<own cgroup>/hookline-podrunner/<state dir>/<pod uid>-<container>-<restart>`,
//! where `<own cgroup>` is the runner's memory cgroup (`/proc/self/cgroup`) under the
//! controller's mount point and `<state dir>` is the runner's `--state-dir` made a file name
//! ([`instance_name`]): two environments started from one shell (`make test` runs a
//! three-broker one beside the main one) never touch each other's cgroups.
//!
//! **Guarantees.** With a cgroup the kernel enforces the limit: memory + swap (v1
//! `memory.memsw.limit_in_bytes` where the kernel has it; v2 `memory.swap.max=0`), OOM kills
//! counted in `memory.oom_control` (v1) or `memory.events` (v2). At start the cgroups a previous
//! run of the same state dir left are emptied (SIGKILL to each pid in `cgroup.procs`) and
//! removed; on a clean shutdown the runner's directories are removed too.
//!
//! **Caveats.** The process joins its cgroup after `spawn` returns: the workspace forbids
//! `unsafe`, so there is no `pre_exec`, and a wrapper (`sh -c 'echo $$ >…; exec "$@"'`) would
//! turn a missing program into exit 127 instead of a `StartError`. Memory the process touched
//! before the move (the dynamic loader's first pages, a few MB at most) stays charged to the
//! runner's cgroup. The watchdog polls every 200 ms and sums `VmRSS` of the container's
//! process group: a process can overshoot by what it allocates in 200 ms, and a process that
//! left the group (`setsid`) is not counted.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use k8s_openapi::api::core::v1::Container;
use nix::sys::signal::Signal;
use tokio::task::JoinHandle;

use crate::process;

/// The `reason` of a container the kernel (or the watchdog) killed for its memory limit.
pub const REASON_OOM_KILLED: &str = "OOMKilled";

/// The directory under the runner's own cgroup that holds every instance's cgroups.
const BASE: &str = "hookline-podrunner";

/// How often the watchdog sums the RSS of a container's processes.
const WATCHDOG_PERIOD: Duration = Duration::from_millis(200);

/// A container's memory limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// In bytes.
    pub bytes: u64,
    /// As the spec gives it (`64Mi`), for logs.
    pub quantity: String,
}

/// The `resources.limits.memory` of `spec`: `None` when absent or zero (no limit, as for the
/// kubelet); `Err` when the quantity cannot be parsed.
pub fn container_limit(spec: &Container) -> Result<Option<Limit>, String> {
    let Some(q) = spec
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("memory"))
    else {
        return Ok(None);
    };
    match parse_quantity(&q.0) {
        Some(0) => Ok(None),
        Some(bytes) => Ok(Some(Limit {
            bytes,
            quantity: q.0.clone(),
        })),
        None => Err(format!("cannot parse memory limit {:?}", q.0)),
    }
}

/// A Kubernetes quantity in bytes, rounded up: plain (`128974848`, `1.5`), decimal SI
/// (`n u m k M G T P E`), binary SI (`Ki Mi Gi Ti Pi Ei`) or a decimal exponent (`1e9`, `2E3`).
/// `None` for anything else, a negative value, or more than `u64::MAX`.
pub fn parse_quantity(text: &str) -> Option<u64> {
    let text = text.trim();
    let text = text.strip_prefix('+').unwrap_or(text);
    let end = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(end);
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if (int.is_empty() && frac.is_empty()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut mantissa: u128 = 0;
    for d in int.bytes().chain(frac.bytes()) {
        mantissa = mantissa
            .checked_mul(10)?
            .checked_add(u128::from(d - b'0'))?;
    }
    let pow10 = |e: u32| 10u128.checked_pow(e);
    let (mul, div) = match suffix {
        "" => (1, 1),
        "n" => (1, pow10(9)?),
        "u" => (1, pow10(6)?),
        "m" => (1, 1000),
        "k" => (pow10(3)?, 1),
        "M" => (pow10(6)?, 1),
        "G" => (pow10(9)?, 1),
        "T" => (pow10(12)?, 1),
        "P" => (pow10(15)?, 1),
        "E" => (pow10(18)?, 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        "Ei" => (1 << 60, 1),
        _ => {
            let exp: i32 = suffix.strip_prefix(['e', 'E'])?.parse().ok()?;
            let e = pow10(exp.unsigned_abs().min(40))?;
            if exp >= 0 { (e, 1) } else { (1, e) }
        }
    };
    let div = div.checked_mul(pow10(u32::try_from(frac.len()).ok()?)?)?;
    let value = mantissa.checked_mul(mul)?.div_ceil(div);
    u64::try_from(value).ok()
}

/// The cgroup version in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The v1 memory controller's own hierarchy.
    V1,
    /// The unified hierarchy.
    V2,
}

impl Version {
    /// `cgroup v1` or `cgroup v2`, for logs.
    fn name(self) -> &'static str {
        match self {
            Self::V1 => "cgroup v1",
            Self::V2 => "cgroup v2",
        }
    }

    /// The file of the memory limit, and the file and value of the memory + swap limit.
    fn limit_files(self, bytes: u64) -> (&'static str, &'static str, String) {
        match self {
            Self::V1 => (
                "memory.limit_in_bytes",
                "memory.memsw.limit_in_bytes",
                bytes.to_string(),
            ),
            Self::V2 => ("memory.max", "memory.swap.max", "0".into()),
        }
    }

    /// The file with the `oom_kill N` line.
    fn events_file(self) -> &'static str {
        match self {
            Self::V1 => "memory.oom_control",
            Self::V2 => "memory.events",
        }
    }
}

/// How the runner enforces memory limits on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enforcer {
    /// A child cgroup per container run, under `dir` (this runner's instance directory).
    Cgroup {
        /// v1 or v2.
        version: Version,
        /// `<own cgroup>/hookline-podrunner/<instance>`.
        dir: PathBuf,
    },
    /// No cgroup can be made: a watchdog polls the RSS of each limited container.
    Watchdog,
}

/// `state_dir` as the name of the runner's instance directory: the path with every character
/// but `[A-Za-z0-9._-]` made `_`, at most its last 200 characters.
pub fn instance_name(state_dir: &Path) -> String {
    let name: String = state_dir
        .to_string_lossy()
        .trim_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let skip = name.chars().count().saturating_sub(200);
    let name: String = name.chars().skip(skip).collect();
    if name.is_empty() { "root".into() } else { name }
}

/// The runner's own cgroup path in `proc_self_cgroup` (`/proc/self/cgroup`): the `0::` line for
/// v2, the line whose controllers include `memory` for v1.
fn own_path(proc_self_cgroup: &str, version: Version) -> Option<&str> {
    proc_self_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let wanted = match version {
            Version::V2 => id == "0" && controllers.is_empty(),
            Version::V1 => controllers.split(',').any(|c| c == "memory"),
        };
        wanted.then_some(path)
    })
}

/// Where the hierarchy is mounted, from `proc_mounts` (`/proc/self/mounts`).
fn mount_point(proc_mounts: &str, version: Version) -> Option<PathBuf> {
    proc_mounts.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (point, fstype, options) = (fields.get(1)?, fields.get(2)?, fields.get(3)?);
        let wanted = match version {
            Version::V2 => *fstype == "cgroup2",
            Version::V1 => *fstype == "cgroup" && options.split(',').any(|o| o == "memory"),
        };
        wanted.then(|| PathBuf::from(point))
    })
}

/// The number on the `oom_kill N` line of `memory.oom_control` or `memory.events`.
fn oom_kills(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
        .unwrap_or(0)
}

/// `VmRSS` of a `/proc/<pid>/status`, in bytes.
fn vm_rss(status: &str) -> Option<u64> {
    let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kb: u64 = kb.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kb.checked_mul(1024)
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value)
        .map_err(|e| format!("cannot write {value:?} to {}: {e}", path.display()))
}

/// Enables the memory controller for the children of `dir` (cgroup v2).
fn enable_memory(dir: &Path) -> Result<(), String> {
    let control = dir.join("cgroup.subtree_control");
    let enabled = std::fs::read_to_string(&control).unwrap_or_default();
    if enabled.split_whitespace().any(|c| c == "memory") {
        return Ok(());
    }
    write(&control, "+memory")
}

/// SIGKILLs every process in cgroup `dir` and removes it, retrying for up to 2 s while it is
/// not empty yet.
async fn remove_cgroup(dir: &Path) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..40 {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        }
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("cannot remove cgroup {}: {last}", dir.display()))
}

/// Removes every child cgroup of `dir` (the cgroups of a previous run), killing what is in them.
async fn remove_children(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten().filter(|e| e.path().is_dir()) {
        match remove_cgroup(&entry.path()).await {
            Ok(()) => removed += 1,
            Err(e) => tracing::warn!(error = %e, "cannot remove a cgroup of a previous run"),
        }
    }
    removed
}

/// Makes (or empties) `<own cgroup>/hookline-podrunner/<instance>` in hierarchy `version`.
async fn prepare(version: Version, instance: &str) -> Result<PathBuf, String> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let path = own_path(&cgroups, version).ok_or("no line for it in /proc/self/cgroup")?;
    let mount = mount_point(&mounts, version).ok_or("not mounted")?;
    let own = mount.join(path.trim_start_matches('/'));
    if !own.is_dir() {
        return Err(format!(
            "the runner's cgroup {} is not there",
            own.display()
        ));
    }
    if version == Version::V2 {
        let controllers =
            std::fs::read_to_string(own.join("cgroup.controllers")).unwrap_or_default();
        if !controllers.split_whitespace().any(|c| c == "memory") {
            return Err(format!("no memory controller in {}", own.display()));
        }
        // Fails (EBUSY) when the runner's own cgroup holds processes: a v2 cgroup with
        // processes cannot give controllers to children. Moving the runner is not worth it.
        enable_memory(&own)?;
    }
    let dir = own.join(BASE).join(instance);
    for d in [own.join(BASE), dir.clone()] {
        if !d.is_dir() {
            std::fs::create_dir(&d).map_err(|e| format!("cannot make {}: {e}", d.display()))?;
        }
        if version == Version::V2 {
            enable_memory(&d)?;
        }
    }
    let removed = remove_children(&dir).await;
    if removed > 0 {
        tracing::info!(removed, dir = %dir.display(), "removed cgroups of a previous run");
    }
    Ok(dir)
}

impl Enforcer {
    /// Finds how limits can be enforced (cgroup v2, cgroup v1, else the watchdog), prepares
    /// the runner's cgroup directory for `state_dir` (removing a previous run's leftovers) and
    /// logs which.
    pub async fn detect(state_dir: &Path) -> Self {
        let instance = instance_name(state_dir);
        let mut skipped = Vec::new();
        for version in [Version::V2, Version::V1] {
            match prepare(version, &instance).await {
                Ok(dir) => {
                    let enforcer = Self::Cgroup { version, dir };
                    let skipped = skipped.join("; ");
                    tracing::info!(mechanism = %enforcer, %skipped, "memory limits enforced by the kernel");
                    return enforcer;
                }
                Err(why) => skipped.push(format!("{}: {why}", version.name())),
            }
        }
        let skipped = skipped.join("; ");
        tracing::warn!(%skipped, "no usable memory cgroup: memory limits enforced by a watchdog polling RSS every 200 ms");
        Self::Watchdog
    }

    /// Puts process `pid` (a process group leader, just spawned) under `limit` in a cgroup named
    /// `name`, or under a watchdog when there is no cgroup or it cannot be made.
    pub fn attach(&self, name: &str, pid: u32, limit: &Limit) -> Guard {
        if let Self::Cgroup { version, dir } = self {
            let dir = dir.join(name);
            match join_cgroup(*version, &dir, pid, limit.bytes) {
                Ok(()) => {
                    return Guard::Cgroup {
                        version: *version,
                        dir,
                    };
                }
                Err(e) => {
                    tracing::warn!(error = %e, pid, "cannot put the process in a memory cgroup; using the watchdog");
                    let _ = std::fs::remove_dir(&dir);
                }
            }
        }
        let killed = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(watchdog(pid, limit.bytes, killed.clone()));
        Guard::Watchdog(Watchdog { killed, task })
    }

    /// Removes the runner's cgroup directory (all containers must have finished).
    pub fn release(&self) {
        if let Self::Cgroup { dir, .. } = self {
            let _ = std::fs::remove_dir(dir);
            if let Some(base) = dir.parent() {
                // Another instance's directory may still be there.
                let _ = std::fs::remove_dir(base);
            }
        }
    }
}

impl std::fmt::Display for Enforcer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cgroup { version, dir } => write!(f, "{} ({})", version.name(), dir.display()),
            Self::Watchdog => f.write_str("watchdog"),
        }
    }
}

/// Makes cgroup `dir` with the limit and moves `pid` into it.
fn join_cgroup(version: Version, dir: &Path, pid: u32, bytes: u64) -> Result<(), String> {
    std::fs::create_dir(dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
    let (limit_file, swap_file, swap_value) = version.limit_files(bytes);
    write(&dir.join(limit_file), &bytes.to_string())?;
    let swap = dir.join(swap_file);
    if swap.exists()
        && let Err(e) = write(&swap, &swap_value)
    {
        // Without swap accounting the limit still holds for memory; swap is rare here.
        tracing::debug!(error = %e, "cannot limit swap");
    }
    write(&dir.join("cgroup.procs"), &pid.to_string())
}

/// Kills process group `pgid` once the summed RSS of its processes exceeds `limit`.
async fn watchdog(pgid: u32, limit: u64, killed: Arc<AtomicBool>) {
    let mut tick = tokio::time::interval(WATCHDOG_PERIOD);
    loop {
        tick.tick().await;
        let rss: u64 = process::group_members(pgid)
            .into_iter()
            .filter_map(|pid| vm_rss(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?))
            .sum();
        if rss > limit {
            tracing::debug!(
                pgid,
                rss,
                limit,
                "over the memory limit: killing the process group"
            );
            killed.store(true, Ordering::SeqCst);
            process::signal_group(pgid, Signal::SIGKILL);
            return;
        }
    }
}

/// A watchdog task, stopped when dropped (its process group id could be reused later).
pub struct Watchdog {
    killed: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How one run of a container is held to its limit.
pub enum Guard {
    /// In a cgroup of its own.
    Cgroup {
        /// v1 or v2.
        version: Version,
        /// The container run's cgroup.
        dir: PathBuf,
    },
    /// Under a watchdog.
    Watchdog(Watchdog),
}

impl Guard {
    /// After the process ended: whether it was OOM-killed (the cgroup's `oom_kill` counter went
    /// up, or the watchdog killed it). Kills what is left in the cgroup and removes it.
    pub async fn finish(self) -> bool {
        match self {
            Self::Cgroup { version, dir } => {
                let events = std::fs::read_to_string(dir.join(version.events_file()));
                let oom = oom_kills(&events.unwrap_or_default()) > 0;
                if let Err(e) = remove_cgroup(&dir).await {
                    tracing::warn!(error = %e, "cannot remove a container's cgroup");
                }
                oom
            }
            Self::Watchdog(w) => w.killed.load(Ordering::SeqCst),
        }
    }
}

#[cfg(test)]
#[path = "memory_tests.rs"]
mod tests;

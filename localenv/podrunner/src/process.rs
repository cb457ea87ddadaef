//! Host processes for containers. [`spawn`] starts an [`Invocation`] in its own process group
//! with exactly the given environment, stdout and stderr appended to the container's log
//! after a marker line; [`stop`] sends SIGTERM to the group, waits out the grace period and
//! sends SIGKILL. Pid files record what runs so that [`kill_leftovers`] can end the
//! processes of a previous run — by recorded pid and process group, never by name.

use std::{
    fs::OpenOptions,
    io::Write as _,
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    time::Duration,
};

use nix::{
    errno::Errno,
    sys::signal::{Signal, killpg},
    unistd::Pid,
};
use tokio::process::{Child, Command};

use crate::{
    error::{Error, Result},
    image::Invocation,
};

/// Starts `inv` in `dir` as the leader of a new process group, with `env` as its whole
/// environment and its output appended to `log` after `marker`.
///
/// # Errors
/// When the log cannot be opened or the program cannot be started.
pub fn spawn(
    inv: &Invocation,
    env: &[(String, String)],
    dir: &Path,
    log: &Path,
    marker: &str,
) -> Result<Child> {
    let mut out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(Error::io(log))?;
    writeln!(out, "{marker}").map_err(Error::io(log))?;
    let err = out.try_clone().map_err(Error::io(log))?;
    let mut cmd = Command::new(&inv.program);
    cmd.args(&inv.args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .process_group(0)
        .kill_on_drop(false);
    cmd.spawn().map_err(Error::io(&inv.program))
}

/// Sends `signal` to the process group led by `pgid`; a group that is gone is no error.
pub fn signal_group(pgid: u32, signal: Signal) {
    let Ok(raw) = i32::try_from(pgid) else { return };
    if raw <= 1 {
        return;
    }
    match killpg(Pid::from_raw(raw), signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pgid, %signal, error = %e, "cannot signal process group"),
    }
}

/// Stops a running child: SIGTERM to its group, up to `grace` to exit, then SIGKILL.
///
/// # Errors
/// When waiting for the child fails.
pub async fn stop(child: &mut Child, pgid: u32, grace: Duration) -> std::io::Result<ExitStatus> {
    signal_group(pgid, Signal::SIGTERM);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => {
            // Children of the process may linger in its group.
            signal_group(pgid, Signal::SIGKILL);
            status
        }
        Err(_) => {
            signal_group(pgid, Signal::SIGKILL);
            child.wait().await
        }
    }
}

/// Exit code and signal as the container status reports them: a process killed by a
/// signal exits with 128 + signal.
pub fn exit_info(status: ExitStatus) -> (i32, Option<i32>) {
    match (status.code(), status.signal()) {
        (Some(code), _) => (code, None),
        (None, Some(sig)) => (128 + sig, Some(sig)),
        (None, None) => (-1, None),
    }
}

/// Writes `pid` to `path` (just the number, as tests and scripts read it).
///
/// # Errors
/// When the file cannot be written.
pub fn write_pid(path: &Path, pid: u32) -> Result<()> {
    std::fs::write(path, format!("{pid}\n")).map_err(Error::io(path))
}

/// Removes a pid file; a missing one is fine.
pub fn remove_pid(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove pid file");
    }
}

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, 100 on Linux).
const USER_HZ: u64 = 100;

/// What `/proc/<pid>/stat` says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    state: char,
    pgrp: u32,
    /// Start time in clock ticks after boot.
    start_ticks: u64,
}

/// Parses a `/proc/<pid>/stat` line (the command name may contain spaces and parentheses,
/// so fields are counted after the last `)`).
fn parse_stat(stat: &str) -> Option<Stat> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

/// Boot time (seconds since the epoch) from `/proc/stat`.
fn boot_time() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
}

/// Whether `pid` is a live (non-zombie) process leading its own process group that started
/// no later than `written` (its pid file's mtime, in epoch seconds) — i.e. the process the
/// pid file was written for, not a later process that reused the pid.
fn is_recorded_group_leader(pid: u32, written: Option<u64>) -> bool {
    let Some(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .as_deref()
        .and_then(parse_stat)
    else {
        return false;
    };
    let started = boot_time().map(|b| b + stat.start_ticks / USER_HZ);
    let started_before_file = match (started, written) {
        (Some(started), Some(written)) => started <= written + 1,
        _ => true,
    };
    stat.state != 'Z' && stat.pgrp == pid && started_before_file
}

/// The live (non-zombie) processes of process group `pgid`, from `/proc/*/stat`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .as_deref()
                .and_then(parse_stat)
                .is_some_and(|s| s.pgrp == pgid && s.state != 'Z')
        })
        .collect()
}

fn mtime_secs(path: &Path) -> Option<u64> {
    let modified = std::fs::metadata(path).ok()?.modified().ok()?;
    Some(
        modified
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs(),
    )
}

/// The pid files under `state_dir` (`<pod dir>/<container>.pid`).
fn pid_files(state_dir: &Path) -> Vec<PathBuf> {
    let Ok(pods) = std::fs::read_dir(state_dir) else {
        return Vec::new();
    };
    let mut files = Vec::new();
    for pod in pods.flatten() {
        let Ok(entries) = std::fs::read_dir(pod.path()) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "pid") {
                files.push(path);
            }
        }
    }
    files
}

/// Ends the processes a previous run of the runner left behind, as recorded in the pid
/// files under `state_dir`: SIGTERM to each recorded process group that still lives (and
/// started before its pid file was written), up to 5 s, then SIGKILL. Removes the pid files.
/// Returns how many groups were signalled.
pub async fn kill_leftovers(state_dir: &Path) -> usize {
    let own = std::process::id();
    let mut groups = Vec::new();
    for file in pid_files(state_dir) {
        let pid = std::fs::read_to_string(&file)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        if let Some(pid) = pid
            && pid != own
            && is_recorded_group_leader(pid, mtime_secs(&file))
        {
            tracing::info!(pid, file = %file.display(), "stopping process left from a previous run");
            signal_group(pid, Signal::SIGTERM);
            groups.push(pid);
        }
        remove_pid(&file);
    }
    for _ in 0..50 {
        if groups
            .iter()
            .all(|pid| !is_recorded_group_leader(*pid, None))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for pid in &groups {
        signal_group(*pid, Signal::SIGKILL);
    }
    groups.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_line_with_spaces_in_the_command_name_parses() {
        let line =
            "1234 (my (odd) prog) S 1 1234 1234 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 987654 1000";
        let stat = parse_stat(line).unwrap();
        assert_eq!(
            (stat.state, stat.pgrp, stat.start_ticks),
            ('S', 1234, 987_654)
        );
    }

    #[tokio::test]
    async fn a_process_started_after_its_pid_file_was_written_is_not_a_leftover() {
        let dir = std::env::temp_dir().join(format!("podrunner-reuse-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let inv = Invocation {
            program: PathBuf::from("/bin/sleep"),
            args: vec!["5".into()],
        };
        let mut child = spawn(&inv, &[], &dir, &dir.join("c.log"), "start").unwrap();
        let pid = child.id().unwrap();
        let now = mtime_secs(&dir.join("c.log")).unwrap();
        assert!(is_recorded_group_leader(pid, Some(now)));
        assert!(!is_recorded_group_leader(pid, Some(now - 60)));
        signal_group(pid, Signal::SIGKILL);
        child.wait().await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn process_killed_by_signal_reports_128_plus_signal() {
        assert_eq!(exit_info(ExitStatus::from_raw(9)), (137, Some(9)));
        assert_eq!(exit_info(ExitStatus::from_raw(3 << 8)), (3, None));
    }

    #[tokio::test]
    async fn spawned_process_gets_only_the_given_env_and_appends_to_its_log() {
        let dir = std::env::temp_dir().join(format!("podrunner-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("c.log");
        let inv = Invocation {
            program: PathBuf::from("/bin/sh"),
            args: vec![
                "-c".into(),
                "echo \"A=$A HOME=${HOME:-none}\"; echo err >&2".into(),
            ],
        };
        for round in 0..2 {
            let env = vec![("A".to_string(), round.to_string())];
            let mut child = spawn(&inv, &env, &dir, &log, &format!("=== start {round}")).unwrap();
            assert!(child.wait().await.unwrap().success());
        }
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            text,
            "=== start 0\nA=0 HOME=none\nerr\n=== start 1\nA=1 HOME=none\nerr\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn stop_kills_a_process_that_ignores_sigterm() {
        let dir = std::env::temp_dir().join(format!("podrunner-stop-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let inv = Invocation {
            program: PathBuf::from("/bin/sh"),
            args: vec!["-c".into(), "trap '' TERM; sleep 30 & wait".into()],
        };
        let mut child = spawn(&inv, &[], &dir, &dir.join("c.log"), "start").unwrap();
        let pid = child.id().unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let status = stop(&mut child, pid, Duration::from_millis(300))
            .await
            .unwrap();
        assert_eq!(exit_info(status), (137, Some(9)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

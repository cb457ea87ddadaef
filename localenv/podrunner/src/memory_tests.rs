//! Unit tests for [`super`]: the parsers on texts as the kernel writes them, and two real
//! processes held to a limit — by the watchdog, and by whatever [`Enforcer::detect`] finds on
//! this machine (a cgroup directory of the test's own, named after a temporary state dir).

use std::time::Duration;

use super::*;
use crate::image::Invocation;

const MI: u64 = 1 << 20;

#[test]
fn binary_and_decimal_suffixes_and_exponents_parse_to_bytes() {
    let cases = [
        ("128974848", 128_974_848),
        ("64Mi", 64 * MI),
        ("1Ki", 1024),
        ("2Gi", 2 << 30),
        ("1Ti", 1 << 40),
        ("1k", 1000),
        ("129M", 129_000_000),
        ("1G", 1_000_000_000),
        ("1T", 1_000_000_000_000),
        ("1e9", 1_000_000_000),
        ("129e6", 129_000_000),
        ("2E3", 2000),
        ("1E", 1_000_000_000_000_000_000),
        ("+5", 5),
    ];
    for (text, bytes) in cases {
        assert_eq!(parse_quantity(text), Some(bytes), "{text}");
    }
}

#[test]
fn fractions_round_up_to_whole_bytes() {
    assert_eq!(parse_quantity("1.5Gi"), Some(3 << 29));
    assert_eq!(parse_quantity("0.5Ki"), Some(512));
    assert_eq!(parse_quantity("100m"), Some(1));
    assert_eq!(parse_quantity("1.0001"), Some(2));
    assert_eq!(parse_quantity(".5k"), Some(500));
}

#[test]
fn malformed_negative_or_too_large_quantities_are_refused() {
    for text in [
        "", "Mi", "-1", "1.2.3", "1Xi", "1 Mi", "1e", "1e1.5", "100Ei", "1e40",
    ] {
        assert_eq!(parse_quantity(text), None, "{text}");
    }
}

fn container(limits: serde_json::Value) -> Container {
    serde_json::from_value(serde_json::json!({"name": "c", "resources": {"limits": limits}}))
        .unwrap()
}

#[test]
fn a_container_limit_comes_from_limits_memory_and_zero_means_none() {
    let limit = container_limit(&container(
        serde_json::json!({"memory": "64Mi", "cpu": "1"}),
    ));
    assert_eq!(
        limit,
        Ok(Some(Limit {
            bytes: 64 * MI,
            quantity: "64Mi".into()
        }))
    );
    assert_eq!(
        container_limit(&container(serde_json::json!({"cpu": "1"}))),
        Ok(None)
    );
    assert_eq!(
        container_limit(&container(serde_json::json!({"memory": "0"}))),
        Ok(None)
    );
    assert!(container_limit(&container(serde_json::json!({"memory": "lots"}))).is_err());
    let mut c = container(serde_json::json!({}));
    c.resources = None;
    assert_eq!(container_limit(&c), Ok(None));
}

/// `/proc/self/cgroup` and `/proc/self/mounts` of this kind of machine: v1 controllers, and a
/// cgroup2 hierarchy without controllers at `/sys/fs/cgroup/unified`.
const V1_CGROUP: &str =
    "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/f94b\n2:cpu,cpuacct:/\n0::/\n";
const V1_MOUNTS: &str = "tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0\n\
    cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n\
    cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\n\
    cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n";

#[test]
fn own_cgroup_and_mount_point_are_found_for_each_version() {
    assert_eq!(own_path(V1_CGROUP, Version::V1), Some("/process_api/f94b"));
    assert_eq!(own_path(V1_CGROUP, Version::V2), Some("/"));
    assert_eq!(
        mount_point(V1_MOUNTS, Version::V1),
        Some(PathBuf::from("/sys/fs/cgroup/memory"))
    );
    assert_eq!(
        mount_point(V1_MOUNTS, Version::V2),
        Some(PathBuf::from("/sys/fs/cgroup/unified"))
    );
    let unified = "0::/user.slice/session-1.scope\n";
    assert_eq!(own_path(unified, Version::V1), None);
    assert_eq!(
        own_path(unified, Version::V2),
        Some("/user.slice/session-1.scope")
    );
    assert_eq!(
        mount_point(
            "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n",
            Version::V1
        ),
        None
    );
}

#[test]
fn oom_kill_counters_are_read_from_v1_and_v2_files() {
    let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n";
    let v2 = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n";
    assert_eq!(oom_kills(v1), 1);
    assert_eq!(oom_kills(v2), 2);
    assert_eq!(
        oom_kills("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n"),
        0
    );
    assert_eq!(oom_kills(""), 0);
}

#[test]
fn vm_rss_is_read_in_bytes() {
    let status = "Name:\tpython3\nVmPeak:\t  300000 kB\nVmRSS:\t   46292 kB\nThreads:\t1\n";
    assert_eq!(vm_rss(status), Some(46_292 * 1024));
    assert_eq!(vm_rss("Name:\tkthreadd\n"), None);
}

#[test]
fn the_state_dir_becomes_one_safe_file_name() {
    let name = instance_name(Path::new("/srv/hookline state/run/pods"));
    assert_eq!(name, "srv_hookline_state_run_pods");
    assert_eq!(instance_name(Path::new("/")), "root");
    let long = PathBuf::from(format!("/{}", "a/".repeat(300)));
    assert_eq!(instance_name(&long).len(), 200);
}

/// Runs `python3` allocating and touching `mib` MiB (then sleeping 30 s) under `enforcer`
/// with a limit of `limit_mib`, for up to `wait` (then the test kills it); returns the exit code
/// and whether the guard reports an OOM kill.
async fn run_python(
    enforcer: &Enforcer,
    name: &str,
    (mib, limit_mib): (u64, u64),
    wait: Duration,
) -> (i32, bool) {
    let dir = std::env::temp_dir().join(format!("podrunner-mem-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let inv = Invocation {
        program: PathBuf::from("python3"),
        args: vec![
            "-c".into(),
            format!("import time; b = b'x' * ({mib} << 20); time.sleep(30)"),
        ],
    };
    let env: Vec<(String, String)> = ["PATH", "HOME"]
        .iter()
        .filter_map(|k| Some((k.to_string(), std::env::var(k).ok()?)))
        .collect();
    let mut child = process::spawn(&inv, &env, &dir, &dir.join("c.log"), "start").unwrap();
    let pid = child.id().unwrap();
    let limit = Limit {
        bytes: limit_mib * MI,
        quantity: format!("{limit_mib}Mi"),
    };
    let guard = enforcer.attach(name, pid, &limit);
    let status = match tokio::time::timeout(wait, child.wait()).await {
        Ok(status) => status.unwrap(),
        Err(_) => {
            // Within its limit: still running, as it should.
            process::signal_group(pid, Signal::SIGKILL);
            child.wait().await.unwrap()
        }
    };
    let oom = guard.finish().await;
    std::fs::remove_dir_all(&dir).unwrap();
    (process::exit_info(status).0, oom)
}

#[tokio::test]
async fn the_watchdog_kills_a_process_group_over_its_limit() {
    let (code, oom) = run_python(
        &Enforcer::Watchdog,
        "watchdog",
        (256, 64),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!((code, oom), (137, true));
}

#[tokio::test]
async fn the_detected_enforcer_kills_only_the_process_over_its_limit() {
    let state_dir =
        std::env::temp_dir().join(format!("podrunner-mem-state-{}", std::process::id()));
    let enforcer = Enforcer::detect(&state_dir).await;
    let (over, under) = tokio::join!(
        run_python(&enforcer, "over", (256, 64), Duration::from_secs(10)),
        run_python(&enforcer, "under", (16, 128), Duration::from_secs(3)),
    );
    assert_eq!(over, (137, true), "{enforcer}");
    assert_eq!(
        under,
        (137, false),
        "{enforcer} (killed by the test after 3 s)"
    );
    let Enforcer::Cgroup { dir, .. } = &enforcer else {
        return;
    };
    assert!(!dir.join("over").exists() && !dir.join("under").exists());

    // A cgroup left by a killed runner, with a process in it: the next start empties and
    // removes it.
    let stale = dir.join("stale");
    std::fs::create_dir(&stale).unwrap();
    let mut sleeper = tokio::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let pid = sleeper.id().unwrap();
    std::fs::write(stale.join("cgroup.procs"), pid.to_string()).unwrap();
    assert_eq!(Enforcer::detect(&state_dir).await, enforcer);
    assert!(!stale.exists());
    let status = tokio::time::timeout(Duration::from_secs(5), sleeper.wait()).await;
    assert_eq!(process::exit_info(status.unwrap().unwrap()), (137, Some(9)));

    enforcer.release();
    assert!(!dir.exists(), "{} is left", dir.display());
}

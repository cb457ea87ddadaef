//! The benchmark harness still works: `hookline-bench --smoke` (a few hundred events through a
//! backlog drain and a 100 events/s open-loop run, with its raw-client baseline) runs against the
//! local environment with the debug dispatcher and writes a report in which every event arrived
//! once and latencies were measured. Figures are not checked: a smoke run on a busy machine proves
//! nothing about speed (that is `make bench`).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use hookline_tests::{Env, install};

fn bench_bin() -> PathBuf {
    // target/<profile>/deps/bench_smoke-<hash> → target/<profile>/hookline-bench
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    dir.join("hookline-bench")
}

#[tokio::test]
async fn a_smoke_run_delivers_every_event_once_and_writes_a_report() {
    let env = Env::get().unwrap();
    let client = env.client().await.unwrap();
    install::controller(&env, &client).await.unwrap();
    let bin = bench_bin();
    assert!(
        bin.exists(),
        "{} is missing: cargo build -p hookline-bench",
        bin.display()
    );
    let out = std::env::temp_dir().join(format!("hookline-bench-smoke-{}", std::process::id()));
    let mut child = Command::new(&bin)
        .arg("--smoke")
        .arg("--out")
        .arg(&out)
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("hookline-bench --smoke did not finish within 5 minutes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(status.success(), "hookline-bench --smoke failed: {status}");

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("latest.json")).unwrap()).unwrap();
    let points = report["points"].as_array().unwrap();
    assert_eq!(points.len(), 2, "one throughput and one latency point");
    for p in points {
        for run in p["hookline"]
            .as_array()
            .unwrap()
            .iter()
            .chain(p["baseline"].as_array().unwrap())
        {
            assert_eq!(
                run["delivered"], run["expected"],
                "{} {}: every event arrives",
                p["name"], run["system"]
            );
            assert_eq!(run["duplicates"], 0, "{}: no duplicates", p["name"]);
        }
        assert_eq!(p["hookline"].as_array().unwrap().len(), 1);
        assert_eq!(p["baseline"].as_array().unwrap().len(), 1);
    }
    let latency = &points[1]["hookline"][0]["latency"];
    assert!(
        latency["samples"].as_u64().unwrap() > 0,
        "latencies measured"
    );
    assert!(
        points[1]["hookline"][0]["cpu"]["procs"]["dispatcher"].is_object(),
        "the dispatcher's CPU is accounted"
    );
    let _ = std::fs::remove_dir_all(&out);
}

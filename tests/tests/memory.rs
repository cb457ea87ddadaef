//! Memory bounded in bytes, end to end: a tenant's dispatcher Pod runs under the chart's
//! memory limit (256 MiB), which the pod runner enforces with a cgroup as a cluster's kernel
//! does. A backlog of 4,000 events of 64 KiB (256 MB of records, twice that as events and
//! signed bodies: far more than fits) drains to a slowish receiver. The dispatcher must read
//! its limit from its cgroup, hold only what its budget allows, never be OOM-killed (no
//! restart), keep its peak RSS under the limit — and deliver every event.

use std::time::Duration;

use hookline_tests::{
    events::event,
    install, kafka, pods,
    receiver::{Behavior, Receiver},
    tenant::Tenant,
};
use serde_json::json;

const EVENTS: usize = 4_000;
const DATA_BYTES: usize = 64 * 1024;
/// The chart's `dispatcher.resources.limits.memory`.
const LIMIT: u64 = 256 << 20;

/// The value of an unlabelled sample in a Prometheus text page.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `VmHWM` (peak resident set) of `pid`, in bytes.
fn peak_rss(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[tokio::test]
async fn a_backlog_of_large_events_drains_under_the_memory_limit_without_an_oom_kill() {
    let _dump = hookline_tests::LogDump::new();
    let t = Tenant::create("memory").await;
    let rx = Receiver::start().await.unwrap();
    rx.program("/big", Behavior::delayed(Duration::from_millis(20)));
    t.webhook(
        "big",
        &rx.url("/big"),
        &["a.*"],
        json!({"delivery": {"maxInFlight": 16}}),
    )
    .await;

    let pod = t.dispatcher_pods().await[0]
        .metadata
        .name
        .clone()
        .expect("a dispatcher Pod name");
    let pid = pods::pid(install::OPERATOR_NAMESPACE, &pod, "dispatcher").expect("its pid");
    let metrics =
        hookline_tests::wait::until(Duration::from_secs(30), "the dispatcher's metrics", || {
            let t = &t;
            async move {
                Ok(t.dispatcher_get("/metrics")
                    .await
                    .ok()
                    .filter(|m| m.contains("hookline_dispatcher_")))
            }
        })
        .await
        .unwrap();
    assert_eq!(
        metric(&metrics, "hookline_dispatcher_memory_limit_bytes"),
        Some(LIMIT as f64),
        "the dispatcher must find the Pod's memory limit in its cgroup (is the pod runner enforcing limits? see its log)"
    );

    let data = "x".repeat(DATA_BYTES);
    let producer = kafka::producer(&t.env).unwrap();
    let records = (0..EVENTS).map(|i| {
        (
            format!("k{}", i % 64),
            event(&format!("evt_{i}"), "a.b", json!({"i": i, "pad": data})),
        )
    });
    kafka::produce_many(&producer, &t.topics().events, records)
        .await
        .unwrap();

    let got = rx
        .wait_for("/big", EVENTS, Duration::from_secs(240))
        .await
        .unwrap();
    let ids: std::collections::BTreeSet<String> = got
        .iter()
        .filter_map(|r| r.header("webhook-id").map(str::to_owned))
        .collect();
    assert_eq!(ids.len(), EVENTS, "every event arrived");

    let pods = t.dispatcher_pods().await;
    let status = pods[0]
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first().cloned())
        .expect("the dispatcher container's status");
    assert_eq!(
        status.restart_count, 0,
        "the dispatcher restarted (OOM-killed?): {:?}",
        status.last_state
    );
    let peak = peak_rss(pid).expect("the dispatcher is still the same process");
    assert!(
        peak < LIMIT,
        "peak RSS {} MiB is over the limit of {} MiB",
        peak >> 20,
        LIMIT >> 20
    );
    let metrics = t.dispatcher_get("/metrics").await.unwrap();
    let engaged = metric(&metrics, "hookline_dispatcher_backpressure_engaged_total").unwrap_or(0.0);
    assert!(
        engaged >= 1.0,
        "256 MB of records cannot fit: back-pressure must have engaged"
    );
    eprintln!(
        "peak RSS {} MiB of a {} MiB limit; back-pressure engaged {engaged} times",
        peak >> 20,
        LIMIT >> 20
    );
}

//! At least once across a crash: 5,000 events over 500 keys flow to a receiver that fails a fifth
//! of the requests while the dispatcher process is killed with SIGKILL half way through; the
//! restarted dispatcher delivers the rest, and every event id arrives with a 2xx, each request
//! signed and carrying its own event's id.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use hookline_tests::{
    LogDump,
    events::{event, verify},
    install,
    pods::{self, alive},
    receiver::{Behavior, Receiver, Recorded},
    tenant::{Tenant, WITHIN},
    wait,
};
use serde_json::json;

use crate::{id, is_2xx};

/// The pid the pod runner recorded for the dispatcher container of Pod `pod`.
fn dispatcher_pid(pod: &str) -> Option<i32> {
    pods::pid(install::OPERATOR_NAMESPACE, pod, "dispatcher")
}

#[tokio::test]
async fn after_a_kill_9_mid_stream_every_one_of_5000_events_arrives_at_least_once() {
    const EVENTS: usize = 5000;
    const KEYS: usize = 500;
    let _dump = LogDump::new();
    let t = Tenant::create("grt-kill").await;
    let rx = Receiver::start().await.unwrap();
    rx.program("/fraud", Behavior::fail_ratio(0.2, 0x5eed));
    t.webhook("fraud", &rx.url("/fraud"), &["transaction.*"], json!({}))
        .await;
    let key = t.signing_key("fraud").await;

    let pods = t.dispatcher_pods().await;
    assert_eq!(pods.len(), 1, "one dispatcher replica");
    let pod = pods[0].metadata.name.clone().unwrap();
    let old_pid = dispatcher_pid(&pod).expect("the dispatcher's pid file");
    assert!(alive(old_pid));

    let records: Vec<(String, Vec<u8>)> = (0..EVENTS)
        .map(|i| {
            (
                format!("card-{}", i % KEYS),
                event(&format!("evt_{i}"), "transaction.approved", json!({"i": i})),
            )
        })
        .collect();
    let produce = t.produce_in_order(&records);
    let distinct_2xx = |rs: &[Recorded]| {
        rs.iter()
            .filter(|r| is_2xx(r))
            .map(|r| id(r).to_owned())
            .collect::<HashSet<_>>()
            .len()
    };
    // Kill it half way through the stream: with offsets committed behind it, deliveries in
    // flight, and retries pending in the retry topics.
    let kill_at = async {
        wait::until(
            WITHIN,
            "half the events delivered before the kill",
            || async { Ok((distinct_2xx(&rx.requests("/fraud")) >= EVENTS / 2).then_some(())) },
        )
        .await
        .unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(old_pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let so_far = rx.requests("/fraud");
        (distinct_2xx(&so_far), so_far.len())
    };
    let (_, (delivered_at_kill, requests_at_kill)) = tokio::join!(produce, kill_at);
    eprintln!("killed pid {old_pid} with {delivered_at_kill} of {EVENTS} events delivered");
    assert!(
        delivered_at_kill < EVENTS,
        "the kill came mid-stream ({delivered_at_kill} delivered)"
    );

    let new_pid = wait::until(WITHIN, "the dispatcher restarted", || async {
        Ok(dispatcher_pid(&pod).filter(|p| *p != old_pid && alive(*p)))
    })
    .await
    .unwrap();
    assert!(!alive(old_pid));

    wait::until(
        Duration::from_secs(420),
        &format!("all {EVENTS} event ids answered 2xx"),
        || async {
            let n = distinct_2xx(&rx.requests("/fraud"));
            anyhow::ensure!(n >= EVENTS, "{n} distinct ids answered 2xx");
            Ok(Some(()))
        },
    )
    .await
    .unwrap();

    let all = rx.requests("/fraud");
    let want: HashSet<String> = (0..EVENTS).map(|i| format!("evt_{i}")).collect();
    let delivered: HashSet<String> = all
        .iter()
        .filter(|r| is_2xx(r))
        .map(|r| id(r).to_owned())
        .collect();
    assert_eq!(delivered.len(), EVENTS, "every event id arrived with a 2xx");
    assert_eq!(delivered, want, "and no other id");
    for r in &all {
        let i = r.json().unwrap()["data"]["i"].as_u64().unwrap();
        assert_eq!(id(r), format!("evt_{i}"), "a repeat carries its event's id");
        verify(&key, r);
    }
    let mut per_id: HashMap<&str, usize> = HashMap::new();
    for r in all.iter().filter(|r| is_2xx(r)) {
        *per_id.entry(id(r)).or_default() += 1;
    }
    let repeats: usize = per_id.values().map(|n| n - 1).sum();
    eprintln!(
        "{} requests ({} after the kill, new pid {new_pid}), {} answered 503, {repeats} repeats of delivered events",
        all.len(),
        all.len() - requests_at_kill,
        all.iter().filter(|r| r.status == 503).count(),
    );
    assert!(
        all.len() > requests_at_kill,
        "the restarted dispatcher delivered the rest"
    );
}

//! Order and isolation at each `Webhook`: 50 keys of 40 events, interleaved, flow to two
//! receivers that fail some requests; each key's events arrive complete and in produce order,
//! and no attempt overtakes an undelivered earlier event of its key. A URL taking 30 s per
//! request holds up none of 1,000 events to another `Webhook` and never has more requests open
//! than its in-flight limit (counted, not timed).

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    time::{Duration, SystemTime},
};

use hookline_tests::{
    LogDump,
    events::event,
    receiver::{Behavior, Receiver},
    tenant::{Tenant, WITHIN},
    wait,
};
use serde_json::json;

use crate::{id, is_2xx};

#[tokio::test]
async fn per_key_order_holds_at_each_webhook_for_50_keys_of_40_events_under_transient_failures() {
    const KEYS: usize = 50;
    const PER_KEY: usize = 40;
    let _dump = LogDump::new();
    let t = Tenant::create("grt-order").await;
    let rx = Receiver::start().await.unwrap();
    rx.program("/ledger", Behavior::fail_every(5));
    rx.program("/audit", Behavior::fail_ratio(0.2, 0x0de7));
    t.webhook("ledger", &rx.url("/ledger"), &["account.*"], json!({}))
        .await;
    t.webhook(
        "audit",
        &rx.url("/audit"),
        &["account.*"],
        json!({"delivery": {"ordering": "PerKey"}}),
    )
    .await;

    // Round-robin over the keys, so every key's events are interleaved with the others'.
    let mut records = Vec::new();
    for seq in 0..PER_KEY {
        for k in 0..KEYS {
            records.push((
                format!("acct-{k}"),
                event(
                    &format!("evt_{k}_{seq}"),
                    "account.updated",
                    json!({"key": k, "seq": seq}),
                ),
            ));
        }
    }
    let offsets = t.produce_in_order(&records).await;
    // The premise: one key's events sit in one partition at increasing offsets.
    let mut last: HashMap<usize, (i32, i64)> = HashMap::new();
    for (n, (p, o)) in offsets.iter().enumerate() {
        if let Some((lp, lo)) = last.insert(n % KEYS, (*p, *o)) {
            assert!(lp == *p && lo < *o, "key {} produced in order", n % KEYS);
        }
    }

    let total = KEYS * PER_KEY;
    for path in ["/ledger", "/audit"] {
        wait::until(
            Duration::from_secs(300),
            &format!("all {total} events answered 2xx at {path}"),
            || async {
                let n = rx
                    .requests(path)
                    .iter()
                    .filter(|r| is_2xx(r))
                    .map(|r| id(r).to_owned())
                    .collect::<HashSet<_>>()
                    .len();
                anyhow::ensure!(n >= total, "{n} distinct");
                Ok(Some(()))
            },
        )
        .await
        .unwrap();
    }

    for path in ["/ledger", "/audit"] {
        let all = rx.requests(path);
        let failed = all.iter().filter(|r| r.status == 503).count();
        eprintln!("{path}: {} requests, {failed} answered 503", all.len());
        assert!(failed > 0, "{path} saw transient failures");

        // (key, seq) of every request, in arrival order.
        let seqs: Vec<(usize, usize, bool)> = all
            .iter()
            .map(|r| {
                let data = &r.json().unwrap()["data"];
                let (k, s) = (
                    data["key"].as_u64().unwrap() as usize,
                    data["seq"].as_u64().unwrap() as usize,
                );
                assert_eq!(id(r), format!("evt_{k}_{s}"));
                (k, s, is_2xx(r))
            })
            .collect();

        // The first successful arrival of each event, per key: complete and in produce order.
        let mut firsts: HashMap<usize, Vec<usize>> = HashMap::new();
        let mut seen = HashSet::new();
        for &(k, s, ok) in &seqs {
            if ok && seen.insert((k, s)) {
                firsts.entry(k).or_default().push(s);
            }
        }
        for k in 0..KEYS {
            assert_eq!(
                firsts.get(&k).map(Vec::as_slice).unwrap_or_default(),
                (0..PER_KEY).collect::<Vec<_>>(),
                "{path}: key acct-{k}'s events, first successful arrivals in order"
            );
        }

        // Stronger, and what a lane promises: no attempt of an event (successful or not)
        // reaches the receiver before every earlier event of its key was delivered.
        let mut delivered_upto: HashMap<usize, usize> = HashMap::new(); // next seq not yet delivered
        for (n, &(k, s, ok)) in seqs.iter().enumerate() {
            let next = delivered_upto.entry(k).or_default();
            assert!(
                s <= *next,
                "{path}: request #{n}, evt_{k}_{s}, was attempted before evt_{k}_{next} was delivered"
            );
            if ok && s == *next {
                *next += 1;
            }
        }
    }
}

#[tokio::test]
async fn a_url_that_takes_30s_per_request_does_not_hold_up_1000_events_to_another_webhook() {
    const EVENTS: usize = 1000;
    const KEYS: usize = 100;
    let _dump = LogDump::new();
    let t = Tenant::create("grt-slow").await;
    let rx = Receiver::start().await.unwrap();
    rx.program("/slow", Behavior::delayed(Duration::from_secs(30)));
    // Both with the default delivery settings (maxInFlight 32, PerKey), but for the slow one's
    // timeout, above its 30 s: each slow request then ends with the receiver's answer, which the
    // receiver counts as finished before the dispatcher can see it.
    t.webhook(
        "slow",
        &rx.url("/slow"),
        &["*"],
        json!({"delivery": {"timeout": "1m"}}),
    )
    .await;
    t.webhook("healthy", &rx.url("/healthy"), &["*"], json!({}))
        .await;
    let default_max_in_flight = 32;

    let records: Vec<(String, Vec<u8>)> = (0..EVENTS)
        .map(|i| {
            (
                format!("user-{}", i % KEYS),
                event(&format!("evt_{i}"), "user.updated", json!({"i": i})),
            )
        })
        .collect();
    let started = std::time::Instant::now();
    t.produce_in_order(&records).await;

    let healthy = rx.wait_for("/healthy", EVENTS, WITHIN).await.unwrap();
    // Taken at the moment the healthy Webhook's last event arrived; received first, then
    // finished, so their difference never overstates what was in flight.
    let slow_received = rx.requests("/slow").len();
    let slow_finished = rx.finished("/slow");
    let first_slow: Option<SystemTime> = rx.requests("/slow").first().map(|r| r.at);
    eprintln!(
        "healthy: {EVENTS} in {:?}; slow: {slow_received} received, {slow_finished} finished, first at {:?} before the healthy's last",
        started.elapsed(),
        first_slow.map(|f| healthy[EVENTS - 1].at.duration_since(f))
    );

    let got: Vec<usize> = healthy[..EVENTS]
        .iter()
        .map(|r| id(r)["evt_".len()..].parse().unwrap())
        .collect();
    assert_eq!(
        got.iter().copied().collect::<BTreeSet<_>>(),
        (0..EVENTS).collect(),
        "the healthy Webhook got every event, once each"
    );
    let mut last: HashMap<usize, usize> = HashMap::new();
    for &i in &got {
        if let Some(prev) = last.insert(i % KEYS, i) {
            assert!(prev < i, "user-{}: evt_{i} after evt_{prev}", i % KEYS);
        }
    }
    assert!(
        slow_received >= 1,
        "the slow URL was being tried at the same time"
    );
    // Counts, not time: however loaded the machine, the slow Webhook never had more than its
    // in-flight limit open, and it had finished only a few of its 1,000 (32 per 30 s) when the
    // healthy one had all of them; had the healthy one waited for it, the slow one would have
    // finished about as many as the healthy one got.
    assert!(
        slow_received - slow_finished.min(slow_received) <= default_max_in_flight,
        "the slow Webhook had more than its in-flight limit open: {slow_received} received, {slow_finished} finished"
    );
    assert!(
        slow_finished < EVENTS / 4,
        "the healthy Webhook waited for the slow one: {slow_finished} slow requests finished first"
    );
}

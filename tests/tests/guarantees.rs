//! The delivery guarantees of `hookline-dispatcher`, proved end to end through the
//! controller-created dispatcher (issue 5, "Done when"): fan-out by event type, retries with the
//! same `webhook-id` and increasing attempt numbers, `Retry-After`, at least once across a
//! `kill -9`, per-key order under transient failures, and isolation from a slow URL.
//!
//! Every assertion is on counts, ids and order of arrival at the receiver (and, for retries, on
//! the smallest delay the schedule allows), never on how fast something went.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    time::{Duration, SystemTime},
};

use hookline_dispatcher::{retry::RetryPolicy, signing};
use hookline_tests::{
    LogDump, install,
    receiver::{Behavior, Receiver, Recorded},
    run_dir,
    tenant::{Tenant, WITHIN, status_count},
    wait,
};
use serde_json::json;

/// The pid the pod runner recorded for the dispatcher container of Pod `pod`.
fn dispatcher_pid(pod: &str) -> Option<i32> {
    let file = run_dir()
        .join("pods")
        .join(format!("{}_{pod}", install::OPERATOR_NAMESPACE))
        .join("dispatcher.pid");
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

fn alive(pid: i32) -> bool {
    // A zombie is dead for our purposes.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_none_or(|(_, rest)| rest.split_whitespace().next() != Some("Z"))
        })
        .unwrap_or(false)
}

fn event(id: &str, type_: &str, data: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(
        &json!({"id": id, "type": type_, "timestamp": "2026-11-23T12:00:00Z", "data": data}),
    )
    .unwrap()
}

fn verify(key: &signing::Secret, r: &Recorded) {
    let id = r.header("webhook-id").expect("webhook-id");
    let ts: i64 = r
        .header("webhook-timestamp")
        .expect("webhook-timestamp")
        .parse()
        .unwrap();
    let sig = r.header("webhook-signature").expect("webhook-signature");
    signing::verify(std::slice::from_ref(key), id, ts, &r.body, sig).unwrap_or_else(|e| {
        panic!("the signature of {id} verifies with the Webhook's own key: {e}")
    });
}

fn id(r: &Recorded) -> &str {
    r.header("webhook-id").expect("webhook-id")
}

fn ids(rs: &[Recorded]) -> Vec<&str> {
    rs.iter().map(id).collect()
}

fn attempt(r: &Recorded) -> u32 {
    r.header("hookline-attempt")
        .expect("hookline-attempt")
        .parse()
        .unwrap()
}

fn gap(earlier: &Recorded, later: &Recorded) -> Duration {
    later
        .at
        .duration_since(earlier.at)
        .expect("arrivals are in order")
}

fn is_2xx(r: &Recorded) -> bool {
    (200..300).contains(&r.status)
}

/// What the timer and the `hookline-due` milliseconds may round away.
const CLOCK_SLACK: Duration = Duration::from_millis(50);

#[tokio::test]
async fn fan_out_delivers_exactly_the_matching_events_to_each_of_three_webhooks() {
    let _dump = LogDump::new();
    let t = Tenant::create("grt-fanout").await;
    let rx = Receiver::start().await.unwrap();
    t.webhook(
        "exact",
        &rx.url("/exact"),
        &["order.created", "refund.issued", "batch.failed"],
        json!({}),
    )
    .await;
    t.webhook(
        "glob",
        &rx.url("/glob"),
        &["payment.*", "*.failed"],
        json!({}),
    )
    .await;
    t.webhook("all", &rx.url("/all"), &["*"], json!({})).await;
    let keys: HashMap<&str, signing::Secret> = [
        ("/exact", t.signing_key("exact").await),
        ("/glob", t.signing_key("glob").await),
        ("/all", t.signing_key("all").await),
    ]
    .into();

    // (id, type, which paths subscribe to it). One key, so each Webhook gets its events in
    // produce order and the last one (matching all three) closes every path's list.
    let events: &[(&str, &str, &[&str])] = &[
        ("e01", "order.created", &["/exact", "/all"]),
        ("e02", "order.shipped", &["/all"]),
        ("e03", "payment.captured", &["/glob", "/all"]),
        ("e04", "payment.card.declined", &["/glob", "/all"]), // `*` crosses dots
        ("e05", "refund.issued", &["/exact", "/all"]),
        ("e06", "payment", &["/all"]), // `payment.*` needs something after the dot
        ("e07", "order.failed", &["/glob", "/all"]),
        ("e08", "Order.created", &["/all"]), // exact names are case-sensitive
        ("e09", "order.created.v2", &["/all"]), // an exact name is not a prefix
        ("e10", "payment.failed", &["/glob", "/all"]), // two patterns match: delivered once
        ("e11", "order.created", &["/exact", "/all"]),
        ("e12", "batch.failed", &["/exact", "/glob", "/all"]),
    ];
    let records: Vec<(String, Vec<u8>)> = events
        .iter()
        .map(|(id, ty, _)| ("fanout".to_owned(), event(id, ty, json!({"id": id}))))
        .collect();
    t.produce_in_order(&records).await;

    for path in ["/exact", "/glob", "/all"] {
        let want: Vec<&str> = events
            .iter()
            .filter(|(_, _, to)| to.contains(&path))
            .map(|(id, _, _)| *id)
            .collect();
        wait::until(WITHIN, &format!("e12 at {path}"), || async {
            Ok(ids(&rx.requests(path)).contains(&"e12").then_some(()))
        })
        .await
        .unwrap();
        let got = rx.requests(path);
        assert_eq!(
            ids(&got),
            want,
            "{path} received exactly its events, once each, in produce order"
        );
        for (r, (_, ty, _)) in got
            .iter()
            .zip(events.iter().filter(|(_, _, to)| to.contains(&path)))
        {
            assert_eq!(r.json().unwrap()["type"], *ty);
            assert_eq!(r.header("hookline-attempt"), Some("1"));
            verify(&keys[path], r);
        }
        // Each Webhook signs with its own key.
        let other = if path == "/all" { "/exact" } else { "/all" };
        let sig = got[0].header("webhook-signature").unwrap();
        let ts: i64 = got[0].header("webhook-timestamp").unwrap().parse().unwrap();
        assert!(
            signing::verify(
                std::slice::from_ref(&keys[other]),
                id(&got[0]),
                ts,
                &got[0].body,
                sig
            )
            .is_err(),
            "{path}'s delivery does not verify with {other}'s key"
        );
    }
    let paths: BTreeSet<String> = rx.all_requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        ["/all", "/exact", "/glob"].map(String::from).into(),
        "nothing went anywhere else"
    );

    // The status counts agree with the receiver.
    for (name, n) in [("exact", 4), ("glob", 5), ("all", 12)] {
        assert_eq!(
            status_count(&t.wait_count(name, "delivered", n).await, "delivered"),
            n,
            "{name}"
        );
    }
    assert_eq!(rx.all_requests().len(), 4 + 5 + 12, "no late extras");
}

#[tokio::test]
async fn a_503_three_times_then_200_is_delivered_on_the_fourth_attempt_with_the_same_webhook_id() {
    let _dump = LogDump::new();
    let t = Tenant::create("grt-503").await;
    let rx = Receiver::start().await.unwrap();
    rx.program_script(
        "/flaky",
        vec![Behavior::status(503); 3],
        Behavior::status(200),
    );
    t.webhook("flaky", &rx.url("/flaky"), &["transaction.*"], json!({}))
        .await;
    let key = t.signing_key("flaky").await;

    t.produce_in_order(&[(
        "tx-1".into(),
        event("evt_503", "transaction.approved", json!({"amount": 10})),
    )])
    .await;
    let got = rx.wait_for("/flaky", 4, WITHIN).await.unwrap();
    t.wait_count("flaky", "delivered", 1).await;
    let got_after = rx.requests("/flaky");
    assert_eq!(got_after.len(), 4, "nothing more after the 200");

    assert_eq!(
        ids(&got),
        ["evt_503"; 4],
        "the same webhook-id on every attempt"
    );
    assert_eq!(
        got.iter().map(attempt).collect::<Vec<_>>(),
        [1, 2, 3, 4],
        "hookline-attempt counts the attempts"
    );
    assert_eq!(
        got.iter().map(|r| r.status).collect::<Vec<_>>(),
        [503, 503, 503, 200]
    );
    for r in &got {
        assert_eq!(r.body, got[0].body, "the same body on every attempt");
        verify(&key, r);
    }
    // Each retry waits at least the jitter's floor of the default exponential schedule.
    let policy = RetryPolicy::default();
    for n in 1..4u32 {
        let (earlier, later) = (&got[n as usize - 1], &got[n as usize]);
        let floor = policy.jitter.floor(policy.backoff(n));
        let waited = gap(earlier, later);
        assert!(
            waited + CLOCK_SLACK >= floor,
            "attempt {} came {waited:?} after attempt {n}; the schedule allows no less than {floor:?}",
            n + 1
        );
    }
    let ts: Vec<i64> = got
        .iter()
        .map(|r| r.header("webhook-timestamp").unwrap().parse().unwrap())
        .collect();
    assert!(
        ts.windows(2).all(|w| w[0] <= w[1]),
        "each attempt carries its own timestamp: {ts:?}"
    );
    let wh = t.api.get("flaky").await.unwrap();
    assert_eq!(
        wh.status.unwrap().failed.unwrap_or(0),
        0,
        "not dead-lettered"
    );
}

#[tokio::test]
async fn a_429_with_retry_after_is_retried_no_sooner_than_asked_and_never_sooner_than_the_schedule()
{
    let _dump = LogDump::new();
    let t = Tenant::create("grt-429").await;
    let rx = Receiver::start().await.unwrap();
    let busy = |after: &str| Behavior {
        status: 429,
        retry_after: Some(after.to_owned()),
        ..Behavior::default()
    };
    // Asks for 3 s: longer than the first backoff (at most 1 s), so it is what counts.
    rx.program_script("/busy", vec![busy("3")], Behavior::status(200));
    // Asks for 0 s twice: shorter than the backoff, which then applies (no hammering).
    rx.program_script("/eager", vec![busy("0"), busy("0")], Behavior::status(200));
    t.webhook("busy", &rx.url("/busy"), &["transaction.*"], json!({}))
        .await;
    t.webhook("eager", &rx.url("/eager"), &["transaction.*"], json!({}))
        .await;

    t.produce_in_order(&[(
        "tx-1".into(),
        event("evt_429", "transaction.approved", json!({})),
    )])
    .await;
    let b = rx.wait_for("/busy", 2, WITHIN).await.unwrap();
    let e = rx.wait_for("/eager", 3, WITHIN).await.unwrap();
    t.wait_count("busy", "delivered", 1).await;
    t.wait_count("eager", "delivered", 1).await;

    let b = &b[..2];
    assert_eq!(ids(b), ["evt_429"; 2]);
    assert_eq!(b.iter().map(attempt).collect::<Vec<_>>(), [1, 2]);
    let waited = gap(&b[0], &b[1]);
    assert!(
        waited + CLOCK_SLACK >= Duration::from_secs(3),
        "the retry after `429, Retry-After: 3` came after {waited:?}"
    );

    let e = &e[..3];
    assert_eq!(ids(e), ["evt_429"; 3]);
    assert_eq!(e.iter().map(attempt).collect::<Vec<_>>(), [1, 2, 3]);
    let policy = RetryPolicy::default();
    for n in 1..3u32 {
        let floor = policy.jitter.floor(policy.backoff(n));
        let waited = gap(&e[n as usize - 1], &e[n as usize]);
        assert!(
            waited + CLOCK_SLACK >= floor,
            "`Retry-After: 0` brought attempt {} {waited:?} after attempt {n}, below the schedule's {floor:?}",
            n + 1
        );
    }
    assert_eq!(rx.requests("/busy").len(), 2);
    assert_eq!(rx.requests("/eager").len(), 3);
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
    rx.program(
        "/slow",
        Behavior {
            delay: Duration::from_secs(30),
            ..Behavior::default()
        },
    );
    // Both with the default delivery settings (timeout 30 s, maxInFlight 32, PerKey).
    t.webhook("slow", &rx.url("/slow"), &["*"], json!({})).await;
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
    // Taken at the moment the healthy Webhook's last event arrived.
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
    assert!(
        slow_received <= default_max_in_flight,
        "the slow Webhook took no more than its in-flight limit ({slow_received} requests)"
    );
    assert_eq!(
        slow_finished, 0,
        "all {EVENTS} reached the healthy URL before the slow URL's first request was over"
    );
}

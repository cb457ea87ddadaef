//! Losing a Kafka broker (issue 16, item 3), in an environment of three brokers
//! (`HOOKLINE_LOCALENV_KAFKA_BROKERS=3 localenv/up.sh`; `localenv/test.sh` starts one beside the
//! main environment and runs this suite in it). A tenant's topics are replicated three times
//! with `min.insync.replicas=2` set on each topic by the controller; 10,000 keyed events are
//! produced (`acks=all`, idempotent), and after the first 4,000 the broker leading the most
//! partitions of the events topic is killed with SIGKILL. The remaining 6,000 are produced with
//! it dead; every event id then arrives at the receiver with a 2xx, the first arrivals of each
//! key are in production order, deliveries go on while the broker is down, and repeats (at
//! least once allows them) are counted and bounded. The broker is started again afterwards and
//! must catch up (every replica back in sync), which leaves the environment whole.
//!
//! The test is `#[ignore]`d, so the main run of `cargo test` lists it as ignored with the
//! reason; run with `--ignored` against an environment of one broker, it fails saying how to
//! start the right one (it never passes without having killed a broker).

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant, SystemTime},
};

use hookline_tests::{
    Env, LogDump, cluster,
    events::{event, verify},
    outage::Outage,
    receiver::{self, Behavior, Receiver, Recorded},
    tenant::Tenant,
    wait,
};
use serde_json::json;

const EVENTS: usize = 10_000;
const KEYS: usize = 500;
/// Records handed to the producer at a time (each chunk waits for its acknowledgements).
const CHUNK: usize = 250;
/// The broker dies once this many events are acknowledged.
const KILL_AFTER: usize = 4_000;
/// Repeats of an already delivered event allowed in all: at least once replays what was not
/// yet committed when something failed, never a whole stream. When the killed broker is the
/// dispatcher group's coordinator, commits fail until another broker coordinates the group, and
/// the consumer declares its assignment lost about 8 s later (its session timeout, 10 s, is no
/// longer than a coordinator fail-over): what settled since the last commit that got through
/// comes again. Measured on 2 loaded cores: 14 % and 20 % (1,431 and 1,967 of 10,000) before
/// settled offsets travelled with each commit, 6.4 % (637) after (2026-12-02).
const MAX_REPEATS: usize = EVENTS * 15 / 100;

fn id(r: &Recorded) -> &str {
    r.header("webhook-id").expect("webhook-id")
}

fn is_2xx(r: &Recorded) -> bool {
    (200..300).contains(&r.status)
}

/// The distinct event ids answered 2xx.
fn delivered(rs: &[Recorded]) -> HashSet<String> {
    rs.iter()
        .filter(|r| is_2xx(r))
        .map(|r| id(r).to_owned())
        .collect()
}

/// Waits until every partition of `topics` has all three replicas in sync again.
async fn all_replicas_in_sync(env: &Env, topics: &[&str], deadline: Duration) {
    wait::until(
        deadline,
        "every replica of the tenant's topics in sync",
        || async {
            for t in topics {
                let (parts, _) = cluster::describe(env, t).await?;
                for p in &parts {
                    anyhow::ensure!(
                        p.isr.len() == 3,
                        "{t}/{}: in sync {:?} of {:?}",
                        p.id,
                        p.isr,
                        p.replicas
                    );
                }
            }
            Ok(Some(()))
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
#[ignore = "needs 3 Kafka brokers: localenv/test.sh runs it in an environment of its own \
            (HOOKLINE_LOCALENV_KAFKA_BROKERS=3, see localenv/README.md)"]
async fn one_of_three_brokers_killed_mid_stream_loses_no_event_and_delivery_goes_on() {
    let env = Env::get().unwrap();
    cluster::require_brokers(&env, 3).unwrap();
    let _dump = LogDump::new();
    let t = Tenant::create("mb").await;
    let rx = Receiver::start().await.unwrap();
    // A few failures, so retries go through the retry topics while a broker is gone (few: a
    // failing event holds its key back for a second or more).
    rx.program("/fraud", Behavior::fail_ratio(0.005, 0x3b0c));
    t.webhook("fraud", &rx.url("/fraud"), &["transaction.*"], json!({}))
        .await;
    let key = t.signing_key("fraud").await;

    // Every topic of the tenant: three replicas on three live brokers, all in sync, and
    // min.insync.replicas=2 set on the topic itself (not a broker default that happens to match).
    let topics = t.topics();
    let names = topics.all();
    all_replicas_in_sync(&env, &names, Duration::from_secs(60)).await;
    for name in &names {
        let (parts, live) = cluster::describe(&env, name).await.unwrap();
        assert_eq!(live, [1, 2, 3], "three live brokers");
        for p in &parts {
            assert_eq!(p.replicas.len(), 3, "{name}/{} replicated 3 times", p.id);
        }
    }
    for (topic, value, own) in cluster::topic_setting(&env, &names, "min.insync.replicas")
        .await
        .unwrap()
    {
        assert_eq!(value.as_deref(), Some("2"), "{topic}: min.insync.replicas");
        assert!(
            own,
            "{topic}: min.insync.replicas is the topic's own setting"
        );
    }
    let (events_parts, _) = cluster::describe(&env, &topics.events).await.unwrap();
    let victim = cluster::busiest_leader(&events_parts).expect("the events topic has leaders");
    let led: Vec<i32> = events_parts
        .iter()
        .filter(|p| p.leader == victim)
        .map(|p| p.id)
        .collect();

    let records: Vec<(String, Vec<u8>)> = (0..EVENTS)
        .map(|i| {
            (
                format!("card-{}", i % KEYS),
                event(&format!("evt_{i}"), "transaction.approved", json!({"i": i})),
            )
        })
        .collect();
    let started = Instant::now();
    let mut outage = None;
    let mut killed_at = SystemTime::now();
    let mut delivered_at_kill = 0;
    let mut stalled = Duration::ZERO;
    for (i, chunk) in records.chunks(CHUNK).enumerate() {
        let t0 = Instant::now();
        t.produce_in_order(chunk).await;
        if outage.is_some() {
            stalled = stalled.max(t0.elapsed());
        }
        if outage.is_none() && (i + 1) * CHUNK >= KILL_AFTER {
            delivered_at_kill = delivered(&rx.requests("/fraud")).len();
            killed_at = SystemTime::now();
            outage = Some(
                Outage::kill(&[&cluster::node_component(victim)])
                    .await
                    .unwrap(),
            );
        }
    }
    let outage = outage.expect("the broker was killed");
    eprintln!(
        "killed broker {victim} (leader of events partitions {led:?}) with {KILL_AFTER} events \
         acknowledged and {delivered_at_kill} delivered; the other {} were acknowledged {:?} \
         after the start, the slowest chunk of {CHUNK} after the kill in {stalled:?}",
        EVENTS - KILL_AFTER,
        started.elapsed()
    );
    assert!(
        delivered_at_kill < EVENTS,
        "the kill came mid-stream ({delivered_at_kill} delivered)"
    );

    // Deliveries go on while the broker is down: a good share of the events arrive first after
    // the kill, before the broker comes back.
    let after_kill = |rs: &[Recorded]| {
        let before: HashSet<&str> = rs.iter().filter(|r| r.at < killed_at).map(id).collect();
        rs.iter()
            .filter(|r| r.at >= killed_at && is_2xx(r) && !before.contains(id(r)))
            .map(|r| id(r).to_owned())
            .collect::<HashSet<_>>()
            .len()
    };
    let while_down = wait::until(
        Duration::from_secs(180),
        "2,000 events delivered first while the broker is down",
        || async {
            let n = after_kill(&rx.requests("/fraud"));
            anyhow::ensure!(n >= 2_000, "{n} delivered first after the kill");
            Ok(Some(n))
        },
    )
    .await
    .unwrap();
    let down_for = outage.end().await.unwrap();
    eprintln!("{while_down} events delivered first while broker {victim} was down ({down_for:?})");

    wait::until(
        Duration::from_secs(420),
        &format!("all {EVENTS} event ids answered 2xx"),
        || async {
            let n = delivered(&rx.requests("/fraud")).len();
            anyhow::ensure!(n >= EVENTS, "{n} distinct ids answered 2xx");
            Ok(Some(()))
        },
    )
    .await
    .unwrap();
    let drained = started.elapsed();
    // The restarted broker catches up: nothing is left under-replicated.
    all_replicas_in_sync(&env, &names, Duration::from_secs(120)).await;

    let all = rx.requests("/fraud");
    let want: HashSet<String> = (0..EVENTS).map(|i| format!("evt_{i}")).collect();
    let got = delivered(&all);
    let missing: Vec<&String> = want.difference(&got).take(10).collect();
    let unknown: Vec<&String> = got.difference(&want).take(10).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "every event id, and no other, with a 2xx: missing {missing:?}…, unknown {unknown:?}…"
    );
    receiver::first_arrivals_in_key_order(&all, KEYS).unwrap();
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
    let repeated_ids = per_id.values().filter(|n| **n > 1).count();
    eprintln!(
        "{} requests in {drained:?} ({} answered 503 and retried); {repeats} repeats of delivered \
         events ({repeated_ids} ids), at most {MAX_REPEATS} allowed",
        all.len(),
        all.iter().filter(|r| r.status == 503).count(),
    );
    assert!(
        repeats <= MAX_REPEATS,
        "{repeats} repeats of delivered events (over {repeated_ids} ids): more than what was in \
         flight at the kill"
    );
}

//! Fail-over (issue 16, item 1): a dispatcher killed with SIGKILL mid-stream is restarted in its
//! Pod (as the kubelet does) and comes back as the *same static member* of its consumer group
//! (`group.instance.id` = the Pod's name): the broker hands it its partitions straight back, so
//! the group never holds a dead member's partitions until a session timeout, and there is no
//! rebalance that would make the others repeat what they had delivered. What the kill repeats is
//! only what settled since the last commit (committed within 20 ms) or was in flight: what
//! settled above a commit position held back by a retrying record travels with the commit (its
//! metadata) and is skipped after the restart.
//!
//! 6,000 events over 300 keys flow at about 1,000/s to a receiver failing a fifth of the
//! requests; the dispatcher is killed twice. Checked: each time, as soon as an event produced
//! after the kill is delivered, the group has exactly one member holding every events partition
//! (before this change: two — the dead member kept its partitions for the 30 s session timeout);
//! every event answered 2xx, per-key order of first arrivals, and that every repeat is one a
//! kill explains: the event was produced before a kill and repeated after it (an event produced
//! after the last kill, or repeated with no kill in between, is never delivered twice). How
//! *many* repeats a kill causes is what was in flight or settled but not yet committed, which
//! grows with the backlog, and so with how loaded the machine is; the goal, ≤ 1 %, is measured
//! by `bench/src/bin/failover/` (0.15 % with a release build). Here the count has a loose bound
//! that a restart from the group's start, or without the settled offsets above a held-back
//! position, would break.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, SystemTime},
};

use hookline_core::naming;
use hookline_tests::{
    Env, LogDump,
    events::event,
    group, install, kafka,
    pods::{self, alive},
    receiver::{Behavior, Receiver, Recorded, first_arrivals_in_key_order},
    tenant::{Tenant, WITHIN},
    wait,
};
use rdkafka::consumer::Consumer as _;
use serde_json::json;

const EVENTS: usize = 6_000;
const KEYS: usize = 300;
/// Produced every 50 ms: about 1,000 events/s.
const BATCH: usize = 50;
const KILLS: usize = 2;
/// The loose bound on all repeats, in percent of the events: restarting from the stream's start
/// (or from a position a retrying record holds back, without the settled offsets above it)
/// repeats far more.
const REPEATS_PERCENT: usize = 5;

fn number(r: &Recorded) -> Option<usize> {
    r.header("webhook-id")?.strip_prefix("evt_")?.parse().ok()
}

fn is_2xx(r: &Recorded) -> bool {
    (200..300).contains(&r.status)
}

/// The group as described once it is not rebalancing (a rebalance in progress is waited out,
/// at most 15 s); never waits for the member count to change.
async fn settled_group(env: &Env, group: &str, topic: &str) -> group::Described {
    wait::until(
        Duration::from_secs(15),
        "the group not rebalancing",
        || async {
            let (env, group, topic) = (env.clone(), group.to_owned(), topic.to_owned());
            let d = tokio::task::spawn_blocking(move || group::describe(&env, &group, &topic))
                .await??;
            Ok((d.state == "Stable").then_some(d))
        },
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_dispatcher_killed_twice_mid_stream_comes_back_as_the_same_member_and_repeats_little() {
    let _dump = LogDump::new();
    let t = Tenant::create("failover").await;
    let rx = Receiver::start().await.unwrap();
    rx.program("/fraud", Behavior::fail_ratio(0.2, 0xfa11));
    t.webhook("fraud", &rx.url("/fraud"), &["transaction.*"], json!({}))
        .await;
    let pods_now = t.dispatcher_pods().await;
    assert_eq!(pods_now.len(), 1, "one dispatcher replica");
    let pod = pods_now[0].metadata.name.clone().unwrap();
    let pid = || pods::pid(install::OPERATOR_NAMESPACE, &pod, "dispatcher");
    let topics = t.topics();
    let group_name = naming::consumer_group(&t.ns.name);

    let before = wait::until(WITHIN, "the dispatcher in its group", || async {
        let d = settled_group(&t.env, &group_name, &topics.events).await;
        Ok((d.members.len() == 1 && !d.members[0].1.is_empty()).then_some(d))
    })
    .await
    .unwrap();
    let partitions = before.members[0].1.len();

    let producer = kafka::producer(&t.env).unwrap();
    let produced = AtomicUsize::new(0);
    let kill_times = std::sync::Mutex::new(Vec::new());
    let stream = async {
        for start in (0..EVENTS).step_by(BATCH) {
            let records = (start..start + BATCH).map(|i| {
                let value = event(&format!("evt_{i}"), "transaction.approved", json!({"i": i}));
                (format!("card-{}", i % KEYS), value)
            });
            kafka::produce_many(&producer, &topics.events, records)
                .await
                .unwrap();
            produced.store(start + BATCH, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let kills = async {
        let mut after = Vec::new();
        for k in 1..=KILLS {
            wait::until(
                WITHIN,
                "the stream far enough for the next kill",
                || async {
                    Ok((produced.load(Ordering::SeqCst) >= k * EVENTS / (KILLS + 1)).then_some(()))
                },
            )
            .await
            .unwrap();
            let old = pid().expect("the dispatcher's pid file");
            assert!(alive(old));
            // Events up to the batch being produced may be in Kafka before the kill.
            let produced_by = produced.load(Ordering::SeqCst) + BATCH;
            kill_times
                .lock()
                .unwrap()
                .push((SystemTime::now(), produced_by));
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(old),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
            let killed_at = produced.load(Ordering::SeqCst);
            let new = wait::until(WITHIN, "the dispatcher restarted in its Pod", || async {
                Ok(pid().filter(|p| *p != old && alive(*p)))
            })
            .await
            .unwrap();
            // The restarted process delivers what was produced after the kill...
            wait::until(
                WITHIN,
                "an event produced after the kill delivered",
                || async {
                    Ok(rx
                        .requests("/fraud")
                        .iter()
                        .any(|r| number(r).is_some_and(|n| n >= killed_at))
                        .then_some(()))
                },
            )
            .await
            .unwrap();
            // ...as the only member of its group, holding every events partition: the dead
            // process's membership was taken over, not left to time out.
            let d = settled_group(&t.env, &group_name, &topics.events).await;
            eprintln!("kill {k}: pid {old} → {new}, {killed_at} events produced; group {d:?}");
            assert_eq!(
                d.members.len(),
                1,
                "after kill {k} the group should have one member (the restarted dispatcher as the same static member), not the dead one besides it: {d:?}"
            );
            assert_eq!(
                d.members[0].1.len(),
                partitions,
                "the restarted dispatcher holds every events partition: {d:?}"
            );
            after.push(d);
        }
        after
    };
    let ((), _) = tokio::join!(stream, kills);

    wait::until(
        Duration::from_secs(420),
        &format!("all {EVENTS} event ids answered 2xx"),
        || async {
            let ok: std::collections::HashSet<usize> = rx
                .requests("/fraud")
                .iter()
                .filter(|r| is_2xx(r))
                .filter_map(number)
                .collect();
            anyhow::ensure!(ok.len() >= EVENTS, "{} distinct ids answered 2xx", ok.len());
            Ok(Some(()))
        },
    )
    .await
    .unwrap();
    let all = rx.requests("/fraud");
    let firsts = first_arrivals_in_key_order(&all, KEYS).unwrap();
    assert_eq!(firsts.len(), EVENTS, "no other ids");
    let mut per_id: HashMap<usize, Vec<SystemTime>> = HashMap::new();
    for r in all.iter().filter(|r| is_2xx(r)) {
        if let Some(n) = number(r) {
            per_id.entry(n).or_default().push(r.at);
        }
    }
    let kill_times = kill_times.into_inner().unwrap();
    let (mut repeats, mut ages, mut unexplained) = (0, Vec::new(), Vec::new());
    for (n, times) in &mut per_id {
        times.sort();
        for pair in times.windows(2) {
            repeats += 1;
            // A kill after the event was produced and before the repeat; how long before the
            // kill the earlier 2xx came (zero: after it, both sent by the restarted process).
            match kill_times
                .iter()
                .filter(|(at, produced_by)| *n < *produced_by && *at <= pair[1])
                .map(|(at, _)| at.duration_since(pair[0]).unwrap_or_default())
                .min()
            {
                Some(age) => ages.push(age),
                None => unexplained.push(*n),
            }
        }
    }
    ages.sort();
    let first_attempt_repeats = {
        let mut firsts: HashMap<usize, usize> = HashMap::new();
        for r in all
            .iter()
            .filter(|r| r.header("hookline-attempt") == Some("1"))
        {
            if let Some(n) = number(r) {
                *firsts.entry(n).or_default() += 1;
            }
        }
        firsts.values().filter(|c| **c > 1).count()
    };
    eprintln!(
        "{} requests for {EVENTS} events, {repeats} repeats of delivered events ({:.2} %), {first_attempt_repeats} ids sent twice as attempt 1; the earlier 2xx came before the kill by at most {:?} (median {:?})",
        all.len(),
        100.0 * repeats as f64 / EVENTS as f64,
        ages.last(),
        ages.get(ages.len() / 2),
    );
    let history = |n: usize| -> Vec<String> {
        let start = kill_times[0].0;
        all.iter()
            .filter(|r| number(r) == Some(n))
            .map(|r| {
                let ms = |t: SystemTime| match t.duration_since(start) {
                    Ok(d) => d.as_millis() as i64,
                    Err(e) => -(e.duration().as_millis() as i64),
                };
                format!(
                    "{} ms after kill 1: attempt {} → {}",
                    ms(r.at),
                    r.header("hookline-attempt").unwrap_or("?"),
                    r.status
                )
            })
            .collect()
    };
    assert!(
        unexplained.is_empty(),
        "repeats no kill explains (produced after the last kill, or repeated before any kill came): {unexplained:?}; kills (ms after kill 1, events produced by then) at {:?}; the first ones' requests: {:#?}",
        kill_times
            .iter()
            .map(|(at, produced_by)| (
                at.duration_since(kill_times[0].0)
                    .unwrap_or_default()
                    .as_millis(),
                produced_by
            ))
            .collect::<Vec<_>>(),
        unexplained
            .iter()
            .take(5)
            .map(|n| (n, history(*n)))
            .collect::<Vec<_>>()
    );
    assert!(
        repeats * 100 <= EVENTS * REPEATS_PERCENT,
        "{repeats} repeats of {EVENTS} delivered events after {KILLS} kills: more than {REPEATS_PERCENT} % (the goal is ≤ 1 %)"
    );
}

/// A consumer joining the dispatcher's group as the same static member (what a second process
/// with the Pod's name would do, or the dispatcher's own rejoin racing a commit after its
/// group coordinator was lost, seen under load with three brokers) fences the dispatcher out:
/// librdkafka reports that as a fatal error, after which its clients do nothing. The dispatcher
/// exits non-zero, is restarted in its Pod, takes its membership back and delivers again.
/// Before, it logged the fatal error and idled for ever, ready and consuming nothing.
#[tokio::test]
async fn a_dispatcher_fenced_out_of_its_group_exits_and_is_back_delivering() {
    let _dump = LogDump::new();
    let t = Tenant::create("fenced").await;
    let rx = Receiver::start().await.unwrap();
    rx.program("/fraud", Behavior::status(200));
    t.webhook("fraud", &rx.url("/fraud"), &["transaction.*"], json!({}))
        .await;
    let pod = t.dispatcher_pods().await[0].metadata.name.clone().unwrap();
    let pid = || pods::pid(install::OPERATOR_NAMESPACE, &pod, "dispatcher");
    let topics = t.topics();
    let delivered = |id: &'static str| {
        let rx = &rx;
        async move {
            wait::until(WITHIN, &format!("{id} delivered"), || async {
                Ok(rx
                    .requests("/fraud")
                    .iter()
                    .any(|r| r.header("webhook-id") == Some(id))
                    .then_some(()))
            })
            .await
            .unwrap();
        }
    };
    t.produce(
        "card-1",
        &event("evt_before", "transaction.approved", json!({})),
    )
    .await;
    delivered("evt_before").await;
    let old = pid().expect("the dispatcher's pid");

    let intruder = kafka::static_member(&t.env, &naming::consumer_group(&t.ns.name), &pod).unwrap();
    intruder.subscribe(&[topics.events.as_str()]).unwrap();
    let intruder = std::sync::Arc::new(intruder);
    let polling = tokio::spawn({
        let intruder = intruder.clone();
        async move {
            loop {
                // Joining happens while the consumer is polled; what it reads is not used.
                let _ = intruder.recv().await;
            }
        }
    });
    let new = wait::until(
        WITHIN,
        "the fenced dispatcher exited and was restarted in its Pod",
        || async { Ok(pid().filter(|p| *p != old && alive(*p))) },
    )
    .await
    .unwrap();
    polling.abort();
    drop(intruder);
    eprintln!("fenced: pid {old} → {new}");

    t.produce(
        "card-1",
        &event("evt_after", "transaction.approved", json!({})),
    )
    .await;
    delivered("evt_after").await;
}

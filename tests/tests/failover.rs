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
//! every event answered 2xx, per-key order of first arrivals, and few repeats (the goal, ≤ 1 %,
//! is measured by `bench/src/bin/failover/`, 0.15 % with a release build; this debug build
//! repeats more, 1.6 % when measured, and the bound here is looser so a loaded machine does not
//! fail it).

use std::{
    collections::HashMap,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
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
use serde_json::json;

const EVENTS: usize = 6_000;
const KEYS: usize = 300;
/// Produced every 50 ms: about 1,000 events/s.
const BATCH: usize = 50;
const KILLS: usize = 2;

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
    let mut per_id: HashMap<usize, usize> = HashMap::new();
    for n in all.iter().filter(|r| is_2xx(r)).filter_map(number) {
        *per_id.entry(n).or_default() += 1;
    }
    let repeats: usize = per_id.values().map(|n| n - 1).sum();
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
        "{} requests for {EVENTS} events, {repeats} repeats of delivered events ({:.2} %), {first_attempt_repeats} ids sent twice as attempt 1",
        all.len(),
        100.0 * repeats as f64 / EVENTS as f64
    );
    assert!(
        repeats * 100 <= EVENTS * 3,
        "{repeats} repeats of {EVENTS} delivered events after {KILLS} kills: more than 3 % (the goal is ≤ 1 %)"
    );
}

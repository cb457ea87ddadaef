//! Two dispatcher replicas per tenant (`dispatcher.replicas=2`): they share the events topic as
//! one consumer group, both deliver, per-key order holds, and the `Webhook` status totals add up
//! across them: `status.delivered` equals the number of requests the receiver answered 2xx and
//! `status.failed` the number it answered 400 (dead-lettered): neither lost to two replicas
//! overwriting each other's counts, nor counted twice.
//!
//! And a replica added and removed mid-stream (issue 16): the rebalances this causes repeat no
//! delivery — the revoked partitions are given up only once what was in flight settled and was
//! committed, and the removed replica commits before it leaves.
//!
//! In a test binary of its own, because it changes a chart value every tenant's dispatcher
//! follows; the value is set back (`helm_install` with the test defaults) at the end, also when
//! an assertion fails. The tests here take turns ([`CHART`]).

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use hookline_core::{conditions::types, naming};
use hookline_crds::Webhook;
use hookline_tests::{
    Env, LogDump, TestNamespace,
    events::event,
    group, http_get, install, kafka, pods,
    receiver::{Behavior, Receiver},
    wait,
};
use k8s_openapi::api::apps::v1::Deployment;
use kube::{Api, Client, api::PostParams};
use serde_json::json;

const OP: &str = install::OPERATOR_NAMESPACE;
const WITHIN: Duration = Duration::from_secs(180);
const EVENTS: usize = 2000;
const KEYS: usize = 100;
/// Every 25th request is answered 400: dead-lettered, counted in `status.failed`.
const FAIL_EVERY: u32 = 25;

/// `helm_install` with `extra`, tried again after a few seconds when it fails (another test
/// process upgrading the release at the same moment makes helm fail with "already exists").
fn helm_install(env: &Env, extra: &[&str]) -> anyhow::Result<()> {
    let mut last = None;
    for _ in 0..3 {
        match install::helm_install(env, extra) {
            Ok(()) => return Ok(()),
            Err(e) => {
                eprintln!("helm install failed, trying again: {e:#}");
                last = Some(e);
                std::thread::sleep(Duration::from_secs(3));
            }
        }
    }
    Err(last.expect("three tries"))
}

/// Sets `dispatcher.replicas` back to the chart's default when dropped, whatever happened.
struct ResetReplicas(Env);

impl Drop for ResetReplicas {
    fn drop(&mut self) {
        if let Err(e) = helm_install(&self.0, &[]) {
            eprintln!("could not set dispatcher.replicas back: {e:#}");
        }
    }
}

/// Waits until the controller Deployment runs its latest spec only (after a helm upgrade
/// changed its arguments).
async fn controller_rolled_out(client: &Client) {
    let deployments = Api::<Deployment>::namespaced(client.clone(), OP);
    wait::until(WITHIN, "the controller rolled out", || async {
        let d = deployments.get("hookline-controller").await?;
        let generation = d.metadata.generation;
        let want = d.spec.as_ref().and_then(|s| s.replicas);
        let s = d.status.unwrap_or_default();
        anyhow::ensure!(
            s.observed_generation == generation
                && s.replicas == want
                && s.updated_replicas == want
                && s.available_replicas == want,
            "{s:?}"
        );
        Ok(Some(()))
    })
    .await
    .unwrap();
}

/// The `--dispatcher-replicas` the controller Deployment runs with.
async fn controller_dispatcher_replicas(client: &Client) -> Option<String> {
    let d = Api::<Deployment>::namespaced(client.clone(), OP)
        .get("hookline-controller")
        .await
        .ok()?;
    d.spec?
        .template
        .spec?
        .containers
        .first()?
        .args
        .as_ref()?
        .iter()
        .find_map(|a| a.strip_prefix("--dispatcher-replicas=").map(str::to_owned))
}

/// Waits until the tenant's dispatcher Deployment has 2 available replicas. Another test
/// process sharing the environment installs the chart with the defaults when it starts; when
/// that set `dispatcher.replicas` back meanwhile, it is applied again (twice at most).
async fn two_dispatcher_replicas(env: &Env, client: &Client, deployment: &str) {
    for round in 1..=3 {
        let two = wait::until(
            Duration::from_secs(90),
            "2 available dispatcher replicas",
            || async {
                let d = Api::<Deployment>::namespaced(client.clone(), OP)
                    .get(deployment)
                    .await?;
                let want = d.spec.as_ref().and_then(|s| s.replicas);
                let s = d.status.unwrap_or_default();
                anyhow::ensure!(
                    want == Some(2) && s.available_replicas == Some(2) && s.replicas == Some(2),
                    "spec.replicas {want:?}, status {s:?}"
                );
                Ok(Some(()))
            },
        )
        .await;
        let Err(e) = two else { return };
        let arg = controller_dispatcher_replicas(client).await;
        assert!(
            round < 3 && arg.as_deref() != Some("2"),
            "{e:#} (controller runs with --dispatcher-replicas={arg:?})"
        );
        eprintln!(
            "the controller runs with --dispatcher-replicas={arg:?}: a concurrent helm install set it back; installing with dispatcher.replicas=2 again"
        );
        helm_install(env, &["dispatcher.replicas=2"]).unwrap();
        controller_rolled_out(client).await;
    }
}

/// The tenant's Ready dispatcher Pods: (name, Pod IP).
async fn dispatcher_pods(client: &Client, tenant: &str) -> anyhow::Result<Vec<(String, String)>> {
    pods::ready_pods(client, OP, &format!("hookline.dev/tenant={tenant}")).await
}

/// `hookline_dispatcher_deliveries_total` of one Webhook in a /metrics text, by (outcome,
/// status_class).
fn deliveries(metrics: &str, webhook: &str) -> HashMap<(String, String), u64> {
    let label = |line: &str, name: &str| -> Option<String> {
        let start = line.find(&format!("{name}=\""))? + name.len() + 2;
        let end = line[start..].find('"')? + start;
        Some(line[start..end].to_owned())
    };
    let mut out = HashMap::new();
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("hookline_dispatcher_deliveries_total{"))
    {
        if label(line, "webhook").as_deref() != Some(webhook) {
            continue;
        }
        let (Some(outcome), Some(class), Some(value)) = (
            label(line, "outcome"),
            label(line, "status_class"),
            line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()),
        ) else {
            continue;
        };
        *out.entry((outcome, class)).or_default() += value as u64;
    }
    out
}

/// Both tests change `dispatcher.replicas`: one at a time.
static CHART: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn with_two_dispatcher_replicas_both_deliver_and_the_status_totals_add_up() {
    let _chart = CHART.lock().await;
    let _dump = LogDump::new();
    let env = Env::get().unwrap();
    let client = env.client().await.unwrap();
    install::controller(&env, &client).await.unwrap();
    let reset = ResetReplicas(env.clone());
    helm_install(&env, &["dispatcher.replicas=2"]).unwrap();
    controller_rolled_out(&client).await;

    let ns = TestNamespace::create(&env, &client, "replicas")
        .await
        .unwrap();
    let api = Api::<Webhook>::namespaced(client.clone(), &ns.name);
    let rx = Receiver::start().await.unwrap();
    // One delivery at a time per replica, each answered after 20 ms: the run spans many status
    // intervals (2 s), so both replicas write the status repeatedly while the other does too.
    rx.program(
        "/fraud",
        Behavior {
            fail_status: 400,
            delay: Duration::from_millis(20),
            ..Behavior::fail_every(FAIL_EVERY)
        },
    );
    let wh: Webhook = serde_json::from_value(json!({
        "apiVersion": "hookline.dev/v1alpha1", "kind": "Webhook",
        "metadata": {"name": "fraud"},
        "spec": {"url": rx.url("/fraud"), "eventTypes": ["transaction.*"],
                 "delivery": {"maxInFlight": 1}}
    }))
    .unwrap();
    api.create(&PostParams::default(), &wh).await.unwrap();
    wait::condition(&api, "fraud", types::READY, WITHIN)
        .await
        .unwrap();

    // Two available replicas, and both in the consumer group with a share of the events topic.
    let deployment = naming::dispatcher(&ns.name);
    two_dispatcher_replicas(&env, &client, &deployment).await;
    let pods = wait::until(WITHIN, "2 Ready dispatcher Pods", || async {
        let pods = dispatcher_pods(&client, &ns.name).await?;
        anyhow::ensure!(pods.len() == 2, "{pods:?}");
        Ok(Some(pods))
    })
    .await
    .unwrap();
    let topics = naming::topics(&ns.name);
    let group = naming::consumer_group(&ns.name);
    let members = wait::until(WITHIN, "both replicas in the consumer group", || async {
        let (env, group, topic) = (env.clone(), group.clone(), topics.events.clone());
        let members =
            tokio::task::spawn_blocking(move || group::stable_assignment(&env, &group, &topic))
                .await??;
        anyhow::ensure!(
            members.len() == 2 && members.iter().all(|(_, ps)| !ps.is_empty()),
            "members and their events partitions: {members:?}"
        );
        Ok(Some(members))
    })
    .await
    .unwrap();
    eprintln!("dispatcher Pods {pods:?}; events partitions of the group members {members:?}");

    // Produce across many keys (3 partitions, so both replicas get work).
    let producer = kafka::producer(&env).unwrap();
    let records = (0..EVENTS).map(|i| {
        let value = event(&format!("evt_{i}"), "transaction.approved", json!({"i": i}));
        (format!("acct-{}", i % KEYS), value)
    });
    kafka::produce_many(&producer, &topics.events, records)
        .await
        .unwrap();

    // Every event arrives (once or more); per key, first arrivals are in produce order.
    let ids = |rs: &[hookline_tests::receiver::Recorded]| -> HashSet<String> {
        rs.iter()
            .filter_map(|r| r.header("webhook-id").map(str::to_owned))
            .collect()
    };
    rx.wait_for("/fraud", EVENTS, WITHIN).await.unwrap();
    wait::until(WITHIN, "every event id at the receiver", || async {
        let n = ids(&rx.requests("/fraud")).len();
        anyhow::ensure!(n == EVENTS, "{n} of {EVENTS} ids");
        Ok(Some(()))
    })
    .await
    .unwrap();
    let got = rx.requests("/fraud");
    let mut seen = HashSet::new();
    let mut last_per_key: HashMap<usize, usize> = HashMap::new();
    for r in &got {
        let i: usize = r.header("webhook-id").unwrap()["evt_".len()..]
            .parse()
            .unwrap();
        if !seen.insert(i) {
            continue;
        }
        if let Some(prev) = last_per_key.insert(i % KEYS, i) {
            assert!(
                prev < i,
                "key acct-{}: evt_{i} arrived after evt_{prev}",
                i % KEYS
            );
        }
    }

    // The status totals equal what the receiver answered: 2xx → delivered, 400 → failed.
    let counts = || {
        let got = rx.requests("/fraud");
        let ok = got
            .iter()
            .filter(|r| (200..300).contains(&r.status))
            .count();
        let bad = got.iter().filter(|r| r.status == 400).count();
        (ok as i64, bad as i64, got.len())
    };
    let totals = || async {
        let wh = api.get("fraud").await?;
        let s = wh.status.unwrap_or_default();
        anyhow::Ok((s.delivered.unwrap_or(0), s.failed.unwrap_or(0)))
    };
    wait::until(WITHIN, "status totals equal to the receiver's counts", || async {
        let (ok, bad, requests) = counts();
        let (delivered, failed) = totals().await?;
        anyhow::ensure!(
            delivered == ok && failed == bad,
            "status.delivered {delivered} / status.failed {failed}; receiver answered 2xx {ok} / 400 {bad} of {requests} requests"
        );
        Ok(Some(()))
    })
    .await
    .unwrap();
    // And they stay so over a few status intervals (no late double count).
    tokio::time::sleep(Duration::from_secs(8)).await;
    let (ok, bad, requests) = counts();
    let (delivered, failed) = totals().await.unwrap();
    assert_eq!(
        (delivered, failed),
        (ok, bad),
        "status totals after settling vs the receiver's 2xx/400 answers ({requests} requests)"
    );
    assert!(bad > 0 && ok >= i64::try_from(EVENTS).unwrap() - bad);
    eprintln!(
        "{requests} requests for {EVENTS} events: status.delivered {delivered} = 2xx {ok}, status.failed {failed} = 400 {bad}"
    );

    // Each replica delivered a share, and their own counters add up to the receiver's (the same
    // two Pods ran throughout: counters restart with a Pod).
    let mut now = dispatcher_pods(&client, &ns.name).await.unwrap();
    now.sort();
    let mut before = pods.clone();
    before.sort();
    assert_eq!(
        now,
        before,
        "the dispatcher Pods changed during the run (controller --dispatcher-replicas={:?}; another test process installing the chart sets it back)",
        controller_dispatcher_replicas(&client).await
    );
    let mut per_pod = Vec::new();
    for (name, ip) in &pods {
        let addr = format!("{ip}:9090");
        let metrics = tokio::task::spawn_blocking(move || http_get(&addr, "/metrics"))
            .await
            .unwrap()
            .unwrap();
        let d = deliveries(&metrics, "fraud");
        let ok = d
            .get(&("delivered".into(), "2xx".into()))
            .copied()
            .unwrap_or(0);
        let dead = d
            .iter()
            .filter(|((o, c), _)| o == "dead_letter" && c == "4xx")
            .map(|(_, v)| *v)
            .sum::<u64>();
        let writes: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with("hookline_dispatcher_status_writes_total{"))
            .collect();
        eprintln!("{name}: {writes:?}");
        per_pod.push((name.clone(), ok, dead));
    }
    eprintln!("per replica (pod, delivered 2xx, dead-lettered 4xx): {per_pod:?}");
    assert!(
        per_pod.iter().all(|(_, ok, _)| *ok > 0),
        "both replicas delivered: {per_pod:?}"
    );
    let (sum_ok, sum_dead) = per_pod
        .iter()
        .fold((0, 0), |(a, b), (_, ok, dead)| (a + ok, b + dead));
    assert_eq!(
        (
            i64::try_from(sum_ok).unwrap(),
            i64::try_from(sum_dead).unwrap()
        ),
        (ok, bad),
        "the replicas' own counters add up to the receiver's: {per_pod:?}"
    );

    // Back to one replica for whatever runs next; wait for the controller to be back.
    drop(reset);
    controller_rolled_out(&client).await;
}

/// Waits until the tenant's consumer group is stable with `n` members, each holding events
/// partitions; returns them.
async fn members(env: &Env, group: &str, topic: &str, n: usize) -> Vec<(String, Vec<i32>)> {
    wait::until(
        WITHIN,
        &format!("{n} member(s) in the consumer group"),
        || async {
            let (env, group, topic) = (env.clone(), group.to_owned(), topic.to_owned());
            let members =
                tokio::task::spawn_blocking(move || group::stable_assignment(&env, &group, &topic))
                    .await??;
            anyhow::ensure!(
                members.len() == n && members.iter().all(|(_, ps)| !ps.is_empty()),
                "members and their events partitions: {members:?}"
            );
            Ok(Some(members))
        },
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_replica_added_and_removed_mid_stream_repeats_no_delivery() {
    const KEYS: usize = 200;
    /// Produced every 100 ms while the replicas change: about 300 events/s.
    const BATCH: usize = 30;
    /// The stream's bound, whatever happens.
    const MAX_EVENTS: usize = 60_000;
    let _chart = CHART.lock().await;
    let _dump = LogDump::new();
    let env = Env::get().unwrap();
    let client = env.client().await.unwrap();
    install::controller(&env, &client).await.unwrap();
    let reset = ResetReplicas(env.clone());

    let ns = TestNamespace::create(&env, &client, "rebalance")
        .await
        .unwrap();
    let api = Api::<Webhook>::namespaced(client.clone(), &ns.name);
    let rx = Receiver::start().await.unwrap();
    // Answered after 20 ms: requests are in flight whenever a rebalance starts.
    rx.program("/fraud", Behavior::delayed(Duration::from_millis(20)));
    let wh: Webhook = serde_json::from_value(json!({
        "apiVersion": "hookline.dev/v1alpha1", "kind": "Webhook",
        "metadata": {"name": "fraud"},
        "spec": {"url": rx.url("/fraud"), "eventTypes": ["transaction.*"]}
    }))
    .unwrap();
    api.create(&PostParams::default(), &wh).await.unwrap();
    wait::condition(&api, "fraud", types::READY, WITHIN)
        .await
        .unwrap();
    let topics = naming::topics(&ns.name);
    let group = naming::consumer_group(&ns.name);
    members(&env, &group, &topics.events, 1).await;

    let producer = kafka::producer(&env).unwrap();
    let produced = std::sync::atomic::AtomicUsize::new(0);
    let done = std::sync::atomic::AtomicBool::new(false);
    let stream = async {
        let mut start = 0;
        while !done.load(std::sync::atomic::Ordering::SeqCst) && start < MAX_EVENTS {
            let records = (start..start + BATCH).map(|i| {
                let value = event(&format!("evt_{i}"), "transaction.approved", json!({"i": i}));
                (format!("acct-{}", i % KEYS), value)
            });
            kafka::produce_many(&producer, &topics.events, records)
                .await
                .unwrap();
            start += BATCH;
            produced.store(start, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        start
    };
    let delivered = || {
        rx.requests("/fraud")
            .iter()
            .filter_map(|r| r.header("webhook-id").map(str::to_owned))
            .collect::<HashSet<_>>()
            .len()
    };
    let scale = async {
        let flowing = |n: usize| {
            wait::until(WITHIN, "deliveries flowing", move || async move {
                Ok((delivered() >= n).then_some(()))
            })
        };
        flowing(300).await.unwrap();
        helm_install(&env, &["dispatcher.replicas=2"]).unwrap();
        controller_rolled_out(&client).await;
        two_dispatcher_replicas(&env, &client, &naming::dispatcher(&ns.name)).await;
        let two = members(&env, &group, &topics.events, 2).await;
        eprintln!("scaled up: {two:?}");
        flowing(delivered() + 300).await.unwrap();
        // Back to one: the removed replica commits, serves its revocation and leaves the group
        // (a static member sends no LeaveGroup when it merely closes, and its partitions would
        // wait for its session to time out), and the other takes its partitions over.
        assert!(!group::left_explicitly(&group), "no member left yet");
        helm_install(&env, &[]).unwrap();
        controller_rolled_out(&client).await;
        let one = members(&env, &group, &topics.events, 1).await;
        eprintln!("scaled down: {one:?}");
        wait::until(
            WITHIN,
            "the broker's log: the removed replica left with LeaveGroup",
            || async { Ok(group::left_explicitly(&group).then_some(())) },
        )
        .await
        .unwrap();
        flowing(delivered() + 300).await.unwrap();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
    };
    let (events, ()) = tokio::join!(stream, scale);

    rx.wait_for("/fraud", events, WITHIN).await.unwrap();
    wait::until(WITHIN, "every event id at the receiver", || async {
        let n = delivered();
        anyhow::ensure!(n == events, "{n} of {events} ids");
        Ok(Some(()))
    })
    .await
    .unwrap();
    let got = rx.requests("/fraud");
    let firsts = hookline_tests::receiver::first_arrivals_in_key_order(&got, KEYS).unwrap();
    assert_eq!(firsts.len(), events);
    let mut per_id: HashMap<&str, usize> = HashMap::new();
    for r in &got {
        *per_id
            .entry(r.header("webhook-id").unwrap_or_default())
            .or_default() += 1;
    }
    let repeated: Vec<(&str, usize)> = per_id.into_iter().filter(|(_, n)| *n > 1).collect();
    eprintln!(
        "{} requests for {events} events across a scale-up and a scale-down; {} ids sent more than once",
        got.len(),
        repeated.len()
    );
    assert!(
        repeated.is_empty(),
        "a rebalance without a crash repeated {} deliveries, e.g. {:?}",
        repeated.len(),
        &repeated[..repeated.len().min(10)]
    );
    drop(reset);
    controller_rolled_out(&client).await;
}

//! Restarts mid-stream (issue 16, item 2): parts of the running system go away and come back
//! while events flow, and afterwards every event has been delivered (counted by id at the
//! receiver), each key's events arrived in produce order, every `Webhook`'s status caught up,
//! and every Pod and every component of the environment is healthy again without anyone
//! restarting it (the pod runner restarts crashed containers as a kubelet does, and reports
//! restart counts in the Pod status, which the tests read). One test binary, by outage:
//!
//! - [`kafka`]: the Kafka broker stopped for 30 s while 10,000 events flow to a flaky receiver.
//! - [`control_plane`]: kube-apiserver and etcd stopped for 30 s while events flow; the
//!   controller, unable to renew its Lease, exits and is restarted, and leads again.
//! - [`controller`]: the controller killed with SIGKILL while it reconciles 500 `Webhook`s.
//!
//! Each test stops or kills a component every other test depends on, so each holds
//! [`outage::exclusive`] for its whole run: the tests of this binary never overlap, and cargo
//! runs test binaries one after another.

mod control_plane;
mod controller;
mod kafka;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::Duration,
};

use hookline_core::conditions::types;
use hookline_crds::Webhook;
use hookline_tests::{
    events::event,
    install::OPERATOR_NAMESPACE as OP,
    outage, pods,
    receiver::{Receiver, Recorded},
    tenant::{Tenant, status_count},
    wait,
};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client};
use serde_json::json;

fn id(r: &Recorded) -> &str {
    r.header("webhook-id").expect("webhook-id")
}

fn is_2xx(r: &Recorded) -> bool {
    (200..300).contains(&r.status)
}

/// `n` of `evt_<n>`.
fn seq(r: &Recorded) -> usize {
    id(r)
        .strip_prefix("evt_")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("webhook-id {} is not evt_<n>", id(r)))
}

/// Events `evt_<n>` for `n` in `range`, keyed `key-<n % keys>`, of type `transaction.approved`.
fn records(range: std::ops::Range<usize>, keys: usize) -> Vec<(String, Vec<u8>)> {
    range
        .map(|n| {
            (
                format!("key-{}", n % keys),
                event(&format!("evt_{n}"), "transaction.approved", json!({"n": n})),
            )
        })
        .collect()
}

fn distinct_2xx(rs: &[Recorded]) -> usize {
    rs.iter()
        .filter(|r| is_2xx(r))
        .map(id)
        .collect::<HashSet<_>>()
        .len()
}

/// Waits up to `deadline` until each of `evt_0..evt_<events>` was answered 2xx at `path`.
async fn all_delivered(rx: &Receiver, path: &str, events: usize, deadline: Duration) {
    wait::until(
        deadline,
        &format!("all {events} event ids answered 2xx at {path}"),
        || async {
            let n = distinct_2xx(&rx.requests(path));
            anyhow::ensure!(n >= events, "{n} distinct ids answered 2xx");
            Ok(Some(()))
        },
    )
    .await
    .unwrap();
}

/// What arrived at `path`: exactly the ids `evt_0..evt_<events>` were answered 2xx; per key
/// (`n % keys`) the first successful arrivals are in produce order; and no attempt of an event
/// reached the receiver before every earlier event of its key had been delivered. Returns
/// (requests, repeats of delivered events) for the report.
fn check_delivered_in_key_order(all: &[Recorded], events: usize, keys: usize) -> (usize, usize) {
    let delivered: HashSet<usize> = all.iter().filter(|r| is_2xx(r)).map(seq).collect();
    assert_eq!(
        delivered,
        (0..events).collect::<HashSet<_>>(),
        "every event id answered 2xx, and no other id"
    );
    // Per key, the next event (in produce order, n = key + i * keys) not yet delivered.
    let mut next: HashMap<usize, usize> = HashMap::new();
    let mut seen = HashSet::new();
    for (i, r) in all.iter().enumerate() {
        let n = seq(r);
        let key = n % keys;
        let want = next.entry(key).or_insert(key);
        assert!(
            n <= *want,
            "request #{i}: evt_{n} of key-{key} was attempted before evt_{want} was delivered"
        );
        if is_2xx(r) && seen.insert(n) {
            assert_eq!(n, *want, "key-{key}: first successful arrivals in order");
            *want += keys;
        }
    }
    let ok = all.iter().filter(|r| is_2xx(r)).count();
    (all.len(), ok - events)
}

/// Waits up to `deadline` until `Webhook` `name`'s status has caught up: `delivered` equals the
/// 2xx answers its receiver gave (no count lost or doubled through the outage), Ready and
/// Delivering are True, Degraded is not, and the controller has observed its generation.
async fn status_converges(t: &Tenant, name: &str, rx: &Receiver, path: &str, deadline: Duration) {
    wait::until(deadline, &format!("{name}'s status caught up"), || async {
        let wh = t.api.get(name).await?;
        let want = rx.requests(path).iter().filter(|r| is_2xx(r)).count();
        converged(&wh, i64::try_from(want)?)?;
        Ok(Some(()))
    })
    .await
    .unwrap();
}

/// Whether `wh`'s status is settled with `delivered` 2xx answers; why not, as the error.
fn converged(wh: &Webhook, delivered: i64) -> anyhow::Result<()> {
    let got = status_count(wh, "delivered");
    anyhow::ensure!(got == delivered, "status.delivered {got}, want {delivered}");
    for c in [types::READY, types::DELIVERING] {
        anyhow::ensure!(wait::condition_is_true(wh, c), "{c} is not True");
    }
    anyhow::ensure!(
        !wait::condition_is_true(wh, types::DEGRADED),
        "Degraded is True"
    );
    let status = wh.status.as_ref().expect("a status");
    anyhow::ensure!(
        status.observed_generation == wh.metadata.generation,
        "observedGeneration {:?} of generation {:?}",
        status.observed_generation,
        wh.metadata.generation
    );
    Ok(())
}

/// Restart counts of the containers a test depends on, by `pod/container`: the controller's,
/// hookline-api's, and those of the dispatcher of tenant `tenant`.
async fn operator_restarts(client: &Client, tenant: &str) -> anyhow::Result<BTreeMap<String, i32>> {
    let mut counts = outage::restarts(
        client,
        OP,
        "app.kubernetes.io/name in (hookline-controller,hookline-api)",
    )
    .await?;
    counts.extend(outage::restarts(client, OP, &format!("hookline.dev/tenant={tenant}")).await?);
    Ok(counts)
}

/// Waits up to `deadline` until every Pod of `before` (from [`operator_restarts`]) is Ready
/// again — the same Pod, not a replacement — with exactly the `expected` restarts since
/// `before` (by `pod/container`; none for the others), and every component of the local
/// environment is running and healthy, with nobody restarting anything.
async fn everything_recovers(
    client: &Client,
    tenant: &str,
    before: &BTreeMap<String, i32>,
    expected: &BTreeMap<String, i32>,
    deadline: Duration,
) {
    let pods_api = Api::<Pod>::namespaced(client.clone(), OP);
    let names: HashSet<&str> = before
        .keys()
        .filter_map(|k| k.split_once('/').map(|(p, _)| p))
        .collect();
    let what = format!("every operator Pod Ready again, restarted {expected:?}");
    let changed = wait::until(deadline, &what, || async {
        for name in &names {
            let pod = pods_api.get(name).await?;
            anyhow::ensure!(
                pod.metadata.deletion_timestamp.is_none(),
                "Pod {name} is being deleted"
            );
            anyhow::ensure!(pods::is_ready(&pod), "Pod {name} is not Ready");
        }
        let changed = restarted(before, &operator_restarts(client, tenant).await?);
        anyhow::ensure!(changed == *expected, "restarted {changed:?}");
        Ok(Some(changed))
    })
    .await
    .unwrap();
    eprintln!("restarts: {changed:?}");
    wait::until(deadline, "every local component healthy", || async {
        Ok(outage::environment_healthy().await?.then_some(()))
    })
    .await
    .unwrap();
}

/// The restart count deltas between `before` and `after`, only the ones that changed.
fn restarted(
    before: &BTreeMap<String, i32>,
    after: &BTreeMap<String, i32>,
) -> BTreeMap<String, i32> {
    after
        .iter()
        .filter_map(|(k, a)| {
            let d = a - before.get(k).copied().unwrap_or(0);
            (d != 0).then(|| (k.clone(), d))
        })
        .collect()
}

//! The controller killed (SIGKILL) while it reconciles 500 `Webhook`s of one tenant, created as
//! fast as the API server takes them: the pod runner starts it again, the new process takes the
//! Lease it held and reconciles every `Webhook` to Ready, each with the one signing key made for
//! it (a key made twice would break a receiver that copied the first), and the tenant's
//! dispatcher delivers an event to each of the 500 URLs, signed with that key.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use futures::{StreamExt as _, stream};
use hookline_core::conditions::types;
use hookline_crds::Webhook;
use hookline_tests::{
    LogDump,
    events::{event, verify},
    outage,
    pods::{self, alive},
    receiver::Receiver,
    tenant::{Tenant, WITHIN, status_count},
    wait,
};
use kube::api::{ListParams, PostParams};
use serde_json::json;

use crate::{OP, everything_recovers, id, is_2xx, operator_restarts};

const WEBHOOKS: usize = 500;
const EVENTS: usize = 3;

fn name(i: usize) -> String {
    format!("wh-{i}")
}

fn path(i: usize) -> String {
    format!("/wh-{i}")
}

/// How many of the tenant's `Webhook`s the controller has reconciled at least once (they have
/// a `SecretReady` condition), and how many are settled: Ready, generation observed, first key.
async fn progress(t: &Tenant) -> anyhow::Result<(usize, usize)> {
    let list = t.api.list(&ListParams::default()).await?;
    let reconciled = list
        .items
        .iter()
        .filter(|w| {
            w.status
                .as_ref()
                .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == types::SECRET_READY))
        })
        .count();
    let settled = list.items.iter().filter(|w| settled(w)).count();
    Ok((reconciled, settled))
}

fn settled(w: &Webhook) -> bool {
    let Some(s) = &w.status else { return false };
    wait::condition_is_true(w, types::READY)
        && s.observed_generation == w.metadata.generation
        && s.secret.as_ref().is_some_and(|k| k.generation == 1)
}

#[tokio::test]
async fn the_controller_killed_while_it_reconciles_500_webhooks_settles_them_all_after_its_restart()
{
    let _exclusive = outage::exclusive().await;
    let _dump = LogDump::new();
    let t = Tenant::create("rst-ctl").await;
    let rx = Receiver::start().await.unwrap();
    // The first one makes the tenant's dispatcher and topics; the rest are the controller's work.
    t.webhook(&name(0), &rx.url(&path(0)), &["order.*"], json!({}))
        .await;
    let before = operator_restarts(&t.client, &t.ns.name).await.unwrap();
    let controllers = pods::ready_pods(&t.client, OP, "app.kubernetes.io/name=hookline-controller")
        .await
        .unwrap();
    assert_eq!(controllers.len(), 1, "one controller replica");
    let controller = controllers[0].0.clone();
    let old_pid = pods::pid(OP, &controller, "controller").expect("the controller's pid file");

    let create = stream::iter(1..WEBHOOKS)
        .map(|i| {
            let wh: Webhook = serde_json::from_value(json!({
                "apiVersion": "hookline.dev/v1alpha1", "kind": "Webhook",
                "metadata": {"name": name(i)},
                "spec": {"url": rx.url(&path(i)), "eventTypes": ["order.*"]}
            }))
            .unwrap();
            let api = t.api.clone();
            async move { api.create(&PostParams::default(), &wh).await.map(|_| ()) }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>();
    let kill = async {
        let (reconciled, _) = wait::until(
            Duration::from_secs(120),
            "50 Webhooks reconciled before the kill",
            || async { Ok(Some(progress(&t).await?).filter(|(r, _)| *r >= 50)) },
        )
        .await
        .unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(old_pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        reconciled
    };
    let (created, reconciled_at_kill) = tokio::join!(create, kill);
    for r in created {
        r.unwrap();
    }
    let (_, settled_after_kill) = progress(&t).await.unwrap();
    eprintln!(
        "killed the controller with {reconciled_at_kill}+ of {WEBHOOKS} Webhooks reconciled; {settled_after_kill} settled once all were created"
    );
    assert!(
        settled_after_kill < WEBHOOKS,
        "the controller was killed mid-reconcile"
    );

    let new_pid = wait::until(WITHIN, "the controller restarted", || async {
        Ok(pods::pid(OP, &controller, "controller").filter(|p| *p != old_pid && alive(*p)))
    })
    .await
    .unwrap();
    let started = tokio::time::Instant::now();
    wait::until(
        Duration::from_secs(300),
        &format!("all {WEBHOOKS} Webhooks Ready with their first key"),
        || async {
            let (_, settled) = progress(&t).await?;
            anyhow::ensure!(settled >= WEBHOOKS, "{settled} settled");
            Ok(Some(()))
        },
    )
    .await
    .unwrap();
    eprintln!(
        "the restarted controller (pid {new_pid}) settled all {WEBHOOKS} in {:?}",
        started.elapsed()
    );

    // Every URL gets every event, signed with the key in its Webhook's Secret.
    let records: Vec<(String, Vec<u8>)> = (0..EVENTS)
        .map(|n| {
            (
                format!("key-{n}"),
                event(&format!("evt_{n}"), "order.created", json!({"n": n})),
            )
        })
        .collect();
    t.produce_in_order(&records).await;
    let per_path = || {
        let mut m: HashMap<String, HashSet<String>> = HashMap::new();
        for r in rx.all_requests().iter().filter(|r| is_2xx(r)) {
            m.entry(r.path.clone())
                .or_default()
                .insert(id(r).to_owned());
        }
        m
    };
    wait::until(
        Duration::from_secs(300),
        &format!("{EVENTS} events at each of {WEBHOOKS} URLs"),
        || async {
            let m = per_path();
            let complete = (0..WEBHOOKS)
                .filter(|i| m.get(&path(*i)).is_some_and(|ids| ids.len() == EVENTS))
                .count();
            anyhow::ensure!(complete >= WEBHOOKS, "{complete} URLs have all {EVENTS}");
            Ok(Some(()))
        },
    )
    .await
    .unwrap();
    let want: HashSet<String> = (0..EVENTS).map(|n| format!("evt_{n}")).collect();
    assert!(
        per_path().values().all(|ids| *ids == want),
        "no other event ids"
    );
    for i in 0..WEBHOOKS {
        let key = t.signing_key(&name(i)).await;
        for r in rx.requests(&path(i)) {
            verify(&key, &r);
        }
    }

    wait::until(
        Duration::from_secs(120),
        "every Webhook's status counts its deliveries",
        || async {
            let list = t.api.list(&ListParams::default()).await?;
            let behind = list
                .items
                .iter()
                .filter(|w| {
                    let i: usize = w.metadata.name.as_deref().unwrap_or_default()["wh-".len()..]
                        .parse()
                        .unwrap_or(usize::MAX);
                    let want = rx.requests(&path(i)).iter().filter(|r| is_2xx(r)).count();
                    !(settled(w)
                        && wait::condition_is_true(w, types::DELIVERING)
                        && usize::try_from(status_count(w, "delivered")).ok() == Some(want))
                })
                .count();
            anyhow::ensure!(behind == 0, "{behind} Webhooks not caught up");
            Ok(Some(()))
        },
    )
    .await
    .unwrap();

    // The killed controller restarted once, by itself; nothing else restarted.
    let once = [(format!("{controller}/controller"), 1)].into();
    everything_recovers(
        &t.client,
        &t.ns.name,
        &before,
        &once,
        Duration::from_secs(120),
    )
    .await;
}

//! What survives a change around a `Webhook`: a pending retry and the status counters across a
//! restart of the dispatcher Pod, deliveries signed with both keys during a key rotation, and
//! events that arrived while the `Webhook` was paused, delivered after the resume without
//! spending an attempt.

use std::time::Duration;

use hookline_core::conditions::types;
use hookline_tests::{
    LogDump,
    events::{event, verify_fresh},
    install,
    receiver::{Behavior, Receiver},
    tenant::{Tenant, WITHIN},
    wait,
};
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::json;

#[tokio::test]
async fn a_pending_retry_and_the_counters_survive_a_dispatcher_restart() {
    let _dump = LogDump::new();
    let t = Tenant::create("dsp-restart").await;
    let rx = Receiver::start().await.unwrap();
    t.webhook(
        "fraud",
        &rx.url("/fraud"),
        &["transaction.*"],
        json!({"delivery": {"retry": {"initialDelay": "20s"}}}),
    )
    .await;
    t.produce(
        "tx-1",
        &event("evt_before", "transaction.approved", json!({})),
    )
    .await;
    rx.wait_for("/fraud", 1, WITHIN).await.unwrap();
    t.wait_count("fraud", "delivered", 1).await;

    rx.program("/fraud", Behavior::status(500));
    t.produce(
        "tx-2",
        &event("evt_survivor", "transaction.approved", json!({})),
    )
    .await;
    rx.wait_for("/fraud", 2, WITHIN).await.unwrap();
    // The failed attempt is reported once its retry is scheduled; then the dispatcher goes.
    wait::until(WITHIN, "lastFailure", || async {
        let wh = t.api.get("fraud").await?;
        Ok(wh.status.and_then(|s| s.last_failure).map(|_| ()))
    })
    .await
    .unwrap();
    let pods = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(
        t.client.clone(),
        install::OPERATOR_NAMESPACE,
    );
    let selector = format!("hookline.dev/tenant={}", t.ns.name);
    let before = pods
        .list(&kube::api::ListParams::default().labels(&selector))
        .await
        .unwrap();
    for p in &before.items {
        pods.delete(p.metadata.name.as_deref().unwrap(), &Default::default())
            .await
            .unwrap();
    }
    rx.program("/fraud", Behavior::status(200));

    let got = rx.wait_for("/fraud", 3, WITHIN).await.unwrap();
    assert_eq!(
        got[2].header("webhook-id"),
        Some("evt_survivor"),
        "the retry lived in Kafka"
    );
    assert_eq!(got[2].header("hookline-attempt"), Some("2"));
    let old: Vec<_> = before
        .items
        .iter()
        .filter_map(|p| p.metadata.uid.clone())
        .collect();
    let now = pods
        .list(&kube::api::ListParams::default().labels(&selector))
        .await
        .unwrap();
    assert!(
        now.items
            .iter()
            .all(|p| !old.contains(p.metadata.uid.as_ref().unwrap())),
        "a new dispatcher Pod delivered it"
    );
    let wh = t.wait_count("fraud", "delivered", 2).await;
    assert_eq!(
        wh.status.unwrap().delivered,
        Some(2),
        "counted once each, across the restart"
    );
}

#[tokio::test]
async fn after_a_rotation_deliveries_are_signed_with_both_keys() {
    let _dump = LogDump::new();
    let t = Tenant::create("dsp-rotate").await;
    let rx = Receiver::start().await.unwrap();
    t.webhook("fraud", &rx.url("/fraud"), &["transaction.*"], json!({}))
        .await;
    let old = t.signing_key("fraud").await;

    t.rotate_key("fraud", "r1", 2).await;
    let new = t.signing_key("fraud").await;
    assert_ne!(old, new);

    // The dispatcher reads the rotated Secret within a second or so: events produced from now
    // on are soon signed with both keys. Produce one at a time until one is (no fixed sleep).
    let mut n = 0;
    let got = wait::until(WITHIN, "a delivery signed with both keys", || {
        n += 1;
        let (t, rx) = (&t, &rx);
        async move {
            t.produce(
                "tx-1",
                &event(
                    &format!("evt_rotated_{n}"),
                    "transaction.approved",
                    json!({}),
                ),
            )
            .await;
            let got = rx.wait_for("/fraud", n, WITHIN).await?;
            let last = got[n - 1].clone();
            let sig = last.header("webhook-signature").unwrap_or_default();
            Ok((sig.split(' ').count() == 2).then_some(last))
        }
    })
    .await
    .unwrap();
    verify_fresh(&new, &got);
    verify_fresh(&old, &got);
}

#[tokio::test]
async fn events_that_arrive_while_paused_are_delivered_after_the_resume() {
    let _dump = LogDump::new();
    let t = Tenant::create("dsp-paused").await;
    let rx = Receiver::start().await.unwrap();
    t.webhook(
        "fraud",
        &rx.url("/fraud"),
        &["transaction.*"],
        json!({"paused": true}),
    )
    .await;

    t.produce(
        "tx-1",
        &event("evt_paused", "transaction.approved", json!({})),
    )
    .await;
    wait::until(WITHIN, "Delivering=False (Paused)", || async {
        let wh = t.api.get("fraud").await?;
        let paused = wh.status.is_some_and(|s| {
            s.conditions.iter().any(|c| {
                c.type_ == types::DELIVERING && c.status == "False" && c.reason == "Paused"
            })
        });
        Ok(paused.then_some(()))
    })
    .await
    .unwrap();
    // The event was read and parked in the retry path (no attempt spent), not delivered.
    wait::until(WITHIN, "the paused event parked", || async {
        let metrics = t.dispatcher_get("/metrics").await?;
        let parked: f64 = metrics
            .lines()
            .filter(|l| {
                l.starts_with("hookline_dispatcher_retries_scheduled_total{")
                    && l.contains(r#"outcome="postponed""#)
                    && l.contains(r#"webhook="fraud""#)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        Ok((parked >= 1.0).then_some(()))
    })
    .await
    .unwrap();
    assert!(
        rx.requests("/fraud").is_empty(),
        "nothing is delivered while paused"
    );

    let patch = json!({"spec": {"paused": false}});
    t.api
        .patch("fraud", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let got = rx
        .wait_for("/fraud", 1, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(got[0].header("webhook-id"), Some("evt_paused"));
    assert_eq!(
        got[0].header("hookline-attempt"),
        Some("1"),
        "parking spends no attempt"
    );
}

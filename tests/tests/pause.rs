//! A short pause with deliveries already queued: jobs that wait for their `Webhook`'s in-flight
//! slot when it is paused must be parked for the pause's own length (at least the 10 s minimum),
//! not for the longest retry tier. Before the pipeline and the attempt asked one decision
//! (`hookline_core::status::hold`), the attempt parked them for an hour: this test waited for
//! them in vain.

use std::time::Duration;

use hookline_tests::{
    LogDump,
    events::event,
    receiver::{Behavior, Receiver},
    tenant::{Tenant, WITHIN},
    wait,
};
use kube::api::{Patch, PatchParams};
use serde_json::json;

const EVENTS: usize = 20;

#[tokio::test]
async fn jobs_queued_when_a_short_pause_starts_go_out_within_the_park_delay_after_the_resume() {
    let _dump = LogDump::new();
    let t = Tenant::create("pause-queued").await;
    let rx = Receiver::start().await.unwrap();
    // One at a time, half a second each: the rest of the burst waits for the slot.
    rx.program("/slow", Behavior::delayed(Duration::from_millis(500)));
    t.webhook(
        "slow",
        &rx.url("/slow"),
        &["transaction.*"],
        json!({"delivery": {"maxInFlight": 1}}),
    )
    .await;
    // Distinct keys: nothing waits behind its key, every job waits for the slot.
    let records: Vec<(String, Vec<u8>)> = (0..EVENTS)
        .map(|i| {
            (
                format!("tx-{i}"),
                event(&format!("evt_q{i}"), "transaction.review", json!({"i": i})),
            )
        })
        .collect();
    t.produce_in_order(&records).await;
    rx.wait_for("/slow", 1, WITHIN).await.unwrap();

    let pause = |paused: bool| json!({"spec": {"paused": paused}});
    let pp = PatchParams::default();
    t.api
        .patch("slow", &pp, &Patch::Merge(&pause(true)))
        .await
        .unwrap();
    // Long enough for the dispatcher to see the pause and park what was queued, far shorter
    // than the park delay.
    wait::until(WITHIN, "the pause to reach the dispatcher", || async {
        let wh = t.api.get("slow").await?;
        let paused = wh.status.is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Delivering" && c.reason == "Paused")
        });
        Ok(paused.then_some(()))
    })
    .await
    .unwrap();
    let before_resume = rx.finished("/slow");
    assert!(
        before_resume < EVENTS,
        "the pause came too late to catch queued jobs ({before_resume} of {EVENTS} delivered)"
    );
    t.api
        .patch("slow", &pp, &Patch::Merge(&pause(false)))
        .await
        .unwrap();

    // Parked for the minimum of 10 s (the pause lasted less), read back through the 10 s tier:
    // well within 90 s. Parked for the longest tier (1 h), none would come back.
    wait::until(
        Duration::from_secs(90),
        "every queued event after the resume",
        || async {
            let ids: std::collections::HashSet<String> = rx
                .requests("/slow")
                .iter()
                .filter_map(|r| r.header("webhook-id").map(str::to_owned))
                .collect();
            Ok((ids.len() == EVENTS).then_some(()))
        },
    )
    .await
    .unwrap();
}

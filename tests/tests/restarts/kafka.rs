//! The Kafka broker goes away for 30 s mid-stream: 10,000 events over 1,000 keys, half produced
//! before and half while the broker is down (an upstream producer keeps producing into its own
//! queue), flow to a receiver that fails a fifth of the requests, so retries are pending in the
//! retry topics when the broker stops. The dispatcher, the controller and hookline-api carry on
//! when it is back, by themselves.

use std::time::Duration;

use hookline_tests::{
    LogDump, outage,
    receiver::{Behavior, Receiver},
    tenant::Tenant,
    wait,
};
use serde_json::json;

use crate::{
    all_delivered, check_delivered_in_key_order, distinct_2xx, everything_recovers,
    operator_restarts, records, status_converges,
};

const EVENTS: usize = 10_000;
const KEYS: usize = 1_000;
const DOWN: Duration = Duration::from_secs(30);

#[tokio::test]
async fn kafka_stopped_for_30s_mid_stream_every_one_of_10000_events_arrives_in_key_order() {
    let _exclusive = outage::exclusive().await;
    let _dump = LogDump::new();
    let t = Tenant::create("rst-kafka").await;
    let rx = Receiver::start().await.unwrap();
    rx.program("/fraud", Behavior::fail_ratio(0.2, 0x6b61));
    t.webhook("fraud", &rx.url("/fraud"), &["transaction.*"], json!({}))
        .await;
    let before = operator_restarts(&t.client, &t.ns.name).await.unwrap();

    t.produce_in_order(&records(0..EVENTS / 2, KEYS)).await;
    wait::until(
        Duration::from_secs(120),
        "a fifth of the events delivered before the broker stops",
        || async { Ok((distinct_2xx(&rx.requests("/fraud")) >= EVENTS / 5).then_some(())) },
    )
    .await
    .unwrap();

    let down = outage::Outage::stop(&["kafka"]).await.unwrap();
    let at_stop = distinct_2xx(&rx.requests("/fraud"));
    eprintln!("Kafka stopped with {at_stop} of {EVENTS} events delivered");
    assert!(at_stop < EVENTS / 2, "the broker stopped mid-stream");
    // The second half is produced while the broker is down; its acknowledgements come after.
    let second = records(EVENTS / 2..EVENTS, KEYS);
    let second_half = t.produce_in_order(&second);
    let outage = async move {
        tokio::time::sleep(DOWN.saturating_sub(down.elapsed())).await;
        down.end().await.unwrap()
    };
    let (_, was_down) = tokio::join!(second_half, outage);
    let back = tokio::time::Instant::now();
    eprintln!("Kafka was down for {was_down:?}");

    all_delivered(&rx, "/fraud", EVENTS, Duration::from_secs(600)).await;
    eprintln!(
        "all {EVENTS} delivered {:?} after Kafka was back",
        back.elapsed()
    );
    let (requests, repeats) = check_delivered_in_key_order(&rx.requests("/fraud"), EVENTS, KEYS);
    status_converges(&t, "fraud", &rx, "/fraud", Duration::from_secs(120)).await;
    eprintln!("{requests} requests, {repeats} repeats of delivered events");
    // No container crashed: a broker outage is ridden out, not restarted through.
    everything_recovers(
        &t.client,
        &t.ns.name,
        &before,
        &Default::default(),
        Duration::from_secs(120),
    )
    .await;
}

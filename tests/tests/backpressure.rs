//! Back-pressure end to end: a dispatcher of this test's own with a tiny `--max-pending` (40)
//! drains a backlog of 1,500 events to a lone, slowish `Webhook` (3 ms a request, 4 in
//! flight). Memory fills at once, so consumption stops and starts many times; every event must
//! still arrive, in order per key, and none may take the overflow path through the retry
//! topics (a lone `Webhook` has no one to make room for: it waits for memory, it is never
//! postponed). The metrics show back-pressure engaged and released.

use std::time::Duration;

use hookline_core::conditions::types;
use hookline_crds::Webhook;
use hookline_tests::{
    Env, LogDump, TestNamespace,
    dispatcher::{Dispatcher, OwnTopics},
    events::event,
    http_get, install, kafka,
    receiver::{self, Behavior, Receiver},
    wait,
};
use kube::{Api, api::PostParams};
use serde_json::json;

const EVENTS: usize = 1_500;
const KEYS: usize = 15;

/// The value of an unlabelled sample, or the sum of a labelled family's samples.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with([' ', '{']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_backlog_far_over_max_pending_drains_completely_in_order_without_overflow() {
    let mut dump = LogDump::new();
    let env = Env::get().unwrap();
    let client = env.client().await.unwrap();
    install::controller(&env, &client).await.unwrap();
    let ns = TestNamespace::create(&env, &client, "backpressure")
        .await
        .unwrap();
    let rx = Receiver::start().await.unwrap();
    rx.program("/lone", Behavior::delayed(Duration::from_millis(3)));
    let api = Api::<Webhook>::namespaced(client.clone(), &ns.name);
    let wh: Webhook = serde_json::from_value(
        json!({"apiVersion": "hookline.dev/v1alpha1", "kind": "Webhook",
        "metadata": {"name": "lone"},
        "spec": {"url": rx.url("/lone"), "eventTypes": ["a.*"], "delivery": {"maxInFlight": 4}}}),
    )
    .unwrap();
    api.create(&PostParams::default(), &wh).await.unwrap();
    wait::condition(&api, "lone", types::SECRET_READY, Duration::from_secs(60))
        .await
        .unwrap();

    let topics = OwnTopics::create(&env, "bp", 3).await.unwrap();
    // The whole backlog first, so the dispatcher reads it as fast as Kafka hands it over.
    let producer = kafka::producer(&env).unwrap();
    let records = (0..EVENTS).map(|i| {
        (
            format!("k{}", i % KEYS),
            event(&format!("evt_{i}"), "a.b", json!({"i": i})),
        )
    });
    kafka::produce_many(&producer, &topics.events, records)
        .await
        .unwrap();

    let dispatcher = Dispatcher::start(
        &env,
        &ns.name,
        &topics,
        &["--allow-cidr=127.0.0.0/8", "--max-pending=40"],
        &mut dump,
    )
    .unwrap();

    let got = rx
        .wait_for("/lone", EVENTS, Duration::from_secs(120))
        .await
        .unwrap();
    let listen = dispatcher.listen.clone();
    let metrics = tokio::task::spawn_blocking(move || http_get(&listen, "/metrics"))
        .await
        .unwrap()
        .unwrap();
    let family = |name: &str| {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let seen = receiver::first_arrivals_in_key_order(&got, KEYS)
        .map_err(|e| {
            anyhow::anyhow!(
                "{e}\n{}\n{}",
                family("hookline_dispatcher_retries_scheduled_total"),
                family("hookline_dispatcher_records_total")
            )
        })
        .unwrap();
    assert_eq!(seen.len(), EVENTS, "every event arrived");

    let text = wait::until(Duration::from_secs(10), "back-pressure released", || {
        let listen = dispatcher.listen.clone();
        async move {
            let text = tokio::task::spawn_blocking(move || http_get(&listen, "/metrics")).await??;
            Ok((metric(&text, "hookline_dispatcher_backpressure") == 0.0).then_some(text))
        }
    })
    .await
    .unwrap();
    let engaged = metric(&text, "hookline_dispatcher_backpressure_engaged_total");
    assert!(
        engaged >= 1.0,
        "1,500 events against --max-pending=40 must engage back-pressure; engaged {engaged} times"
    );
    assert_eq!(
        metric(&text, "hookline_dispatcher_retries_scheduled_total"),
        0.0,
        "nothing went through the retry topics:\n{text}"
    );
}

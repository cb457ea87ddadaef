//! Kafka of the local environment: a record goes in and comes back with its key and headers,
//! and the broker does not create topics on its own (so the controller's topic management is
//! what makes topics exist).

use std::time::Duration;

use hookline_tests::{Env, LogDump, kafka};
use rdkafka::{
    ClientConfig,
    consumer::{BaseConsumer, Consumer},
};

#[tokio::test]
async fn event_produced_to_kafka_is_consumed_back_with_key_and_headers() {
    let _dump = LogDump::new();
    let env = Env::get().unwrap();
    let topic = kafka::create_topic(&env, "roundtrip", 3).await.unwrap();
    let producer = kafka::producer(&env).unwrap();
    let value = br#"{"id":"evt_1","type":"transaction.approved","timestamp":"2026-11-23T12:00:00Z","data":{"transactionId":"tx-42"}}"#;
    kafka::produce(
        &producer,
        &topic,
        Some("tx-42"),
        value,
        &[("ce_source", b"fraud-engine"), ("trace", b"\x00\x01")],
    )
    .await
    .unwrap();

    let got = kafka::consume(&env, &topic, 1, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(got[0].key.as_deref(), Some(&b"tx-42"[..]));
    assert_eq!(got[0].value.as_deref(), Some(&value[..]));
    assert_eq!(
        got[0].headers,
        vec![
            ("ce_source".to_string(), b"fraud-engine".to_vec()),
            ("trace".to_string(), vec![0, 1])
        ]
    );
}

#[tokio::test]
async fn broker_does_not_create_topics_automatically() {
    let _dump = LogDump::new();
    let env = Env::get().unwrap();
    let name = format!("hl-test-nonexistent-{}", hookline_tests::random_suffix());
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env.kafka_bootstrap)
        .set("allow.auto.create.topics", "true")
        .create()
        .unwrap();
    // Asking for a topic's metadata would create it if the broker allowed auto-creation.
    let md = consumer
        .fetch_metadata(Some(&name), Duration::from_secs(10))
        .unwrap();
    let topic = md
        .topics()
        .iter()
        .find(|t| t.name() == name)
        .expect("metadata names the topic");
    assert!(
        topic.error().is_some(),
        "the broker reported {name} as existing"
    );
    let all = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap();
    assert!(
        !all.topics().iter().any(|t| t.name() == name),
        "{name} was created automatically"
    );
}

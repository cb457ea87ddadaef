//! Compressed topics: upstream producers commonly compress their batches. An event produced
//! with each codec librdkafka knows — gzip, snappy, lz4 and zstd — reaches the receiver
//! through the controller-made dispatcher, signed and intact. (librdkafka was built without
//! zstd before: such a producer could not even be created, and the dispatcher could not
//! decompress what another client wrote with it.)

use hookline_tests::{
    LogDump,
    events::{event, verify_fresh},
    kafka,
    receiver::Receiver,
    tenant::{Tenant, WITHIN},
};
use serde_json::json;

const CODECS: [&str; 4] = ["gzip", "snappy", "lz4", "zstd"];

#[tokio::test]
async fn events_compressed_with_every_codec_are_delivered() {
    let _dump = LogDump::new();
    let t = Tenant::create("compression").await;
    let rx = Receiver::start().await.unwrap();
    t.webhook("all", &rx.url("/all"), &["transaction.*"], json!({}))
        .await;
    for codec in CODECS {
        let producer = kafka::compressing_producer(&t.env, codec)
            .unwrap_or_else(|e| panic!("a {codec} producer: {e}"));
        // A repetitive body, so that the codec has something to compress.
        let body = event(
            &format!("evt_{codec}"),
            "transaction.approved",
            json!({"codec": codec, "padding": "x".repeat(4096)}),
        );
        kafka::produce(&producer, &t.topics().events, Some(codec), &body, &[])
            .await
            .unwrap_or_else(|e| panic!("producing with {codec}: {e}"));
    }
    let got = rx.wait_for("/all", CODECS.len(), WITHIN).await.unwrap();
    let key = t.signing_key("all").await;
    let mut ids: Vec<String> = got
        .iter()
        .map(|r| {
            verify_fresh(&key, r);
            let body = r.json().unwrap();
            assert_eq!(body["data"]["padding"].as_str().map(str::len), Some(4096));
            r.header("webhook-id").unwrap().to_owned()
        })
        .collect();
    ids.sort();
    let mut want: Vec<String> = CODECS.iter().map(|c| format!("evt_{c}")).collect();
    want.sort();
    assert_eq!(ids, want);
}

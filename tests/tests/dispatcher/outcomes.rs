//! What one event ends as: delivered to the receiver signed with the key of the `Webhook`'s
//! Secret and counted in the status; a 5xx retried with the same `webhook-id` until it succeeds;
//! a 4xx, a malformed record and a 410 Gone dead-lettered with their reason (Gone also disables
//! the `Webhook` until re-enabled); a test annotation answered with one signed test event.

use std::time::Duration;

use hookline_core::conditions::types;
use hookline_tests::{
    LogDump,
    events::{event, verify_fresh},
    kafka,
    receiver::{Behavior, Receiver},
    tenant::{Tenant, WITHIN},
    wait,
};
use kube::api::{Patch, PatchParams};
use serde_json::json;

#[tokio::test]
async fn an_event_reaches_the_receiver_signed_and_is_counted_in_the_status() {
    let _dump = LogDump::new();
    let t = Tenant::create("dsp-ok").await;
    let rx = Receiver::start().await.unwrap();
    t.webhook(
        "fraud",
        &rx.url("/fraud"),
        &["transaction.*"],
        json!({"headers": {"x-team": "risk"}}),
    )
    .await;
    let key = t.signing_key("fraud").await;

    t.produce(
        "tx-1",
        &event(
            "evt_ok_1",
            "transaction.approved",
            json!({"transactionId": "tx-1", "amount": 12345678901234567890u64}),
        ),
    )
    .await;
    // Same key as the next one: had it matched, per-key order would deliver it first.
    t.produce("tx-2", &event("evt_ok_2", "account.opened", json!({})))
        .await;
    t.produce("tx-2", &event("evt_ok_3", "transaction.review", json!({})))
        .await;

    let got = rx.wait_for("/fraud", 1, WITHIN).await.unwrap();
    let r = &got[0];
    verify_fresh(&key, r);
    assert_eq!(r.method, "POST");
    assert_eq!(r.header("webhook-id"), Some("evt_ok_1"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.header("user-agent").unwrap().starts_with("Hookline/"));
    assert_eq!(r.header("hookline-attempt"), Some("1"));
    assert_eq!(r.header("x-team"), Some("risk"));
    let body = std::str::from_utf8(&r.body).unwrap();
    assert!(
        body.contains("12345678901234567890"),
        "data passes byte for byte: {body}"
    );
    let json = r.json().unwrap();
    assert_eq!(json["type"], "transaction.approved");
    assert!(
        json.get("id").is_none(),
        "the body is {{type, timestamp, data}}"
    );

    let wh = t.wait_count("fraud", "delivered", 2).await;
    let status = wh.status.unwrap();
    assert!(status.last_success_time.is_some());
    assert_eq!(status.circuit.as_deref(), Some("closed"));
    let delivering = status
        .conditions
        .iter()
        .find(|c| c.type_ == types::DELIVERING)
        .expect("Delivering condition");
    assert_eq!(delivering.status, "True");
    assert!(
        status.conditions.iter().any(|c| c.type_ == types::READY),
        "the controller's conditions are kept"
    );
    let ids: Vec<String> = rx
        .wait_for("/fraud", 2, WITHIN)
        .await
        .unwrap()
        .iter()
        .filter_map(|r| r.header("webhook-id").map(str::to_owned))
        .collect();
    assert!(
        !ids.contains(&"evt_ok_2".to_owned()) && ids.contains(&"evt_ok_3".to_owned()),
        "account.opened is not subscribed to; the event behind it on its key came: {ids:?}"
    );

    let metrics = t.dispatcher_get("/metrics").await.unwrap();
    let want = format!(
        r#"hookline_dispatcher_deliveries_total{{namespace="{}",outcome="delivered",status_class="2xx",webhook="fraud"}} 2"#,
        t.ns.name
    );
    assert!(metrics.contains(&want), "{want} in\n{metrics}");
    assert!(
        t.dispatcher_get("/readyz")
            .await
            .unwrap()
            .starts_with("HTTP/1.1 200")
    );
}

#[tokio::test]
async fn a_5xx_is_retried_with_the_same_webhook_id_until_it_succeeds() {
    let _dump = LogDump::new();
    let t = Tenant::create("dsp-retry").await;
    let rx = Receiver::start().await.unwrap();
    rx.program("/flaky", Behavior::status(500));
    t.webhook("flaky", &rx.url("/flaky"), &["transaction.*"], json!({}))
        .await;
    let key = t.signing_key("flaky").await;

    t.produce(
        "tx-9",
        &event("evt_retry_1", "transaction.rejected", json!({"n": 1})),
    )
    .await;
    let first = rx.wait_for("/flaky", 1, WITHIN).await.unwrap();
    rx.program("/flaky", Behavior::status(200));
    let got = rx.wait_for("/flaky", 2, WITHIN).await.unwrap();
    assert_eq!(got[0].header("webhook-id"), Some("evt_retry_1"));
    assert_eq!(
        got[1].header("webhook-id"),
        Some("evt_retry_1"),
        "the receiver's idempotency key is stable"
    );
    assert_eq!(first[0].header("hookline-attempt"), Some("1"));
    assert_eq!(got[1].header("hookline-attempt"), Some("2"));
    assert_eq!(got[0].body, got[1].body, "the same body on every attempt");
    verify_fresh(&key, &got[1]);
    let gap = got[1].at.duration_since(got[0].at).unwrap();
    assert!(
        gap >= Duration::from_millis(400),
        "retried after a backoff, not at once: {gap:?}"
    );

    let wh = t.wait_count("flaky", "delivered", 1).await;
    let status = wh.status.unwrap();
    assert_eq!(status.failed.unwrap_or(0), 0);
    let failure = status.last_failure.expect("the failed attempt is reported");
    assert_eq!(failure.status_code, Some(500));
    assert_eq!(failure.reason, "HttpStatus");
}

#[tokio::test]
async fn a_4xx_is_dead_lettered_with_its_reason() {
    let _dump = LogDump::new();
    let t = Tenant::create("dsp-dlq").await;
    let rx = Receiver::start().await.unwrap();
    rx.program("/bad", Behavior::status(400));
    t.webhook("bad", &rx.url("/bad"), &["transaction.*"], json!({}))
        .await;

    t.produce(
        "tx-4",
        &event("evt_bad_1", "transaction.review", json!({"n": 4})),
    )
    .await;
    let dlq = kafka::consume(&t.env, &t.topics().dead_letter, 1, WITHIN)
        .await
        .unwrap();
    let r = &dlq[0];
    assert_eq!(r.header("hookline-reason"), Some("http_4xx"));
    assert_eq!(r.header("hookline-webhook"), Some("bad"));
    assert_eq!(r.header("hookline-status"), Some("400"));
    assert_eq!(
        r.header("hookline-original-topic"),
        Some(t.topics().events.as_str())
    );
    assert_eq!(r.header("hookline-original-offset"), Some("0"));
    assert_eq!(r.key.as_deref(), Some(&b"tx-4"[..]));
    let value: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
    assert_eq!(value["id"], "evt_bad_1");
    assert_eq!(rx.requests("/bad").len(), 1, "a 4xx is not retried");

    let wh = t.wait_count("bad", "failed", 1).await;
    let status = wh.status.unwrap();
    assert_eq!(status.last_failure.unwrap().status_code, Some(400));
    let degraded = status
        .conditions
        .iter()
        .find(|c| c.type_ == types::DEGRADED)
        .unwrap();
    assert_eq!(degraded.status, "True");
}

#[tokio::test]
async fn a_malformed_record_is_dead_lettered_and_the_next_one_still_delivered() {
    let _dump = LogDump::new();
    let t = Tenant::create("dsp-malformed").await;
    let rx = Receiver::start().await.unwrap();
    t.webhook("fraud", &rx.url("/fraud"), &["*"], json!({}))
        .await;

    t.produce("tx-5", b"this is not JSON").await;
    t.produce(
        "tx-5",
        &event("evt_after", "transaction.approved", json!({})),
    )
    .await;

    let got = rx.wait_for("/fraud", 1, WITHIN).await.unwrap();
    assert_eq!(got[0].header("webhook-id"), Some("evt_after"));
    let dlq = kafka::consume(&t.env, &t.topics().dead_letter, 1, WITHIN)
        .await
        .unwrap();
    let r = &dlq[0];
    assert_eq!(r.header("hookline-reason"), Some("invalid_json"));
    assert!(r.header("hookline-error").unwrap().contains("invalid JSON"));
    assert_eq!(r.header("hookline-webhook"), None);
    assert_eq!(
        r.value.as_deref(),
        Some(&b"this is not JSON"[..]),
        "the record is kept as it was"
    );
    t.wait_count("fraud", "delivered", 1).await;
}

#[tokio::test]
async fn gone_disables_the_webhook_and_dead_letters_the_event() {
    let _dump = LogDump::new();
    let t = Tenant::create("dsp-gone").await;
    let rx = Receiver::start().await.unwrap();
    rx.program("/gone", Behavior::status(410));
    t.webhook("gone", &rx.url("/gone"), &["transaction.*"], json!({}))
        .await;

    t.produce(
        "tx-1",
        &event("evt_gone_1", "transaction.approved", json!({})),
    )
    .await;
    let dlq = kafka::consume(&t.env, &t.topics().dead_letter, 1, WITHIN)
        .await
        .unwrap();
    assert_eq!(dlq[0].header("hookline-reason"), Some("gone"));
    let wh = wait::until(WITHIN, "status.disabled", || async {
        let wh = t.api.get("gone").await?;
        Ok(wh
            .status
            .as_ref()
            .and_then(|s| s.disabled.clone())
            .map(|d| (d, wh)))
    })
    .await
    .unwrap();
    assert_eq!(wh.0.reason, "Gone");
    assert_eq!(wh.0.generation, wh.1.metadata.generation);
    let status = wh.1.status.unwrap();
    let delivering = status
        .conditions
        .iter()
        .find(|c| c.type_ == types::DELIVERING)
        .unwrap();
    assert_eq!(
        (delivering.status.as_str(), delivering.reason.as_str()),
        ("False", "Gone")
    );

    // An event that arrives while it is disabled is not delivered, and not dropped either: it
    // is dead-lettered with reason `webhook_disabled`, so it can be replayed.
    t.produce(
        "tx-2",
        &event("evt_gone_2", "transaction.approved", json!({})),
    )
    .await;
    let dlq = kafka::consume(&t.env, &t.topics().dead_letter, 2, WITHIN)
        .await
        .unwrap();
    // The two keys may be on different partitions: the dead letters come in either order.
    let id = |r: &kafka::Record| -> String {
        let v: serde_json::Value =
            serde_json::from_slice(r.value.as_deref().unwrap_or_default()).unwrap_or_default();
        v["id"].as_str().unwrap_or_default().to_owned()
    };
    let ids: Vec<String> = dlq.iter().map(id).collect();
    assert_eq!(
        ids.iter().filter(|i| *i == "evt_gone_1").count(),
        1,
        "evt_gone_1 dead-lettered once: {ids:?}"
    );
    let second = dlq
        .iter()
        .find(|r| id(r) == "evt_gone_2")
        .unwrap_or_else(|| panic!("evt_gone_2 dead-lettered; the dead letters: {ids:?}"));
    assert_eq!(second.header("hookline-reason"), Some("webhook_disabled"));
    assert_eq!(
        rx.requests("/gone").len(),
        1,
        "no deliveries while disabled"
    );

    // A new value of the enable annotation resumes deliveries.
    rx.program("/gone", Behavior::status(200));
    let patch = json!({"metadata": {"annotations": {"hookline.dev/enable": "1"}}});
    t.api
        .patch("gone", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    wait::until(WITHIN, "status.disabled cleared", || async {
        let wh = t.api.get("gone").await?;
        Ok(wh
            .status
            .as_ref()
            .is_some_and(|s| s.disabled.is_none())
            .then_some(()))
    })
    .await
    .unwrap();
    t.produce(
        "tx-3",
        &event("evt_gone_3", "transaction.approved", json!({})),
    )
    .await;
    let got = rx.wait_for("/gone", 2, WITHIN).await.unwrap();
    assert_eq!(got[1].header("webhook-id"), Some("evt_gone_3"));
}

#[tokio::test]
async fn a_test_annotation_sends_one_signed_test_event_and_records_the_result() {
    let _dump = LogDump::new();
    let t = Tenant::create("dsp-test").await;
    let rx = Receiver::start().await.unwrap();
    t.webhook("fraud", &rx.url("/fraud"), &["transaction.*"], json!({}))
        .await;
    let key = t.signing_key("fraud").await;

    let patch = json!({"metadata": {"annotations": {"hookline.dev/test": "n-1"}}});
    t.api
        .patch("fraud", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let got = rx.wait_for("/fraud", 1, WITHIN).await.unwrap();
    assert_eq!(got[0].header("webhook-id"), Some("test_n-1"));
    assert_eq!(got[0].json().unwrap()["type"], "webhook.test");
    verify_fresh(&key, &got[0]);
    let wh = wait::until(WITHIN, "status.lastTest", || async {
        let wh = t.api.get("fraud").await?;
        Ok(wh
            .status
            .as_ref()
            .and_then(|s| s.last_test.clone())
            .map(|lt| (lt, wh)))
    })
    .await
    .unwrap();
    assert_eq!(wh.0.nonce, "n-1");
    assert!(wh.0.success);
    assert_eq!(wh.0.status_code, Some(200));
    // Unrelated changes to the Webhook (the status write above, a label now) do not send the
    // same nonce again; a new nonce sends one more test, and it is the second request.
    let label = json!({"metadata": {"labels": {"touched": "yes"}}});
    t.api
        .patch("fraud", &PatchParams::default(), &Patch::Merge(&label))
        .await
        .unwrap();
    let patch = json!({"metadata": {"annotations": {"hookline.dev/test": "n-2"}}});
    t.api
        .patch("fraud", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let got = rx.wait_for("/fraud", 2, WITHIN).await.unwrap();
    assert_eq!(
        got[1].header("webhook-id"),
        Some("test_n-2"),
        "one test per nonce"
    );
}

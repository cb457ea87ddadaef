//! `hookline-dispatcher` end to end, as the controller runs it (a Deployment whose Pod the pod
//! runner starts under the tenant's own ServiceAccount): an event produced to the tenant's events
//! topic reaches the receiver signed with the key of the Webhook's Secret and is counted in the
//! status; a 5xx is retried with the same `webhook-id`; a 4xx and a malformed record are
//! dead-lettered with their reason, and the consumer carries on.

use std::time::Duration;

use hookline_crds::conditions::types;
use hookline_dispatcher::signing;
use hookline_tests::{
    LogDump, install, kafka,
    receiver::{self, Behavior, Receiver, Recorded},
    tenant::{Tenant, WITHIN},
    wait,
};
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::json;

fn event(id: &str, type_: &str, data: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(
        &json!({"id": id, "type": type_, "timestamp": "2026-11-23T12:00:00Z", "data": data}),
    )
    .unwrap()
}

fn verify(key: &signing::Secret, r: &Recorded) {
    let id = r.header("webhook-id").expect("webhook-id");
    let ts: i64 = r
        .header("webhook-timestamp")
        .expect("webhook-timestamp")
        .parse()
        .unwrap();
    let sig = r.header("webhook-signature").expect("webhook-signature");
    signing::verify(std::slice::from_ref(key), id, ts, &r.body, sig)
        .expect("the signature verifies with the Secret's key");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (now - ts).abs() < 300,
        "webhook-timestamp is this attempt's time"
    );
}

fn header<'a>(r: &'a kafka::Record, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}

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
    t.produce("tx-2", &event("evt_ok_2", "account.opened", json!({})))
        .await;

    let got = rx.wait_for("/fraud", 1, WITHIN).await.unwrap();
    let r = &got[0];
    verify(&key, r);
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

    let wh = t.wait_count("fraud", "delivered", 1).await;
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
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        rx.requests("/fraud").len(),
        1,
        "account.opened is not subscribed to"
    );

    let metrics = t.dispatcher_get("/metrics").await;
    let want = format!(
        r#"hookline_dispatcher_deliveries_total{{namespace="{}",outcome="delivered",status_class="2xx",webhook="fraud"}} 1"#,
        t.ns.name
    );
    assert!(metrics.contains(&want), "{want} in\n{metrics}");
    assert!(
        t.dispatcher_get("/readyz")
            .await
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
    verify(&key, &got[1]);
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
    assert_eq!(header(r, "hookline-reason"), Some("http_4xx"));
    assert_eq!(header(r, "hookline-webhook"), Some("bad"));
    assert_eq!(header(r, "hookline-status"), Some("400"));
    assert_eq!(
        header(r, "hookline-original-topic"),
        Some(t.topics().events.as_str())
    );
    assert_eq!(header(r, "hookline-original-offset"), Some("0"));
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
    assert_eq!(header(r, "hookline-reason"), Some("invalid_json"));
    assert!(
        header(r, "hookline-error")
            .unwrap()
            .contains("invalid JSON")
    );
    assert_eq!(header(r, "hookline-webhook"), None);
    assert_eq!(
        r.value.as_deref(),
        Some(&b"this is not JSON"[..]),
        "the record is kept as it was"
    );
    t.wait_count("fraud", "delivered", 1).await;
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
    verify(&key, &got[0]);
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
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(rx.requests("/fraud").len(), 1, "one test per nonce");
}

#[tokio::test]
async fn a_key_that_is_retrying_holds_back_later_events_of_that_key() {
    let _dump = LogDump::new();
    let t = Tenant::create("dsp-order").await;
    let rx = Receiver::start().await.unwrap();
    rx.program("/ord", Behavior::status(503));
    t.webhook("ord", &rx.url("/ord"), &["transaction.*"], json!({}))
        .await;

    t.produce(
        "tx-7",
        &event("evt_first", "transaction.review", json!({"step": 1})),
    )
    .await;
    rx.wait_for("/ord", 1, WITHIN).await.unwrap();
    t.produce(
        "tx-7",
        &event("evt_second", "transaction.approved", json!({"step": 2})),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let ids = |rs: Vec<Recorded>| {
        rs.iter()
            .map(|r| r.header("webhook-id").unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    };
    let so_far = ids(rx.requests("/ord"));
    assert!(
        so_far.iter().all(|id| id == "evt_first"),
        "the second event waits while the first retries: {so_far:?}"
    );
    assert!(
        so_far.len() >= 2,
        "the first event was retried meanwhile: {so_far:?}"
    );

    rx.program("/ord", Behavior::status(200));
    wait::until(WITHIN, "evt_second delivered", || async {
        Ok(ids(rx.requests("/ord"))
            .contains(&"evt_second".to_owned())
            .then_some(()))
    })
    .await
    .unwrap();
    let all = ids(rx.requests("/ord"));
    let first_second = all.iter().position(|id| id == "evt_second").unwrap();
    assert!(
        all[..first_second].iter().all(|id| id == "evt_first"),
        "{all:?}"
    );
    assert!(
        all[first_second..].iter().all(|id| id == "evt_second"),
        "{all:?}"
    );
    t.wait_count("ord", "delivered", 2).await;
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
    assert_eq!(header(&dlq[0], "hookline-reason"), Some("gone"));
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

    t.produce(
        "tx-2",
        &event("evt_gone_2", "transaction.approved", json!({})),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
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
async fn a_burst_of_events_is_delivered_completely_and_in_order_per_key() {
    use rdkafka::producer::FutureRecord;
    let _dump = LogDump::new();
    let t = Tenant::create("dsp-burst").await;
    let rx = Receiver::start().await.unwrap();
    t.webhook(
        "fraud",
        &rx.url("/fraud"),
        &["transaction.*"],
        json!({"delivery": {"maxInFlight": 64}}),
    )
    .await;

    const EVENTS: usize = 3000;
    const KEYS: usize = 60;
    let producer = kafka::producer(&t.env).unwrap();
    let topic = t.topics().events;
    let started = std::time::Instant::now();
    let sends = (0..EVENTS).map(|i| {
        let (producer, topic) = (producer.clone(), topic.clone());
        async move {
            let key = format!("tx-{}", i % KEYS);
            let value = event(&format!("evt_{i}"), "transaction.approved", json!({"i": i}));
            let record = FutureRecord::to(&topic).key(&key).payload(&value);
            producer
                .send(record, Duration::from_secs(30))
                .await
                .map(|_| ())
                .map_err(|(e, _)| e)
        }
    });
    for r in futures::future::join_all(sends).await {
        r.unwrap();
    }
    let got = rx.wait_for("/fraud", EVENTS, WITHIN).await.unwrap();
    let elapsed = started.elapsed();
    eprintln!(
        "{EVENTS} events delivered in {elapsed:?} ({:.0}/s)",
        EVENTS as f64 / elapsed.as_secs_f64()
    );

    let seen = receiver::first_arrivals_in_key_order(&got, KEYS).unwrap();
    assert_eq!(seen.len(), EVENTS, "every event arrived");
    t.wait_count("fraud", "delivered", i64::try_from(EVENTS).unwrap())
        .await;
}

#[tokio::test]
async fn a_slow_url_does_not_slow_delivery_to_the_others() {
    use rdkafka::producer::FutureRecord;
    let _dump = LogDump::new();
    let t = Tenant::create("dsp-isolation").await;
    let rx = Receiver::start().await.unwrap();
    rx.program(
        "/slow",
        Behavior {
            delay: Duration::from_secs(30),
            ..Behavior::default()
        },
    );
    t.webhook(
        "slow",
        &rx.url("/slow"),
        &["transaction.*"],
        json!({"delivery": {"timeout": "2s", "maxInFlight": 4}}),
    )
    .await;
    t.webhook("fast", &rx.url("/fast"), &["transaction.*"], json!({}))
        .await;

    const EVENTS: usize = 300;
    let producer = kafka::producer(&t.env).unwrap();
    let topic = t.topics().events;
    let started = std::time::Instant::now();
    let sends = (0..EVENTS).map(|i| {
        let (producer, topic) = (producer.clone(), topic.clone());
        async move {
            let value = event(&format!("evt_{i}"), "transaction.approved", json!({"i": i}));
            let key = format!("tx-{i}");
            let record = FutureRecord::to(&topic).key(&key).payload(&value);
            producer
                .send(record, Duration::from_secs(30))
                .await
                .map(|_| ())
                .map_err(|(e, _)| e)
        }
    });
    for r in futures::future::join_all(sends).await {
        r.unwrap();
    }
    rx.wait_for("/fast", EVENTS, Duration::from_secs(30))
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(15),
        "the fast URL got everything in {elapsed:?}"
    );
    assert!(
        !rx.requests("/slow").is_empty(),
        "the slow URL is being tried meanwhile"
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

    let patch = json!({"metadata": {"annotations": {"hookline.dev/rotate-secret": "r1"}}});
    t.api
        .patch("fraud", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    wait::until(WITHIN, "key generation 2 in status", || async {
        let wh = t.api.get("fraud").await?;
        Ok(wh
            .status
            .and_then(|s| s.secret)
            .filter(|s| s.generation == 2)
            .map(|_| ()))
    })
    .await
    .unwrap();
    let new = t.signing_key("fraud").await;
    assert_ne!(old, new);
    tokio::time::sleep(Duration::from_secs(2)).await;

    t.produce(
        "tx-1",
        &event("evt_rotated", "transaction.approved", json!({})),
    )
    .await;
    let got = rx.wait_for("/fraud", 1, WITHIN).await.unwrap();
    let sig = got[0].header("webhook-signature").unwrap();
    assert_eq!(
        sig.split(' ').count(),
        2,
        "two signatures during the overlap: {sig}"
    );
    verify(&new, &got[0]);
    verify(&old, &got[0]);
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
    tokio::time::sleep(Duration::from_secs(3)).await;
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

//! Publishing events over HTTP against the real stack: a `hookline-api` of the test's own, the
//! chart's controller and dispatcher, Kafka and a loopback receiver. A `202` means the event is
//! in Kafka; what is refused never reaches Kafka; deliveries verify with the official Standard
//! Webhooks library.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use hookline_tests::api::{OwnApi, Publishing, tenant_token};
use hookline_tests::tenant::Tenant;
use hookline_tests::verify::{Scratch, jsonl, verify_with_library};
use hookline_tests::{LogDump, TestNamespace, kafka, python, random_suffix, wait};
use serde_json::{Value, json};

fn events(tenant: &str) -> String {
    format!("/api/v1/tenants/{tenant}/events")
}

fn batch(tenant: &str) -> String {
    format!("/api/v1/tenants/{tenant}/events:batch")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_event_is_durable_delivered_signed_and_logged_and_a_refused_one_reaches_nothing()
 {
    tokio::task::spawn_blocking(python::venv)
        .await
        .unwrap()
        .expect("a venv with the PyPI standardwebhooks library");
    let mut dump = LogDump::new();
    let Publishing {
        t,
        rx,
        api,
        publisher,
        viewer,
    } = Publishing::start("pub", json!({}), &mut dump).await;
    let ns = t.ns.name.clone();
    let other = TestNamespace::create(&t.env, &t.client, "pubother")
        .await
        .unwrap();
    let pubr = Some(publisher.as_str());

    // One event with an Idempotency-Key (it becomes the id), and a batch of three.
    let idem = format!("idem-{}", random_suffix());
    let one = json!({"type": "transaction.approved", "key": "tx-1", "data": {"tx": 1, "decision": "APPROVE"}});
    let (s, _, body) = api
        .call(
            "POST",
            &events(&ns),
            pubr,
            Some(&one),
            &[("idempotency-key", &idem)],
        )
        .await
        .unwrap();
    assert_eq!(
        (s, body["id"].as_str()),
        (202, Some(idem.as_str())),
        "{body}"
    );
    let three = json!({"events": [
        {"type": "transaction.rejected", "key": "tx-2", "data": {"tx": 2}},
        {"type": "transaction.review", "key": "tx-2", "data": {"tx": 2, "again": true}},
        {"id": "evt_own_id", "type": "transaction.approved", "timestamp": "2026-12-01T10:00:00Z", "data": null},
    ]});
    let (s, _, body) = api
        .call("POST", &batch(&ns), pubr, Some(&three), &[])
        .await
        .unwrap();
    assert_eq!(s, 202, "{body}");
    let mut accepted: BTreeSet<String> = body["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(accepted.len(), 3);
    assert!(accepted.contains("evt_own_id"));
    accepted.insert(idem.clone());

    // Refused, each naming the problem; none of them may reach Kafka.
    // (body, extra headers, status, the field named)
    type Refusal<'a> = (Value, Vec<(&'a str, &'a str)>, u16, Option<&'a str>);
    let refused: Vec<Refusal> = vec![
        (
            json!({"type": "bad type!", "data": {}}),
            vec![],
            400,
            Some("type"),
        ),
        (
            json!({"type": "t", "data": {}, "colour": 1}),
            vec![],
            400,
            None,
        ),
        (
            json!({"type": "t", "id": "has space", "data": {}}),
            vec![],
            400,
            Some("id"),
        ),
        (
            json!({"type": "t", "timestamp": "yesterday", "data": {}}),
            vec![],
            400,
            Some("timestamp"),
        ),
        (json!({"type": "t"}), vec![], 400, None),
        (
            json!({"type": "t", "data": "x".repeat(300 * 1024)}),
            vec![],
            413,
            None,
        ),
        (
            json!({"type": "t", "data": {}}),
            vec![("idempotency-key", "not valid")],
            400,
            Some("Idempotency-Key"),
        ),
    ];
    for (body, headers, status, field) in &refused {
        let (s, h, res) = api
            .call("POST", &events(&ns), pubr, Some(body), headers)
            .await
            .unwrap();
        assert_eq!(s, *status, "{res}");
        assert_eq!(h["content-type"], "application/problem+json");
        if let Some(f) = field {
            assert_eq!(res["errors"][0]["field"], *f, "{res}");
        }
    }
    let bad_batch = json!({"events": [{"type": "ok", "data": 1}, {"type": "no good", "data": 2}]});
    let (s, _, res) = api
        .call("POST", &batch(&ns), pubr, Some(&bad_batch), &[])
        .await
        .unwrap();
    assert_eq!(
        (s, res["errors"][0]["field"].as_str()),
        (400, Some("events[1].type")),
        "{res}"
    );
    let too_many = json!({"events": vec![json!({"type": "t", "data": 1}); 501]});
    let (s, _, res) = api
        .call("POST", &batch(&ns), pubr, Some(&too_many), &[])
        .await
        .unwrap();
    assert_eq!(
        (s, res["errors"][0]["field"].as_str()),
        (400, Some("events")),
        "{res}"
    );
    let (s, _, _) = api
        .call(
            "POST",
            &events(&ns),
            pubr,
            None,
            &[("content-type", "text/plain")],
        )
        .await
        .unwrap();
    assert_eq!(s, 415);
    // Who may publish: not without a token, not a viewer, not into another tenant.
    let (s, h, _) = api
        .call("POST", &events(&ns), None, Some(&one), &[])
        .await
        .unwrap();
    assert_eq!((s, h["www-authenticate"].as_str()), (401, "Bearer"));
    let (s, _, res) = api
        .call("POST", &events(&ns), Some(&viewer), Some(&one), &[])
        .await
        .unwrap();
    assert_eq!(
        (s, res["missing"]["resource"].as_str()),
        (403, Some("webhookevents")),
        "{res}"
    );
    let (s, _, res) = api
        .call("POST", &events(&other.name), pubr, Some(&one), &[])
        .await
        .unwrap();
    assert_eq!(
        (s, res["missing"]["namespace"].as_str()),
        (403, Some(other.name.as_str())),
        "{res}"
    );

    // A last good event, its data in an order and spacing of its own (delivered byte for byte),
    // then the events topic holds exactly the accepted ones.
    let raw_data = r#"{"tx": 3,  "decision": "REVIEW", "a": [true, null]}"#;
    let raw = format!(r#"{{"type": "transaction.review", "key": "tx-3", "data": {raw_data}}}"#);
    let (s, _, body) = api
        .call_raw("POST", &events(&ns), pubr, Some(raw.into_bytes()), &[])
        .await
        .unwrap();
    assert_eq!(s, 202, "{body}");
    let raw_id = body["id"].as_str().unwrap().to_owned();
    accepted.insert(raw_id.clone());
    let records = kafka::consume(
        &t.env,
        &t.topics().events,
        accepted.len(),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let in_kafka: BTreeSet<String> = records
        .iter()
        .map(|r| {
            serde_json::from_slice::<Value>(r.value.as_deref().unwrap()).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        in_kafka, accepted,
        "exactly the accepted events are in Kafka"
    );
    let extra = kafka::consume(
        &t.env,
        &t.topics().events,
        accepted.len() + 1,
        Duration::from_secs(3),
    )
    .await;
    assert!(extra.is_err(), "nothing else reached the events topic");

    // Delivered, verified by the official library with the Webhook's key, and in the log.
    let got = rx
        .wait_for("/orders", accepted.len(), Duration::from_secs(60))
        .await
        .unwrap();
    let scratch = Scratch::new();
    let key = scratch.write("key", &t.whsec("orders").await);
    let verdicts =
        verify_with_library(scratch.write("requests.jsonl", &jsonl(&got)), vec![key]).await;
    assert!(verdicts.iter().all(|v| v.verified), "{verdicts:?}");
    let raw_delivery = got
        .iter()
        .find(|r| r.header("webhook-id") == Some(raw_id.as_str()))
        .expect("the raw event was delivered");
    let raw_body = String::from_utf8_lossy(&raw_delivery.body);
    assert!(
        raw_body.ends_with(&format!(r#""data":{raw_data}}}"#)),
        "data as posted, byte for byte: {raw_body}"
    );
    let delivered: BTreeSet<String> = verdicts.iter().filter_map(|v| v.id.clone()).collect();
    assert_eq!(delivered, accepted);
    wait::until(
        Duration::from_secs(60),
        "the published event in the delivery log",
        || async {
            let v = api
                .get(&format!("/api/v1/tenants/{ns}/deliveries/{idem}"), &viewer)
                .await?;
            Ok((v["deliveries"][0]["status"] == "delivered").then_some(()))
        },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_kafka_a_publish_is_a_503_within_the_bound_and_never_a_202() {
    let mut dump = LogDump::new();
    let t = Tenant::create("pubdown").await;
    let ns = t.ns.name.clone();
    // Port 1 on loopback: nothing listens, so this API's Kafka is down from the start.
    let api = OwnApi::start_with(
        &t.env,
        &t.client,
        &mut dump,
        &["--kafka-bootstrap=127.0.0.1:1", "--publish-timeout=2s"],
    )
    .await
    .unwrap();
    let publisher = tenant_token(&t.client, &ns, "publisher", Some("hookline-publisher"))
        .await
        .unwrap();
    let one = json!({"type": "transaction.approved", "data": {}});
    let posts = (0..5).map(|_| async {
        let started = Instant::now();
        let r = api
            .call("POST", &events(&ns), Some(&publisher), Some(&one), &[])
            .await
            .unwrap();
        (r, started.elapsed())
    });
    for ((s, h, body), took) in futures::future::join_all(posts).await {
        assert_eq!(s, 503, "{body}");
        assert!(h.contains_key("retry-after"), "{h:?}");
        // The bound is the publish timeout; the slack is for a loaded 2-core machine.
        assert!(took < Duration::from_secs(10), "answered after {took:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_that_got_a_202_is_delivered_after_a_kill_9_of_the_api_under_load() {
    // Bounded load: at most RATE requests a second for at most SECONDS, on 32 connections.
    const RATE: u64 = 2_000;
    const SECONDS: u64 = 10;
    let mut dump = LogDump::new();
    let Publishing {
        t,
        rx,
        mut api,
        publisher,
        ..
    } = Publishing::start(
        "pubkill",
        json!({"delivery": {"maxInFlight": 256}}),
        &mut dump,
    )
    .await;
    let ns = t.ns.name.clone();
    let accepted = std::sync::Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let load = (0..32u64).map(|worker| {
        let (accepted, answered) = (accepted.clone(), answered.clone());
        let (url, token) = (format!("{}{}", api.base, events(&ns)), publisher.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            let per_worker = Duration::from_micros(1_000_000 * 32 / RATE);
            let mut n = 0u64;
            while started.elapsed() < Duration::from_secs(SECONDS) {
                let tick = Instant::now();
                let id = format!("evt_load_{worker}_{n}");
                n += 1;
                let body = json!({"id": id, "type": "transaction.approved", "data": {"n": n}});
                let res = http
                    .post(&url)
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await;
                if let Ok(r) = res {
                    answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if r.status().as_u16() == 202 {
                        accepted.lock().unwrap().insert(id);
                    }
                }
                if let Some(rest) = per_worker.checked_sub(tick.elapsed()) {
                    tokio::time::sleep(rest).await;
                }
            }
        })
    });
    let load: Vec<_> = load.collect();
    // Kill it once a hundred events were accepted, mid-load.
    wait::until(
        Duration::from_secs(60),
        "100 events accepted under load",
        || async { Ok((accepted.lock().unwrap().len() >= 100).then_some(())) },
    )
    .await
    .unwrap();
    api.kill9();
    let at_kill = accepted.lock().unwrap().len();
    for l in load {
        l.await.unwrap();
    }
    let accepted: BTreeSet<String> = accepted.lock().unwrap().clone();
    eprintln!(
        "{} requests answered, {} accepted ({at_kill} before the kill)",
        answered.load(std::sync::atomic::Ordering::Relaxed),
        accepted.len()
    );
    assert!(accepted.len() >= at_kill);
    // Every 202 is delivered (verified by id); nothing is needed of the requests the kill cut.
    wait::until(
        Duration::from_secs(180),
        "every accepted event delivered",
        || async {
            let got: BTreeSet<String> = rx
                .requests("/orders")
                .iter()
                .filter_map(|r| r.header("webhook-id").map(str::to_owned))
                .collect();
            let missing = accepted.difference(&got).count();
            anyhow::ensure!(
                missing == 0,
                "{missing} of {} accepted events not delivered yet",
                accepted.len()
            );
            Ok(Some(()))
        },
    )
    .await
    .unwrap();
}

/// Creates `topic` with one partition on the broker at `bootstrap`.
async fn create_topic(bootstrap: &str, topic: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let r = admin
        .create_topics(
            &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    assert!(r.iter().all(Result::is_ok), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_kafka_is_down_nothing_gets_a_202_and_every_202_before_and_after_is_in_kafka() {
    let mut dump = LogDump::new();
    // A Kafka of the test's own, so that it can be frozen and killed without the shared one.
    let env = hookline_tests::Env::get().unwrap();
    let admin = env.client().await.unwrap();
    hookline_tests::install::controller(&env, &admin)
        .await
        .unwrap();
    let ns = TestNamespace::create(&env, &admin, "pubkafka")
        .await
        .unwrap();
    let mut broker = hookline_tests::broker::Broker::start(&env, &mut dump)
        .await
        .unwrap();
    let topic = hookline_core::naming::topics(&ns.name).events;
    create_topic(&broker.bootstrap, &topic).await;
    let api = OwnApi::start_with(
        &env,
        &admin,
        &mut dump,
        &[
            &format!("--kafka-bootstrap={}", broker.bootstrap),
            "--publish-timeout=2s",
        ],
    )
    .await
    .unwrap();
    let publisher = tenant_token(&admin, &ns.name, "publisher", Some("hookline-publisher"))
        .await
        .unwrap();
    let post = |id: String| {
        let (api, path, token) = (&api, events(&ns.name), publisher.clone());
        async move {
            let body = json!({"id": id, "type": "transaction.approved", "data": {}});
            let started = Instant::now();
            let (s, h, _) = api
                .call("POST", &path, Some(&token), Some(&body), &[])
                .await
                .unwrap();
            (s, h.contains_key("retry-after"), started.elapsed())
        }
    };
    // What a client does: a 503 is retried with the same id until it is a 202.
    let accept = |id: String| {
        let post = &post;
        async move {
            for _ in 0..20 {
                match post(id.clone()).await.0 {
                    202 => return id,
                    503 => {}
                    other => panic!("{id}: {other}"),
                }
            }
            panic!("{id}: no 202 in 20 tries");
        }
    };
    let mut accepted = BTreeSet::new();
    for i in 0..20 {
        accepted.insert(accept(format!("evt_before_{i}")).await);
    }

    // Frozen: every POST is a 503 with Retry-After within the bound, none a 202.
    broker.freeze().await.unwrap();
    let down = futures::future::join_all((0..5).map(|i| post(format!("evt_down_{i}")))).await;
    let states = broker.states();
    for (i, (status, retry_after, took)) in down.into_iter().enumerate() {
        assert_eq!(
            status, 503,
            "evt_down_{i} answered after {took:?} while the broker's threads were in states {states:?}"
        );
        assert!(retry_after);
        // The bound is the publish timeout (3 s); the slack is for a loaded 2-core machine.
        assert!(took < Duration::from_secs(12), "answered after {took:?}");
    }

    // Back: POSTs succeed again.
    broker.thaw();
    let mut n = 0;
    wait::until(Duration::from_secs(60), "a 202 once Kafka is back", || {
        n += 1;
        let id = format!("evt_back_{n}");
        let post = &post;
        async move { Ok((post(id.clone()).await.0 == 202).then_some(id)) }
    })
    .await
    .map(|id| accepted.insert(id))
    .unwrap();
    for i in 0..20 {
        accepted.insert(accept(format!("evt_after_{i}")).await);
    }

    // Killed and started again on its data: every event that got a 202 is there.
    broker.kill();
    broker.restart().await.unwrap();
    let consumer: rdkafka::consumer::StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .set("group.id", format!("hl-test-{}", random_suffix()))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    rdkafka::consumer::Consumer::subscribe(&consumer, &[topic.as_str()]).unwrap();
    let mut found = BTreeSet::new();
    let end = Instant::now() + Duration::from_secs(90);
    while !accepted.is_subset(&found) && Instant::now() < end {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await {
            let v: Value =
                serde_json::from_slice(rdkafka::Message::payload(&m).unwrap_or_default())
                    .unwrap_or(Value::Null);
            if let Some(id) = v["id"].as_str() {
                found.insert(id.to_owned());
            }
        }
    }
    let missing: Vec<_> = accepted.difference(&found).collect();
    assert!(missing.is_empty(), "accepted but not in Kafka: {missing:?}");
}

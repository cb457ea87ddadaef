//! Events too large for a retry or a dead letter (issue 16, item 4), end to end with a
//! `hookline-dispatcher` of the test's own on topics of its own, whose size limits the test sets:
//!
//! - the limits are aligned: an event just under the dispatcher's bound (`--max-record-bytes`,
//!   1 MiB) but over librdkafka's default `message.max.bytes` (1,000,000) is retried and
//!   delivered through retry and dead-letter topics made as the controller makes them;
//! - when Kafka refuses a write for good (here: retry and dead-letter topics that admit less
//!   than the events topic), a dead letter that only refers to the event is written instead —
//!   for a retry, for a dead letter of a delivery, and for a record dead-lettered unparsed —
//!   the partition flows on (a later event of the same key is delivered, every offset is
//!   committed), and the refusals are counted.
//!
//! Before the fix each of these stalled: the write was retried forever, so the later event of
//! the key never arrived. `HOOKLINE_TEST_DISPATCHER_BIN` runs another dispatcher binary (an older
//! build) to see that.

use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use hookline_core::conditions::types;
use hookline_core::envelope::DEFAULT_MAX_RECORD_BYTES;
use hookline_crds::Webhook;
use hookline_tests::{
    Env, LogDump, TestNamespace, dispatcher, events, http_get, install,
    kafka::{self, Record},
    random_suffix,
    receiver::{Behavior, Receiver, Recorded},
    tenant::WITHIN,
    wait,
};
use kube::{Api, api::PostParams};
use rdkafka::{
    ClientConfig, Offset, TopicPartitionList,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer},
    producer::FutureProducer,
};
use serde_json::json;

/// A dispatcher of the test's own; killed when dropped.
struct OwnDispatcher {
    child: Child,
    listen: String,
}

impl Drop for OwnDispatcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Topics of the test's own: events, one 1 s retry tier, dead letters, attempts.
struct Topics {
    own: dispatcher::OwnTopics,
}

/// Creates the four topics (one partition each), the retry tier and the dead-letter topic with
/// `max.message.bytes = retry_max`, the events topic with `events_max` (`None`: the broker's).
async fn topics(env: &Env, prefix: &str, retry_max: usize, events_max: Option<usize>) -> Topics {
    let name = |kind: &str| format!("hl-test-{prefix}-{kind}-{}", random_suffix());
    let (events, dlq, attempts, retry) =
        (name("events"), name("dlq"), name("attempts"), name("retry"));
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &env.kafka_bootstrap)
        .create()
        .unwrap();
    let (retry_max, events_max) = (retry_max.to_string(), events_max.map(|m| m.to_string()));
    let new = [&events, &dlq, &attempts, &retry].map(|n| {
        let t = NewTopic::new(n, 1, TopicReplication::Fixed(1));
        if *n == retry || *n == dlq {
            t.set("max.message.bytes", &retry_max)
        } else if let (true, Some(m)) = (*n == events, &events_max) {
            t.set("max.message.bytes", m)
        } else {
            t
        }
    });
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in admin.create_topics(&new, &opts).await.unwrap() {
        r.unwrap();
    }
    Topics {
        own: dispatcher::OwnTopics {
            events,
            dead_letter: dlq,
            attempts,
            retry,
        },
    }
}

/// The binary to run: `HOOKLINE_TEST_DISPATCHER_BIN`, or the debug build the pod runner runs.
fn binary() -> PathBuf {
    std::env::var_os("HOOKLINE_TEST_DISPATCHER_BIN").map_or_else(dispatcher::binary, Into::into)
}

/// Starts the test's own dispatcher with the process environment's `vars` added.
fn start(
    env: &Env,
    ns: &str,
    topics: &Topics,
    vars: &[(&str, &str)],
    dump: &mut LogDump,
) -> OwnDispatcher {
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let mut args = topics.own.args(ns, env, &listen).to_args();
    args.push("--allow-cidr=127.0.0.0/8".to_owned());
    let log = std::env::temp_dir().join(format!("{ns}-dispatcher.log"));
    let child = dispatcher::spawn(env, &binary(), &args, "info", vars, &log, dump).unwrap();
    OwnDispatcher { child, listen }
}

/// A namespace with the controller installed and `Webhook`s `(name, path)` on `rx`, each with
/// its signing Secret (the test's own dispatcher delivers for them).
async fn namespace(
    env: &Env,
    prefix: &str,
    rx: &Receiver,
    hooks: &[(&str, &str)],
) -> TestNamespace {
    let client = env.client().await.unwrap();
    // Another test process may be installing it at the same moment (two `helm upgrade`s at once
    // can fail), as `Tenant::create` knows.
    let mut tries = 0;
    while let Err(e) = install::controller(env, &client).await {
        tries += 1;
        assert!(tries < 5, "installing the controller: {e:#}");
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let ns = TestNamespace::create(env, &client, prefix).await.unwrap();
    let api = Api::<Webhook>::namespaced(client, &ns.name);
    for (name, path) in hooks {
        let wh: Webhook = serde_json::from_value(
            json!({"apiVersion": "hookline.dev/v1alpha1", "kind": "Webhook",
            "metadata": {"name": name}, "spec": {"url": rx.url(path), "eventTypes": ["a.b"]}}),
        )
        .unwrap();
        api.create(&PostParams::default(), &wh).await.unwrap();
    }
    for (name, _) in hooks {
        wait::condition(&api, name, types::SECRET_READY, WITHIN)
            .await
            .unwrap();
    }
    ns
}

/// A producer that may write records up to 4 MB (the topic decides what it takes).
fn big_producer(env: &Env) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", &env.kafka_bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.max.bytes", "4000000")
        .create()
        .unwrap()
}

/// Event `id` of type `a.b` whose envelope is about `size` bytes, the bulk inside `data` (so a
/// retry record, which re-serializes the envelope, is as large).
fn sized_event(id: &str, size: usize) -> Vec<u8> {
    let small = events::event(id, "a.b", json!({"pad": ""}));
    events::event(
        id,
        "a.b",
        json!({"pad": "x".repeat(size.saturating_sub(small.len()))}),
    )
}

fn webhook_ids(rs: &[Recorded]) -> Vec<String> {
    rs.iter()
        .map(|r| r.header("webhook-id").unwrap_or_default().to_owned())
        .collect()
}

/// Waits until `path` received `id`.
async fn received(rx: &Receiver, path: &str, id: &str) {
    wait::until(WITHIN, &format!("{id} at {path}"), || async {
        let got = webhook_ids(&rx.requests(path));
        Ok(got.iter().any(|g| g == id).then_some(()))
    })
    .await
    .unwrap();
}

/// The dead letter of `webhook` (`None`: of no `Webhook`) among `dead`.
fn reference_for<'a>(dead: &'a [Record], webhook: Option<&str>) -> &'a Record {
    dead.iter()
        .find(|r| r.header("hookline-webhook") == webhook)
        .unwrap_or_else(|| panic!("a reference for {webhook:?} in {dead:#?}"))
}

/// The sum of the samples of `metric` whose labels contain every one of `labels`.
fn sample(metrics: &str, metric: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn an_event_just_under_the_bound_is_retried_through_topics_made_as_the_controller_makes_them()
{
    let mut dump = LogDump::new();
    let env = Env::get().unwrap();
    let rx = Receiver::start().await.unwrap();
    rx.program_script("/flaky", vec![Behavior::status(503)], Behavior::status(200));
    let ns = namespace(&env, "oversize-fit", &rx, &[("flaky", "/flaky")]).await;
    // What the controller sets on retry and dead-letter topics; the events topic keeps the
    // broker's default (1 MiB and a few bytes).
    let limit = hookline_core::kafka::max_message_bytes(DEFAULT_MAX_RECORD_BYTES);
    let t = topics(&env, "oversize-fit", limit, None).await;
    let d = start(&env, &ns.name, &t, &[], &mut dump);

    // Over librdkafka's default message.max.bytes (1,000,000), within the 1 MiB bound.
    let value = sized_event("evt_near_bound", 1_040_000);
    assert!(value.len() > 1_000_000 && value.len() < DEFAULT_MAX_RECORD_BYTES);
    kafka::produce(&big_producer(&env), &t.own.events, Some("k"), &value, &[])
        .await
        .unwrap();

    // Failed once, then retried through the retry topic and delivered.
    let got = rx.wait_for("/flaky", 2, WITHIN).await.unwrap();
    assert_eq!(webhook_ids(&got[..2]), ["evt_near_bound"; 2]);
    assert_eq!(got[1].header("hookline-attempt"), Some("2"));
    assert_eq!(got[0].body, got[1].body, "the same body on the retry");
    let metrics = http_get(&d.listen, "/metrics").unwrap();
    assert_eq!(
        sample(&metrics, "hookline_dispatcher_writes_refused_total", &[]),
        0.0,
        "nothing refused:\n{metrics}"
    );
}

#[tokio::test]
async fn a_write_kafka_refuses_for_good_is_dead_lettered_as_a_reference_and_the_partition_flows_on()
{
    let mut dump = LogDump::new();
    let env = Env::get().unwrap();
    let rx = Receiver::start().await.unwrap();
    // The big event fails once at each (503: retried; 400: dead-lettered); later ones succeed.
    rx.program_script("/retry", vec![Behavior::status(503)], Behavior::status(200));
    rx.program_script(
        "/reject",
        vec![Behavior::status(400)],
        Behavior::status(200),
    );
    let ns = namespace(
        &env,
        "oversize",
        &rx,
        &[("retry", "/retry"), ("reject", "/reject")],
    )
    .await;
    // Retry and dead-letter topics that take 256 KiB; an events topic that takes 4 MB.
    let t = topics(&env, "oversize", 256 * 1024, Some(4_000_000)).await;
    let d = start(&env, &ns.name, &t, &[], &mut dump);
    let producer = big_producer(&env);
    let events_topic = t.own.events.clone();

    // 1. 300 kB: accepted by the dispatcher, too large for the retry and dead-letter topics.
    let big = sized_event("evt_big", 300_000);
    let (p_big, o_big) = kafka::produce(&producer, &events_topic, Some("k"), &big, &[])
        .await
        .unwrap();
    rx.wait_for("/retry", 1, WITHIN).await.unwrap();
    rx.wait_for("/reject", 1, WITHIN).await.unwrap();
    // 2. 1.5 MB: over the dispatcher's 1 MiB bound, dead-lettered unparsed (`too_large`), and
    //    that dead letter is too large for its topic (and for the producer) too.
    let huge = sized_event("evt_huge", 1_500_000);
    let (p_huge, o_huge) = kafka::produce(&producer, &events_topic, Some("k2"), &huge, &[])
        .await
        .unwrap();
    // 3. A later event of the same key: delivered only if the big one's lanes moved on.
    let after = events::event("evt_after", "a.b", json!({"n": 1}));
    let (_, o_after) = kafka::produce(&producer, &events_topic, Some("k"), &after, &[])
        .await
        .unwrap();
    received(&rx, "/retry", "evt_after").await;
    received(&rx, "/reject", "evt_after").await;

    // Three references in the dead-letter topic, without the event, naming where it is.
    let dead = kafka::consume(&env, &t.own.dead_letter, 3, WITHIN)
        .await
        .unwrap();
    let find = |webhook: Option<&str>| reference_for(&dead, webhook);
    for (r, webhook, (partition, offset), id) in [
        (
            find(Some("retry")),
            Some("retry"),
            (p_big, o_big),
            "evt_big",
        ),
        (
            find(Some("reject")),
            Some("reject"),
            (p_big, o_big),
            "evt_big",
        ),
        (find(None), None, (p_huge, o_huge), "evt_huge"),
    ] {
        assert_eq!(
            r.header("hookline-reason"),
            Some("record_too_large"),
            "{webhook:?}"
        );
        assert!(
            r.value.as_deref().is_none_or(<[u8]>::is_empty),
            "{webhook:?}: a reference carries no event"
        );
        assert_eq!(r.header("hookline-event-id"), Some(id), "{webhook:?}");
        assert_eq!(
            r.header("hookline-original-topic"),
            Some(events_topic.as_str())
        );
        assert_eq!(
            r.header("hookline-original-partition"),
            Some(partition.to_string().as_str())
        );
        assert_eq!(
            r.header("hookline-original-offset"),
            Some(offset.to_string().as_str()),
            "{webhook:?}"
        );
        let error = r.header("hookline-error").unwrap_or_default();
        assert!(error.contains("refused by Kafka"), "{webhook:?}: {error}");
    }
    let reject = find(Some("reject"));
    assert_eq!(reject.header("hookline-status"), Some("400"));
    assert!(
        reject
            .header("hookline-error")
            .unwrap_or_default()
            .contains("dead-lettered for `http_4xx`"),
        "{reject:?}"
    );
    assert!(
        find(None)
            .header("hookline-error")
            .unwrap_or_default()
            .contains("dead-lettered for `too_large`")
    );

    // Counted, and every offset of the events topic committed (nothing left stalled).
    wait::until(WITHIN, "the refusals counted", || async {
        let m = http_get(&d.listen, "/metrics")?;
        let refused = |record: &str| {
            sample(
                &m,
                "hookline_dispatcher_writes_refused_total",
                &[
                    &format!(r#"record="{record}""#),
                    r#"reason="record_too_large""#,
                ],
            )
        };
        let referred = sample(
            &m,
            "hookline_dispatcher_dead_letters_total",
            &[r#"reason="record_too_large""#],
        );
        let got = (refused("retry"), refused("dead_letter"), referred);
        anyhow::ensure!(
            got == (1.0, 2.0, 3.0),
            "(retry, dead_letter, referred) = {got:?}"
        );
        Ok(Some(()))
    })
    .await
    .unwrap();
    let group: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env.kafka_bootstrap)
        .set("group.id", &events_topic) // the own dispatcher's group (`OwnTopics::args`)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&events_topic, p_big);
    wait::until(WITHIN, "every events offset committed", || async {
        let committed = group.committed_offsets(tpl.clone(), Duration::from_secs(5))?;
        let offset = committed
            .find_partition(&events_topic, p_big)
            .map(|e| e.offset());
        anyhow::ensure!(
            offset == Some(Offset::Offset(o_after + 1)),
            "committed {offset:?}, want {}",
            o_after + 1
        );
        Ok(Some(()))
    })
    .await
    .unwrap();
    assert!(o_after > o_huge && o_huge > o_big);
}

/// Kafka refuses a batch, not a record, and librdkafka does not split a refused batch: a small
/// dead letter that shares a batch with one too large for the topic is refused with it. The
/// dispatcher's producer lingers a second here (`HOOKLINE_KAFKA_LINGER_MS`), so the dead
/// letters of two events rejected together share a batch every time; under CPU load it happens
/// by chance (a dead-letter reference, itself small, was refused with another event's too
/// large dead letter, and that event was then nowhere but at its original offset). Before the
/// fix the small event's dead letter was replaced by a reference without the event.
#[tokio::test]
async fn a_dead_letter_refused_only_for_a_batch_mate_is_written_whole() {
    let mut dump = LogDump::new();
    let env = Env::get().unwrap();
    let rx = Receiver::start().await.unwrap();
    rx.program("/reject", Behavior::status(400));
    let ns = namespace(&env, "batchmate", &rx, &[("reject", "/reject")]).await;
    // Dead letters up to 256 KiB; events up to 4 MB.
    let t = topics(&env, "batchmate", 256 * 1024, Some(4_000_000)).await;
    let d = start(
        &env,
        &ns.name,
        &t,
        &[("HOOKLINE_KAFKA_LINGER_MS", "1000")],
        &mut dump,
    );
    let producer = big_producer(&env);
    let big = sized_event("evt_big", 300_000);
    let small = events::event("evt_small", "a.b", json!({"n": 1}));
    let (big_at, small_at) = tokio::join!(
        kafka::produce(&producer, &t.own.events, Some("k-big"), &big, &[]),
        kafka::produce(&producer, &t.own.events, Some("k-small"), &small, &[]),
    );
    let (big_at, small_at) = (big_at.unwrap(), small_at.unwrap());
    rx.wait_for("/reject", 2, WITHIN).await.unwrap();

    let dead = kafka::consume(&env, &t.own.dead_letter, 2, WITHIN)
        .await
        .unwrap();
    // Each keeps its event's key.
    let of = |key: &str| {
        dead.iter()
            .find(|r| r.key.as_deref() == Some(key.as_bytes()))
            .unwrap_or_else(|| panic!("a dead letter of {key} in {dead:#?}"))
    };
    let whole = of("k-small");
    assert_eq!(
        whole.header("hookline-reason"),
        Some("http_4xx"),
        "the small event's own dead letter, not a reference: {whole:#?}"
    );
    let value = whole.value.as_deref().unwrap_or_default();
    assert!(
        String::from_utf8_lossy(value).contains("evt_small"),
        "the dead letter carries the event: {whole:#?}"
    );
    let reference = of("k-big");
    assert_eq!(
        reference.header("hookline-reason"),
        Some("record_too_large")
    );
    assert_eq!(
        reference.header("hookline-original-offset"),
        Some(big_at.1.to_string().as_str())
    );
    assert!(small_at.1 != big_at.1);

    // Only the big one counts as refused.
    wait::until(WITHIN, "the refusal counted", || async {
        let m = http_get(&d.listen, "/metrics")?;
        let refused = sample(&m, "hookline_dispatcher_writes_refused_total", &[]);
        let referred = sample(
            &m,
            "hookline_dispatcher_dead_letters_total",
            &[r#"reason="record_too_large""#],
        );
        anyhow::ensure!(
            (refused, referred) == (1.0, 1.0),
            "(refused, references dead-lettered) = {:?}",
            (refused, referred)
        );
        Ok(Some(()))
    })
    .await
    .unwrap();
}

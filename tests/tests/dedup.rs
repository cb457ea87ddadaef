//! Duplicates are delivered once: copies of an event (the same id) published over HTTP with the
//! same `Idempotency-Key` and produced straight to Kafka reach the receiver once, are counted as
//! duplicates by the dispatcher and in the delivery log — also when the dispatcher is killed
//! with SIGKILL between the copies (it restores the ids it saw from the tenant's dedup topic).

use std::time::Duration;

use hookline_tests::api::Publishing;
use hookline_tests::receiver::{Behavior, Receiver};
use hookline_tests::tenant::{Tenant, WITHIN};
use hookline_tests::{LogDump, install, pods, random_suffix, wait};
use serde_json::{Value, json};

/// `hookline_dispatcher_records_total{outcome="duplicate"}` of the tenant's dispatcher.
async fn duplicates_counted(t: &Tenant) -> u64 {
    let metrics = t.dispatcher_get("/metrics").await.unwrap();
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("hookline_dispatcher_records_total{")
                && l.contains("outcome=\"duplicate\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// `Some(())` once the group's committed offset of every partition of `topic` is its end.
fn all_committed(
    env: &hookline_tests::Env,
    topic: &str,
    group: &str,
) -> anyhow::Result<Option<()>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &env.kafka_bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition(topic, p.id());
    }
    let committed = c.committed_offsets(tpl, Duration::from_secs(10))?;
    for e in committed.elements() {
        let (_, high) = c.fetch_watermarks(topic, e.partition(), Duration::from_secs(10))?;
        let at = match e.offset() {
            rdkafka::Offset::Offset(o) => o,
            _ => 0,
        };
        if at < high {
            return Ok(None);
        }
    }
    Ok(Some(()))
}

fn requests_for(rx: &Receiver, id: &str) -> usize {
    rx.requests("/orders")
        .iter()
        .filter(|r| r.header("webhook-id") == Some(id))
        .count()
}

/// SIGKILL of the tenant's dispatcher; returns once the pod runner restarted it and it is ready.
async fn kill_and_wait_restart(t: &Tenant) {
    let pods = t.dispatcher_pods().await;
    let pod = pods[0].metadata.name.clone().unwrap();
    let old =
        pods::pid(install::OPERATOR_NAMESPACE, &pod, "dispatcher").expect("the dispatcher's pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait::until(WITHIN, "the dispatcher restarted and ready", || async {
        let pid = pods::pid(install::OPERATOR_NAMESPACE, &pod, "dispatcher");
        let ready = pid.is_some_and(|p| p != old && pods::alive(p))
            && t.dispatcher_get("/readyz")
                .await?
                .starts_with("HTTP/1.1 200");
        Ok(ready.then_some(()))
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_of_an_event_over_http_and_kafka_are_delivered_once_also_across_a_kill_9() {
    let mut dump = LogDump::new();
    let Publishing {
        t,
        rx,
        api,
        publisher,
        viewer,
    } = Publishing::start("dedup", json!({}), &mut dump).await;
    let ns = t.ns.name.clone();
    let publish = |key: String| {
        let (api, ns, publisher) = (&api, ns.clone(), publisher.clone());
        async move {
            let body = json!({"type": "transaction.approved", "data": {"tx": 1}});
            let (s, _, res) = api
                .publish(&ns, &publisher, &body, &[("idempotency-key", &key)])
                .await
                .unwrap();
            assert_eq!((s, res["id"].as_str()), (202, Some(key.as_str())), "{res}");
        }
    };

    // Three POSTs with one Idempotency-Key, and the same event produced straight to Kafka
    // (keyed by its id, as the API keys it when the body names no key).
    let id = format!("evt_dup_{}", random_suffix());
    for _ in 0..3 {
        publish(id.clone()).await;
    }
    let envelope = json!({"id": id, "type": "transaction.approved", "timestamp": "2026-12-01T10:00:00Z", "data": {"tx": 1}});
    t.produce(&id, &serde_json::to_vec(&envelope).unwrap())
        .await;
    wait::until(WITHIN, "three duplicates counted", || async {
        Ok((duplicates_counted(&t).await >= 3).then_some(()))
    })
    .await
    .unwrap();
    rx.wait_for("/orders", 1, WITHIN).await.unwrap();
    assert_eq!(duplicates_counted(&t).await, 3);
    let log = format!("/api/v1/tenants/{ns}/deliveries/{id}");
    let entry = wait::until(
        WITHIN,
        "the delivery log counts three duplicates",
        || async {
            let v: Value = api.get(&log, &viewer).await?;
            let d = &v["deliveries"][0];
            Ok((d["status"] == "delivered" && d["duplicates"] == 3).then_some(v))
        },
    )
    .await
    .unwrap();
    assert_eq!(entry["deliveries"].as_array().unwrap().len(), 1, "{entry}");
    assert_eq!(requests_for(&rx, &id), 1, "delivered once");

    // A copy, then SIGKILL of the dispatcher, then another copy: the restarted dispatcher
    // restores the ids seen from the dedup topic and does not deliver the second one.
    let second = format!("evt_dup_{}", random_suffix());
    publish(second.clone()).await;
    wait::until(WITHIN, "the first copy delivered", || async {
        Ok((requests_for(&rx, &second) == 1).then_some(()))
    })
    .await
    .unwrap();
    // Kill it once the copy's offset is committed (the id is remembered before that).
    wait::until(WITHIN, "every events offset committed", || async {
        let (env, topic, group) = (
            t.env.clone(),
            t.topics().events,
            hookline_core::naming::consumer_group(&ns),
        );
        tokio::task::spawn_blocking(move || all_committed(&env, &topic, &group)).await?
    })
    .await
    .unwrap();
    kill_and_wait_restart(&t).await;
    publish(second.clone()).await;
    wait::until(
        WITHIN,
        "the copy after the restart counted as a duplicate",
        || async { Ok((duplicates_counted(&t).await >= 1).then_some(())) },
    )
    .await
    .unwrap();
    let log = format!("/api/v1/tenants/{ns}/deliveries/{second}");
    wait::until(WITHIN, "the delivery log counts the duplicate", || async {
        let v: Value = api.get(&log, &viewer).await?;
        Ok((v["deliveries"][0]["duplicates"] == 1).then_some(()))
    })
    .await
    .unwrap();
    assert_eq!(
        requests_for(&rx, &second),
        1,
        "delivered once across the kill"
    );
}

/// The one window the docs name (docs/reference.md, "Duplicates"): a crash between a delivery
/// and its offset commit. The record is read again after the restart and delivered again — the
/// same `webhook-id` twice, at least once — and a copy published after that is still suppressed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_while_the_first_copy_is_in_flight_delivers_it_again_and_later_copies_are_suppressed()
 {
    let mut dump = LogDump::new();
    let Publishing {
        t,
        rx,
        api,
        publisher,
        ..
    } = Publishing::start("dedup-window", json!({}), &mut dump).await;
    let ns = t.ns.name.clone();
    // The receiver holds its answer, so the delivery is in flight when the dispatcher dies.
    rx.program("/orders", Behavior::delayed(Duration::from_secs(20)));
    let id = format!("evt_window_{}", random_suffix());
    let body = json!({"type": "transaction.review", "data": {"tx": 2}});
    let publish = || async {
        let (s, _, res) = api
            .publish(&ns, &publisher, &body, &[("idempotency-key", &id)])
            .await
            .unwrap();
        assert_eq!(s, 202, "{res}");
    };
    publish().await;
    wait::until(WITHIN, "the first delivery in flight", || async {
        Ok((requests_for(&rx, &id) == 1).then_some(()))
    })
    .await
    .unwrap();
    rx.program("/orders", Behavior::default());
    kill_and_wait_restart(&t).await;
    wait::until(WITHIN, "the in-flight delivery made again", || async {
        Ok((requests_for(&rx, &id) == 2).then_some(()))
    })
    .await
    .unwrap();
    let both: Vec<_> = rx
        .requests("/orders")
        .into_iter()
        .filter(|r| r.header("webhook-id") == Some(id.as_str()))
        .collect();
    assert_eq!(
        both[0].body, both[1].body,
        "the same event, the same id: receivers de-duplicate it"
    );
    assert_eq!(duplicates_counted(&t).await, 0, "read again, not a copy");
    // A copy published now is recognised (the id was remembered before the crash).
    publish().await;
    wait::until(WITHIN, "the later copy counted as a duplicate", || async {
        Ok((duplicates_counted(&t).await >= 1).then_some(()))
    })
    .await
    .unwrap();
    assert_eq!(requests_for(&rx, &id), 2, "the later copy is not delivered");
}

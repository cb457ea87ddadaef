//! `WebhookReplay` on the real environment: dead letters re-delivered once each, in key order,
//! also when the dispatcher is killed with SIGKILL in the middle; a time-range replay takes only
//! the window's events of the Webhook's types; a tenant cannot replay another tenant's Webhook.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use hookline_crds::{ReplayPhase, WebhookReplay};
use hookline_tests::receiver::{Behavior, Receiver, Recorded, first_arrivals_in_key_order};
use hookline_tests::tenant::{Tenant, WITHIN};
use hookline_tests::{api, events, install, kafka, pods, random_suffix, wait};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use rdkafka::producer::FutureRecord;
use serde_json::json;

const KEYS: usize = 20;

fn replay_object(name: &str, spec: serde_json::Value) -> WebhookReplay {
    serde_json::from_value(json!({
        "apiVersion": "hookline.dev/v1alpha1", "kind": "WebhookReplay",
        "metadata": {"name": name}, "spec": spec
    }))
    .unwrap()
}

/// Waits until the replay has ended; returns it.
async fn ended(api: &Api<WebhookReplay>, name: &str, within: Duration) -> WebhookReplay {
    wait::until(within, &format!("replay {name} ended"), || async {
        let r = api.get(name).await?;
        let done = r
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .is_some_and(ReplayPhase::is_final);
        Ok(done.then_some(r))
    })
    .await
    .unwrap()
}

fn replayed<'a>(got: &'a [Recorded], replay: &str) -> Vec<&'a Recorded> {
    got.iter()
        .filter(|r| r.header("hookline-replay") == Some(replay))
        .collect()
}

/// A tenant whose `Webhook` `orders` dead-lettered `n` events `evt_<i>` (keys `k<i % KEYS>`):
/// its receiver answered 410 Gone, which disabled it. The receiver is healthy again and the
/// `Webhook` enabled when this returns.
async fn dead_letters(prefix: &str, n: usize) -> (Tenant, Receiver) {
    let t = Tenant::create(prefix).await;
    let rx = Receiver::start().await.unwrap();
    // The receiver is gone (410): the first delivery disables the Webhook and every other event
    // is dead-lettered without an attempt.
    rx.program("/hooks", Behavior::status(410));
    t.webhook(
        "orders",
        &rx.url("/hooks"),
        &["order.*"],
        json!({"delivery": {"maxInFlight": 8}}),
    )
    .await;
    let records: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| {
            (
                format!("k{}", i % KEYS),
                events::event(&format!("evt_{i}"), "order.updated", json!({"i": i})),
            )
        })
        .collect();
    t.produce_in_order(&records).await;
    t.wait_count("orders", "failed", n as i64).await;
    let before_disabled = rx.requests("/hooks").len();
    assert!(
        before_disabled < 10,
        "the Webhook was disabled at once: {before_disabled} requests"
    );

    // The receiver is back: enable the Webhook and replay its dead letters.
    rx.program("/hooks", Behavior::delayed(Duration::from_millis(2)));
    t.api
        .patch(
            "orders",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"hookline.dev/enable": "1"}}})),
        )
        .await
        .unwrap();
    wait::until(WITHIN, "the Webhook enabled again", || async {
        let wh = t.api.get("orders").await?;
        Ok(wh
            .status
            .as_ref()
            .is_some_and(|s| s.disabled.is_none())
            .then_some(()))
    })
    .await
    .unwrap();
    (t, rx)
}

/// How many requests each `webhook-id` got.
fn requests_per_id(got: &[&Recorded]) -> HashMap<String, usize> {
    let mut per_id = HashMap::new();
    for r in got {
        *per_id
            .entry(r.header("webhook-id").unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    per_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_replayed_once_each_in_key_order_also_across_a_kill_9() {
    let n = 2_000;
    let (t, rx) = dead_letters("replay-dlq", n).await;
    let replays = Api::<WebhookReplay>::namespaced(t.client.clone(), &t.ns.name);
    let name = "after-outage";
    replays
        .create(
            &PostParams::default(),
            &replay_object(
                name,
                json!({"webhookRef": {"name": "orders"}, "source": {"deadLetters": {}}, "rateLimit": {"perSecond": 300}}),
            ),
        )
        .await
        .unwrap();

    // Kill the dispatcher in the middle of it.
    wait::until(WITHIN, "a quarter of the replay delivered", || async {
        Ok((replayed(&rx.requests("/hooks"), name).len() >= n / 4).then_some(()))
    })
    .await
    .unwrap();
    let pods = t.dispatcher_pods().await;
    let pod = pods[0].metadata.name.clone().unwrap();
    let old = pods::pid(install::OPERATOR_NAMESPACE, &pod, "dispatcher").expect("its pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let at_kill = replayed(&rx.requests("/hooks"), name).len();
    assert!(
        at_kill < n,
        "the kill came before the end ({at_kill} of {n})"
    );

    let r = ended(&replays, name, Duration::from_secs(300)).await;
    let s = r.status.clone().unwrap();
    assert_eq!(s.phase, Some(ReplayPhase::Succeeded), "{s:?}");
    assert_eq!(
        (s.matched, s.delivered, s.failed),
        (Some(n as i64), Some(n as i64), Some(0)),
        "{s:?}"
    );
    assert!(s.completion_time.is_some() && s.start_time.is_some());

    let got = rx.requests("/hooks");
    let again = replayed(&got, name);
    let per_id = requests_per_id(&again);
    let expected: HashSet<String> = (0..n).map(|i| format!("evt_{i}")).collect();
    let ids: HashSet<String> = per_id.keys().cloned().collect();
    assert_eq!(ids, expected, "exactly the dead letters, each of them");
    let twice: Vec<_> = per_id.iter().filter(|(_, c)| **c > 1).collect();
    // Only requests in flight at the kill may come twice, and those answered whose end was not
    // in Kafka yet (the slot is freed when the answer comes, before the end is written): at
    // most maxInFlight (8) plus as many again.
    assert!(
        twice.len() <= 16,
        "{} events delivered more than once across the kill: {twice:?}",
        twice.len()
    );
    eprintln!(
        "replay: {} requests for {n} events, {} sent twice (in flight or not yet recorded at the kill)",
        again.len(),
        twice.len()
    );
    let owned: Vec<Recorded> = again.iter().map(|r| (*r).clone()).collect();
    first_arrivals_in_key_order(&owned, KEYS).unwrap();
    let key = t.signing_key("orders").await;
    for r in again.iter().take(50) {
        events::verify(&key, r);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_time_range_replay_takes_only_the_window_and_the_webhooks_types() {
    let t = Tenant::create("replay-time").await;
    let rx = Receiver::start().await.unwrap();
    t.webhook(
        "risky",
        &rx.url("/risky"),
        &["transaction.rejected", "transaction.review"],
        json!({}),
    )
    .await;
    // 40 minutes of history, one batch per 5 minutes, by Kafka record time; three types.
    let now = jiff::Timestamp::now().as_millisecond();
    let producer = kafka::producer(&t.env).unwrap();
    let types = [
        "transaction.approved",
        "transaction.rejected",
        "transaction.review",
    ];
    let mut expected = HashSet::new();
    let (from, to) = (now - 25 * 60_000, now - 15 * 60_000);
    let mut sends = Vec::new();
    let mut all = 0;
    for batch in 0..8i64 {
        let at = now - (40 - batch * 5) * 60_000 + 1_000;
        for i in 0..9 {
            let ty = types[i % 3];
            let id = format!("evt_b{batch}_{i}_{}", random_suffix());
            if at >= from && at < to && ty != "transaction.approved" {
                expected.insert(id.clone());
            }
            let value = events::event(&id, ty, json!({"batch": batch}));
            let topic = t.topics().events;
            let key = format!("tx{i}");
            sends.push(
                producer
                    .send_result(
                        FutureRecord::to(&topic)
                            .key(&key)
                            .payload(&value)
                            .timestamp(at),
                    )
                    .map_err(|(e, _)| e)
                    .unwrap(),
            );
            all += 1;
        }
    }
    for s in futures::future::join_all(sends).await {
        s.unwrap().map_err(|(e, _)| e).unwrap();
    }
    assert_eq!(
        expected.len(),
        12,
        "two batches of the window, two types of three"
    );
    let first_pass = all / 3 * 2;
    rx.wait_for("/risky", first_pass, WITHIN).await.unwrap();

    let replays = Api::<WebhookReplay>::namespaced(t.client.clone(), &t.ns.name);
    let ts = |ms: i64| jiff::Timestamp::from_millisecond(ms).unwrap().to_string();
    replays
        .create(
            &PostParams::default(),
            &replay_object(
                "window",
                json!({"webhookRef": {"name": "risky"}, "source": {"timeRange": {"from": ts(from), "to": ts(to)}}}),
            ),
        )
        .await
        .unwrap();
    let r = ended(&replays, "window", WITHIN).await;
    let s = r.status.unwrap();
    assert_eq!(s.phase, Some(ReplayPhase::Succeeded), "{s:?}");
    assert_eq!((s.matched, s.delivered), (Some(12), Some(12)), "{s:?}");
    assert_eq!(
        s.total,
        Some(18),
        "the source range is the window's records: {s:?}"
    );
    let got = rx.requests("/risky");
    let again: HashSet<String> = replayed(&got, "window")
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_owned())
        .collect();
    assert_eq!(again, expected);
    assert_eq!(replayed(&got, "window").len(), 12, "each once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_replay_another_tenants_webhook_and_an_invalid_replay_is_refused() {
    let a = Tenant::create("replay-a").await;
    let b = Tenant::create("replay-b").await;
    let rx = Receiver::start().await.unwrap();
    a.webhook("mine", &rx.url("/a"), &["x.*"], json!({})).await;
    api::tenant_token(
        &b.client,
        &b.ns.name,
        "b-editor",
        Some("hookline-tenant-edit"),
    )
    .await
    .unwrap();
    let as_b = a
        .env
        .client_as(&b.client, &b.ns.name, "b-editor")
        .await
        .unwrap();
    let spec = json!({"webhookRef": {"name": "mine"}, "source": {"deadLetters": {}}});
    // In A's namespace: RBAC refuses B.
    let err = Api::<WebhookReplay>::namespaced(as_b.clone(), &a.ns.name)
        .create(
            &PostParams::default(),
            &replay_object("steal", spec.clone()),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 403),
        "{err}"
    );
    // In B's own namespace a replay names a Webhook of B's namespace only: "mine" is not one.
    let own = Api::<WebhookReplay>::namespaced(as_b, &b.ns.name);
    own.create(&PostParams::default(), &replay_object("try", spec.clone()))
        .await
        .unwrap();
    wait::until(
        WITHIN,
        "the replay waits for a Webhook of its namespace",
        || async {
            let r = own.get("try").await?;
            let s = r.status.unwrap_or_default();
            Ok((s.phase == Some(ReplayPhase::Pending)
                && s.conditions.iter().any(|c| c.reason == "WebhookNotFound"))
            .then_some(()))
        },
    )
    .await
    .unwrap();
    assert!(rx.requests("/a").is_empty());
    // Invalid specs are refused with a reason by the API server.
    let both = json!({"webhookRef": {"name": "mine"}, "source": {"deadLetters": {}, "timeRange": {"from": "2026-12-01T00:00:00Z", "to": "2026-12-01T01:00:00Z"}}});
    let backwards = json!({"webhookRef": {"name": "mine"}, "source": {"timeRange": {"from": "2026-12-01T02:00:00Z", "to": "2026-12-01T01:00:00Z"}}});
    let admin = Api::<WebhookReplay>::namespaced(a.client.clone(), &a.ns.name);
    for (spec, says) in [
        (both, "exactly one of deadLetters and timeRange"),
        (backwards, "from must be before"),
    ] {
        let err = admin
            .create(&PostParams::default(), &replay_object("bad", spec))
            .await
            .unwrap_err();
        assert!(err.to_string().contains(says), "{err}");
    }
    // The spec cannot be changed.
    admin
        .create(
            &PostParams::default(),
            &replay_object(
                "fixed",
                json!({"webhookRef": {"name": "mine"}, "source": {"deadLetters": {}}}),
            ),
        )
        .await
        .unwrap();
    let err = admin
        .patch(
            "fixed",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"eventTypes": ["x.y"]}})),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot be changed"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenant_api_replays_and_resends_as_the_caller_and_refuses_other_tenants() {
    let mut dump = hookline_tests::LogDump::new();
    let hookline_tests::api::Publishing {
        t,
        rx,
        api,
        publisher,
        viewer,
    } = hookline_tests::api::Publishing::start("replay-api", json!({}), &mut dump).await;
    let ns = t.ns.name.clone();
    let editor = api::tenant_token(&t.client, &ns, "editor", Some("hookline-tenant-edit"))
        .await
        .unwrap();
    let other = Tenant::create("replay-api-other").await;
    let stranger = api::tenant_token(
        &other.client,
        &other.ns.name,
        "stranger",
        Some("hookline-tenant-edit"),
    )
    .await
    .unwrap();
    // One event, delivered once.
    let (s, _, res) = api
        .publish(
            &ns,
            &publisher,
            &json!({"type": "transaction.rejected", "data": {"tx": 7}}),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(s, 202, "{res}");
    let id = res["id"].as_str().unwrap().to_owned();
    rx.wait_for("/orders", 1, WITHIN).await.unwrap();
    let log = format!("/api/v1/tenants/{ns}/deliveries/{id}");
    wait::until(WITHIN, "the delivery in the log", || async {
        Ok(api.get(&log, &viewer).await.ok().map(|_| ()))
    })
    .await
    .unwrap();

    // Resend: another tenant's editor and this tenant's viewer are refused; the editor gets a
    // WebhookReplay that sends the event once more, marked as a replay.
    let resend = format!("/api/v1/tenants/{ns}/deliveries/{id}/resend");
    let (s, _, body) = api
        .call("POST", &resend, Some(&stranger), Some(&json!({})), &[])
        .await
        .unwrap();
    assert_eq!(s, 403, "{body}");
    let (s, _, body) = api
        .call("POST", &resend, Some(&viewer), Some(&json!({})), &[])
        .await
        .unwrap();
    assert_eq!(s, 403, "{body}");
    assert_eq!(body["missing"]["resource"], "webhookreplays", "{body}");
    let (s, _, body) = api
        .call("POST", &resend, Some(&editor), Some(&json!({})), &[])
        .await
        .unwrap();
    assert_eq!(s, 201, "{body}");
    let name = body["replays"][0]["name"].as_str().unwrap().to_owned();
    assert!(
        body["replays"][0]["requestedBy"]
            .as_str()
            .unwrap()
            .ends_with(":editor"),
        "{body}"
    );
    let replays = Api::<WebhookReplay>::namespaced(t.client.clone(), &ns);
    let r = ended(&replays, &name, WITHIN).await;
    let st = r.status.unwrap();
    assert_eq!(
        (st.phase, st.matched, st.delivered),
        (Some(ReplayPhase::Succeeded), Some(1), Some(1)),
        "{st:?}"
    );
    let got = rx.requests("/orders");
    let again = replayed(&got, &name);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].header("webhook-id"), Some(id.as_str()));

    // A replay of the Webhook's dead letters through the API (none: it succeeds having matched
    // nothing), followed at its Location.
    let path = format!("/api/v1/tenants/{ns}/webhooks/orders/replays");
    let spec = json!({"name": "dlq-check", "source": {"deadLetters": {}}});
    let (s, _, body) = api
        .call("POST", &path, Some(&stranger), Some(&spec), &[])
        .await
        .unwrap();
    assert_eq!(s, 403, "{body}");
    let bad = json!({"source": {"timeRange": {"from": "2026-12-01T02:00:00Z", "to": "2026-12-01T01:00:00Z"}}});
    let (s, _, body) = api
        .call("POST", &path, Some(&editor), Some(&bad), &[])
        .await
        .unwrap();
    assert_eq!(s, 422, "{body}");
    let (s, headers, body) = api
        .call("POST", &path, Some(&editor), Some(&spec), &[])
        .await
        .unwrap();
    assert_eq!(s, 201, "{body}");
    let location = headers.get("location").cloned().unwrap();
    let view = wait::until(WITHIN, "the replay ended", || async {
        let v = api.get(&location, &viewer).await?;
        Ok((v["status"]["phase"] == "Succeeded").then_some(v))
    })
    .await
    .unwrap();
    assert_eq!(view["status"]["matched"], 0, "{view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_killed_mid_replay_resumes_without_queueing_anything_twice() {
    let n = 1_000;
    let (t, rx) = dead_letters("replay-ctl", n).await;
    let replays = Api::<WebhookReplay>::namespaced(t.client.clone(), &t.ns.name);
    let name = "resumed";
    replays
        .create(
            &PostParams::default(),
            &replay_object(
                name,
                json!({"webhookRef": {"name": "orders"}, "source": {"deadLetters": {}}, "rateLimit": {"perSecond": 100}}),
            ),
        )
        .await
        .unwrap();
    wait::until(WITHIN, "a fifth of the replay queued", || async {
        let r = replays.get(name).await?;
        let matched = r.status.and_then(|s| s.matched).unwrap_or(0);
        Ok((matched >= (n / 5) as i64).then_some(()))
    })
    .await
    .unwrap();
    let pods = hookline_tests::pods::ready_pods(
        &t.client,
        install::OPERATOR_NAMESPACE,
        "app.kubernetes.io/name=hookline-controller",
    )
    .await
    .unwrap();
    let pod = pods[0].0.clone();
    let old = pods::pid(install::OPERATOR_NAMESPACE, &pod, "controller").expect("its pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let at_kill = replayed(&rx.requests("/hooks"), name).len();
    assert!(
        at_kill < n,
        "the kill came before the end ({at_kill} of {n})"
    );

    let r = ended(&replays, name, Duration::from_secs(300)).await;
    let s = r.status.clone().unwrap();
    assert_eq!(s.phase, Some(ReplayPhase::Succeeded), "{s:?}");
    assert_eq!(
        (s.matched, s.delivered, s.failed),
        (Some(n as i64), Some(n as i64), Some(0)),
        "{s:?}"
    );
    // The dispatcher was not touched: every event exactly once.
    let got = rx.requests("/hooks");
    let again = replayed(&got, name);
    let per_id = requests_per_id(&again);
    assert_eq!(per_id.len(), n, "every dead letter replayed");
    let twice: Vec<_> = per_id.iter().filter(|(_, c)| **c > 1).collect();
    assert!(
        twice.is_empty(),
        "queued twice across the controller's restart: {twice:?}"
    );
    let pid = pods::pid(install::OPERATOR_NAMESPACE, &pod, "controller");
    assert!(
        pid.is_some_and(|p| p != old),
        "the controller was restarted"
    );
}

//! The tenant API against the real stack: a `hookline-api` of the test's own (the chart's
//! binary, as the chart's ServiceAccount, which may only create TokenReviews), the chart's
//! controller and dispatchers, Kafka and a receiver on loopback. Callers are ServiceAccounts
//! bound to the chart's `hookline-tenant-edit` / `hookline-tenant-view` roles.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use hookline_tests::api::{OwnApi, tenant_token};
use hookline_tests::receiver::{Behavior, Receiver};
use hookline_tests::tenant::Tenant;
use hookline_tests::{LogDump, wait};
use serde_json::{Value, json};

const EDIT: &str = "hookline-tenant-edit";
const VIEW: &str = "hookline-tenant-view";

fn wh_path(tenant: &str, rest: &str) -> String {
    format!("/api/v1/tenants/{tenant}/webhooks{rest}")
}

fn ready(v: &Value) -> bool {
    v["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_editor_manages_webhooks_through_the_api_and_kubectl_sees_the_same_objects() {
    let mut dump = LogDump::new();
    let t = Tenant::create("apicrud").await;
    let ns = t.ns.name.clone();
    let rx = Receiver::start().await.unwrap();
    let api = OwnApi::start(&t.env, &t.client, &mut dump).await.unwrap();
    let token = tenant_token(&t.client, &ns, "editor", Some(EDIT))
        .await
        .unwrap();
    let tok = Some(token.as_str());

    // Create, refused field by field first.
    let bad = json!({"name": "orders", "spec": {"url": "ftp://x", "eventTypes": []}});
    let (s, h, body) = api
        .call("POST", &wh_path(&ns, ""), tok, Some(&bad), &[])
        .await
        .unwrap();
    assert_eq!(s, 422, "{body}");
    assert_eq!(h["content-type"], "application/problem+json");
    let fields: BTreeSet<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert!(
        fields.contains("spec.url") && fields.contains("spec.eventTypes"),
        "{body}"
    );
    let unknown = json!({"name": "orders", "spec": {"url": rx.url("/orders"), "eventTypes": ["a"], "colour": 1}});
    let (s, _, body) = api
        .call("POST", &wh_path(&ns, ""), tok, Some(&unknown), &[])
        .await
        .unwrap();
    assert_eq!(
        (s, body["errors"][0]["field"].as_str()),
        (422, Some("spec.colour")),
        "{body}"
    );

    let spec = json!({"url": rx.url("/orders"), "eventTypes": ["transaction.*"]});
    let (s, h, created) = api
        .call(
            "POST",
            &wh_path(&ns, ""),
            tok,
            Some(&json!({"name": "orders", "spec": spec})),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(s, 201, "{created}");
    assert_eq!(h["location"], wh_path(&ns, "/orders"));
    assert_eq!(
        h["etag"],
        format!("\"{}\"", created["resourceVersion"].as_str().unwrap())
    );

    // kubectl sees the same object, and the API sees the controller make it Ready.
    let via_kube = t.api.get("orders").await.unwrap();
    assert_eq!(via_kube.spec.url, rx.url("/orders"));
    let current = wait::until(
        Duration::from_secs(120),
        "Ready through the API",
        || async {
            let v = api.get(&wh_path(&ns, "/orders"), &token).await?;
            Ok(ready(&v).then_some(v))
        },
    )
    .await
    .unwrap();

    // A test send reaches the receiver, signed, and its outcome comes back.
    let (s, _, result) = api
        .call("POST", &wh_path(&ns, "/orders/test"), tok, None, &[])
        .await
        .unwrap();
    let result = if s == 202 {
        let id = result["id"].as_str().unwrap().to_owned();
        wait::until(Duration::from_secs(60), "test outcome", || async {
            let v = api
                .get(&wh_path(&ns, &format!("/orders/test/{id}")), &token)
                .await?;
            Ok((v["state"] == "done").then_some(v))
        })
        .await
        .unwrap()
    } else {
        assert_eq!(s, 200, "{result}");
        result
    };
    assert_eq!(result["success"], true, "{result}");
    assert_eq!(result["statusCode"], 200);
    let tests = rx.requests("/orders");
    assert!(
        tests
            .iter()
            .any(|r| r.json().is_ok_and(|j| j["type"] == "webhook.test")),
        "the receiver got the test event"
    );

    // Replace: a stale version is refused (the one read before the test send, whose
    // annotation and status moved it on), the current one works.
    let stale = current["resourceVersion"].as_str().unwrap().to_owned();
    let (_, h, _) = api
        .call("GET", &wh_path(&ns, "/orders"), tok, None, &[])
        .await
        .unwrap();
    let rv = h["etag"].trim_matches('"').to_owned();
    assert_ne!(rv, stale);
    let new = json!({"spec": {"url": rx.url("/orders"), "eventTypes": ["transaction.rejected"]}});
    let (s, _, body) = api
        .call(
            "PUT",
            &wh_path(&ns, "/orders"),
            tok,
            Some(&new),
            &[("if-match", &format!("\"{stale}\""))],
        )
        .await
        .unwrap();
    assert_eq!(s, 412, "{body}");
    let (s, _, replaced) = api
        .call(
            "PUT",
            &wh_path(&ns, "/orders"),
            tok,
            Some(&new),
            &[("if-match", &format!("\"{rv}\""))],
        )
        .await
        .unwrap();
    assert_eq!(s, 200, "{replaced}");
    assert_eq!(
        replaced["spec"]["eventTypes"],
        json!(["transaction.rejected"])
    );

    // Pause with a merge patch; kubectl sees it.
    let (s, _, body) = api
        .call(
            "PATCH",
            &wh_path(&ns, "/orders"),
            tok,
            Some(&json!({"spec": {"paused": true}})),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(s, 200, "{body}");
    assert!(t.api.get("orders").await.unwrap().spec.paused);

    // A change made with `kubectl apply` shows in the API.
    let manifest = json!({"apiVersion": "hookline.dev/v1alpha1", "kind": "Webhook",
                          "metadata": {"name": "orders", "namespace": ns},
                          "spec": {"url": rx.url("/orders"), "eventTypes": ["transaction.review"], "paused": true}});
    let (ok, out, err) = t
        .env
        .kubectl_stdin(&["apply", "-f", "-"], &manifest.to_string())
        .unwrap();
    assert!(ok, "kubectl apply: {out}{err}");
    let v = api.get(&wh_path(&ns, "/orders"), &token).await.unwrap();
    assert_eq!(v["spec"]["eventTypes"], json!(["transaction.review"]));

    // Rotation: the editor reads the secret, asks for a rotation, and sees the new generation.
    let before = api
        .get(&wh_path(&ns, "/orders/secret"), &token)
        .await
        .unwrap();
    assert!(
        before["secret"].as_str().unwrap().starts_with("whsec_"),
        "{before}"
    );
    let (s, _, rot) = api
        .call(
            "POST",
            &wh_path(&ns, "/orders/rotate-secret"),
            tok,
            None,
            &[],
        )
        .await
        .unwrap();
    assert_eq!(s, 202, "{rot}");
    let after = wait::until(Duration::from_secs(60), "a new key generation", || async {
        let v = api.get(&wh_path(&ns, "/orders/secret"), &token).await?;
        Ok((v["generation"].as_i64() > before["generation"].as_i64()).then_some(v))
    })
    .await
    .unwrap();
    assert_ne!(after["secret"], before["secret"]);
    assert_eq!(after["previous"], before["secret"]);

    // Delete: conditional on the version, then gone for kubectl too.
    let (s, _, _) = api
        .call(
            "DELETE",
            &wh_path(&ns, "/orders"),
            tok,
            None,
            &[("if-match", "\"1\"")],
        )
        .await
        .unwrap();
    assert_eq!(s, 412);
    let (s, _, _) = api
        .call("DELETE", &wh_path(&ns, "/orders"), tok, None, &[])
        .await
        .unwrap();
    assert_eq!(s, 204);
    wait::until(Duration::from_secs(30), "the Webhook gone", || async {
        Ok(t.api.get_opt("orders").await?.is_none().then_some(()))
    })
    .await
    .unwrap();
    let (s, _, _) = api
        .call("GET", &wh_path(&ns, "/orders"), tok, None, &[])
        .await
        .unwrap();
    assert_eq!(s, 404);
}

/// Every operation of the API on `tenant`, as (method, path, body).
fn every_operation(
    tenant: &str,
    webhook: &str,
    event: &str,
) -> Vec<(&'static str, String, Option<Value>)> {
    let spec = json!({"url": "http://127.0.0.1:9/x", "eventTypes": ["a"]});
    vec![
        ("GET", wh_path(tenant, ""), None),
        (
            "POST",
            wh_path(tenant, ""),
            Some(json!({"name": "intruder", "spec": spec})),
        ),
        ("GET", wh_path(tenant, &format!("/{webhook}")), None),
        (
            "PUT",
            wh_path(tenant, &format!("/{webhook}")),
            Some(json!({"spec": spec})),
        ),
        (
            "PATCH",
            wh_path(tenant, &format!("/{webhook}")),
            Some(json!({"spec": {"paused": true}})),
        ),
        ("POST", wh_path(tenant, &format!("/{webhook}/test")), None),
        ("GET", wh_path(tenant, &format!("/{webhook}/test/x")), None),
        (
            "POST",
            wh_path(tenant, &format!("/{webhook}/rotate-secret")),
            None,
        ),
        ("GET", wh_path(tenant, &format!("/{webhook}/secret")), None),
        ("DELETE", wh_path(tenant, &format!("/{webhook}")), None),
        ("GET", format!("/api/v1/tenants/{tenant}/deliveries"), None),
        (
            "GET",
            format!("/api/v1/tenants/{tenant}/deliveries/{event}"),
            None,
        ),
        ("GET", format!("/api/v1/tenants/{tenant}/stats"), None),
        (
            "POST",
            wh_path(tenant, &format!("/{webhook}/replays")),
            Some(json!({"source": {"deadLetters": {}}})),
        ),
        (
            "GET",
            wh_path(tenant, &format!("/{webhook}/replays/x")),
            None,
        ),
        (
            "POST",
            format!("/api/v1/tenants/{tenant}/deliveries/{event}/resend"),
            Some(json!({})),
        ),
        (
            "POST",
            format!("/api/v1/tenants/{tenant}/events"),
            Some(json!({"type": "a", "data": {}})),
        ),
        (
            "POST",
            format!("/api/v1/tenants/{tenant}/events:batch"),
            Some(json!({"events": [{"type": "a", "data": {}}]})),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_token_reaches_nothing_of_another_tenant_and_a_viewer_neither_writes_nor_reads_secrets()
 {
    let mut dump = LogDump::new();
    let a = Tenant::create("apia").await;
    let b = Tenant::create("apib").await;
    let rx = Receiver::start().await.unwrap();
    let api = OwnApi::start(&a.env, &a.client, &mut dump).await.unwrap();
    let a_edit = tenant_token(&a.client, &a.ns.name, "editor", Some(EDIT))
        .await
        .unwrap();
    let a_view = tenant_token(&a.client, &a.ns.name, "viewer", Some(VIEW))
        .await
        .unwrap();
    let b_view = tenant_token(&b.client, &b.ns.name, "viewer", Some(VIEW))
        .await
        .unwrap();
    let nobody = tenant_token(&a.client, &a.ns.name, "nobody", None)
        .await
        .unwrap();

    // B has a Webhook and a delivered event in the log.
    let b_hook = format!("b-private-{}", hookline_tests::random_suffix());
    let b_event = format!("evt_b_{}", hookline_tests::random_suffix());
    b.webhook(&b_hook, &rx.url("/b"), &["transaction.*"], json!({}))
        .await;
    a.webhook("a-hook", &rx.url("/a"), &["transaction.*"], json!({}))
        .await;
    let envelope = json!({"id": b_event, "type": "transaction.approved", "timestamp": "2026-12-01T00:00:00Z", "data": {}});
    b.produce("k", &serde_json::to_vec(&envelope).unwrap())
        .await;
    wait::until(
        Duration::from_secs(120),
        "B's event in B's delivery log",
        || async {
            let v = api
                .get(
                    &format!("/api/v1/tenants/{}/deliveries/{b_event}", b.ns.name),
                    &b_view,
                )
                .await?;
            Ok((v["deliveries"][0]["status"] == "delivered").then_some(()))
        },
    )
    .await
    .unwrap();

    // A's editor: 403 on every operation of B, naming what is missing, and nothing of B's.
    for (method, path, body) in every_operation(&b.ns.name, &b_hook, &b_event) {
        let (s, h, res) = api
            .call(method, &path, Some(&a_edit), body.as_ref(), &[])
            .await
            .unwrap();
        assert_eq!(s, 403, "{method} {path}: {res}");
        assert_eq!(h["content-type"], "application/problem+json");
        assert_eq!(
            res["missing"]["namespace"],
            b.ns.name.as_str(),
            "{method} {path}: {res}"
        );
        let text = res.to_string();
        assert!(
            !text.contains(&b_event) || path.contains(&b_event),
            "{method} {path} leaked the event id: {text}"
        );
        assert!(
            !text.contains(&rx.url("/b")) && !text.contains("whsec_"),
            "{method} {path}: {text}"
        );
    }
    // B's data is not reachable through A's own tenant either.
    let (s, _, _) = api
        .call(
            "GET",
            &format!("/api/v1/tenants/{}/deliveries/{b_event}", a.ns.name),
            Some(&a_edit),
            None,
            &[],
        )
        .await
        .unwrap();
    assert_eq!(s, 404);
    let page = api
        .get(
            &format!("/api/v1/tenants/{}/deliveries", a.ns.name),
            &a_edit,
        )
        .await
        .unwrap();
    assert!(!page.to_string().contains(&b_event));
    let list = api.get(&wh_path(&a.ns.name, ""), &a_edit).await.unwrap();
    assert!(!list.to_string().contains(&b_hook));

    // A's viewer reads but neither writes nor reads secrets.
    assert!(api.get(&wh_path(&a.ns.name, ""), &a_view).await.is_ok());
    assert!(
        api.get(&format!("/api/v1/tenants/{}/stats", a.ns.name), &a_view)
            .await
            .is_ok()
    );
    for (method, path, body) in every_operation(&a.ns.name, "a-hook", "evt_none") {
        let (s, _, res) = api
            .call(method, &path, Some(&a_view), body.as_ref(), &[])
            .await
            .unwrap();
        let writes = method != "GET" || path.ends_with("/secret");
        if writes {
            assert_eq!(s, 403, "viewer {method} {path}: {res}");
            let missing = &res["missing"];
            let want = if path.ends_with("/secret") {
                "secrets"
            } else if path.contains("/events") {
                "webhookevents"
            } else if path.contains("/replays") || path.ends_with("/resend") {
                "webhookreplays"
            } else {
                "webhooks"
            };
            assert_eq!(missing["resource"], want, "{res}");
        } else {
            assert_ne!(s, 403, "viewer {method} {path}: {res}");
        }
    }
    assert!(
        a.api.get("a-hook").await.is_ok(),
        "the viewer's DELETE did nothing"
    );

    // Every operation of the served OpenAPI document is routed: without a token each is a 401
    // (an unrouted one would be a 404 or 405).
    let (s, _, doc) = api
        .call("GET", "/api/v1/openapi.json", None, None, &[])
        .await
        .unwrap();
    assert_eq!(s, 200);
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        if path.ends_with("openapi.json") {
            continue;
        }
        let concrete = path
            .replace("{tenant}", &a.ns.name)
            .replace("{name}", "a-hook")
            .replace("{eventId}", "evt_none")
            .replace("{id}", "x");
        for method in item.as_object().unwrap().keys() {
            let (s, _, body) = api
                .call(&method.to_uppercase(), &concrete, None, None, &[])
                .await
                .unwrap();
            assert_eq!(s, 401, "{method} {path}: {body}");
            operations += 1;
        }
    }
    assert_eq!(operations, 18, "the document lists every operation");

    // No token, a bad token, or a token without any role: 401, 401, 403 everywhere.
    for (method, path, body) in every_operation(&a.ns.name, "a-hook", "evt_none") {
        let (s, h, _) = api
            .call(method, &path, None, body.as_ref(), &[])
            .await
            .unwrap();
        assert_eq!(s, 401, "{method} {path}");
        assert_eq!(h["www-authenticate"], "Bearer");
        let (s, _, _) = api
            .call(method, &path, Some("not-a-token"), body.as_ref(), &[])
            .await
            .unwrap();
        assert_eq!(s, 401, "{method} {path}");
        let (s, _, _) = api
            .call(method, &path, Some(&nobody), body.as_ref(), &[])
            .await
            .unwrap();
        assert_eq!(s, 403, "{method} {path}");
    }
}

/// Per-event request statuses the receiver saw on `path`, in arrival order.
fn seen(rx: &Receiver, path: &str) -> HashMap<String, Vec<u16>> {
    let mut by_id: HashMap<String, Vec<u16>> = HashMap::new();
    for r in rx.requests(path) {
        let id = r.header("webhook-id").unwrap_or_default().to_owned();
        by_id.entry(id).or_default().push(r.status);
    }
    by_id
}

async fn totals(api: &OwnApi, tenant: &str, webhook: &str, token: &str) -> anyhow::Result<Value> {
    let v = api
        .get(
            &format!("/api/v1/tenants/{tenant}/stats?window=1h&webhook={webhook}"),
            token,
        )
        .await?;
    Ok(v["total"].clone())
}

fn finished(total: &Value) -> u64 {
    total["delivered"].as_u64().unwrap_or(0) + total["deadLettered"].as_u64().unwrap_or(0)
}

/// Both Webhooks' totals once every one of `events` deliveries of each is settled.
async fn settled(
    api: &OwnApi,
    ns: &str,
    tok: &str,
    events: u64,
) -> anyhow::Result<Option<(Value, Value)>> {
    let f = totals(api, ns, "flaky", tok).await?;
    let g = totals(api, ns, "gone", tok).await?;
    Ok((finished(&f) == events && finished(&g) == events).then_some((f, g)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delivery_log_tells_every_event_s_fate_and_is_rebuilt_after_a_kill_and_a_lost_store() {
    const EVENTS: usize = 5_000;
    let mut dump = LogDump::new();
    let t = Tenant::create("apilog").await;
    let ns = t.ns.name.clone();
    let rx = Receiver::start().await.unwrap();
    rx.program("/flaky", Behavior::fail_ratio(0.2, 7));
    rx.program("/gone", Behavior::status(410));
    let retry = json!({"delivery": {"retry": {"maxAttempts": 4, "initialDelay": "500ms", "maxDelay": "1s"}}});
    t.webhook(
        "flaky",
        &rx.url("/flaky"),
        &["transaction.*"],
        retry.clone(),
    )
    .await;
    t.webhook("gone", &rx.url("/gone"), &["transaction.*"], retry)
        .await;
    let mut api = OwnApi::start(&t.env, &t.client, &mut dump).await.unwrap();
    let tok = tenant_token(&t.client, &ns, "viewer", Some(VIEW))
        .await
        .unwrap();

    let records: Vec<(String, Vec<u8>)> = (0..EVENTS)
        .map(|i| {
            let e = json!({"id": format!("evt_{i}"), "type": "transaction.approved",
                           "timestamp": "2026-12-01T00:00:00Z", "data": {"n": i}});
            (format!("tx-{}", i % 400), serde_json::to_vec(&e).unwrap())
        })
        .collect();
    t.produce_in_order(&records).await;

    let (flaky, gone) = wait::until(
        Duration::from_secs(300),
        "every delivery settled in the log",
        || settled(&api, &ns, &tok, EVENTS as u64),
    )
    .await
    .unwrap();

    // Counts match what the receiver saw.
    let got = seen(&rx, "/flaky");
    assert_eq!(got.len(), EVENTS, "the receiver saw every event at /flaky");
    let delivered = got.values().filter(|s| s.contains(&200)).count() as u64;
    let failures: u64 = got
        .values()
        .map(|s| s.iter().filter(|c| **c != 200).count() as u64)
        .sum();
    assert_eq!(flaky["delivered"].as_u64(), Some(delivered), "{flaky}");
    assert_eq!(flaky["failed"].as_u64(), Some(failures), "{flaky}");
    assert_eq!(
        flaky["deadLettered"].as_u64(),
        Some(EVENTS as u64 - delivered),
        "{flaky}"
    );
    let gone_requests = rx.requests("/gone").len() as u64;
    assert!(gone_requests >= 1);
    assert_eq!(gone["deadLettered"].as_u64(), Some(EVENTS as u64), "{gone}");
    assert_eq!(gone["failed"].as_u64(), Some(gone_requests), "{gone}");

    // A sample of events: the attempt sequence is what the receiver answered, in order.
    let mut sample: Vec<&String> = got.keys().collect();
    sample.sort();
    let retried: Vec<&&String> = sample
        .iter()
        .filter(|id| got[**id].len() > 1)
        .take(20)
        .collect();
    assert!(
        !retried.is_empty(),
        "a 20 % failure rate retried some events"
    );
    let mut details = BTreeMap::new();
    for id in retried
        .iter()
        .map(|s| s.as_str())
        .chain(sample.iter().take(20).map(|s| s.as_str()))
    {
        let v = api
            .get(&format!("/api/v1/tenants/{ns}/deliveries/{id}"), &tok)
            .await
            .unwrap();
        let ds = v["deliveries"].as_array().unwrap();
        assert_eq!(ds.len(), 2, "{id} matched both Webhooks: {v}");
        let f = ds.iter().find(|d| d["webhook"] == "flaky").unwrap();
        let log = f["attemptLog"].as_array().unwrap();
        let codes: Vec<u16> = log
            .iter()
            .map(|a| a["statusCode"].as_u64().unwrap() as u16)
            .collect();
        assert_eq!(codes, got[id], "{id}: {f}");
        let numbers: Vec<u64> = log.iter().map(|a| a["attempt"].as_u64().unwrap()).collect();
        assert_eq!(numbers, (1..=log.len() as u64).collect::<Vec<_>>());
        for a in &log[..log.len() - 1] {
            assert_eq!(a["outcome"], "retry", "{f}");
            assert!(a["nextAttemptAt"].is_string(), "{f}");
            assert_eq!(a["reason"], "http_5xx", "{f}");
        }
        let last = log.last().unwrap();
        if codes.last() == Some(&200) {
            assert_eq!(
                (&f["status"], &last["outcome"]),
                (&json!("delivered"), &json!("delivered"))
            );
        } else {
            assert_eq!(f["status"], "dead_lettered");
            assert_eq!(f["deadLetterReason"], "retries_exhausted");
        }
        let g = ds.iter().find(|d| d["webhook"] == "gone").unwrap();
        assert_eq!(g["status"], "dead_lettered", "{g}");
        let reason = g["deadLetterReason"].as_str().unwrap();
        assert!(reason == "gone" || reason == "webhook_disabled", "{g}");
        details.insert(id.to_owned(), v);
    }
    let page = api
        .get(
            &format!("/api/v1/tenants/{ns}/deliveries?webhook=gone&status=dead_lettered&limit=500"),
            &tok,
        )
        .await
        .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 500);
    assert!(page["nextCursor"].is_string());

    // Kill -9 while it reads (a fresh store, so it reads from the start of every attempts
    // topic), start it on the half-written store, then lose the store entirely: each time the
    // log converges to the same counts and the same attempt sequences.
    for kill_while_reading in [true, false] {
        api.kill9();
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", api.store.display()));
        }
        api.restart().await.unwrap();
        if kill_while_reading {
            wait::until(Duration::from_secs(60), "ingestion under way", || async {
                let m = hookline_tests::http_get(&api.ops, "/metrics")?;
                Ok(m.lines()
                    .any(|l| {
                        l.starts_with("hookline_api_ingested_attempts_total ") && !l.ends_with(" 0")
                    })
                    .then_some(()))
            })
            .await
            .unwrap();
            api.kill9();
            api.restart().await.unwrap();
        }
        let (f2, g2) = wait::until(Duration::from_secs(300), "the rebuilt log settled", || {
            settled(&api, &ns, &tok, EVENTS as u64)
        })
        .await
        .unwrap();
        assert_eq!(
            (&f2, &g2),
            (&flaky, &gone),
            "the same counts after the rebuild"
        );
        for (id, before) in &details {
            let v = api
                .get(&format!("/api/v1/tenants/{ns}/deliveries/{id}"), &tok)
                .await
                .unwrap();
            assert_eq!(&v, before, "{id} after the rebuild");
        }
    }
}

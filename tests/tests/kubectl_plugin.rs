//! `kubectl hookline` (the `kubectl-hookline` binary of `kubectl-plugin/`) against the real
//! stack: each test runs the built binary as a user would, with the environment's kubeconfig,
//! on a tenant of its own (the chart's controller and dispatcher, Kafka, a receiver on
//! loopback), and checks both what it prints and exits with and what it did to the cluster.
//!
//! The binary is the debug build in the cargo target directory, as for `hookline-api`:
//! `cargo build -p hookline-kubectl` (make test builds every binary first).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use hookline_core::signing::Secret;
use hookline_crds::{Webhook, WebhookReplay};
use hookline_tests::api::{OwnApi, tenant_token};
use hookline_tests::dispatcher::debug_binary;
use hookline_tests::events::event;
use hookline_tests::receiver::{Behavior, Receiver, Recorded};
use hookline_tests::tenant::{Tenant, WITHIN};
use hookline_tests::{Env, LogDump, random_suffix, wait};
use k8s_openapi::api::core::v1::Secret as KubeSecret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, PostParams};
use kube::config::Kubeconfig;
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn plugin() -> PathBuf {
    let binary = debug_binary("kubectl-hookline");
    assert!(
        binary.exists(),
        "{} is missing: cargo build -p hookline-kubectl",
        binary.display()
    );
    binary
}

/// How a run ended.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// The plugin running `line` (split at spaces) with the environment's kubeconfig and none of
/// its own variables set.
fn command(kubeconfig: &std::path::Path, line: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(plugin());
    cmd.env("KUBECONFIG", kubeconfig)
        .env_remove("HOOKLINE_API_URL")
        .env_remove("HOOKLINE_TOKEN")
        .env_remove("HOOKLINE_WEBHOOK_SECRET")
        .args(line.split_whitespace())
        .kill_on_drop(true);
    cmd
}

/// Runs `kubectl hookline <line>` to its end with `stdin` (if any) and a 2-minute limit.
async fn run(env: &Env, line: &str, stdin: Option<&[u8]>) -> Run {
    let mut child = command(&env.kubeconfig, line)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input).await.unwrap();
    }
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("kubectl hookline {line} did not end within 2 minutes"))
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Unix seconds now.
fn unix_now() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    i64::try_from(now.unwrap().as_secs()).unwrap()
}

/// Unix milliseconds of an RFC 3339 time.
fn millis(rfc3339: &str) -> i64 {
    let t: Time = serde_json::from_value(json!(rfc3339)).unwrap();
    t.0.as_millisecond()
}

/// A tenant with Webhook `orders` (`transaction.*`) delivering to a receiver at `/orders`.
async fn tenant(prefix: &str) -> (Tenant, Receiver) {
    let t = Tenant::create(prefix).await;
    let rx = Receiver::start().await.unwrap();
    t.webhook("orders", &rx.url("/orders"), &["transaction.*"], json!({}))
        .await;
    (t, rx)
}

#[test]
fn help_lists_all_six_subcommands_with_a_line_each() {
    let out = std::process::Command::new(plugin())
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("Usage: kubectl hookline <COMMAND>"), "{help}");
    for name in ["status", "test", "rotate", "replay", "tail", "verify"] {
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} is not listed:\n{help}"));
        assert!(
            line.split_whitespace().count() > 3,
            "{name} has a description: {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_counts_the_last_success_and_the_last_failure() {
    let _dump = LogDump::new();
    let (t, rx) = tenant("kp-status").await;
    let ns = t.ns.name.as_str();
    rx.program("/broken", Behavior::status(400));
    t.webhook("broken", &rx.url("/broken"), &["transaction.*"], json!({}))
        .await;
    t.produce("tx-1", &event("evt_s1", "transaction.approved", json!({})))
        .await;
    t.wait_count("orders", "delivered", 1).await;
    t.wait_count("broken", "failed", 1).await;

    let r = run(&t.env, &format!("status orders -n {ns}"), None).await;
    assert_eq!(r.code, 0, "{r}");
    for want in [
        format!("Webhook:      {ns}/orders"),
        "Ready:        True (Reconciled)".into(),
        "Delivered:    1".into(),
        "Circuit:      closed".into(),
        "Last failure: none".into(),
        "DispatcherReady".into(),
    ] {
        assert!(r.stdout.contains(&want), "missing {want:?}: {r}");
    }
    assert!(!r.stdout.contains("Last success: never"), "{r}");

    let r = run(&t.env, &format!("status broken -n {ns}"), None).await;
    assert_eq!(r.code, 0, "{r}");
    assert!(
        r.stdout.contains("HttpStatus: HTTP 400") && r.stdout.contains("Failed:       1"),
        "{r}"
    );

    let r = run(&t.env, &format!("status -n {ns}"), None).await;
    assert_eq!(r.code, 0, "{r}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(lines[0].starts_with("NAME ") && lines.len() == 3, "{r}");
    assert!(
        lines[1].starts_with("broken") && lines[2].starts_with("orders"),
        "{r}"
    );

    let r = run(&t.env, &format!("status -n {ns} -o json"), None).await;
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["items"][1]["name"], "orders", "{v}");
    assert_eq!(v["items"][1]["delivered"], 1, "{v}");
    assert_eq!(v["items"][0]["lastFailure"]["statusCode"], 400, "{v}");

    let r = run(&t.env, &format!("status nope -n {ns}"), None).await;
    assert_eq!(r.code, 4, "{r}");
    assert!(r.stderr.contains("Webhook \"nope\" not found"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_prints_the_receivers_answer_and_exits_non_zero_when_it_fails() {
    let _dump = LogDump::new();
    let (t, rx) = tenant("kp-test").await;
    let ns = t.ns.name.as_str();

    // As a tenant editor (the chart's role, nothing more), in the context's namespace.
    let editor = tenant_token(&t.client, ns, "editor", Some("hookline-tenant-edit"))
        .await
        .unwrap();
    let kc = kubeconfig_as(&t.env, &editor, ns);
    let r = run(
        &t.env,
        &format!("test orders --kubeconfig {kc} --timeout 90s"),
        None,
    )
    .await;
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.contains("succeeded: HTTP 200 in"), "{r}");
    let nonce = r.stdout.split(':').next().unwrap().trim().to_owned();
    let sent = rx.requests("/orders");
    assert!(
        sent.iter()
            .any(|q| q.header("webhook-id") == Some(nonce.as_str())),
        "the receiver got {nonce}: {r}"
    );

    rx.program("/orders", Behavior::status(500));
    let r = run(
        &t.env,
        &format!("test orders -n {ns} --timeout 90s -o json"),
        None,
    )
    .await;
    assert_eq!(r.code, 1, "{r}");
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        (v["success"].as_bool(), v["statusCode"].as_i64()),
        (Some(false), Some(500)),
        "{v}"
    );

    let r = run(&t.env, &format!("test missing -n {ns}"), None).await;
    assert_eq!(r.code, 4, "{r}");

    // A viewer may read, not ask for a test: the refusal names the permission.
    let viewer = tenant_token(&t.client, ns, "viewer", Some("hookline-tenant-view"))
        .await
        .unwrap();
    let kc = kubeconfig_as(&t.env, &viewer, ns);
    let r = run(&t.env, &format!("test orders --kubeconfig {kc}"), None).await;
    assert_eq!(r.code, 4, "{r}");
    assert!(
        r.stderr.contains("forbidden") && r.stderr.contains("patch"),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_waits_for_the_new_key_and_refuses_a_webhook_with_its_own_secret() {
    let _dump = LogDump::new();
    let (t, _rx) = tenant("kp-rotate").await;
    let ns = t.ns.name.as_str();
    let before = t.whsec("orders").await;

    let r = run(&t.env, &format!("rotate orders -n {ns}"), None).await;
    assert_eq!(r.code, 0, "{r}");
    assert!(
        r.stdout
            .starts_with("Rotated: key generation 2 in Secret orders-signing"),
        "{r}"
    );
    assert!(
        r.stdout.contains("(20s window)"),
        "the test install's overlap: {r}"
    );
    assert_ne!(t.whsec("orders").await, before, "the key changed");

    // A Webhook with secretRef: refused, and nothing is annotated.
    let key = Secret::generate().expose_whsec();
    let secret: KubeSecret = serde_json::from_value(json!({
        "metadata": {"name": "mine"}, "stringData": {"secret": key}
    }))
    .unwrap();
    Api::<KubeSecret>::namespaced(t.client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let own: Webhook = serde_json::from_value(json!({
        "apiVersion": "hookline.dev/v1alpha1", "kind": "Webhook",
        "metadata": {"name": "own"},
        "spec": {"url": "http://127.0.0.1:9/own", "eventTypes": ["*"], "secretRef": {"name": "mine"}}
    }))
    .unwrap();
    t.api.create(&PostParams::default(), &own).await.unwrap();
    let r = run(&t.env, &format!("rotate own -n {ns}"), None).await;
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.stderr.contains("spec.secretRef") && r.stderr.contains("Secret mine"),
        "{r}"
    );
    let own = t.api.get("own").await.unwrap();
    assert!(!own.annotations().contains_key("hookline.dev/rotate-secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_without_waiting_creates_the_webhook_replay_the_flags_describe() {
    let _dump = LogDump::new();
    let t = Tenant::create("kp-replay").await;
    let ns = t.ns.name.as_str();
    let wh: Webhook = serde_json::from_value(json!({
        "apiVersion": "hookline.dev/v1alpha1", "kind": "Webhook",
        "metadata": {"name": "orders"},
        "spec": {"url": "http://127.0.0.1:9/orders", "eventTypes": ["transaction.*"]}
    }))
    .unwrap();
    t.api.create(&PostParams::default(), &wh).await.unwrap();
    let replays = Api::<WebhookReplay>::namespaced(t.client.clone(), ns);

    let r = run(&t.env, &format!("replay orders -n {ns} --dead-letters --reason retries_exhausted --reason http_4xx --event-type transaction.* --rate 5 --no-wait"), None,
    )
    .await;
    assert_eq!(r.code, 0, "{r}");
    let list = replays.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(list.len(), 1);
    let made = &list[0];
    assert!(
        made.name_any().starts_with("orders-replay-"),
        "{}",
        made.name_any()
    );
    assert_eq!(
        r.stdout.trim(),
        format!("webhookreplay.hookline.dev/{} created", made.name_any())
    );
    assert_eq!(
        serde_json::to_value(&made.spec).unwrap(),
        json!({
            "webhookRef": {"name": "orders"},
            "source": {"deadLetters": {"reasons": ["retries_exhausted", "http_4xx"]}},
            "eventTypes": ["transaction.*"],
            "rateLimit": {"perSecond": 5}
        })
    );

    let before = unix_now();
    let r = run(
        &t.env,
        &format!(
            "replay orders -n {ns} --from -2h --to now --name last-two-hours --no-wait -o json"
        ),
        None,
    )
    .await;
    assert_eq!(r.code, 0, "{r}");
    let printed: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(printed["metadata"]["name"], "last-two-hours", "{printed}");
    let source = replays.get("last-two-hours").await.unwrap().spec.source;
    assert!(source.dead_letters.is_none());
    let range = source.time_range.unwrap();
    let (from, to) = (range.from.0.as_second(), range.to.0.as_second());
    assert!((to - before).abs() < 60, "to is now: {to} vs {before}");
    assert_eq!(to - from, 7_200, "from is two hours before to");

    let r = run(
        &t.env,
        &format!("replay nope -n {ns} --dead-letters --no-wait"),
        None,
    )
    .await;
    assert_eq!(r.code, 4, "{r}");
    let r = run(
        &t.env,
        &format!("replay orders -n {ns} --from now --to -1h"),
        None,
    )
    .await;
    assert_eq!(r.code, 2, "{r}");
    assert_eq!(
        replays
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_follows_the_replay_until_it_succeeds() {
    let _dump = LogDump::new();
    let t = Tenant::create("kp-replay-run").await;
    let ns = t.ns.name.as_str();
    let rx = Receiver::start().await.unwrap();
    rx.program("/orders", Behavior::status(400));
    t.webhook("orders", &rx.url("/orders"), &["transaction.*"], json!({}))
        .await;
    for i in 0..3 {
        t.produce(
            &format!("tx-{i}"),
            &event(&format!("evt_r{i}"), "transaction.approved", json!({})),
        )
        .await;
    }
    t.wait_count("orders", "failed", 3).await;
    rx.program("/orders", Behavior::status(200));

    let r = run(
        &t.env,
        &format!("replay orders -n {ns} --dead-letters --name again"),
        None,
    )
    .await;
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.contains("WebhookReplay again succeeded"), "{r}");
    assert!(r.stdout.contains("3 matched, 3 delivered, 0 failed"), "{r}");
    let replayed: Vec<Recorded> = rx
        .requests("/orders")
        .into_iter()
        .filter(|q| q.header("hookline-replay") == Some("again"))
        .collect();
    assert_eq!(replayed.len(), 3);
}

/// The path of a kubeconfig like the environment's whose user is `token` and whose context's
/// namespace is `ns`.
fn kubeconfig_as(env: &Env, token: &str, ns: &str) -> String {
    let mut kc = Kubeconfig::read_from(&env.kubeconfig).unwrap();
    for user in &mut kc.auth_infos {
        user.auth_info = Some(kube::config::AuthInfo {
            token: Some(token.to_owned().into()),
            ..Default::default()
        });
    }
    for ctx in &mut kc.contexts {
        if let Some(c) = ctx.context.as_mut() {
            c.namespace = Some(ns.to_owned());
        }
    }
    let dir = std::env::temp_dir().join(format!("kubectl-hookline-{}", random_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&kc).unwrap()).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_the_delivery_log_oldest_first_and_follows_new_deliveries() {
    let mut dump = LogDump::new();
    let (t, _rx) = tenant("kp-tail").await;
    let ns = t.ns.name.clone();
    let api = OwnApi::start(&t.env, &t.client, &mut dump).await.unwrap();
    let viewer = tenant_token(&t.client, &ns, "viewer", Some("hookline-tenant-view"))
        .await
        .unwrap();
    for id in ["evt_t1", "evt_t2"] {
        t.produce(id, &event(id, "transaction.approved", json!({})))
            .await;
    }
    let path = format!("/api/v1/tenants/{ns}/deliveries?status=delivered");
    wait::until(WITHIN, "both deliveries in the log", || async {
        let v = api.get(&path, &viewer).await?;
        Ok((v["items"].as_array().map_or(0, Vec::len) == 2).then_some(()))
    })
    .await
    .unwrap();

    let base = api.base.as_str();
    let r = run(
        &t.env,
        &format!("tail orders -n {ns} --api-url {base} --token {viewer}"),
        None,
    )
    .await;
    assert_eq!(r.code, 0, "{r}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(lines[0].starts_with("TIME ") && lines.len() == 3, "{r}");
    for line in &lines[1..] {
        assert!(
            line.contains(" orders ")
                && line.contains(" delivered ")
                && line.contains(" 200 ")
                && line.contains("ms"),
            "{line}"
        );
    }
    assert!(
        r.stdout.contains("evt_t1") && r.stdout.contains("evt_t2"),
        "{r}"
    );
    let times: Vec<i64> = lines[1..]
        .iter()
        .map(|l| millis(l.split_whitespace().next().unwrap()))
        .collect();
    assert!(times[0] <= times[1], "oldest first: {r}");

    // No --token, no -n: the kubeconfig user's token and the context's namespace.
    let kc = kubeconfig_as(&t.env, &viewer, &ns);
    let r = run(
        &t.env,
        &format!("tail --kubeconfig {kc} --api-url {base} -o json"),
        None,
    )
    .await;
    assert_eq!(r.code, 0, "{r}");
    let ids: Vec<String> = r
        .stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["eventId"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 2, "{r}");

    // What is missing is said.
    let r = run(&t.env, &format!("tail -n {ns} --token {viewer}"), None).await;
    assert_eq!(r.code, 2, "{r}");
    assert!(
        r.stderr.contains("--api-url") && r.stderr.contains("HOOKLINE_API_URL"),
        "{r}"
    );
    let r = run(
        &t.env,
        &format!("tail -n {ns} --api-url {base} --token not-a-token"),
        None,
    )
    .await;
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("401"), "{r}");

    // Following: a new delivery shows up.
    let mut child = command(
        &t.env.kubeconfig,
        &format!("tail -f -n {ns} --api-url {base} --token {viewer} -o json"),
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = vec![next_id(&mut lines).await, next_id(&mut lines).await];
    seen.sort();
    assert_eq!(seen, ["evt_t1", "evt_t2"]);
    t.produce(
        "evt_t3",
        &event("evt_t3", "transaction.approved", json!({})),
    )
    .await;
    assert_eq!(next_id(&mut lines).await, "evt_t3");
    child.kill().await.unwrap();
}

/// The event id of the next line `tail -o json` prints.
async fn next_id(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> String {
    let line = tokio::time::timeout(WITHIN, lines.next_line())
        .await
        .expect("a line within the deadline")
        .unwrap()
        .expect("tail -f keeps running");
    let v: Value = serde_json::from_str(&line).unwrap();
    v["eventId"].as_str().unwrap().to_owned()
}

/// The raw HTTP/1.1 text of a recorded request, as a person would capture it.
fn raw(q: &Recorded, body: &[u8]) -> Vec<u8> {
    let mut out = format!("{} {} HTTP/1.1\r\n", q.method, q.path).into_bytes();
    for (k, v) in &q.headers {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_accepts_a_real_delivery_with_its_key_and_refuses_a_wrong_key_or_a_changed_body() {
    let _dump = LogDump::new();
    let (t, rx) = tenant("kp-verify").await;
    t.produce(
        "tx-1",
        &event("evt_v1", "transaction.approved", json!({"amount": 42})),
    )
    .await;
    let q = rx.wait_for("/orders", 1, WITHIN).await.unwrap().remove(0);
    let key = t.whsec("orders").await;
    let request = raw(&q, &q.body);

    let r = run(&t.env, &format!("verify --secret {key}"), Some(&request)).await;
    assert_eq!(r.code, 0, "{r}");
    assert!(
        r.stdout.starts_with("Verified: signature 1 of 1 (v1,"),
        "{r}"
    );
    assert!(r.stdout.contains("webhook-id:        evt_v1"), "{r}");

    let capture = json!({
        "headers": q.headers.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
        "body": String::from_utf8(q.body.to_vec()).unwrap(),
    });
    let wrong = Secret::generate().expose_whsec();
    let r = run(
        &t.env,
        &format!("verify --secret {wrong} --secret {key} -o json"),
        Some(capture.to_string().as_bytes()),
    )
    .await;
    assert_eq!(r.code, 0, "{r}");
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        (v["webhookId"].as_str(), v["secret"].as_u64()),
        (Some("evt_v1"), Some(2)),
        "{v}"
    );

    let r = run(&t.env, &format!("verify --secret {wrong}"), Some(&request)).await;
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("no signature matches"), "{r}");

    let changed = String::from_utf8(q.body.to_vec())
        .unwrap()
        .replace("42", "43");
    let r = run(
        &t.env,
        &format!("verify --secret {key}"),
        Some(&raw(&q, changed.as_bytes())),
    )
    .await;
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("body was changed"), "{r}");
}

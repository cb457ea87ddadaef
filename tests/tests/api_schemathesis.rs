//! The tenant API fuzzed against its own OpenAPI document with Schemathesis (PyPI, pinned in
//! `tests/python/schemathesis-requirements.txt`; configured by `tests/python/schemathesis.toml`,
//! which says which checks run and why any is off or relaxed for an operation).
//!
//! Flow: a tenant of the test's own with three Ready `Webhook`s pointing at a receiver on
//! loopback (`orders`, signing with a generated key; `own-key`, with a Secret of its own;
//! `tested`, with one test send done), one event delivered to `orders` and in the delivery log,
//! a `hookline-api` of the test's own and the token of a ServiceAccount bound to
//! `hookline-tenant-edit` and `hookline-publisher` → Schemathesis loads `/api/v1/openapi.json`
//! from that API and runs its coverage, fuzzing and stateful phases against every operation,
//! with `{tenant}` pinned to the tenant and `{name}`, `{eventId}` and `{id}` half the time real
//! ones → it must find no 5xx and no answer the document does not declare. Then the test checks
//! that the run got past authentication and RBAC (the lists answered 200, a publish 202) and
//! that every `Webhook` left points at the receiver.
//!
//! Bounds: at most 30 cases per operation and phase, and [`DEADLINE`],
//! after which Schemathesis is killed and the test fails. Only loopback: Schemathesis talks to
//! the API on 127.0.0.1, and every `spec.url` it sends that could be a real URL is the
//! receiver's (`tests/python/schemathesis_hooks.py`).
//!
//! A failure prints Schemathesis's report (each failure with a `curl` to reproduce it, tokens
//! filtered) and keeps a HAR of every request in the temp dir; the run's seed is printed, and
//! `HOOKLINE_FUZZ_SEED=<seed>` reruns the same cases (as far as the API's state allows). The
//! venv (`$HOOKLINE_CACHE/venv-schemathesis`) is made while the tenant is set up.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use hookline_core::signing;
use hookline_tests::api::{OwnApi, tenant_token};
use hookline_tests::receiver::Receiver;
use hookline_tests::tenant::Tenant;
use hookline_tests::{LogDump, events, python, random_suffix, wait};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

/// How long Schemathesis may run before it is killed; a warm run takes about a minute.
const DEADLINE: Duration = Duration::from_secs(180);

/// The event in the delivery log (also in the config's `events` dictionary).
const EVENT: &str = "evt-fuzz-1";

/// A directory of the test's own in the temp dir, where Schemathesis runs and writes its HAR
/// (so nothing lands in the checkout); removed when dropped, unless the test failed.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let dir = std::env::temp_dir().join(format!("hookline-schemathesis-{}", random_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The sum of `hookline_api_requests_total{code, method, route}` in the text `metrics`.
fn answered(metrics: &str, route: &str, method: &str, code: &str) -> u64 {
    let labels = format!("{{code=\"{code}\",method=\"{method}\",route=\"{route}\"}}");
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("hookline_api_requests_total"))
        .filter_map(|l| l.strip_prefix(labels.as_str()))
        .filter_map(|v| v.trim().parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_answer_the_openapi_document_does_not_declare() {
    let mut dump = LogDump::new();
    let venv = tokio::task::spawn_blocking(|| {
        python::venv_with(
            "venv-schemathesis",
            &python::script("schemathesis-requirements.txt"),
        )
    });
    let t = Tenant::create("apifuzz").await;
    let ns = t.ns.name.clone();
    let rx = Receiver::start().await.unwrap();
    // A test send answers 202 with a `Location` after a second, so both of its answers are
    // seen and the stateful phase can follow the `Location` to GET …/test/{id}.
    let api = OwnApi::start_with(&t.env, &t.client, &mut dump, &["--test-wait=1s"])
        .await
        .unwrap();
    let token = tenant_token(&t.client, &ns, "fuzzer", Some("hookline-tenant-edit"))
        .await
        .unwrap();
    // Also a publisher, so POST …/events and …/events:batch are tested past RBAC.
    let publisher: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "fuzzer-hookline-publisher"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "hookline-publisher"},
        "subjects": [{"kind": "ServiceAccount", "name": "fuzzer", "namespace": ns}],
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(t.client.clone(), &ns)
        .create(&PostParams::default(), &publisher)
        .await
        .unwrap();

    let key: Secret = serde_json::from_value(json!({
        "metadata": {"name": "own-key-secret"},
        "stringData": {"secret": signing::Secret::generate().expose_whsec()},
    }))
    .unwrap();
    Api::<Secret>::namespaced(t.client.clone(), &ns)
        .create(&PostParams::default(), &key)
        .await
        .unwrap();
    let urls = [rx.url("/orders"), rx.url("/own-key"), rx.url("/tested")];
    tokio::join!(
        t.webhook("orders", &urls[0], &["transaction.*"], json!({})),
        t.webhook(
            "own-key",
            &urls[1],
            &["transaction.*"],
            json!({"secretRef": {"name": "own-key-secret"}}),
        ),
        t.webhook("tested", &urls[2], &["transaction.*"], json!({})),
    );
    t.produce(
        "k",
        &events::event(EVENT, "transaction.approved", json!({"amount": 1})),
    )
    .await;
    wait::until(
        Duration::from_secs(120),
        "the event delivered, in the log",
        || async {
            let v = api
                .get(&format!("/api/v1/tenants/{ns}/deliveries/{EVENT}"), &token)
                .await?;
            Ok(v["deliveries"]
                .as_array()
                .is_some_and(|ds| ds.iter().any(|d| d["status"] == "delivered"))
                .then_some(()))
        },
    )
    .await
    .unwrap();

    // A test send of `tested`, done, for GET …/test/{id} to find.
    let tests = format!("/api/v1/tenants/{ns}/webhooks/tested/test");
    let (_, _, sent) = api
        .call("POST", &tests, Some(&token), None, &[])
        .await
        .unwrap();
    let test_id = sent["id"].as_str().expect("a test id").to_owned();
    wait::until(Duration::from_secs(60), "the test send done", || async {
        let v = api.get(&format!("{tests}/{test_id}"), &token).await;
        Ok(v.ok().filter(|v| v["state"] == "done"))
    })
    .await
    .unwrap();

    let python = venv.await.unwrap().unwrap();
    let scratch = Scratch::new();
    // The config, with the dictionary only this run knows.
    let config = scratch.0.join("schemathesis.toml");
    let mut text = std::fs::read_to_string(python::script("schemathesis.toml")).unwrap();
    text.push_str(&format!(
        "\n[dictionaries.tests]\nvalues = [\"{test_id}\"]\n"
    ));
    std::fs::write(&config, text).unwrap();
    let out_path = scratch.0.join("schemathesis.out");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut cmd = tokio::process::Command::new(python.with_file_name("schemathesis"));
    cmd.arg("--config-file")
        .arg(&config)
        .args(["--no-color", "run"])
        .arg(format!("{}/api/v1/openapi.json", api.base))
        .args(["--report", "har", "--report-dir"])
        .arg(&scratch.0);
    if let Ok(seed) = std::env::var("HOOKLINE_FUZZ_SEED") {
        cmd.args(["--seed", &seed]);
    }
    let started = Instant::now();
    let mut child = cmd
        .current_dir(&scratch.0)
        .env("HOOKLINE_FUZZ_TENANT", &ns)
        .env("HOOKLINE_FUZZ_TOKEN", &token)
        .env("HOOKLINE_FUZZ_URL", rx.url("/fuzz"))
        .env(
            "HOOKLINE_FUZZ_HOOKS",
            python::script("schemathesis_hooks.py"),
        )
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let status = tokio::time::timeout(DEADLINE, child.wait()).await;
    println!(
        "{}\nschemathesis ran for {:.0?}; its files are in {}",
        std::fs::read_to_string(&out_path).unwrap_or_default(),
        started.elapsed(),
        scratch.0.display()
    );
    let status = status
        .unwrap_or_else(|_| panic!("schemathesis did not finish within {DEADLINE:?}"))
        .unwrap();
    assert!(
        status.success(),
        "schemathesis found problems ({status}); its report is above"
    );

    // The run got past authentication and RBAC.
    let metrics = hookline_tests::http_get(&api.ops, "/metrics").unwrap();
    let answers: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("hookline_api_requests_total{"))
        .collect();
    println!("what the API answered:\n{}", answers.join("\n"));
    for (method, route, code) in [
        ("GET", "/api/v1/tenants/{tenant}/webhooks", "200"),
        ("GET", "/api/v1/tenants/{tenant}/webhooks/{name}", "200"),
        ("GET", "/api/v1/tenants/{tenant}/deliveries", "200"),
        ("GET", "/api/v1/tenants/{tenant}/stats", "200"),
        ("POST", "/api/v1/tenants/{tenant}/events", "202"),
    ] {
        assert!(
            answered(&metrics, route, method, code) > 0,
            "no {code} for {method} {route}: the run never got past the 4xx"
        );
    }
    // Loopback only: whatever the run created or changed points at the receiver.
    for w in t.api.list(&Default::default()).await.unwrap() {
        assert!(
            w.spec.url.starts_with(&rx.url("/")),
            "{:?} points at {}",
            w.metadata.name,
            w.spec.url
        );
    }
}

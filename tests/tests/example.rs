//! The fraud-decisions example as a user runs it (`examples/fraud-decisions/`): its Webhooks
//! applied with kubectl, its Python receiver verifying every delivery with the official
//! `standardwebhooks` library, its producer publishing keyed decisions — and then each
//! receiver path got exactly the events its Webhook subscribes to, each verified, and the
//! counts in `kubectl get webhooks` match what the receiver verified.

use std::{
    collections::HashMap,
    process::{Child, Command, Stdio},
    time::Duration,
};

use hookline_core::conditions::types;
use hookline_crds::Webhook;
use hookline_tests::{Env, LogDump, TestNamespace, install, python, repo_root, wait};
use kube::Api;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn fraud_decisions_example_delivers_verified_events_to_each_receiver_and_counts_match() {
    let mut dump = LogDump::new();
    let env = Env::get().unwrap();
    let client = env.client().await.unwrap();
    install::controller(&env, &client).await.unwrap();
    let py = python::venv().unwrap();
    let ex = repo_root().join("examples/fraud-decisions");
    let ns = TestNamespace::create(&env, &client, "example")
        .await
        .unwrap();

    // The example's Webhooks, pointed at a local receiver and put in this test's namespace.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let manifest = std::fs::read_to_string(ex.join("webhooks.yaml"))
        .unwrap()
        .replace("RECEIVER", &format!("http://127.0.0.1:{port}"))
        .replace("namespace: acme-fraud", &format!("namespace: {}", ns.name));
    let (ok, _, err) = env.kubectl_stdin(&["apply", "-f", "-"], &manifest).unwrap();
    assert!(ok, "{err}");

    let api = Api::<Webhook>::namespaced(client.clone(), &ns.name);
    let work = std::env::temp_dir().join(format!("{}-example", ns.name));
    std::fs::create_dir_all(&work).unwrap();
    let mut secret_args = Vec::new();
    for (path, wh) in [
        ("all", "all-decisions"),
        ("rejected", "rejections"),
        ("review", "reviews"),
    ] {
        wait::condition(&api, wh, types::READY, Duration::from_secs(120))
            .await
            .unwrap();
        let key = env
            .kubectl(&[
                "-n",
                &ns.name,
                "get",
                "secret",
                &format!("{wh}-signing"),
                "-o",
                "jsonpath={.data.secret}",
            ])
            .unwrap();
        let file = work.join(format!("{path}.secret"));
        std::fs::write(&file, base64_decode(&key)).unwrap();
        secret_args.push(format!("{path}={}", file.display()));
    }

    let log = work.join("received.jsonl");
    let out = work.join("receiver.out");
    dump.extra.push(out.clone());
    let mut cmd = Command::new(&py);
    cmd.arg(ex.join("receiver.py"))
        .args(["--port", &port.to_string(), "--log"])
        .arg(&log);
    for s in &secret_args {
        cmd.args(["--secret-file", s]);
    }
    let _receiver = Killed(
        cmd.stdout(Stdio::from(std::fs::File::create(&out).unwrap()))
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let produced = Command::new(&py)
        .arg(ex.join("producer.py"))
        .args([
            "--bootstrap",
            &env.kafka_bootstrap,
            "--namespace",
            &ns.name,
            "--count",
            "40",
            "--rate",
            "200",
            "--seed",
            "11",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&produced.stdout);
    assert!(
        produced.status.success(),
        "producer failed: {stdout}{}",
        String::from_utf8_lossy(&produced.stderr)
    );
    let sent: usize = stdout
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("producer prints its count");

    // Every event reaches /all, verified; the receiver writes only verified, de-duplicated events.
    let lines = wait::until(
        Duration::from_secs(120),
        "every event verified on /all",
        || async {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<serde_json::Value> = text
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            let all = lines.iter().filter(|l| l["path"] == "all").count();
            Ok((all >= sent).then_some(lines))
        },
    )
    .await
    .unwrap();
    let mut per_path: HashMap<String, Vec<String>> = HashMap::new();
    for l in &lines {
        per_path
            .entry(l["path"].as_str().unwrap().to_owned())
            .or_default()
            .push(l["event"]["type"].as_str().unwrap().to_owned());
    }
    assert_eq!(per_path["all"].len(), sent);
    let rejected_sent = per_path["all"]
        .iter()
        .filter(|t| *t == "transaction.rejected")
        .count();
    let review_sent = per_path["all"]
        .iter()
        .filter(|t| *t == "transaction.review")
        .count();
    assert!(
        rejected_sent > 0 && review_sent > 0,
        "the seeded stream has rejections and reviews"
    );

    // Each narrow Webhook got exactly its type, all of it.
    wait::until(
        Duration::from_secs(60),
        "narrow receivers complete",
        || async {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let n = |p: &str| {
                text.lines()
                    .filter(|l| l.contains(&format!("\"path\": \"{p}\"")))
                    .count()
            };
            Ok((n("rejected") >= rejected_sent && n("review") >= review_sent).then_some(()))
        },
    )
    .await
    .unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let types_at = |p: &str| {
        lines
            .iter()
            .filter(|l| l["path"] == p)
            .map(|l| l["event"]["type"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert!(
        types_at("rejected")
            .iter()
            .all(|t| t == "transaction.rejected")
            && types_at("rejected").len() == rejected_sent
    );
    assert!(
        types_at("review").iter().all(|t| t == "transaction.review")
            && types_at("review").len() == review_sent
    );
    let refused = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(
        !refused.contains("REFUSED"),
        "a delivery failed verification:\n{refused}"
    );

    // kubectl get webhooks agrees with what the receiver verified.
    for (wh, want) in [
        ("all-decisions", sent),
        ("rejections", rejected_sent),
        ("reviews", review_sent),
    ] {
        wait::until(
            Duration::from_secs(30),
            &format!("{wh} delivered = {want}"),
            || async {
                let w = api.get(wh).await?;
                Ok((w.status.and_then(|s| s.delivered) == Some(want as i64)).then_some(()))
            },
        )
        .await
        .unwrap();
    }
    let table = env.kubectl(&["get", "webhooks", "-n", &ns.name]).unwrap();
    assert!(
        table
            .lines()
            .skip(1)
            .all(|l| l.split_whitespace().nth(1) == Some("True")),
        "{table}"
    );
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .expect("Secret data is base64")
}

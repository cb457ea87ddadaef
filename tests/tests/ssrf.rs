//! The address guard and the record-size bound, end to end, with loopback targets only.
//!
//! The test platform allow-lists 127.0.0.0/8, so this test runs a `hookline-dispatcher` of its
//! own — the very binary the pod runner runs — on topics of its own and WITHOUT loopback in its
//! allow-list (only 127.0.0.2/32, for the redirect case). Then:
//! - a URL at 127.0.0.1 and a URL at `localhost` (a name resolving to loopback) are refused at
//!   connect time and dead-lettered `address_refused`; the receiver never sees a request;
//! - a receiver on the allowed 127.0.0.2 answering `302 → http://127.0.0.1/...` is not
//!   followed: dead-lettered `redirect_not_followed`, and 127.0.0.1 never sees a request;
//! - a record over `--max-record-bytes` is dead-lettered `too_large`, and the event after it
//!   is still handled.
//!
//! No traffic leaves loopback: the refusal of private and public ranges is proven by the unit
//! tests of `hookline_core::ssrf`.

use std::time::Duration;

use hookline_core::conditions::types;
use hookline_crds::Webhook;
use hookline_tests::{
    Env, LogDump, TestNamespace,
    dispatcher::{Dispatcher, OwnTopics},
    events, install, kafka,
    receiver::Receiver,
    wait,
};
use kube::{Api, api::PostParams};
use serde_json::json;
use tokio::{io::AsyncWriteExt, net::TcpListener};

/// A one-trick server on 127.0.0.2: every request is answered `302 Found` to `location`.
async fn redirector(location: String) -> u16 {
    let listener = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            let location = location.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 65536];
                // Read the request head (and whatever body arrived with it), then answer.
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    use tokio::io::AsyncReadExt;
                    s.read(&mut buf).await
                })
                .await;
                let resp = format!(
                    "HTTP/1.1 302 Found\r\nlocation: {location}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    port
}

/// Event `id` of type `a.b`, which every `Webhook` here subscribes to.
fn event(id: &str) -> Vec<u8> {
    events::event(id, "a.b", json!({"n": 1}))
}

#[tokio::test]
async fn loopback_named_and_redirected_targets_are_refused_without_an_allow_list_entry() {
    let mut dump = LogDump::new();
    let env = Env::get().unwrap();
    let client = env.client().await.unwrap();
    install::controller(&env, &client).await.unwrap();
    let ns = TestNamespace::create(&env, &client, "ssrf").await.unwrap();

    let rx = Receiver::start().await.unwrap();
    let port = rx.addr().port();
    let redirect_port = redirector(format!("http://127.0.0.1:{port}/after-redirect")).await;
    let api = Api::<Webhook>::namespaced(client.clone(), &ns.name);
    for (name, url) in [
        ("direct", format!("http://127.0.0.1:{port}/direct")),
        ("named", format!("http://localhost:{port}/named")),
        ("redirect", format!("http://127.0.0.2:{redirect_port}/r")),
    ] {
        let wh: Webhook = serde_json::from_value(json!({"apiVersion": "hookline.dev/v1alpha1", "kind": "Webhook",
            "metadata": {"name": name}, "spec": {"url": url, "eventTypes": ["a.b"], "delivery": {"retry": {"maxAttempts": 1}}}}))
        .unwrap();
        api.create(&PostParams::default(), &wh).await.unwrap();
    }
    for name in ["direct", "named", "redirect"] {
        wait::condition(&api, name, types::SECRET_READY, Duration::from_secs(60))
            .await
            .unwrap();
    }

    let topics = OwnTopics::create(&env, "ssrf", 1).await.unwrap();
    let _dispatcher = Dispatcher::start(
        &env,
        &ns.name,
        &topics,
        &["--allow-cidr=127.0.0.2/32", "--max-record-bytes=4096"],
        &mut dump,
    )
    .unwrap();
    let (events, dlq) = (&topics.events, &topics.dead_letter);

    let producer = kafka::producer(&env).unwrap();
    kafka::produce(&producer, events, Some("k"), &event("evt_first"), &[])
        .await
        .unwrap();
    let mut big = event("evt_big");
    big.extend(std::iter::repeat_n(b' ', 5000)); // valid JSON, but over the 4 KiB bound
    kafka::produce(&producer, events, Some("k2"), &big, &[])
        .await
        .unwrap();
    kafka::produce(&producer, events, Some("k3"), &event("evt_after"), &[])
        .await
        .unwrap();

    // 1 oversized record + 2 events × 3 refused deliveries.
    let dead = kafka::consume(&env, dlq, 7, Duration::from_secs(120))
        .await
        .unwrap();
    let mut reasons: Vec<(String, String)> = dead
        .iter()
        .map(|r| {
            (
                r.header("hookline-webhook").unwrap_or("-").to_owned(),
                r.header("hookline-reason").unwrap_or("?").to_owned(),
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            ("-", "too_large"),
            ("direct", "address_refused"),
            ("direct", "address_refused"),
            ("named", "address_refused"),
            ("named", "address_refused"),
            ("redirect", "redirect_not_followed"),
            ("redirect", "redirect_not_followed"),
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned())),
        "dead letters: {reasons:?}"
    );
    assert!(
        dead.iter().any(|r| r.value.as_deref() == Some(&big[..])),
        "the oversized record is kept as it was"
    );

    // Nothing ever reached 127.0.0.1: not directly, not by name, not through the redirect.
    assert!(
        rx.all_requests().is_empty(),
        "loopback receiver was reached: {:?}",
        rx.all_requests()
            .iter()
            .map(|r| &r.path)
            .collect::<Vec<_>>()
    );
}

//! Interoperability with the receivers customers actually write: deliveries made by the real
//! dispatcher (started by the controller) are checked with the official Standard Webhooks library
//! from PyPI (`standardwebhooks`, the one `examples/fraud-decisions/receiver.py` uses), not with
//! Hookline's own signing code. Every delivery verifies with the `whsec_` key of the Webhook's
//! signing Secret, a delivery whose body was changed after signing is refused, and during a key
//! rotation a receiver holding either the old or the new key accepts the deliveries.
//!
//! The harness receiver records each request (headers and body bytes); the test writes them as JSON
//! lines and runs `tests/python/verify_standard_webhooks.py` with the venv's python
//! (`hookline_tests::python`), which reports per request whether the library verified it.

use std::{collections::BTreeSet, time::Duration};

use hookline_tests::{
    LogDump, install, python,
    receiver::Receiver,
    tenant::{Tenant, WITHIN},
    verify::{Scratch, jsonl, verify_with_library},
    wait,
};
use serde_json::json;

/// An event whose data has what trips up byte-exact signing: non-ASCII text, escapes, an integer
/// beyond f64 precision, a float, nesting.
fn event(i: usize) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": format!("evt_swh_{i}"),
        "type": if i.is_multiple_of(2) { "transaction.approved" } else { "transaction.review" },
        "timestamp": "2026-11-23T12:00:00Z",
        "data": {
            "transactionId": format!("tx-{i}"),
            "decision": "approve",
            "amount": 12_345_678_901_234_567_890_u64,
            "score": 0.1 + i as f64 / 100.0,
            "merchant": "Café Zürich — Straße ✓ 東京 🍣",
            "note": "line\nbreak, \"quoted\", back\\slash, </script>, tab\t",
            "rules": [{"name": "velocity", "hit": i.is_multiple_of(3)}, {"name": "geo", "hit": false}],
            "i": i,
        }
    }))
    .unwrap()
}

/// The venv, then a tenant `hl-<prefix>-…` whose `Webhook` `fraud` (`transaction.*`, with a
/// custom header) delivers to a fresh receiver at `/fraud`; the log dump comes first, so it
/// covers the rest of the test.
async fn fraud_webhook(prefix: &str) -> (LogDump, Tenant, Receiver) {
    // The venv first: a missing Python or PyPI fails here, clearly, before anything is created.
    tokio::task::spawn_blocking(python::venv)
        .await
        .unwrap()
        .expect("a venv with the PyPI standardwebhooks library");
    let dump = LogDump::new();
    let t = Tenant::create(prefix).await;
    let rx = Receiver::start().await.unwrap();
    t.webhook(
        "fraud",
        &rx.url("/fraud"),
        &["transaction.*"],
        json!({"headers": {"x-team": "risk"}}),
    )
    .await;
    (dump, t, rx)
}

#[tokio::test]
async fn the_standardwebhooks_library_verifies_every_delivery_and_refuses_a_tampered_body() {
    const N: usize = 20;
    let (_dump, t, rx) = fraud_webhook("swh").await;
    let whsec = t.whsec("fraud").await;

    for i in 0..N {
        t.produce(&format!("tx-{}", i % 4), &event(i)).await;
    }
    rx.wait_for("/fraud", N, WITHIN).await.unwrap();
    // Let a late repeat (at least once) land too: it must verify like the rest.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = rx.requests("/fraud");
    let ids: BTreeSet<String> = got
        .iter()
        .map(|r| r.header("webhook-id").unwrap_or_default().to_owned())
        .collect();
    let want: BTreeSet<String> = (0..N).map(|i| format!("evt_swh_{i}")).collect();
    assert_eq!(ids, want, "every event was delivered");

    let scratch = Scratch::new();
    let key = scratch.write("fraud.secret", &whsec);

    // Every delivery, as received, verifies with the library and the Secret's key.
    let requests = scratch.write("requests.jsonl", &jsonl(&got));
    let verdicts = verify_with_library(requests.clone(), vec![key.clone()]).await;
    assert_eq!(verdicts.len(), got.len(), "one verdict per request");
    for (v, r) in verdicts.iter().zip(&got) {
        assert!(
            v.verified,
            "the library refused delivery {:?}: {:?}\nheaders: {:?}\nbody: {}",
            v.id,
            v.error,
            r.headers,
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(v.id.as_deref(), r.header("webhook-id"));
        let want_type = r.json().unwrap()["type"].as_str().unwrap().to_owned();
        assert_eq!(
            v.type_.as_deref(),
            Some(want_type.as_str()),
            "the library hands the parsed payload back"
        );
    }
    eprintln!(
        "standardwebhooks verified {} deliveries of {N} events",
        verdicts.len()
    );

    // The same deliveries with one body changed after signing (same length, still valid JSON):
    // the library refuses exactly that one.
    const TAMPERED: usize = 7;
    let mut tampered = got.clone();
    let body = tampered[TAMPERED].body.to_vec();
    let at = body
        .windows(b"\"approve\"".len())
        .position(|w| w == b"\"approve\"")
        .expect("the decision in the body");
    let mut changed = body.clone();
    changed[at..at + b"\"approve\"".len()].copy_from_slice(b"\"decline\"");
    assert!(serde_json::from_slice::<serde_json::Value>(&changed).is_ok());
    tampered[TAMPERED].body = changed.into();
    let verdicts = verify_with_library(
        scratch.write("tampered.jsonl", &jsonl(&tampered)),
        vec![key.clone()],
    )
    .await;
    assert_eq!(verdicts.len(), tampered.len());
    for v in &verdicts {
        if v.index == TAMPERED {
            assert!(!v.verified, "the tampered body was accepted: {v:?}");
            assert!(
                v.error
                    .as_deref()
                    .is_some_and(|e| e.contains("No matching signature")),
                "refused for its signature, not for anything else: {v:?}"
            );
        } else {
            assert!(v.verified, "an untouched delivery was refused: {v:?}");
        }
    }

    // And a key that is not the Webhook's verifies nothing.
    let other = scratch.write(
        "other.secret",
        &hookline_core::signing::Secret::generate().expose_whsec(),
    );
    let verdicts = verify_with_library(requests, vec![other]).await;
    assert!(
        verdicts.iter().all(|v| !v.verified),
        "another key must not verify: {verdicts:?}"
    );
}

#[tokio::test]
async fn during_a_key_rotation_a_receiver_with_either_key_verifies_the_deliveries() {
    let (_dump, t, rx) = fraud_webhook("swh-rot").await;
    let old = t.whsec("fraud").await;

    t.rotate_key("fraud", "r1", 2).await;
    let new = t.whsec("fraud").await;
    assert_ne!(old, new, "the rotation made a new key");
    // The dispatcher picks the new key up from the Secret within seconds: send events until one
    // arrives with two signatures (old and new; the overlap is 20 s), then judge that one.
    let started = std::time::Instant::now();
    let mut n = 0;
    let got = loop {
        n += 1;
        let id = format!("evt_swh_{n}");
        t.produce("tx-1", &event(n)).await;
        let r = wait::until(WITHIN, &format!("{id} delivered"), || async {
            Ok(rx
                .requests("/fraud")
                .into_iter()
                .find(|r| r.header("webhook-id") == Some(id.as_str())))
        })
        .await
        .unwrap();
        let signatures = r.header("webhook-signature").unwrap_or_default();
        if signatures.split(' ').count() == 2 {
            break r;
        }
        assert!(
            started.elapsed() < install::ROTATION_OVERLAP,
            "no delivery signed with both keys within the overlap; last: {signatures:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    let scratch = Scratch::new();
    let requests = scratch.write("rotated.jsonl", &jsonl(std::slice::from_ref(&got)));
    for (name, key) in [("old", &old), ("new", &new)] {
        let file = scratch.write(&format!("{name}.secret"), key);
        let verdicts = verify_with_library(requests.clone(), vec![file]).await;
        assert_eq!(verdicts.len(), 1);
        assert!(
            verdicts[0].verified,
            "a receiver holding only the {name} key refused a delivery made during the overlap: {:?}; signature header {:?}",
            verdicts[0],
            got.header("webhook-signature")
        );
    }
}

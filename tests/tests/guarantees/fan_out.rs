//! Fan-out by event type: one key's events, produced in order, flow to three `Webhook`s whose
//! type patterns overlap (exact names, `*` within and across dots, a catch-all); each receives
//! exactly the events it matches, once each and in produce order, signed with its own key, and
//! the status counters agree with the receiver.

use std::collections::{BTreeSet, HashMap};

use hookline_core::signing;
use hookline_tests::{
    LogDump,
    events::{event, verify},
    receiver::Receiver,
    tenant::{Tenant, WITHIN, status_count},
    wait,
};
use serde_json::json;

use crate::{id, ids};

#[tokio::test]
async fn fan_out_delivers_exactly_the_matching_events_to_each_of_three_webhooks() {
    let _dump = LogDump::new();
    let t = Tenant::create("grt-fanout").await;
    let rx = Receiver::start().await.unwrap();
    t.webhook(
        "exact",
        &rx.url("/exact"),
        &["order.created", "refund.issued", "batch.failed"],
        json!({}),
    )
    .await;
    t.webhook(
        "glob",
        &rx.url("/glob"),
        &["payment.*", "*.failed"],
        json!({}),
    )
    .await;
    t.webhook("all", &rx.url("/all"), &["*"], json!({})).await;
    let keys: HashMap<&str, signing::Secret> = [
        ("/exact", t.signing_key("exact").await),
        ("/glob", t.signing_key("glob").await),
        ("/all", t.signing_key("all").await),
    ]
    .into();

    // (id, type, which paths subscribe to it). One key, so each Webhook gets its events in
    // produce order and the last one (matching all three) closes every path's list.
    let events: &[(&str, &str, &[&str])] = &[
        ("e01", "order.created", &["/exact", "/all"]),
        ("e02", "order.shipped", &["/all"]),
        ("e03", "payment.captured", &["/glob", "/all"]),
        ("e04", "payment.card.declined", &["/glob", "/all"]), // `*` crosses dots
        ("e05", "refund.issued", &["/exact", "/all"]),
        ("e06", "payment", &["/all"]), // `payment.*` needs something after the dot
        ("e07", "order.failed", &["/glob", "/all"]),
        ("e08", "Order.created", &["/all"]), // exact names are case-sensitive
        ("e09", "order.created.v2", &["/all"]), // an exact name is not a prefix
        ("e10", "payment.failed", &["/glob", "/all"]), // two patterns match: delivered once
        ("e11", "order.created", &["/exact", "/all"]),
        ("e12", "batch.failed", &["/exact", "/glob", "/all"]),
    ];
    let records: Vec<(String, Vec<u8>)> = events
        .iter()
        .map(|(id, ty, _)| ("fanout".to_owned(), event(id, ty, json!({"id": id}))))
        .collect();
    t.produce_in_order(&records).await;

    for path in ["/exact", "/glob", "/all"] {
        let want: Vec<&str> = events
            .iter()
            .filter(|(_, _, to)| to.contains(&path))
            .map(|(id, _, _)| *id)
            .collect();
        wait::until(WITHIN, &format!("e12 at {path}"), || async {
            Ok(ids(&rx.requests(path)).contains(&"e12").then_some(()))
        })
        .await
        .unwrap();
        let got = rx.requests(path);
        assert_eq!(
            ids(&got),
            want,
            "{path} received exactly its events, once each, in produce order"
        );
        for (r, (_, ty, _)) in got
            .iter()
            .zip(events.iter().filter(|(_, _, to)| to.contains(&path)))
        {
            assert_eq!(r.json().unwrap()["type"], *ty);
            assert_eq!(r.header("hookline-attempt"), Some("1"));
            verify(&keys[path], r);
        }
        // Each Webhook signs with its own key.
        let other = if path == "/all" { "/exact" } else { "/all" };
        let sig = got[0].header("webhook-signature").unwrap();
        let ts: i64 = got[0].header("webhook-timestamp").unwrap().parse().unwrap();
        assert!(
            signing::verify(
                std::slice::from_ref(&keys[other]),
                id(&got[0]),
                ts,
                &got[0].body,
                sig
            )
            .is_err(),
            "{path}'s delivery does not verify with {other}'s key"
        );
    }
    let paths: BTreeSet<String> = rx.all_requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        ["/all", "/exact", "/glob"].map(String::from).into(),
        "nothing went anywhere else"
    );

    // The status counts agree with the receiver.
    for (name, n) in [("exact", 4), ("glob", 5), ("all", 12)] {
        assert_eq!(
            status_count(&t.wait_count(name, "delivered", n).await, "delivered"),
            n,
            "{name}"
        );
    }
    assert_eq!(rx.all_requests().len(), 4 + 5 + 12, "no late extras");
}

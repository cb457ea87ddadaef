//! Retries as a receiver sees them: a 503 answered three times is delivered on the fourth
//! attempt with the same `webhook-id`, body and signature key and increasing `hookline-attempt`,
//! each retry no sooner than the default schedule's jitter floor; a 429's `Retry-After` is
//! honoured when longer than the schedule and never lets a retry come sooner than it.

use std::time::Duration;

use hookline_core::retry::RetryPolicy;
use hookline_tests::{
    LogDump,
    events::{event, verify},
    receiver::{Behavior, Receiver, Recorded},
    tenant::{Tenant, WITHIN},
};
use serde_json::json;

use crate::ids;

fn attempt(r: &Recorded) -> u32 {
    r.header("hookline-attempt")
        .expect("hookline-attempt")
        .parse()
        .unwrap()
}

fn gap(earlier: &Recorded, later: &Recorded) -> Duration {
    later
        .at
        .duration_since(earlier.at)
        .expect("arrivals are in order")
}

/// What the timer and the `hookline-due` milliseconds may round away.
const CLOCK_SLACK: Duration = Duration::from_millis(50);

#[tokio::test]
async fn a_503_three_times_then_200_is_delivered_on_the_fourth_attempt_with_the_same_webhook_id() {
    let _dump = LogDump::new();
    let t = Tenant::create("grt-503").await;
    let rx = Receiver::start().await.unwrap();
    rx.program_script(
        "/flaky",
        vec![Behavior::status(503); 3],
        Behavior::status(200),
    );
    t.webhook("flaky", &rx.url("/flaky"), &["transaction.*"], json!({}))
        .await;
    let key = t.signing_key("flaky").await;

    t.produce_in_order(&[(
        "tx-1".into(),
        event("evt_503", "transaction.approved", json!({"amount": 10})),
    )])
    .await;
    let got = rx.wait_for("/flaky", 4, WITHIN).await.unwrap();
    t.wait_count("flaky", "delivered", 1).await;
    let got_after = rx.requests("/flaky");
    assert_eq!(got_after.len(), 4, "nothing more after the 200");

    assert_eq!(
        ids(&got),
        ["evt_503"; 4],
        "the same webhook-id on every attempt"
    );
    assert_eq!(
        got.iter().map(attempt).collect::<Vec<_>>(),
        [1, 2, 3, 4],
        "hookline-attempt counts the attempts"
    );
    assert_eq!(
        got.iter().map(|r| r.status).collect::<Vec<_>>(),
        [503, 503, 503, 200]
    );
    for r in &got {
        assert_eq!(r.body, got[0].body, "the same body on every attempt");
        verify(&key, r);
    }
    // Each retry waits at least the jitter's floor of the default exponential schedule.
    let policy = RetryPolicy::default();
    for n in 1..4u32 {
        let (earlier, later) = (&got[n as usize - 1], &got[n as usize]);
        let floor = policy.jitter.floor(policy.backoff(n));
        let waited = gap(earlier, later);
        assert!(
            waited + CLOCK_SLACK >= floor,
            "attempt {} came {waited:?} after attempt {n}; the schedule allows no less than {floor:?}",
            n + 1
        );
    }
    let ts: Vec<i64> = got
        .iter()
        .map(|r| r.header("webhook-timestamp").unwrap().parse().unwrap())
        .collect();
    assert!(
        ts.windows(2).all(|w| w[0] <= w[1]),
        "each attempt carries its own timestamp: {ts:?}"
    );
    let wh = t.api.get("flaky").await.unwrap();
    assert_eq!(
        wh.status.unwrap().failed.unwrap_or(0),
        0,
        "not dead-lettered"
    );
}

#[tokio::test]
async fn a_429_with_retry_after_is_retried_no_sooner_than_asked_and_never_sooner_than_the_schedule()
{
    let _dump = LogDump::new();
    let t = Tenant::create("grt-429").await;
    let rx = Receiver::start().await.unwrap();
    let busy = |after: &str| Behavior {
        status: 429,
        retry_after: Some(after.to_owned()),
        ..Behavior::default()
    };
    // Asks for 3 s: longer than the first backoff (at most 1 s), so it is what counts.
    rx.program_script("/busy", vec![busy("3")], Behavior::status(200));
    // Asks for 0 s twice: shorter than the backoff, which then applies (no hammering).
    rx.program_script("/eager", vec![busy("0"), busy("0")], Behavior::status(200));
    t.webhook("busy", &rx.url("/busy"), &["transaction.*"], json!({}))
        .await;
    t.webhook("eager", &rx.url("/eager"), &["transaction.*"], json!({}))
        .await;

    t.produce_in_order(&[(
        "tx-1".into(),
        event("evt_429", "transaction.approved", json!({})),
    )])
    .await;
    let b = rx.wait_for("/busy", 2, WITHIN).await.unwrap();
    let e = rx.wait_for("/eager", 3, WITHIN).await.unwrap();
    t.wait_count("busy", "delivered", 1).await;
    t.wait_count("eager", "delivered", 1).await;

    let b = &b[..2];
    assert_eq!(ids(b), ["evt_429"; 2]);
    assert_eq!(b.iter().map(attempt).collect::<Vec<_>>(), [1, 2]);
    let waited = gap(&b[0], &b[1]);
    assert!(
        waited + CLOCK_SLACK >= Duration::from_secs(3),
        "the retry after `429, Retry-After: 3` came after {waited:?}"
    );

    let e = &e[..3];
    assert_eq!(ids(e), ["evt_429"; 3]);
    assert_eq!(e.iter().map(attempt).collect::<Vec<_>>(), [1, 2, 3]);
    let policy = RetryPolicy::default();
    for n in 1..3u32 {
        let floor = policy.jitter.floor(policy.backoff(n));
        let waited = gap(&e[n as usize - 1], &e[n as usize]);
        assert!(
            waited + CLOCK_SLACK >= floor,
            "`Retry-After: 0` brought attempt {} {waited:?} after attempt {n}, below the schedule's {floor:?}",
            n + 1
        );
    }
    assert_eq!(rx.requests("/busy").len(), 2);
    assert_eq!(rx.requests("/eager").len(), 3);
}

use std::path::PathBuf;

use hookline_core::retry_topics::AttemptRecord;

use super::*;
use crate::store::Ingested;

fn temp_store() -> (SqliteStore, PathBuf) {
    let dir = std::env::temp_dir().join(format!("hookline-api-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("log.db");
    (SqliteStore::open(&path).unwrap(), path)
}

const TOPIC: &str = "hookline.acme.attempts";

fn rec(event: &str, webhook: &str, attempt: u32, outcome: &str, second: i64) -> AttemptRecord {
    AttemptRecord {
        event_id: event.into(),
        event_type: "transaction.approved".into(),
        key: Some(format!("k-{event}")),
        webhook: webhook.into(),
        attempt,
        sent: true,
        status: Some(if outcome == "delivered" { 200 } else { 503 }),
        latency_ms: 20,
        outcome: outcome.into(),
        reason: (outcome != "delivered").then(|| "http_5xx".into()),
        error: None,
        next_attempt_at: (outcome == "retry").then(|| rfc3339((second + 5) * 1000)),
        dead_letter_reason: (outcome == "dead_letter").then(|| "retries_exhausted".into()),
        time: rfc3339(second * 1000),
        replay: None,
    }
}

fn batch(records: Vec<(i64, AttemptRecord)>) -> Batch {
    let next = records.iter().map(|(o, _)| o + 1).max().unwrap_or(0);
    Batch {
        records: records
            .into_iter()
            .map(|(offset, record)| Ingested {
                tenant: "acme".into(),
                topic: TOPIC.into(),
                partition: 0,
                offset,
                record,
            })
            .collect(),
        positions: vec![Position {
            topic: TOPIC.into(),
            partition: 0,
            next_offset: next,
        }],
    }
}

#[test]
fn a_batch_applied_twice_is_counted_once_and_the_position_is_kept() {
    let (s, _) = temp_store();
    let b = batch(vec![
        (0, rec("e1", "w", 1, "retry", 100)),
        (1, rec("e1", "w", 2, "delivered", 105)),
    ]);
    s.apply(&b).unwrap();
    s.apply(&b).unwrap();
    let d = s.event("acme", "e1").unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].attempt_log.len(), 2);
    assert_eq!(d[0].delivery.status, Status::Delivered);
    assert_eq!(d[0].delivery.attempts, 2);
    assert_eq!(s.positions().unwrap()[0].next_offset, 2);
    let st = s.stats("acme", None, 0, 3_600_000, 3_600_000).unwrap();
    assert_eq!(st.total.delivered, 1);
    assert_eq!(st.total.retrying, 1);
}

#[test]
fn an_event_shows_each_webhook_with_its_attempts_in_order_and_the_dead_letter_reason() {
    let (s, _) = temp_store();
    s.apply(&batch(vec![
        (0, rec("e1", "a", 1, "retry", 100)),
        (1, rec("e1", "b", 1, "delivered", 100)),
        (2, rec("e1", "a", 2, "retry", 105)),
        (3, rec("e1", "a", 3, "dead_letter", 115)),
        (4, rec("e2", "a", 1, "delivered", 120)),
    ]))
    .unwrap();
    let d = s.event("acme", "e1").unwrap();
    assert_eq!(d.len(), 2);
    let a = &d[0];
    assert_eq!(a.delivery.webhook, "a");
    assert_eq!(a.delivery.status, Status::DeadLettered);
    assert_eq!(
        a.delivery.dead_letter_reason.as_deref(),
        Some("retries_exhausted")
    );
    let numbers: Vec<u32> = a.attempt_log.iter().map(|x| x.attempt).collect();
    assert_eq!(numbers, [1, 2, 3]);
    assert_eq!(
        a.attempt_log[0].next_attempt_at.as_deref(),
        Some("1970-01-01T00:01:45Z")
    );
    assert_eq!(d[1].delivery.status, Status::Delivered);
    assert!(
        s.event("other", "e1").unwrap().is_empty(),
        "tenants are apart"
    );
}

#[test]
fn the_list_is_newest_first_and_pages_without_gaps_or_repeats() {
    let (s, _) = temp_store();
    let recs = (0..25)
        .map(|i| {
            // Pairs of events share a second, so the cursor's tie-breaker is exercised.
            (
                i,
                rec(&format!("e{i:02}"), "w", 1, "delivered", 1000 + i / 2),
            )
        })
        .collect();
    s.apply(&batch(recs)).unwrap();
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = s.list("acme", &Filter::default(), cursor, 10).unwrap();
        seen.extend(page.items.iter().map(|d| d.event_id.clone()));
        match page.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen.len(), 25);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 25, "no repeats");
    assert_eq!(seen[0], "e24", "newest first");
    assert!(seen.windows(2).all(|w| w[0] > w[1]), "{seen:?}");
}

#[test]
fn filters_narrow_the_list() {
    let (s, _) = temp_store();
    s.apply(&batch(vec![
        (0, rec("e1", "a", 1, "delivered", 100)),
        (1, rec("e2", "b", 1, "retry", 200)),
        (2, rec("e3", "a", 1, "dead_letter", 300)),
    ]))
    .unwrap();
    let ids = |f: Filter| -> Vec<String> {
        s.list("acme", &f, None, 100)
            .unwrap()
            .items
            .into_iter()
            .map(|d| d.event_id)
            .collect()
    };
    assert_eq!(
        ids(Filter {
            webhook: Some("a".into()),
            ..Filter::default()
        }),
        ["e3", "e1"]
    );
    assert_eq!(
        ids(Filter {
            status: Some(Status::Retrying),
            ..Filter::default()
        }),
        ["e2"]
    );
    assert_eq!(
        ids(Filter {
            since_ms: Some(150_000),
            until_ms: Some(300_000),
            ..Filter::default()
        }),
        ["e2"]
    );
    assert!(
        ids(Filter {
            event_type: Some("other".into()),
            ..Filter::default()
        })
        .is_empty()
    );
}

#[test]
fn stats_fill_every_bucket_of_the_window() {
    let (s, _) = temp_store();
    s.apply(&batch(vec![
        (0, rec("e1", "a", 1, "delivered", 30)),
        (1, rec("e2", "a", 1, "retry", 90)),
        (2, rec("e3", "b", 1, "delivered", 200)),
    ]))
    .unwrap();
    let st = s.stats("acme", Some("a"), 0, 240_000, 120_000).unwrap();
    assert_eq!(st.bucket_seconds, 120);
    assert_eq!(st.buckets.len(), 2);
    assert_eq!(st.buckets[0].counts.delivered, 1);
    assert_eq!(st.buckets[0].counts.failed, 1);
    assert_eq!(st.buckets[1].counts, Counts::default());
    assert_eq!(st.latency_ms.unwrap().p50, 25);
    let all = s.stats("acme", None, 0, 240_000, 120_000).unwrap();
    assert_eq!(all.total.delivered, 2);
}

#[test]
fn expiry_removes_old_deliveries_with_their_attempts_and_stats() {
    let (s, _) = temp_store();
    s.apply(&batch(vec![
        (0, rec("old", "a", 1, "delivered", 10)),
        (1, rec("new", "a", 1, "delivered", 500)),
    ]))
    .unwrap();
    assert_eq!(s.expire(100_000).unwrap(), 1);
    assert!(s.event("acme", "old").unwrap().is_empty());
    assert_eq!(s.event("acme", "new").unwrap().len(), 1);
    assert_eq!(
        s.stats("acme", None, 0, 600_000, 600_000)
            .unwrap()
            .total
            .delivered,
        1
    );
}

#[test]
fn a_file_that_is_not_a_store_is_moved_aside_and_a_new_one_made() {
    let dir = std::env::temp_dir().join(format!("hookline-api-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("log.db");
    std::fs::write(
        &path,
        b"this is not sqlite, it is long enough to be read as a header....",
    )
    .unwrap();
    let s = SqliteStore::open(&path).unwrap();
    assert!(s.positions().unwrap().is_empty());
    let aside = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("broken-")
        })
        .count();
    assert_eq!(aside, 1);
}

#[test]
fn a_suppressed_duplicate_is_counted_and_leaves_the_status_alone() {
    let (s, _) = temp_store();
    let mut dup = rec("e1", "w", 0, "duplicate", 90);
    dup.sent = false;
    dup.status = None;
    s.apply(&batch(vec![(0, dup.clone())])).unwrap();
    let d = s.event("acme", "e1").unwrap();
    assert_eq!(
        d[0].delivery.status,
        Status::Pending,
        "known only from a duplicate"
    );
    s.apply(&batch(vec![
        (1, rec("e1", "w", 1, "delivered", 100)),
        (2, dup),
    ]))
    .unwrap();
    let d = s.event("acme", "e1").unwrap();
    assert_eq!(d[0].delivery.status, Status::Delivered);
    assert_eq!(d[0].delivery.duplicates, 2);
    assert_eq!(d[0].delivery.attempts, 1);
    let outcomes: Vec<&str> = d[0]
        .attempt_log
        .iter()
        .map(|a| a.outcome.as_str())
        .collect();
    assert_eq!(outcomes, ["duplicate", "delivered", "duplicate"]);
    let st = s.stats("acme", None, 0, 3_600_000, 3_600_000).unwrap();
    assert_eq!(
        (
            st.total.delivered,
            st.total.duplicates,
            st.total.dead_lettered
        ),
        (1, 2, 0)
    );
}

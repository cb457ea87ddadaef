//! Unit tests for [`super`]: deliveries are plain labels such as `"a1"`
//! (key `a`, first event of it).

use super::*;

type Gate = KeyGate<&'static str, &'static str>;

fn key_of(item: &'static str) -> Option<&'static str> {
    Some(&item[..1])
}

#[test]
fn different_keys_and_keyless_deliveries_go_at_once() {
    let mut gate = Gate::new(10);
    assert_eq!(gate.admit(key_of("a1"), "a1"), Admission::Go("a1"));
    assert_eq!(gate.admit(key_of("b1"), "b1"), Admission::Go("b1"));
    assert_eq!(gate.admit(None, "x"), Admission::Go("x"));
    assert_eq!(gate.admit(None, "y"), Admission::Go("y"));
    assert_eq!(gate.held_keys(), 2);
    assert_eq!(gate.parked(), 0);
}

#[test]
fn same_key_deliveries_are_released_one_at_a_time_in_arrival_order() {
    let mut gate = Gate::new(10);
    assert_eq!(gate.admit(key_of("a1"), "a1"), Admission::Go("a1"));
    for item in ["a2", "a3", "a4"] {
        assert_eq!(gate.admit(key_of(item), item), Admission::Parked);
    }
    assert_eq!(gate.parked(), 3);
    assert_eq!(gate.finish(&"a"), Some("a2"));
    assert_eq!(gate.finish(&"a"), Some("a3"));
    // A delivery admitted meanwhile queues behind the ones already parked.
    assert_eq!(gate.admit(key_of("a5"), "a5"), Admission::Parked);
    assert_eq!(gate.finish(&"a"), Some("a4"));
    assert_eq!(gate.finish(&"a"), Some("a5"));
    assert_eq!(gate.finish(&"a"), None);
    assert!(!gate.is_held(&"a"));
    assert_eq!(gate.admit(key_of("a6"), "a6"), Admission::Go("a6"));
}

#[test]
fn a_retrying_key_holds_back_only_its_own_later_events() {
    let mut gate = Gate::new(10);
    // a1 failed and was scheduled for retry: the gate is not finished.
    assert_eq!(gate.admit(key_of("a1"), "a1"), Admission::Go("a1"));
    assert_eq!(gate.admit(key_of("a2"), "a2"), Admission::Parked);
    assert_eq!(gate.admit(key_of("b1"), "b1"), Admission::Go("b1"));
    assert_eq!(gate.finish(&"b"), None);
    assert_eq!(gate.admit(key_of("b2"), "b2"), Admission::Go("b2"));
    assert!(gate.is_held(&"a"));
    // The retry of a1 is delivered hours later; only then does a2 go.
    assert_eq!(gate.finish(&"a"), Some("a2"));
}

#[test]
fn parking_is_bounded_and_a_full_gate_hands_the_delivery_back() {
    let mut gate = Gate::new(2);
    assert_eq!(gate.admit(key_of("a1"), "a1"), Admission::Go("a1"));
    assert_eq!(gate.admit(key_of("a2"), "a2"), Admission::Parked);
    assert_eq!(gate.admit(key_of("b1"), "b1"), Admission::Go("b1"));
    assert_eq!(gate.admit(key_of("b2"), "b2"), Admission::Parked);
    assert_eq!(gate.admit(key_of("a3"), "a3"), Admission::Full("a3"));
    // A free key still goes: it needs no parking space.
    assert_eq!(gate.admit(key_of("c1"), "c1"), Admission::Go("c1"));
    assert_eq!(gate.finish(&"b"), Some("b2"));
    assert_eq!(gate.admit(key_of("a3"), "a3"), Admission::Parked);
    assert_eq!(gate.finish(&"a"), Some("a2"));
    assert_eq!(gate.finish(&"a"), Some("a3"));
}

#[test]
fn keys_marked_held_after_a_restart_park_new_events_until_finished() {
    let mut gate = Gate::new(10);
    gate.mark_held("a");
    assert_eq!(gate.admit(key_of("a7"), "a7"), Admission::Parked);
    assert_eq!(gate.finish(&"a"), Some("a7"));
    assert_eq!(gate.finish(&"a"), None);
    assert_eq!(gate.finish(&"z"), None);
    assert_eq!(gate.held_keys(), 0);
}

#[test]
fn commit_position_waits_for_the_lowest_unsettled_offset() {
    let mut tracker = OffsetTracker::new();
    assert_eq!(tracker.committable(), None);
    for offset in 10..=12 {
        tracker.track(offset, 1).unwrap();
    }
    assert_eq!(tracker.committable(), Some(10));
    tracker.settle(11).unwrap();
    tracker.settle(12).unwrap();
    assert_eq!(tracker.committable(), Some(10));
    tracker.settle(10).unwrap();
    assert_eq!(tracker.committable(), Some(13));
    assert_eq!(tracker.pending(), 0);
}

#[test]
fn an_offset_settles_only_when_every_delivery_it_fans_out_to_has() {
    let mut tracker = OffsetTracker::new();
    tracker.track(5, 3).unwrap();
    tracker.track(6, 1).unwrap();
    tracker.settle(6).unwrap();
    tracker.settle(5).unwrap();
    tracker.settle(5).unwrap();
    assert_eq!(tracker.committable(), Some(5));
    tracker.settle(5).unwrap();
    assert_eq!(tracker.committable(), Some(7));
}

#[test]
fn unmatched_records_and_offset_gaps_do_not_hold_commits_back() {
    let mut tracker = OffsetTracker::new();
    tracker.track(100, 0).unwrap();
    assert_eq!(tracker.committable(), Some(101));
    tracker.track(104, 1).unwrap(); // 101..=103 were compacted away.
    tracker.track(107, 0).unwrap();
    assert_eq!(tracker.committable(), Some(104));
    tracker.settle(104).unwrap();
    assert_eq!(tracker.committable(), Some(108));
}

#[test]
fn take_commit_returns_each_new_position_or_settled_set_once() {
    let mut tracker = OffsetTracker::new();
    assert_eq!(tracker.take_commit(), None);
    tracker.track(0, 1).unwrap();
    tracker.track(1, 1).unwrap();
    assert_eq!(tracker.take_commit(), Some((0, String::new())));
    assert_eq!(tracker.take_commit(), None);
    // Offset 1 settles above the position: the position stays, the metadata says so.
    tracker.settle(1).unwrap();
    let meta = format!("{SETTLED_METADATA_PREFIX}1,1");
    assert_eq!(tracker.take_commit(), Some((0, meta)));
    assert_eq!(tracker.take_commit(), None);
    tracker.settle(0).unwrap();
    assert_eq!(tracker.take_commit(), Some((2, String::new())));
    assert_eq!(tracker.take_commit(), None);
}

#[test]
fn a_backlog_longer_than_the_walk_claims_nothing_past_where_the_walk_stopped() {
    let mut tracker = OffsetTracker::new();
    let backlog = i64::try_from(SETTLED_METADATA_WALK).unwrap() + 100;
    for offset in 0..backlog {
        tracker.track(offset, 1).unwrap();
    }
    tracker.settle(1).unwrap();
    tracker.track(backlog, 0).unwrap(); // settled at once, but past the walk
    let (position, meta) = tracker.take_commit().unwrap();
    assert_eq!(position, 0);
    // Offset 1 is within the walk; the tail past the walk's end is not claimed.
    assert_eq!(meta, format!("{SETTLED_METADATA_PREFIX}1,1"));
    let decoded = SettledAbove::decode(position, &meta).unwrap();
    assert!(!decoded.contains(backlog));
    assert!(!decoded.contains(backlog - 1));
    // Nothing changed: nothing to commit, and no walk either.
    assert_eq!(tracker.take_commit(), None);
}

/// The offsets `decoded` says are settled among `range`.
fn settled_in(decoded: &SettledAbove, range: std::ops::Range<i64>) -> Vec<i64> {
    range.filter(|o| decoded.contains(*o)).collect()
}

#[test]
fn settled_offsets_above_the_position_survive_a_round_trip_through_the_metadata() {
    let mut tracker = OffsetTracker::new();
    for offset in 10..=20 {
        tracker.track(offset, 1).unwrap();
    }
    tracker.track(24, 0).unwrap(); // 21..=23 compacted away; 24 matched no webhook.
    for offset in [12, 13, 15, 18, 19, 20] {
        tracker.settle(offset).unwrap();
    }
    let (position, meta) = tracker.take_commit().unwrap();
    assert_eq!(position, 10);
    // Pending 10-11, settled 12-13, pending 14, settled 15, pending 16-17, settled 18-24.
    assert_eq!(meta, format!("{SETTLED_METADATA_PREFIX}2,2,1,1,2,7"));
    let decoded = SettledAbove::decode(position, &meta).unwrap();
    assert_eq!(
        settled_in(&decoded, 0..40),
        [12, 13, 15, 18, 19, 20, 21, 22, 23, 24]
    );
    assert_eq!(decoded.len(), 10);
    assert!(!decoded.exhausted_at(24));
    assert!(decoded.exhausted_at(25));
}

#[test]
fn nothing_settled_above_the_position_needs_no_metadata() {
    let mut tracker = OffsetTracker::new();
    assert_eq!(tracker.settled_metadata(SETTLED_METADATA_MAX), "");
    tracker.track(3, 1).unwrap();
    tracker.track(4, 2).unwrap();
    assert_eq!(tracker.settled_metadata(SETTLED_METADATA_MAX), "");
    tracker.settle(3).unwrap();
    tracker.settle(4).unwrap();
    tracker.settle(4).unwrap();
    assert_eq!(tracker.committable(), Some(5));
    assert_eq!(tracker.settled_metadata(SETTLED_METADATA_MAX), "");
}

#[test]
fn metadata_past_the_limit_keeps_a_prefix_of_what_is_settled_and_nothing_more() {
    let mut tracker = OffsetTracker::new();
    // Every other offset settled: the worst case, two runs per settled offset.
    for offset in 1_000..11_000 {
        tracker.track(offset, 1).unwrap();
        if offset % 2 == 1 {
            tracker.settle(offset).unwrap();
        }
    }
    let meta = tracker.settled_metadata(SETTLED_METADATA_MAX);
    assert!(meta.len() <= SETTLED_METADATA_MAX, "{} bytes", meta.len());
    let decoded = SettledAbove::decode(1_000, &meta).unwrap();
    let settled = settled_in(&decoded, 1_000..11_000);
    // "1,1," per settled offset: about 760 fit.
    assert!(
        settled.len() > 700,
        "{} settled offsets kept",
        settled.len()
    );
    assert!(settled.iter().all(|o| o % 2 == 1), "only settled offsets");
    let kept = settled.len() as i64;
    assert_eq!(
        settled,
        (0..kept).map(|i| 1_001 + 2 * i).collect::<Vec<_>>(),
        "a prefix, without gaps"
    );
}

#[test]
fn foreign_or_malformed_metadata_settles_nothing() {
    for meta in [
        "",
        "some other consumer's note",
        "hookline/settled/v1:",
        "hookline/settled/v1:2,x",
        "hookline/settled/v1:2,0,1",
        "hookline/settled/v1:2,-1",
        "hookline/settled/v1:1,9223372036854775807",
        "hookline/settled/v2:1,1",
    ] {
        assert_eq!(SettledAbove::decode(5, meta), None, "{meta:?}");
    }
    let none = SettledAbove::default();
    assert!(!none.contains(5) && none.is_empty() && none.exhausted_at(0));
}

#[test]
fn misuse_of_the_tracker_is_reported_not_absorbed() {
    let mut tracker = OffsetTracker::new();
    tracker.track(5, 1).unwrap();
    assert_eq!(
        tracker.track(5, 1),
        Err(OffsetError::NotIncreasing { offset: 5, last: 5 })
    );
    assert_eq!(
        tracker.track(3, 1),
        Err(OffsetError::NotIncreasing { offset: 3, last: 5 })
    );
    assert_eq!(tracker.settle(9), Err(OffsetError::NotPending(9)));
    tracker.settle(5).unwrap();
    assert_eq!(tracker.settle(5), Err(OffsetError::NotPending(5)));
}

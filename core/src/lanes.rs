//! Per-key order across memory *and* the retry topics (`ordering: PerKey`).
//! Each delivery of a keyed event to a `PerKey` webhook belongs to a *lane*:
//! (webhook, key) within one events-topic partition; its position in the lane
//! is its *seq*, the event's offset in that partition. Deliveries flow in
//! through [`Lanes::admit`] and out as [`Admit::Go`], parked in memory, or
//! [`Admit::Postpone`]d into the retry path behind an earlier delivery;
//! [`Lanes::finish`] and [`Lanes::reschedule`] report what became of one.
//!
//! # The rule
//! A lane delivers one event at a time, lowest seq first. Two things can be
//! ahead of a delivery in its lane:
//! - a delivery **in flight** (in memory). Later ones park in memory behind it
//!   ([`crate::ordering::KeyGate`]), for at most one attempt's time;
//! - deliveries **pending in the retry topics** (failed, postponed). Later
//!   ones do not wait in memory (that could last a day and would hold back
//!   the commit of the events topic): they are postponed into the retry path
//!   too, due just after the latest pending one. When they come back early
//!   they are postponed again; each costs one retry-topic write per attempt
//!   of the delivery ahead of it, never a busy poll.
//!
//! When the delivery in flight is rescheduled, everything parked behind it
//! is postponed behind it, in order, so nothing later overtakes it.
//!
//! # Restarts and rebalances
//! The pending set is memory; it is rebuilt for each assigned partition by
//! reading the retry topics from the committed offsets before any of that
//! partition's records are handled ([`Lanes::add_pending`]). A pending entry
//! whose delivery never shows up (which needs a crash in the middle of a
//! rebalance) stops blocking its lane [`STALE_AFTER`] past its due time.
//!
//! A crash can also leave *two copies* of one pending delivery in the retry
//! topics: a copy read back and postponed again (or retried) is written anew
//! before its own offset is committed. Each copy's due time is later than the
//! one it replaced, so the pending set keeps the latest due per seq, and a
//! copy that comes back with an earlier due than that is superseded: it is
//! settled like a duplicate instead of starting a second chain of postponements
//! that would deliver the event twice.
//!
//! # Caveats
//! Order is per partition: a key that producers send to two partitions has
//! two lanes. After a crash a delivery may be repeated (at least once), and
//! such a repeat can arrive after a later event of its key.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::ordering::{Admission, KeyGate};

/// A pending entry this long past its due time no longer blocks its lane.
pub const STALE_AFTER: Duration = Duration::from_secs(2 * 3600);
/// How long a delivery that found its lane full of parked deliveries is postponed.
pub const FULL_POSTPONE: Duration = Duration::from_secs(1);

/// A lane: one webhook and one key, within a partition.
pub type LaneKey = (Arc<str>, String);

/// Where a delivery was read: its events-topic partition (index) and the
/// assignment epoch it was read under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    /// The partition index.
    pub partition: i32,
    /// The assignment epoch.
    pub epoch: u64,
}

/// Where a delivery offered to [`Lanes::admit`] was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The events topic, in order.
    Events,
    /// A retry topic: a failed or postponed delivery, due at `due_ms` (Unix ms) by its record.
    Retry {
        /// The due time its record carries.
        due_ms: i64,
    },
    /// A retry topic, queued by a replay: never a copy of a pending delivery.
    Replay,
}

/// What to do with a delivery offered to [`Lanes::admit`].
#[derive(Debug, PartialEq, Eq)]
pub enum Admit<J> {
    /// Deliver now; it holds its lane until finished or rescheduled.
    Go(J),
    /// Parked in memory behind the delivery in flight; handed back by
    /// [`Lanes::finish`] or [`Lanes::reschedule`].
    Parked,
    /// Write it to the retry path, due at this Unix ms, without spending an
    /// attempt. It is recorded as pending already.
    Postpone(J, i64),
    /// The same delivery is already pending in the retry path (a record of
    /// the events topic read again after a restart, or a retry record that a
    /// later copy superseded): settle it, do nothing.
    Duplicate,
}

struct PartitionLanes<J> {
    epoch: u64,
    gate: KeyGate<LaneKey, (i64, J)>,
    /// Per lane: seq → due (Unix ms) of the deliveries in the retry path.
    pending: HashMap<LaneKey, BTreeMap<i64, i64>>,
}

/// The lanes of every assigned partition.
pub struct Lanes<J> {
    partitions: HashMap<i32, PartitionLanes<J>>,
    max_parked: usize,
}

fn stale_before(now_ms: i64) -> i64 {
    now_ms.saturating_sub(i64::try_from(STALE_AFTER.as_millis()).unwrap_or(i64::MAX))
}

impl<J> Lanes<J> {
    /// No lanes; each partition parks at most `max_parked` deliveries in memory.
    pub fn new(max_parked: usize) -> Self {
        Self {
            partitions: HashMap::new(),
            max_parked,
        }
    }

    /// Starts tracking `partition` afresh for assignment `epoch`.
    pub fn assign(&mut self, partition: i32, epoch: u64) {
        self.partitions.insert(
            partition,
            PartitionLanes {
                epoch,
                gate: KeyGate::new(self.max_parked),
                pending: HashMap::new(),
            },
        );
    }

    /// Forgets `partition` (revoked); what was parked is dropped, to be read
    /// again from the last commit by whoever owns it next.
    pub fn revoke(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    /// Records a delivery found pending in the retry path; of several copies of one delivery
    /// the latest due counts.
    pub fn add_pending(&mut self, partition: i32, lane: LaneKey, seq: i64, due_ms: i64) {
        if let Some(p) = self.partitions.get_mut(&partition) {
            p.pending
                .entry(lane)
                .or_default()
                .entry(seq)
                .and_modify(|due| *due = (*due).max(due_ms))
                .or_insert(due_ms);
        }
    }

    /// Records a delivery written to the retry path without passing through
    /// [`admit`](Self::admit) (paused webhook, missing secret, full queue).
    pub fn note_pending(
        &mut self,
        partition: i32,
        epoch: u64,
        lane: LaneKey,
        seq: i64,
        due_ms: i64,
    ) {
        if let Some(p) = self.tracked(partition, epoch) {
            p.pending.entry(lane).or_default().insert(seq, due_ms);
        }
    }

    fn tracked(&mut self, partition: i32, epoch: u64) -> Option<&mut PartitionLanes<J>> {
        self.partitions
            .get_mut(&partition)
            .filter(|p| p.epoch == epoch)
    }

    /// Offers the delivery `job` at position `seq` of `lane`, read from `origin`.
    ///
    /// # Guarantees
    /// Within a lane, at most one delivery goes at a time, and none goes while
    /// a lower seq is parked or pending (unless stale). A partition not
    /// tracked (or of another epoch) imposes nothing: the delivery goes.
    pub fn admit(
        &mut self,
        place: Place,
        lane: LaneKey,
        seq: i64,
        job: J,
        origin: Origin,
        now_ms: i64,
    ) -> Admit<J> {
        let Some(p) = self.tracked(place.partition, place.epoch) else {
            return Admit::Go(job);
        };
        if let Some(pending) = p.pending.get_mut(&lane) {
            let stale = stale_before(now_ms);
            pending.retain(|_, due| *due >= stale);
            match origin {
                Origin::Events if pending.contains_key(&seq) => return Admit::Duplicate,
                Origin::Events => {}
                Origin::Retry { due_ms } if pending.get(&seq).is_some_and(|d| *d > due_ms) => {
                    return Admit::Duplicate;
                }
                Origin::Retry { .. } | Origin::Replay => {
                    pending.remove(&seq);
                }
            }
            let ahead = pending.range(..seq).map(|(_, due)| *due).max();
            if let Some(due) = ahead {
                let due = due.max(now_ms).saturating_add(1);
                pending.insert(seq, due);
                return Admit::Postpone(job, due);
            }
            if pending.is_empty() {
                p.pending.remove(&lane);
            }
        }
        match p.gate.admit(Some(lane.clone()), (seq, job)) {
            Admission::Go((_, job)) => Admit::Go(job),
            Admission::Parked => Admit::Parked,
            Admission::Full((_, job)) => {
                let due =
                    now_ms.saturating_add(i64::try_from(FULL_POSTPONE.as_millis()).unwrap_or(1000));
                p.pending.entry(lane).or_default().insert(seq, due);
                Admit::Postpone(job, due)
            }
        }
    }

    /// A delivery pending in the retry path was dropped when it came back (its `Webhook` or its
    /// replay is gone, or it already ended before a restart): it no longer holds back later
    /// deliveries of its lane.
    pub fn forget_pending(&mut self, partition: i32, epoch: u64, lane: &LaneKey, seq: i64) {
        let Some(p) = self.tracked(partition, epoch) else {
            return;
        };
        if let Some(pending) = p.pending.get_mut(lane) {
            pending.remove(&seq);
            if pending.is_empty() {
                p.pending.remove(lane);
            }
        }
    }

    /// The delivery holding `lane` is finished (delivered, dead-lettered or
    /// dropped). Returns the next parked delivery, which now holds the lane
    /// and should go.
    pub fn finish(&mut self, partition: i32, epoch: u64, lane: &LaneKey, seq: i64) -> Option<J> {
        let p = self.tracked(partition, epoch)?;
        if let Some(pending) = p.pending.get_mut(lane) {
            pending.remove(&seq);
            if pending.is_empty() {
                p.pending.remove(lane);
            }
        }
        p.gate.finish(lane).map(|(_, job)| job)
    }

    /// The delivery holding `lane` was written to the retry path, due at
    /// `due_ms`. Everything parked behind it comes back, in order, each with
    /// the due time to postpone it to (and already recorded as pending).
    pub fn reschedule(
        &mut self,
        partition: i32,
        epoch: u64,
        lane: &LaneKey,
        seq: i64,
        due_ms: i64,
    ) -> Vec<(J, i64)> {
        let Some(p) = self.tracked(partition, epoch) else {
            return Vec::new();
        };
        let pending = p.pending.entry(lane.clone()).or_default();
        pending.insert(seq, due_ms);
        let mut out = Vec::new();
        let mut due = due_ms;
        while let Some((s, job)) = p.gate.finish(lane) {
            due = due.saturating_add(1);
            pending.insert(s, due);
            out.push((job, due));
        }
        out
    }

    /// Deliveries parked in memory, over all partitions.
    pub fn parked(&self) -> usize {
        self.partitions.values().map(|p| p.gate.parked()).sum()
    }

    /// Deliveries known to be pending in the retry path, over all partitions.
    pub fn pending(&self) -> usize {
        self.partitions
            .values()
            .flat_map(|p| p.pending.values())
            .map(BTreeMap::len)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000;

    fn lane(key: &str) -> LaneKey {
        (Arc::from("fraud"), key.to_owned())
    }

    fn at(partition: i32, epoch: u64) -> Place {
        Place { partition, epoch }
    }

    fn retry(due_ms: i64) -> Origin {
        Origin::Retry { due_ms }
    }

    fn lanes() -> Lanes<&'static str> {
        let mut l = Lanes::new(100);
        l.assign(0, 1);
        l
    }

    #[test]
    fn a_free_lane_lets_the_delivery_go_and_later_ones_park_behind_it() {
        let mut l = lanes();
        assert_eq!(
            l.admit(at(0, 1), lane("k"), 10, "e10", Origin::Events, NOW),
            Admit::Go("e10")
        );
        assert_eq!(
            l.admit(at(0, 1), lane("k"), 11, "e11", Origin::Events, NOW),
            Admit::Parked
        );
        assert_eq!(
            l.admit(at(0, 1), lane("j"), 12, "j12", Origin::Events, NOW),
            Admit::Go("j12")
        );
        assert_eq!(l.parked(), 1);
        assert_eq!(l.finish(0, 1, &lane("k"), 10), Some("e11"));
        assert_eq!(l.finish(0, 1, &lane("k"), 11), None);
        assert_eq!(
            l.admit(at(0, 1), lane("k"), 13, "e13", Origin::Events, NOW),
            Admit::Go("e13")
        );
    }

    #[test]
    fn a_reschedule_postpones_what_was_parked_behind_it_in_order() {
        let mut l = lanes();
        assert_eq!(
            l.admit(at(0, 1), lane("k"), 10, "e10", Origin::Events, NOW),
            Admit::Go("e10")
        );
        assert_eq!(
            l.admit(at(0, 1), lane("k"), 11, "e11", Origin::Events, NOW),
            Admit::Parked
        );
        assert_eq!(
            l.admit(at(0, 1), lane("k"), 12, "e12", Origin::Events, NOW),
            Admit::Parked
        );
        let back = l.reschedule(0, 1, &lane("k"), 10, NOW + 5_000);
        assert_eq!(back, vec![("e11", NOW + 5_001), ("e12", NOW + 5_002)]);
        assert_eq!(l.pending(), 3);
        assert_eq!(l.parked(), 0);
        // A new event of the key goes behind the last pending one.
        assert_eq!(
            l.admit(at(0, 1), lane("k"), 13, "e13", Origin::Events, NOW),
            Admit::Postpone("e13", NOW + 5_003)
        );
    }

    #[test]
    fn a_retry_goes_only_when_nothing_lower_is_pending() {
        let mut l = lanes();
        l.add_pending(0, lane("k"), 10, NOW + 100);
        l.add_pending(0, lane("k"), 11, NOW + 200);
        // 11 comes back first (its tier was quicker): postponed behind 10.
        assert_eq!(
            l.admit(at(0, 1), lane("k"), 11, "r11", retry(NOW + 200), NOW + 200),
            Admit::Postpone("r11", NOW + 201)
        );
        assert_eq!(
            l.admit(at(0, 1), lane("k"), 10, "r10", retry(NOW + 100), NOW + 201),
            Admit::Go("r10")
        );
        assert_eq!(
            l.admit(at(0, 1), lane("k"), 11, "r11", retry(NOW + 201), NOW + 202),
            Admit::Parked
        );
        assert_eq!(l.finish(0, 1, &lane("k"), 10), Some("r11"));
        assert_eq!(l.finish(0, 1, &lane("k"), 11), None);
        assert_eq!(l.pending(), 0);
    }

    #[test]
    fn an_event_read_again_while_its_retry_is_pending_is_a_duplicate() {
        let mut l = lanes();
        l.add_pending(0, lane("k"), 10, NOW + 100);
        assert_eq!(
            l.admit(at(0, 1), lane("k"), 10, "e10", Origin::Events, NOW),
            Admit::Duplicate
        );
    }

    #[test]
    fn of_two_copies_of_a_pending_delivery_left_by_a_crash_only_the_later_goes() {
        let mut l = lanes();
        // Seq 10 was postponed (due +100), read back and postponed again (due +300); the crash
        // came before the first copy's offset was committed, so the scan finds both.
        l.add_pending(0, lane("k"), 10, NOW + 300);
        l.add_pending(0, lane("k"), 10, NOW + 100);
        assert_eq!(
            l.admit(
                at(0, 1),
                lane("k"),
                10,
                "old copy",
                retry(NOW + 100),
                NOW + 100
            ),
            Admit::Duplicate
        );
        assert_eq!(l.pending(), 1, "the later copy is still awaited");
        assert_eq!(
            l.admit(
                at(0, 1),
                lane("k"),
                10,
                "later copy",
                retry(NOW + 300),
                NOW + 300
            ),
            Admit::Go("later copy")
        );
        assert_eq!(l.finish(0, 1, &lane("k"), 10), None);
        assert_eq!(l.pending(), 0);
    }

    #[test]
    fn a_replay_of_a_pending_seq_is_never_taken_for_a_superseded_copy() {
        let mut l = lanes();
        l.add_pending(0, lane("k"), 10, NOW + 5_000);
        assert_eq!(
            l.admit(at(0, 1), lane("k"), 10, "replayed", Origin::Replay, NOW),
            Admit::Go("replayed")
        );
    }

    #[test]
    fn a_dropped_pending_delivery_stops_blocking_its_lane() {
        let mut l = lanes();
        l.add_pending(0, lane("k"), 5, 1_000);
        let Admit::Postpone(_, _) = l.admit(at(0, 1), lane("k"), 9, "later", retry(1_500), 2_000)
        else {
            panic!("held back behind seq 5");
        };
        l.forget_pending(0, 1, &lane("k"), 5);
        l.forget_pending(0, 1, &lane("k"), 9);
        assert_eq!(
            l.admit(at(0, 1), lane("k"), 9, "later", retry(2_001), 3_000),
            Admit::Go("later")
        );
    }

    #[test]
    fn a_stale_pending_entry_stops_blocking_its_lane() {
        let mut l = lanes();
        l.add_pending(0, lane("k"), 10, NOW);
        let later = NOW + i64::try_from(STALE_AFTER.as_millis()).unwrap() + 1;
        assert_eq!(
            l.admit(at(0, 1), lane("k"), 11, "e11", Origin::Events, later),
            Admit::Go("e11")
        );
    }

    #[test]
    fn untracked_partitions_and_old_epochs_impose_nothing() {
        let mut l = lanes();
        assert_eq!(
            l.admit(at(7, 1), lane("k"), 10, "a", Origin::Events, NOW),
            Admit::Go("a")
        );
        assert_eq!(
            l.admit(at(7, 1), lane("k"), 11, "b", Origin::Events, NOW),
            Admit::Go("b")
        );
        assert_eq!(
            l.admit(at(0, 9), lane("k"), 10, "c", Origin::Events, NOW),
            Admit::Go("c")
        );
        l.assign(0, 2);
        assert_eq!(l.finish(0, 1, &lane("k"), 10), None, "epoch 1 is over");
    }

    #[test]
    fn a_full_gate_postpones_instead_of_parking() {
        let mut l = Lanes::new(1);
        l.assign(0, 1);
        assert_eq!(
            l.admit(at(0, 1), lane("k"), 1, "a", Origin::Events, NOW),
            Admit::Go("a")
        );
        assert_eq!(
            l.admit(at(0, 1), lane("k"), 2, "b", Origin::Events, NOW),
            Admit::Parked
        );
        let due = NOW + i64::try_from(FULL_POSTPONE.as_millis()).unwrap();
        assert_eq!(
            l.admit(at(0, 1), lane("k"), 3, "c", Origin::Events, NOW),
            Admit::Postpone("c", due)
        );
    }
}

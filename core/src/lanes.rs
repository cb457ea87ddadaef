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
    /// the events topic read again after a restart): settle it, do nothing.
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

    /// Records a delivery found pending in the retry path.
    pub fn add_pending(&mut self, partition: i32, lane: LaneKey, seq: i64, due_ms: i64) {
        if let Some(p) = self.partitions.get_mut(&partition) {
            p.pending.entry(lane).or_default().insert(seq, due_ms);
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

    /// Offers the delivery `job` at position `seq` of `lane`. `from_retry`
    /// says it was read from a retry topic (else from the events topic, in
    /// order).
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
        from_retry: bool,
        now_ms: i64,
    ) -> Admit<J> {
        let Some(p) = self.tracked(place.partition, place.epoch) else {
            return Admit::Go(job);
        };
        if let Some(pending) = p.pending.get_mut(&lane) {
            let stale = stale_before(now_ms);
            pending.retain(|_, due| *due >= stale);
            if from_retry {
                pending.remove(&seq);
            } else if pending.contains_key(&seq) {
                return Admit::Duplicate;
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

    fn lanes() -> Lanes<&'static str> {
        let mut l = Lanes::new(100);
        l.assign(0, 1);
        l
    }

    #[test]
    fn a_free_lane_lets_the_delivery_go_and_later_ones_park_behind_it() {
        let mut l = lanes();
        assert_eq!(
            l.admit(at(0, 1), lane("k"), 10, "e10", false, NOW),
            Admit::Go("e10")
        );
        assert_eq!(
            l.admit(at(0, 1), lane("k"), 11, "e11", false, NOW),
            Admit::Parked
        );
        assert_eq!(
            l.admit(at(0, 1), lane("j"), 12, "j12", false, NOW),
            Admit::Go("j12")
        );
        assert_eq!(l.parked(), 1);
        assert_eq!(l.finish(0, 1, &lane("k"), 10), Some("e11"));
        assert_eq!(l.finish(0, 1, &lane("k"), 11), None);
        assert_eq!(
            l.admit(at(0, 1), lane("k"), 13, "e13", false, NOW),
            Admit::Go("e13")
        );
    }

    #[test]
    fn a_reschedule_postpones_what_was_parked_behind_it_in_order() {
        let mut l = lanes();
        assert_eq!(
            l.admit(at(0, 1), lane("k"), 10, "e10", false, NOW),
            Admit::Go("e10")
        );
        assert_eq!(
            l.admit(at(0, 1), lane("k"), 11, "e11", false, NOW),
            Admit::Parked
        );
        assert_eq!(
            l.admit(at(0, 1), lane("k"), 12, "e12", false, NOW),
            Admit::Parked
        );
        let back = l.reschedule(0, 1, &lane("k"), 10, NOW + 5_000);
        assert_eq!(back, vec![("e11", NOW + 5_001), ("e12", NOW + 5_002)]);
        assert_eq!(l.pending(), 3);
        assert_eq!(l.parked(), 0);
        // A new event of the key goes behind the last pending one.
        assert_eq!(
            l.admit(at(0, 1), lane("k"), 13, "e13", false, NOW),
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
            l.admit(at(0, 1), lane("k"), 11, "r11", true, NOW + 200),
            Admit::Postpone("r11", NOW + 201)
        );
        assert_eq!(
            l.admit(at(0, 1), lane("k"), 10, "r10", true, NOW + 201),
            Admit::Go("r10")
        );
        assert_eq!(
            l.admit(at(0, 1), lane("k"), 11, "r11", true, NOW + 202),
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
            l.admit(at(0, 1), lane("k"), 10, "e10", false, NOW),
            Admit::Duplicate
        );
    }

    #[test]
    fn a_dropped_pending_delivery_stops_blocking_its_lane() {
        let mut l = lanes();
        l.add_pending(0, lane("k"), 5, 1_000);
        let Admit::Postpone(_, _) = l.admit(at(0, 1), lane("k"), 9, "later", true, 2_000) else {
            panic!("held back behind seq 5");
        };
        l.forget_pending(0, 1, &lane("k"), 5);
        l.forget_pending(0, 1, &lane("k"), 9);
        assert_eq!(
            l.admit(at(0, 1), lane("k"), 9, "later", true, 3_000),
            Admit::Go("later")
        );
    }

    #[test]
    fn a_stale_pending_entry_stops_blocking_its_lane() {
        let mut l = lanes();
        l.add_pending(0, lane("k"), 10, NOW);
        let later = NOW + i64::try_from(STALE_AFTER.as_millis()).unwrap() + 1;
        assert_eq!(
            l.admit(at(0, 1), lane("k"), 11, "e11", false, later),
            Admit::Go("e11")
        );
    }

    #[test]
    fn untracked_partitions_and_old_epochs_impose_nothing() {
        let mut l = lanes();
        assert_eq!(
            l.admit(at(7, 1), lane("k"), 10, "a", false, NOW),
            Admit::Go("a")
        );
        assert_eq!(
            l.admit(at(7, 1), lane("k"), 11, "b", false, NOW),
            Admit::Go("b")
        );
        assert_eq!(
            l.admit(at(0, 9), lane("k"), 10, "c", false, NOW),
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
            l.admit(at(0, 1), lane("k"), 1, "a", false, NOW),
            Admit::Go("a")
        );
        assert_eq!(
            l.admit(at(0, 1), lane("k"), 2, "b", false, NOW),
            Admit::Parked
        );
        let due = NOW + i64::try_from(FULL_POSTPONE.as_millis()).unwrap();
        assert_eq!(
            l.admit(at(0, 1), lane("k"), 3, "c", false, NOW),
            Admit::Postpone("c", due)
        );
    }
}

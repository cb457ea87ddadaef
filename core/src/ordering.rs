//! Order and commit bookkeeping. Per webhook, deliveries flow through a
//! [`KeyGate`], which lets a delivery go now or parks it behind an earlier
//! delivery of the same key; per partition, offsets flow through an
//! [`OffsetTracker`], which says which offset may be committed.
//!
//! # Per-key order (`ordering: PerKey`)
//! A key is *held* from the moment its delivery goes until that delivery is
//! finished: delivered, dead-lettered, or, with durable retries, until the
//! retry scheduled through Kafka is itself delivered or dead-lettered.
//! Scheduling a retry does **not** release the key: later deliveries of the
//! key stay parked, so a key that is retrying holds back only later events
//! of that key for that webhook. [`KeyGate::finish`] then hands back the
//! next parked delivery of the key, in arrival order, which now holds it.
//! Deliveries without a key, or for `Unordered` webhooks, skip the gate.
//!
//! Parking is bounded by a count across all keys; past it [`KeyGate::admit`]
//! hands the delivery back as [`Admission::Full`] and the runtime must stop
//! taking records (pause the partition) and offer it again after a
//! `finish`. The gate lives in memory: after a restart the runtime must
//! [`mark_held`](KeyGate::mark_held) every key with a retry still pending
//! in the retry topic before it resumes the events topic, or newer events
//! would overtake those retries.
//!
//! # Commits
//! An offset is *settled* when every delivery it fanned out to has been
//! delivered, durably scheduled for retry, or dead-lettered; a parked
//! delivery is not settled. The position to commit is the lowest offset not
//! yet settled (Kafka commits the next offset to read), so everything below
//! it is settled and a crash at any instant loses nothing.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::Hash;

/// What [`KeyGate::admit`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission<T> {
    /// Deliver it now; its key (if any) is now held by it.
    Go(T),
    /// Parked behind an earlier delivery of its key; it comes back from
    /// [`KeyGate::finish`] in its turn.
    Parked,
    /// Parking is full: the caller keeps the delivery, stops taking new
    /// records, and offers it again after a [`KeyGate::finish`].
    Full(T),
}

/// Per-key ordering for one webhook: which keys are held, and what waits
/// behind them.
#[derive(Debug, Clone)]
pub struct KeyGate<K, T> {
    /// Held keys, each with the deliveries parked behind its holder.
    held: HashMap<K, VecDeque<T>>,
    parked: usize,
    max_parked: usize,
}

impl<K: Hash + Eq, T> KeyGate<K, T> {
    /// An empty gate parking at most `max_parked` deliveries in all.
    pub fn new(max_parked: usize) -> Self {
        Self {
            held: HashMap::new(),
            parked: 0,
            max_parked,
        }
    }

    /// Offers a delivery that arrived after all those offered before it.
    ///
    /// # Guarantees
    /// For one key, deliveries go in the order they were admitted, and never
    /// two at a time. A keyless delivery always goes.
    pub fn admit(&mut self, key: Option<K>, item: T) -> Admission<T> {
        let Some(key) = key else {
            return Admission::Go(item);
        };
        match self.held.entry(key) {
            Entry::Vacant(entry) => {
                entry.insert(VecDeque::new());
                Admission::Go(item)
            }
            Entry::Occupied(_) if self.parked >= self.max_parked => Admission::Full(item),
            Entry::Occupied(mut entry) => {
                entry.get_mut().push_back(item);
                self.parked += 1;
                Admission::Parked
            }
        }
    }

    /// The delivery holding `key` is finished (delivered, dead-lettered, or
    /// its durable retry concluded). Returns the next parked delivery of the
    /// key, which now holds it and should go; `None` releases the key.
    /// Finishing a key that is not held does nothing.
    pub fn finish(&mut self, key: &K) -> Option<T> {
        let queue = self.held.get_mut(key)?;
        match queue.pop_front() {
            Some(next) => {
                self.parked -= 1;
                Some(next)
            }
            None => {
                self.held.remove(key);
                None
            }
        }
    }

    /// Holds `key` as if a delivery of it were going: for rebuilding the gate
    /// after a restart from retries still pending. A later
    /// [`finish`](Self::finish) releases it.
    pub fn mark_held(&mut self, key: K) {
        self.held.entry(key).or_default();
    }

    /// Whether a delivery of `key` is going or retrying.
    pub fn is_held(&self, key: &K) -> bool {
        self.held.contains_key(key)
    }

    /// Deliveries parked, across all keys.
    pub fn parked(&self) -> usize {
        self.parked
    }

    /// Keys currently held.
    pub fn held_keys(&self) -> usize {
        self.held.len()
    }
}

/// Misuse of an [`OffsetTracker`]; a bug in the caller, worth logging loudly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OffsetError {
    /// Offsets must be tracked in increasing order.
    #[error("offset {offset} tracked after {last}")]
    NotIncreasing {
        /// The offending offset.
        offset: i64,
        /// The last offset tracked.
        last: i64,
    },
    /// The offset is not tracked, or all its deliveries already settled.
    #[error("offset {0} has no unsettled delivery")]
    NotPending(i64),
}

/// Settled offsets of one partition, and the position safe to commit.
#[derive(Debug, Clone, Default)]
pub struct OffsetTracker {
    /// Unsettled offsets and how many of their deliveries are unsettled.
    pending: BTreeMap<i64, usize>,
    /// The highest offset tracked so far.
    last: Option<i64>,
    /// The last position returned by [`take_commit`](Self::take_commit).
    committed: Option<i64>,
    /// The metadata returned with it.
    committed_metadata: String,
    /// Whether anything was tracked or settled since the last [`take_commit`](Self::take_commit):
    /// the commit tick runs every few milliseconds on every partition, mostly with nothing new.
    changed: bool,
}

impl OffsetTracker {
    /// An empty tracker, for a newly assigned partition.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `offset` fans out to `deliveries` deliveries; zero (no
    /// webhook matched, or the record was dead-lettered on the spot) settles
    /// it at once.
    ///
    /// # Errors
    /// [`OffsetError::NotIncreasing`] if `offset` is not above every offset
    /// tracked before.
    pub fn track(&mut self, offset: i64, deliveries: usize) -> Result<(), OffsetError> {
        if let Some(last) = self.last.filter(|&last| offset <= last) {
            return Err(OffsetError::NotIncreasing { offset, last });
        }
        self.last = Some(offset);
        self.changed = true;
        if deliveries > 0 {
            self.pending.insert(offset, deliveries);
        }
        Ok(())
    }

    /// Records that one delivery of `offset` settled.
    ///
    /// # Errors
    /// [`OffsetError::NotPending`] if `offset` has no unsettled delivery.
    pub fn settle(&mut self, offset: i64) -> Result<(), OffsetError> {
        let remaining = self
            .pending
            .get_mut(&offset)
            .ok_or(OffsetError::NotPending(offset))?;
        *remaining -= 1;
        if *remaining == 0 {
            self.pending.remove(&offset);
            self.changed = true;
        }
        Ok(())
    }

    /// The position to commit: every offset below it is settled. `None`
    /// before anything is tracked.
    pub fn committable(&self) -> Option<i64> {
        match self.pending.first_key_value() {
            Some((&lowest, _)) => Some(lowest),
            None => self.last.map(|last| last + 1),
        }
    }

    /// [`committable`](Self::committable) and its [`settled_metadata`](Self::settled_metadata),
    /// but only when one of them changed since the last call, so that the caller commits only
    /// what is new.
    pub fn take_commit(&mut self) -> Option<(i64, String)> {
        if !std::mem::take(&mut self.changed) {
            return None;
        }
        let position = self.committable()?;
        let metadata = self.settled_metadata(SETTLED_METADATA_MAX);
        if self.committed.is_some_and(|done| done > position)
            || (self.committed == Some(position) && metadata == self.committed_metadata)
        {
            return None;
        }
        self.committed = Some(position);
        self.committed_metadata.clone_from(&metadata);
        Some((position, metadata))
    }

    /// The offsets above [`committable`](Self::committable) that are settled, as commit
    /// metadata for [`SettledAbove::decode`], at most `max` bytes (empty when there are none).
    /// Runs of offsets alternate, starting with the pending run at the position: `"<prefix>p,s,
    /// p,s,…"`; what does not fit is left out, and is delivered again should it be read again.
    /// The walk stops after [`SETTLED_METADATA_WALK`] pending offsets, so a long backlog costs
    /// no more than that per call.
    pub fn settled_metadata(&self, max: usize) -> String {
        let (Some((&position, _)), Some(last)) = (self.pending.first_key_value(), self.last) else {
            return String::new();
        };
        let mut out = String::new();
        // The pending run starts at `start`; `next` is the first offset after it.
        let (mut start, mut next) = (position, position);
        for &offset in self.pending.keys().take(SETTLED_METADATA_WALK) {
            if offset > next {
                if !append_runs(&mut out, next - start, offset - next, max) {
                    return out;
                }
                start = offset;
            }
            next = offset + 1;
        }
        // Past the walk's end, the offsets after `next` may still be pending.
        if last >= next && self.pending.len() <= SETTLED_METADATA_WALK {
            append_runs(&mut out, next - start, last + 1 - next, max);
        }
        out
    }

    /// Offsets with unsettled deliveries; for backpressure and metrics.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

/// Commit metadata of the dispatcher's settled offsets starts with this; other metadata is
/// ignored.
pub const SETTLED_METADATA_PREFIX: &str = "hookline/settled/v1:";

/// How much commit metadata the settled offsets may take: below the broker's
/// `offset.metadata.max.bytes` (4096 by default), which refuses the whole commit above it.
pub const SETTLED_METADATA_MAX: usize = 3_072;

/// How many pending offsets [`OffsetTracker::settled_metadata`] looks at, at most: 3 KB of
/// metadata holds a few hundred runs, so a longer walk would rarely add one.
pub const SETTLED_METADATA_WALK: usize = 4_096;

/// Appends a pending and a settled run to `out` if that keeps it within `max` bytes.
fn append_runs(out: &mut String, pending: i64, settled: i64, max: usize) -> bool {
    let run = format!(
        "{}{pending},{settled}",
        if out.is_empty() {
            SETTLED_METADATA_PREFIX
        } else {
            ","
        }
    );
    if out.len() + run.len() > max {
        return false;
    }
    out.push_str(&run);
    true
}

/// The offsets above a committed position that were settled when it was committed, read back
/// from the commit's metadata ([`OffsetTracker::settled_metadata`]): the next reader of the
/// partition (the same replica after a crash, or another one after a rebalance) skips them
/// instead of delivering them a second time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettledAbove {
    /// Settled ranges `[start, end)`, ascending, disjoint, all above the position.
    ranges: Vec<(i64, i64)>,
}

impl SettledAbove {
    /// The settled offsets that `metadata`, committed with `position`, describes; `None` when
    /// it is not of this format (empty, another writer's, malformed), which settles nothing.
    pub fn decode(position: i64, metadata: &str) -> Option<Self> {
        let runs = metadata.strip_prefix(SETTLED_METADATA_PREFIX)?;
        let mut ranges = Vec::new();
        let mut at = position;
        for (i, run) in runs.split(',').enumerate() {
            let len: i64 = run.parse().ok().filter(|l| *l > 0)?;
            let end = at.checked_add(len)?;
            if i % 2 == 1 {
                ranges.push((at, end));
            }
            at = end;
        }
        Some(Self { ranges })
    }

    /// Whether `offset` was settled when the position was committed.
    pub fn contains(&self, offset: i64) -> bool {
        let i = self.ranges.partition_point(|(_, end)| *end <= offset);
        self.ranges
            .get(i)
            .is_some_and(|(start, _)| *start <= offset)
    }

    /// Whether no offset at or above `offset` is settled: nothing more to skip from there on.
    pub fn exhausted_at(&self, offset: i64) -> bool {
        self.ranges.last().is_none_or(|(_, end)| *end <= offset)
    }

    /// How many offsets are settled.
    pub fn len(&self) -> u64 {
        self.ranges
            .iter()
            .map(|(s, e)| u64::try_from(e - s).unwrap_or(0))
            .sum()
    }

    /// Whether no offset is settled.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

#[cfg(test)]
mod tests;

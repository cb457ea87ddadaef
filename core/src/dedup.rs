//! Duplicate suppression: the event ids one events-topic partition has seen within a window.
//! Each events record's id comes in with its offset and is answered [`Check::First`] (deliver it
//! and remember it), [`Check::Again`] (the same record read again, after a restart or a
//! rebalance: deliver it, at least once) or [`Check::Duplicate`] (another record with an id seen
//! within the window: do not deliver). What is remembered is also written to the tenant's dedup
//! topic as a [`Remembered`] record, so a dispatcher that takes the partition over restores it.
//!
//! # Guarantees
//! - Memory: 16 bytes of id hash and 8 of offset per id (24-byte map entries), in hash maps of
//!   one generation each (a 24th of the window); measured per id in `BENCHMARKS.md`
//!   (`hookline-bench`'s `dedup-memory`).
//! - A whole generation is forgotten at once when it is older than the window, so an id is
//!   remembered for at least the window and at most a 24th of it longer.
//!
//! # Caveats
//! - Ids are kept as 128-bit SHA-256 prefixes: two different ids are mistaken for each other
//!   with a probability of about n²/2¹²⁹ (10⁻²⁵ for a billion ids).
//! - Dedup is per partition: two records with the same id but different keys usually land on
//!   different partitions and are both delivered.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use sha2::{Digest, Sha256};

/// The hash an id is remembered by.
pub type IdHash = u128;

/// The hash of `id`.
pub fn id_hash(id: &str) -> IdHash {
    let digest = Sha256::digest(id.as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    u128::from_be_bytes(first)
}

/// What a record is, as far as duplicates go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Not seen within the window: deliver, and remember it.
    First,
    /// This very record (same offset) seen before: deliver again (at least once).
    Again,
    /// Another record with this id was seen within the window, at `first_offset`.
    Duplicate {
        /// The offset of the record that was delivered.
        first_offset: i64,
    },
}

/// How many generations a window is cut into.
pub const GENERATIONS: u64 = 24;

/// An [`IdHash`] as two words: 8-byte aligned, so a map entry (key and offset) is 24 bytes
/// where a `u128` key (16-byte aligned) would make it 32.
type Key = (u64, u64);

fn key(hash: IdHash) -> Key {
    ((hash >> 64) as u64, hash as u64)
}

/// The ids one partition has seen.
#[derive(Debug, Clone)]
pub struct Seen {
    window_s: u64,
    span_s: u64,
    /// (start, ids → offset), oldest first.
    generations: VecDeque<(u64, HashMap<Key, i64>)>,
}

impl Seen {
    /// Remembers ids for `window` (at least one minute).
    pub fn new(window: Duration) -> Seen {
        let window_s = window.as_secs().max(60);
        Seen {
            window_s,
            span_s: (window_s / GENERATIONS).max(1),
            generations: VecDeque::new(),
        }
    }

    fn expire(&mut self, now_s: u64) {
        while let Some((start, _)) = self.generations.front() {
            if start + self.span_s + self.window_s <= now_s {
                self.generations.pop_front();
            } else {
                break;
            }
        }
    }

    fn find(&self, hash: IdHash) -> Option<i64> {
        let k = key(hash);
        self.generations
            .iter()
            .rev()
            .find_map(|(_, ids)| ids.get(&k).copied())
    }

    fn insert(&mut self, hash: IdHash, offset: i64, at_s: u64) {
        let hash = key(hash);
        let start = at_s - at_s % self.span_s;
        match self.generations.iter_mut().rev().find(|(s, _)| *s == start) {
            Some((_, ids)) => {
                ids.insert(hash, offset);
            }
            None => {
                // Generations stay in order: one older than the newest (a restored record)
                // goes into the newest, which only keeps it a little longer.
                match self.generations.back_mut() {
                    Some((newest, ids)) if *newest > start => {
                        ids.insert(hash, offset);
                    }
                    _ => self
                        .generations
                        .push_back((start, HashMap::from([(hash, offset)]))),
                }
            }
        }
    }

    /// Checks the record at `offset` with id `hash`, read at `now_s` (Unix seconds), and
    /// remembers it when it is the first.
    pub fn check(&mut self, hash: IdHash, offset: i64, now_s: u64) -> Check {
        self.expire(now_s);
        match self.find(hash) {
            Some(o) if o == offset => Check::Again,
            Some(first_offset) => Check::Duplicate { first_offset },
            None => {
                self.insert(hash, offset, now_s);
                Check::First
            }
        }
    }

    /// Whether `hash` is remembered (without remembering it).
    pub fn contains(&self, hash: IdHash) -> bool {
        self.find(hash).is_some()
    }

    /// Remembers what the dedup topic says was seen at `at_s`, unless it is out of the window.
    pub fn restore(&mut self, r: Remembered, now_s: u64) {
        if r.at_s + self.window_s > now_s && self.find(r.hash).is_none() {
            self.insert(r.hash, r.offset, r.at_s);
        }
        self.expire(now_s);
    }

    /// Ids remembered.
    pub fn len(&self) -> usize {
        self.generations.iter().map(|(_, ids)| ids.len()).sum()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One remembered id as the dedup topic holds it: key = the 16-byte hash (so compaction keeps
/// the latest per id), value = offset and time, 8 bytes each, big-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remembered {
    /// The id's hash.
    pub hash: IdHash,
    /// The events-topic offset of the record delivered.
    pub offset: i64,
    /// When it was first seen (Unix seconds).
    pub at_s: u64,
}

impl Remembered {
    /// The record's key.
    pub fn key(&self) -> [u8; 16] {
        self.hash.to_be_bytes()
    }

    /// The record's value.
    pub fn value(&self) -> [u8; 16] {
        let mut v = [0u8; 16];
        v[..8].copy_from_slice(&self.offset.to_be_bytes());
        v[8..].copy_from_slice(&self.at_s.to_be_bytes());
        v
    }

    /// Reads a record back; `None` when it is not one.
    pub fn read(key: &[u8], value: &[u8]) -> Option<Remembered> {
        Some(Remembered {
            hash: u128::from_be_bytes(key.try_into().ok()?),
            offset: i64::from_be_bytes(value.get(..8)?.try_into().ok()?),
            at_s: u64::from_be_bytes(value.get(8..16)?.try_into().ok()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn a_second_record_with_the_same_id_is_a_duplicate_and_the_same_record_is_not() {
        let mut s = Seen::new(DAY);
        let h = id_hash("evt_1");
        assert_eq!(s.check(h, 10, 1_000), Check::First);
        assert_eq!(s.check(h, 10, 1_001), Check::Again);
        assert_eq!(s.check(h, 11, 1_002), Check::Duplicate { first_offset: 10 });
        assert_eq!(s.check(id_hash("evt_2"), 12, 1_003), Check::First);
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn an_id_is_forgotten_after_the_window_and_not_before() {
        let mut s = Seen::new(DAY);
        let h = id_hash("evt_1");
        assert_eq!(s.check(h, 1, 0), Check::First);
        assert_eq!(s.check(h, 2, 86_399), Check::Duplicate { first_offset: 1 });
        let span = 86_400 / GENERATIONS;
        assert_eq!(s.check(h, 3, 86_400 + span), Check::First);
    }

    #[test]
    fn what_the_dedup_topic_holds_is_restored_within_the_window_only() {
        let mut s = Seen::new(DAY);
        let r = Remembered {
            hash: id_hash("evt_1"),
            offset: 7,
            at_s: 90_000,
        };
        assert_eq!(Remembered::read(&r.key(), &r.value()), Some(r));
        assert_eq!(Remembered::read(&[1, 2], &r.value()), None);
        s.restore(r, 100_000);
        s.restore(
            Remembered {
                hash: id_hash("old"),
                offset: 1,
                at_s: 10_000,
            },
            100_000,
        );
        assert_eq!(
            s.check(id_hash("evt_1"), 9, 100_100),
            Check::Duplicate { first_offset: 7 }
        );
        assert_eq!(s.check(id_hash("evt_1"), 7, 100_100), Check::Again);
        assert_eq!(s.check(id_hash("old"), 2, 100_100), Check::First);
    }

    #[test]
    fn hashes_differ_for_different_ids() {
        assert_ne!(id_hash("a"), id_hash("b"));
        assert_eq!(id_hash("a"), id_hash("a"));
    }
}

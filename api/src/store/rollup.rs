//! Per-minute counts and latency histograms, so that stats over 30 days read at most
//! 43,200 small rows per `Webhook` instead of every attempt: each attempt of a batch is added
//! to its (tenant, webhook, minute) [`Minute`] in memory, and the store adds each minute to
//! its row once per batch. Percentiles come from the histogram ([`Histogram::percentile`]).

use std::collections::HashMap;

use super::{Counts, Percentiles};

/// Upper bounds (ms) of the latency histogram's buckets; the last bucket is unbounded.
///
/// Decision: fixed bounds, dense where receivers usually answer (10 ms – 1 s) and sparse up to
/// the 30 s default timeout; a percentile is reported as its bucket's upper bound, which errs
/// on the slow side by at most one bucket.
pub const BOUNDS_MS: [u64; 14] = [
    5, 10, 25, 50, 75, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000,
];

/// Counts of each histogram bucket (the last one is for latencies above every bound).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram(pub [u64; BOUNDS_MS.len() + 1]);

impl Histogram {
    /// Adds one latency.
    pub fn add(&mut self, latency_ms: u64) {
        let i = BOUNDS_MS.partition_point(|b| *b < latency_ms);
        self.0[i] += 1;
    }

    /// Adds another histogram.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a += b;
        }
    }

    /// Latencies counted.
    pub fn count(&self) -> u64 {
        self.0.iter().sum()
    }

    /// The upper bound of the bucket holding the `q` quantile (0 < q ≤ 1); for the open last
    /// bucket, twice the largest bound. `None` when empty.
    pub fn percentile(&self, q: f64) -> Option<u64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        // The rank of the quantile, from 1: the smallest r with r >= q * n.
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        for (i, c) in self.0.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(BOUNDS_MS.get(i).copied().unwrap_or(BOUNDS_MS[13] * 2));
            }
        }
        None
    }

    /// p50, p90 and p99; `None` when empty.
    pub fn percentiles(&self) -> Option<Percentiles> {
        Some(Percentiles {
            p50: self.percentile(0.5)?,
            p90: self.percentile(0.9)?,
            p99: self.percentile(0.99)?,
        })
    }

    /// Little-endian u64s, as stored.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.iter().flat_map(|c| c.to_le_bytes()).collect()
    }

    /// Reads stored bytes; a short or empty value reads as zeros where it ends.
    pub fn from_bytes(bytes: &[u8]) -> Histogram {
        let mut h = Histogram::default();
        for (slot, chunk) in h.0.iter_mut().zip(bytes.chunks_exact(8)) {
            *slot = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        }
        h
    }
}

/// One minute of one `Webhook`: counts and the latencies of the requests made.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Minute {
    /// The counts.
    pub counts: Counts,
    /// The latencies.
    pub histogram: Histogram,
}

impl Minute {
    /// Adds an attempt with `outcome` (`delivered`, `retry`, `dead_letter`, `gone`); `sent` says
    /// whether a request was made (only those have a latency).
    pub fn add(&mut self, outcome: &str, sent: bool, latency_ms: u64) {
        match outcome {
            "delivered" => self.counts.delivered += 1,
            hookline_core::retry_topics::DUPLICATE => self.counts.duplicates += 1,
            "retry" => {
                self.counts.failed += 1;
                self.counts.retrying += 1;
            }
            _ => {
                if sent {
                    self.counts.failed += 1;
                }
                self.counts.dead_lettered += 1;
            }
        }
        if sent {
            self.histogram.add(latency_ms);
        }
    }

    /// Adds another minute.
    pub fn merge(&mut self, other: &Minute) {
        self.counts.delivered += other.counts.delivered;
        self.counts.failed += other.counts.failed;
        self.counts.retrying += other.counts.retrying;
        self.counts.dead_lettered += other.counts.dead_lettered;
        self.counts.duplicates += other.counts.duplicates;
        self.histogram.merge(&other.histogram);
    }
}

/// A batch's minutes, keyed by (tenant, webhook, minute start in Unix ms).
pub type Minutes = HashMap<(String, String, i64), Minute>;

/// The start (Unix ms) of the minute holding `ms`.
pub fn minute_of(ms: i64) -> i64 {
    ms.div_euclid(60_000) * 60_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_the_upper_bounds_of_the_buckets_holding_them() {
        let mut h = Histogram::default();
        for _ in 0..98 {
            h.add(7); // ≤ 10
        }
        h.add(400); // ≤ 500
        h.add(90_000); // above every bound
        assert_eq!(h.count(), 100);
        assert_eq!(
            h.percentiles(),
            Some(Percentiles {
                p50: 10,
                p90: 10,
                p99: 500
            })
        );
        assert_eq!(h.percentile(1.0), Some(120_000));
        assert_eq!(Histogram::default().percentiles(), None);
    }

    #[test]
    fn a_bound_itself_falls_in_its_own_bucket() {
        let mut h = Histogram::default();
        h.add(5);
        h.add(0);
        assert_eq!(h.0[0], 2);
        h.add(6);
        assert_eq!(h.0[1], 1);
    }

    #[test]
    fn histograms_round_trip_through_bytes_and_merge() {
        let mut a = Histogram::default();
        a.add(30);
        a.add(3_000);
        let b = Histogram::from_bytes(&a.to_bytes());
        assert_eq!(a, b);
        let mut m = a.clone();
        m.merge(&b);
        assert_eq!(m.count(), 4);
        assert_eq!(Histogram::from_bytes(&[]), Histogram::default());
    }

    #[test]
    fn outcomes_count_where_a_person_expects_them() {
        let mut m = Minute::default();
        m.add("delivered", true, 10);
        m.add("retry", true, 20);
        m.add("dead_letter", true, 30);
        m.add("gone", true, 5);
        m.add("dead_letter", false, 0);
        m.add("duplicate", false, 0);
        assert_eq!(
            m.counts,
            Counts {
                delivered: 1,
                failed: 3,
                retrying: 1,
                dead_lettered: 3,
                duplicates: 1,
            }
        );
        assert_eq!(m.histogram.count(), 4);
    }

    #[test]
    fn minutes_start_on_the_minute_also_before_1970() {
        assert_eq!(minute_of(125_000), 120_000);
        assert_eq!(minute_of(-1), -60_000);
    }
}

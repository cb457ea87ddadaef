//! Back-pressure, decided in one place from `--max-pending`: when consumption pauses and
//! resumes (with hysteresis), how many jobs the lanes may park, and when one `Webhook` holds
//! more than its fair share of memory. Pure: the pipeline feeds it counts and acts on answers.
//!
//! # Decisions
//! - Pause above `max_pending` jobs in memory, or above the bytes of records the memory budget
//!   allows them ([`hookline_core::memory::Budget`]), resume at 80 % of the jobs and half the bytes: checked per record and per
//!   completion, not per tick (a backlog read ahead for a whole tick overflowed a healthy URL;
//!   BENCHMARKS.md).
//! - Parked jobs count towards `max_pending`, so back-pressure bounds them; the lanes' own limit
//!   (twice `max_pending`) is a safety net above it. Equal to it, a partition whose jobs all sat
//!   behind busy keys hit the limit first and postponed healthy deliveries through the retry
//!   topics.
//! - A `Webhook`'s fair share only matters under pressure (more than half of `max_pending` in
//!   memory), and then is `max_pending / endpoints`, at least [`MIN_SHARE`]. A lone `Webhook`
//!   has no one to make room for: back-pressure alone bounds it.

/// Least fair share of a `Webhook`, in jobs.
pub const MIN_SHARE: usize = 128;

/// What the deliveries in memory hold: how many, and the bytes of their records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Load {
    /// Deliveries.
    pub jobs: usize,
    /// Bytes.
    pub bytes: usize,
}

/// The back-pressure thresholds of one pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pressure {
    max_pending: usize,
    max_bytes: usize,
}

impl Pressure {
    /// Thresholds for `--max-pending` deliveries holding at most `max_bytes` of records
    /// ([`hookline_core::memory::Budget::pending_bytes`]).
    pub fn new(max_pending: usize, max_bytes: u64) -> Pressure {
        Pressure {
            max_pending,
            max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
        }
    }

    /// Whether `load` is above either limit: consumption must pause now.
    pub fn over(&self, load: Load) -> bool {
        load.jobs > self.max_pending || load.bytes > self.max_bytes
    }

    /// Whether consumption paused at some point may resume with `load` in memory: jobs at
    /// 80 % of their limit or below, bytes at half of theirs. A pause drops what the consumer
    /// had read ahead, and a resume reads it again: large records reach the byte limit with
    /// few deliveries in memory, and a resume every few dozen of them spent the time in
    /// fetching (BENCHMARKS.md).
    pub fn relieved(&self, load: Load) -> bool {
        load.jobs <= self.max_pending * 8 / 10 && load.bytes <= self.max_bytes / 2
    }

    /// The back-pressure state after `was` with `load` in memory (hysteresis between
    /// [`Pressure::over`] and [`Pressure::relieved`]).
    pub fn next(&self, was: bool, load: Load) -> bool {
        if self.over(load) {
            true
        } else if self.relieved(load) {
            false
        } else {
            was
        }
    }

    /// Jobs the lanes may park before they postpone through the retry path.
    pub fn max_parked(&self) -> usize {
        self.max_pending.saturating_mul(2)
    }

    /// Whether a `Webhook` holding `held` jobs is over its share when `total` jobs are in memory
    /// across `endpoints` `Webhook`s. The caller also asks whether the `Webhook` drains so
    /// slowly that its jobs would wait longer in memory than the postponement
    /// ([`hookline_core::drain`]): a busy, healthy receiver above its share under a backlog is
    /// not postponed.
    pub fn overflows(&self, held: usize, total: usize, endpoints: usize) -> bool {
        endpoints > 1
            && total > self.max_pending / 2
            && held > (self.max_pending / endpoints).max(MIN_SHARE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jobs(jobs: usize) -> Load {
        Load { jobs, bytes: 0 }
    }

    #[test]
    fn consumption_pauses_above_the_limit_and_resumes_at_eighty_percent() {
        let p = Pressure::new(10_000, 1 << 30);
        assert!(!p.next(false, jobs(10_000)));
        assert!(p.next(false, jobs(10_001)));
        assert!(
            p.next(true, jobs(9_000)),
            "between the marks the state holds"
        );
        assert!(!p.next(false, jobs(9_000)));
        assert!(!p.next(true, jobs(8_000)));
        assert_eq!(p.max_parked(), 20_000);
    }

    #[test]
    fn bytes_pause_consumption_long_before_the_count_does_for_large_records() {
        let p = Pressure::new(10_000, 100 << 20);
        // 1,601 records of 64 KiB: few deliveries, but over 100 MiB.
        let big = |n: usize| Load {
            jobs: n,
            bytes: n * 65_536,
        };
        assert!(!p.over(big(1_600)));
        assert!(p.over(big(1_601)));
        assert!(
            p.next(true, big(1_000)),
            "above half the bytes it stays paused"
        );
        assert!(!p.next(true, big(800)));
        assert!(p.relieved(big(800)) && !p.relieved(big(801)));
    }

    #[test]
    fn only_a_webhook_above_its_share_under_pressure_overflows() {
        let p = Pressure::new(10_000, 1 << 30);
        assert!(!p.overflows(4_000, 4_000, 1));
        assert!(
            !p.overflows(9_000, 9_000, 1),
            "a lone Webhook never overflows"
        );
        assert!(!p.overflows(10_001, 10_001, 1));
        assert!(p.overflows(10_001, 10_001, 2));
        assert!(!p.overflows(4_000, 4_900, 2), "no pressure below half");
        assert!(p.overflows(5_001, 6_000, 2));
        assert!(
            !p.overflows(128, 6_000, 100),
            "the least share is MIN_SHARE"
        );
        assert!(p.overflows(129, 6_000, 100));
    }
}

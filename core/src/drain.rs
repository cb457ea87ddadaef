//! How fast a `Webhook`'s deliveries leave memory: attempts finished per
//! second over the last whole window of at least a second (or the window in
//! progress, once it is 100 ms old, when that is faster). The pipeline's
//! overflow rule asks it whether jobs held for a `Webhook` would wait longer
//! in memory than a trip through the retry path takes; a busy but healthy
//! receiver drains thousands a second and never overflows, a dead one drains
//! nothing.

use std::time::{Duration, Instant};

/// The shortest window a rate is taken over.
const WINDOW: Duration = Duration::from_secs(1);
/// The least age of the window in progress for its own rate to count.
const PARTIAL: Duration = Duration::from_millis(100);

/// Attempts finished per second.
#[derive(Debug, Clone)]
pub struct DrainMeter {
    start: Instant,
    count: u64,
    last: Option<f64>,
}

impl DrainMeter {
    /// A meter with no history, its first window starting at `now`.
    pub fn new(now: Instant) -> DrainMeter {
        DrainMeter {
            start: now,
            count: 0,
            last: None,
        }
    }

    fn roll(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.start);
        if elapsed >= WINDOW {
            self.last = Some(self.count as f64 / elapsed.as_secs_f64());
            self.start = now;
            self.count = 0;
        }
    }

    /// One attempt finished at `now`.
    pub fn record(&mut self, now: Instant) {
        self.roll(now);
        self.count += 1;
    }

    /// Attempts per second at `now`; `None` before the first whole window
    /// unless the window in progress already shows a rate.
    pub fn rate(&mut self, now: Instant) -> Option<f64> {
        self.roll(now);
        let elapsed = now.saturating_duration_since(self.start);
        let partial = (elapsed >= PARTIAL && self.count > 0)
            .then(|| self.count as f64 / elapsed.as_secs_f64());
        match (self.last, partial) {
            (Some(l), Some(p)) => Some(l.max(p)),
            (l, p) => l.or(p),
        }
    }

    /// Whether `held` jobs would wait in memory longer than `postpone` at
    /// this rate. Unknown rate: no (it is known within a second).
    pub fn slower_than(&mut self, held: usize, postpone: Duration, now: Instant) -> bool {
        self.rate(now)
            .is_some_and(|r| held as f64 > r * postpone.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POSTPONE: Duration = Duration::from_secs(10);

    #[test]
    fn no_history_is_no_verdict() {
        let t0 = Instant::now();
        let mut m = DrainMeter::new(t0);
        assert_eq!(m.rate(t0 + Duration::from_millis(50)), None);
        assert!(!m.slower_than(1_000_000, POSTPONE, t0 + Duration::from_millis(50)));
    }

    #[test]
    fn a_dead_receiver_drains_nothing_after_a_second() {
        let t0 = Instant::now();
        let mut m = DrainMeter::new(t0);
        let t1 = t0 + Duration::from_millis(1_100);
        assert_eq!(m.rate(t1), Some(0.0));
        assert!(m.slower_than(1, POSTPONE, t1));
    }

    #[test]
    fn a_busy_healthy_receiver_is_never_slow_for_its_backlog() {
        let t0 = Instant::now();
        let mut m = DrainMeter::new(t0);
        // 3,000 attempts a second for two seconds.
        for i in 0..6_000u64 {
            m.record(t0 + Duration::from_micros(i * 333));
        }
        let now = t0 + Duration::from_secs(2);
        let rate = m.rate(now).unwrap();
        assert!((2_900.0..3_100.0).contains(&rate), "{rate}");
        assert!(
            !m.slower_than(5_000, POSTPONE, now),
            "5,000 held is under 2 s of work"
        );
        assert!(
            m.slower_than(40_000, POSTPONE, now),
            "40,000 held is over 13 s of work"
        );
    }

    #[test]
    fn the_window_in_progress_counts_when_it_is_faster() {
        let t0 = Instant::now();
        let mut m = DrainMeter::new(t0);
        for i in 0..300u64 {
            m.record(t0 + Duration::from_millis(i));
        }
        // 300 in 0.3 s: 1,000/s before any whole window.
        let rate = m.rate(t0 + Duration::from_millis(300)).unwrap();
        assert!((900.0..1_100.0).contains(&rate), "{rate}");
    }

    #[test]
    fn a_receiver_that_stops_is_seen_slow_one_window_later() {
        let t0 = Instant::now();
        let mut m = DrainMeter::new(t0);
        for i in 0..1_000u64 {
            m.record(t0 + Duration::from_millis(i));
        }
        let stopped = t0 + Duration::from_millis(1_000);
        assert!(!m.slower_than(500, POSTPONE, stopped));
        // Nothing finishes for the next 1.2 s.
        assert!(m.slower_than(500, POSTPONE, stopped + Duration::from_millis(2_200)));
    }
}

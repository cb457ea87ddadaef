//! A per-webhook circuit breaker: before each attempt the dispatcher asks
//! [`CircuitBreaker::try_acquire`], and after it reports the result with
//! [`CircuitBreaker::record`]; the breaker's [`CircuitState`] flows out to
//! the `Webhook` status and the circuit-state metric. Time is passed in, so
//! tests drive it with `Instant`s of their own.
//!
//! - **Closed**: every attempt goes. Results enter a sliding window of the
//!   last `window_size` results no older than `window_duration`; once it
//!   holds at least `min_requests`, a failure ratio at or above
//!   `failure_ratio` opens the circuit.
//! - **Open**: nothing goes until the cool-down ends; results of attempts
//!   started before opening are ignored.
//! - **Half-open**: `half_open_probes` attempts go through. When all of
//!   them succeed the circuit closes with a fresh window; the first failure
//!   re-opens it with the cool-down doubled, up to `max_cool_down`. A probe
//!   whose result never arrives (its task was dropped) is written off after
//!   `probe_timeout`, and another probe may go.
//!
//! What counts as a failure is the caller's call; the intent is
//! [`crate::retry::Failure::counts_against_circuit`]: network errors,
//! timeouts, 408, 429 and 5xx, but not a receiver's 4xx.
//!
//! An attempt refused here is not a failed attempt: the caller holds or
//! reschedules the delivery without spending one of its retries.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Tuning of a [`CircuitBreaker`].
#[derive(Debug, Clone, PartialEq)]
pub struct CircuitConfig {
    /// Most results kept in the window.
    pub window_size: usize,
    /// Oldest result kept in the window.
    pub window_duration: Duration,
    /// Fewest results in the window before the ratio is judged.
    pub min_requests: usize,
    /// Failure ratio, in `0.0..=1.0`, at or above which the circuit opens.
    pub failure_ratio: f64,
    /// Cool-down of the first opening.
    pub cool_down: Duration,
    /// Longest cool-down after repeated failed probes.
    pub max_cool_down: Duration,
    /// Probes let through while half-open; all must succeed to close.
    pub half_open_probes: u32,
    /// How long a probe may go unreported before it is written off.
    pub probe_timeout: Duration,
}

impl Default for CircuitConfig {
    /// 100 results over at most a minute, judged from 20, opening at 50 %
    /// failures; cool-down 5 s doubling to 5 min; one probe, written off
    /// after 2 min (beyond the longest delivery timeout).
    fn default() -> Self {
        Self {
            window_size: 100,
            window_duration: Duration::from_secs(60),
            min_requests: 20,
            failure_ratio: 0.5,
            cool_down: Duration::from_secs(5),
            max_cool_down: Duration::from_secs(300),
            half_open_probes: 1,
            probe_timeout: Duration::from_secs(120),
        }
    }
}

/// The state shown in status and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Deliveries flow.
    Closed,
    /// Deliveries wait out the cool-down.
    Open,
    /// A few probes test the endpoint.
    HalfOpen,
}

impl CircuitState {
    /// `closed`, `open` or `half-open`.
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half-open",
        }
    }
}

/// An attempt the breaker did not let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    /// When the circuit may let an attempt through again: the end of the
    /// cool-down, or `None` while half-open probes are pending.
    pub retry_at: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inner {
    Closed,
    Open { until: Instant },
    HalfOpen(Probes),
}

/// The probes of a half-open circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Probes {
    issued: u32,
    succeeded: u32,
    last_issued: Option<Instant>,
}

impl Probes {
    fn acquire(&mut self, now: Instant, config: &CircuitConfig) -> Result<(), Rejected> {
        let timed_out = self
            .last_issued
            .is_some_and(|at| now.saturating_duration_since(at) >= config.probe_timeout);
        if timed_out {
            // Write off the probes still out; keep the successes.
            self.issued = self.succeeded;
        }
        if self.issued < config.half_open_probes.max(1) {
            self.issued += 1;
            self.last_issued = Some(now);
            Ok(())
        } else {
            Err(Rejected { retry_at: None })
        }
    }
}

/// The breaker of one webhook.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    config: CircuitConfig,
    inner: Inner,
    /// `(when, failed)` for each result in the window, oldest first.
    window: VecDeque<(Instant, bool)>,
    failures: usize,
    /// Openings since the circuit last closed; grows the cool-down.
    trips: u32,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(config: CircuitConfig) -> Self {
        Self {
            config,
            inner: Inner::Closed,
            window: VecDeque::new(),
            failures: 0,
            trips: 0,
        }
    }

    /// The current state. An open circuit whose cool-down has ended shows
    /// as open until the next [`try_acquire`](Self::try_acquire).
    pub fn state(&self) -> CircuitState {
        match self.inner {
            Inner::Closed => CircuitState::Closed,
            Inner::Open { .. } => CircuitState::Open,
            Inner::HalfOpen(_) => CircuitState::HalfOpen,
        }
    }

    /// Asks to start an attempt at `now`.
    ///
    /// # Errors
    /// [`Rejected`] while open, or while half-open with every probe out.
    pub fn try_acquire(&mut self, now: Instant) -> Result<(), Rejected> {
        match &mut self.inner {
            Inner::Closed => Ok(()),
            Inner::Open { until } if now < *until => Err(Rejected {
                retry_at: Some(*until),
            }),
            Inner::Open { .. } => {
                let mut probes = Probes::default();
                let admitted = probes.acquire(now, &self.config);
                self.inner = Inner::HalfOpen(probes);
                admitted
            }
            Inner::HalfOpen(probes) => probes.acquire(now, &self.config),
        }
    }

    /// Reports the result of an attempt that [`try_acquire`](Self::try_acquire)
    /// let through, finished at `now`.
    pub fn record(&mut self, now: Instant, success: bool) {
        match &mut self.inner {
            Inner::Open { .. } => {}
            Inner::HalfOpen(probes) if success => {
                probes.succeeded += 1;
                if probes.succeeded >= self.config.half_open_probes.max(1) {
                    self.inner = Inner::Closed;
                    self.trips = 0;
                }
            }
            Inner::HalfOpen(_) => self.trip(now),
            Inner::Closed => {
                self.push(now, !success);
                let total = self.window.len();
                if total >= self.config.min_requests.max(1)
                    && self.failures as f64 >= self.config.failure_ratio * total as f64
                {
                    self.trip(now);
                }
            }
        }
    }

    /// The cool-down the next opening would use.
    pub fn next_cool_down(&self) -> Duration {
        let factor = 1u32.checked_shl(self.trips).unwrap_or(u32::MAX);
        self.config
            .cool_down
            .checked_mul(factor)
            .unwrap_or(Duration::MAX)
            .min(self.config.max_cool_down)
    }

    fn trip(&mut self, now: Instant) {
        let cool_down = self.next_cool_down();
        self.trips = self.trips.saturating_add(1);
        self.window.clear();
        self.failures = 0;
        self.inner = Inner::Open {
            until: now.checked_add(cool_down).unwrap_or(now),
        };
    }

    fn push(&mut self, now: Instant, failed: bool) {
        while let Some(&(at, old_failed)) = self.window.front() {
            let expired = now.saturating_duration_since(at) >= self.config.window_duration;
            if !expired && self.window.len() < self.config.window_size.max(1) {
                break;
            }
            self.window.pop_front();
            self.failures -= usize::from(old_failed);
        }
        self.window.push_back((now, failed));
        self.failures += usize::from(failed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn config() -> CircuitConfig {
        CircuitConfig {
            window_size: 10,
            window_duration: 60 * SEC,
            min_requests: 4,
            failure_ratio: 0.5,
            cool_down: 5 * SEC,
            max_cool_down: 12 * SEC,
            half_open_probes: 2,
            probe_timeout: 30 * SEC,
        }
    }

    /// A breaker opened at `t0` by four failures.
    fn opened(t0: Instant) -> CircuitBreaker {
        let mut breaker = CircuitBreaker::new(config());
        for _ in 0..4 {
            breaker.record(t0, false);
        }
        assert_eq!(breaker.state(), CircuitState::Open);
        breaker
    }

    #[test]
    fn failures_below_the_minimum_number_of_requests_keep_it_closed() {
        let t0 = Instant::now();
        let mut breaker = CircuitBreaker::new(config());
        for _ in 0..3 {
            breaker.record(t0, false);
        }
        assert_eq!(breaker.state(), CircuitState::Closed);
        assert_eq!(breaker.try_acquire(t0), Ok(()));
    }

    #[test]
    fn failure_ratio_at_the_threshold_opens_and_rejects_until_the_cool_down_ends() {
        let t0 = Instant::now();
        let mut breaker = CircuitBreaker::new(config());
        for success in [true, false, true] {
            breaker.record(t0, success);
        }
        assert_eq!(breaker.state(), CircuitState::Closed);
        breaker.record(t0, false); // 2 of 4 failed: 50 %.
        assert_eq!(breaker.state(), CircuitState::Open);
        assert_eq!(
            breaker.try_acquire(t0 + SEC),
            Err(Rejected {
                retry_at: Some(t0 + 5 * SEC)
            })
        );
        assert_eq!(breaker.state().as_str(), "open");
    }

    #[test]
    fn results_older_than_the_window_no_longer_count() {
        let t0 = Instant::now();
        let mut breaker = CircuitBreaker::new(config());
        for _ in 0..3 {
            breaker.record(t0, false);
        }
        let later = t0 + 61 * SEC;
        for _ in 0..3 {
            breaker.record(later, true);
        }
        breaker.record(later, false);
        // Window: 3 successes and 1 failure; the old failures have left.
        assert_eq!(breaker.state(), CircuitState::Closed);
    }

    #[test]
    fn the_window_keeps_only_the_most_recent_results() {
        let t0 = Instant::now();
        let mut breaker = CircuitBreaker::new(CircuitConfig {
            min_requests: 10,
            ..config()
        });
        for _ in 0..4 {
            breaker.record(t0, false);
        }
        for _ in 0..10 {
            breaker.record(t0, true);
        }
        for _ in 0..4 {
            breaker.record(t0, false);
        }
        // The last 10 hold 4 failures: 40 %, below the threshold.
        assert_eq!(breaker.state(), CircuitState::Closed);
        breaker.record(t0, false);
        assert_eq!(breaker.state(), CircuitState::Open);
    }

    #[test]
    fn half_open_lets_the_probes_through_and_their_success_closes_it() {
        let t0 = Instant::now();
        let mut breaker = opened(t0);
        let after = t0 + 5 * SEC;
        assert_eq!(breaker.try_acquire(after), Ok(()));
        assert_eq!(breaker.state(), CircuitState::HalfOpen);
        assert_eq!(breaker.state().as_str(), "half-open");
        assert_eq!(breaker.try_acquire(after), Ok(()));
        assert_eq!(breaker.try_acquire(after), Err(Rejected { retry_at: None }));
        breaker.record(after, true);
        assert_eq!(breaker.state(), CircuitState::HalfOpen);
        breaker.record(after, true);
        assert_eq!(breaker.state(), CircuitState::Closed);
        assert_eq!(breaker.try_acquire(after), Ok(()));
        assert_eq!(breaker.next_cool_down(), 5 * SEC);
    }

    #[test]
    fn a_failed_probe_reopens_with_a_longer_capped_cool_down() {
        let t0 = Instant::now();
        let mut breaker = opened(t0);
        let mut now = t0;
        for expected in [10 * SEC, 12 * SEC, 12 * SEC] {
            now += 60 * SEC;
            assert_eq!(breaker.try_acquire(now), Ok(()));
            breaker.record(now, false);
            assert_eq!(breaker.state(), CircuitState::Open);
            assert_eq!(
                breaker.try_acquire(now),
                Err(Rejected {
                    retry_at: Some(now + expected)
                })
            );
        }
    }

    #[test]
    fn results_reported_while_open_are_ignored() {
        let t0 = Instant::now();
        let mut breaker = opened(t0);
        for _ in 0..10 {
            breaker.record(t0 + SEC, true);
        }
        assert_eq!(breaker.state(), CircuitState::Open);
        assert!(breaker.try_acquire(t0 + 2 * SEC).is_err());
    }

    #[test]
    fn a_probe_that_never_reports_is_written_off_after_the_probe_timeout() {
        let t0 = Instant::now();
        let mut breaker = CircuitBreaker::new(CircuitConfig {
            half_open_probes: 1,
            ..config()
        });
        for _ in 0..4 {
            breaker.record(t0, false);
        }
        let probe = t0 + 5 * SEC;
        assert_eq!(breaker.try_acquire(probe), Ok(()));
        assert!(breaker.try_acquire(probe + 29 * SEC).is_err());
        assert_eq!(breaker.try_acquire(probe + 30 * SEC), Ok(()));
    }
}

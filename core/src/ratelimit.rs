//! A per-webhook rate limit: before each attempt the dispatcher asks
//! [`RateLimiter::try_acquire`] with the current time, and gets either a
//! go-ahead or how long to wait. Time is passed in, so tests drive it.
//!
//! It is a token bucket refilled at `rate` tokens per second and holding at
//! most `burst`, computed exactly (no floating point after construction) in
//! the GCRA form: the limiter keeps the *theoretical arrival time* of the
//! next request and lets a request through when that time is no more than
//! `(burst - 1)` emission intervals ahead of now. A new limiter starts full.

use std::time::{Duration, Instant};

/// Why a rate cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error(
    "rate must be a finite number of requests per second above zero and at most one per nanosecond, got {0}"
)]
pub struct InvalidRate(pub f64);

/// A token bucket for one webhook.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    /// Time between two requests at the sustained rate.
    interval: Duration,
    /// How far ahead of now the theoretical arrival time may run.
    tolerance: Duration,
    /// When the next request would be due at the sustained rate.
    tat: Instant,
}

impl RateLimiter {
    /// A limiter of `per_second` requests per second (fractions allowed:
    /// `0.5` is one every two seconds) with bursts of up to `burst` (at
    /// least 1), full at `now`.
    ///
    /// A CRD that gives only `perSecond` should pass
    /// [`default_burst`] of it: one second's worth.
    ///
    /// # Errors
    /// [`InvalidRate`] unless `per_second` is finite, above zero and at
    /// most 10^9.
    pub fn new(per_second: f64, burst: u32, now: Instant) -> Result<Self, InvalidRate> {
        if !(per_second.is_finite() && per_second > 0.0 && per_second <= 1e9) {
            return Err(InvalidRate(per_second));
        }
        let interval = Duration::from_secs_f64(1.0 / per_second);
        let tolerance = interval.saturating_mul(burst.max(1) - 1);
        Ok(Self {
            interval,
            tolerance,
            tat: now,
        })
    }

    /// Takes one token at `now`.
    ///
    /// # Errors
    /// The time to wait until a token is available. Nothing is taken then.
    pub fn try_acquire(&mut self, now: Instant) -> Result<(), Duration> {
        let tat = self.tat.max(now);
        let ahead = tat.saturating_duration_since(now);
        if ahead > self.tolerance {
            return Err(ahead - self.tolerance);
        }
        self.tat = tat + self.interval;
        Ok(())
    }

    /// Time between requests at the sustained rate.
    pub fn interval(&self) -> Duration {
        self.interval
    }
}

/// One second's worth of requests, at least 1: the burst to use when a spec
/// gives only a rate.
pub fn default_burst(per_second: f64) -> u32 {
    if per_second.is_finite() && per_second >= 1.0 {
        per_second.ceil().min(f64::from(u32::MAX)) as u32
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_new_limiter_allows_a_full_burst_then_asks_to_wait_one_interval() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(10.0, 3, t0).unwrap();
        for _ in 0..3 {
            assert_eq!(limiter.try_acquire(t0), Ok(()));
        }
        assert_eq!(limiter.try_acquire(t0), Err(100 * MS));
        assert_eq!(limiter.try_acquire(t0 + 40 * MS), Err(60 * MS));
        assert_eq!(limiter.try_acquire(t0 + 100 * MS), Ok(()));
        assert_eq!(limiter.try_acquire(t0 + 100 * MS), Err(100 * MS));
    }

    #[test]
    fn sustained_traffic_is_held_to_the_rate() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(100.0, 1, t0).unwrap();
        let mut allowed = 0;
        for step in 0..1_000u32 {
            // Offered at 1 request per millisecond for one second.
            if limiter.try_acquire(t0 + step * MS).is_ok() {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 100);
    }

    #[test]
    fn an_idle_limiter_refills_only_up_to_the_burst() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(2.0, 4, t0).unwrap();
        let later = t0 + Duration::from_secs(3_600);
        for _ in 0..4 {
            assert_eq!(limiter.try_acquire(later), Ok(()));
        }
        assert_eq!(limiter.try_acquire(later), Err(500 * MS));
    }

    #[test]
    fn fractional_rates_space_requests_out() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(0.5, 1, t0).unwrap();
        assert_eq!(limiter.interval(), Duration::from_secs(2));
        assert_eq!(limiter.try_acquire(t0), Ok(()));
        assert_eq!(limiter.try_acquire(t0 + 500 * MS), Err(1_500 * MS));
        assert_eq!(limiter.try_acquire(t0 + 2_000 * MS), Ok(()));
    }

    #[test]
    fn unusable_rates_are_refused_and_burst_defaults_to_a_seconds_worth() {
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY, 2e9] {
            assert!(RateLimiter::new(rate, 1, Instant::now()).is_err(), "{rate}");
        }
        assert_eq!(default_burst(100.0), 100);
        assert_eq!(default_burst(2.5), 3);
        assert_eq!(default_burst(0.5), 1);
        assert_eq!(default_burst(f64::NAN), 1);
    }
}

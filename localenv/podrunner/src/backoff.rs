//! Restart backoff for crashed containers, as the kubelet schedules it: the first restart is
//! immediate, then the delay starts at `initial` and doubles up to `max`; a container that
//! ran for at least twice `max` starts over. Durations in, the next delay out.

use std::time::Duration;

/// The delays a [`Backoff`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Delay of the second restart (the first one is immediate).
    pub initial: Duration,
    /// Upper bound of every delay.
    pub max: Duration,
}

impl Default for BackoffPolicy {
    /// The kubelet's: 10 s doubling to 5 min.
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(300),
        }
    }
}

/// The restart delay state of one container.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: BackoffPolicy,
    /// The delay given last, `None` before the first restart.
    last: Option<Duration>,
}

impl Backoff {
    /// A fresh backoff: the next restart is immediate.
    pub fn new(policy: BackoffPolicy) -> Self {
        Self { policy, last: None }
    }

    /// The delay before restarting a container that exited after running for `ran_for`.
    pub fn next_delay(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= self.policy.max.saturating_mul(2) {
            self.last = None;
        }
        let delay = match self.last {
            None => Duration::ZERO,
            Some(d) if d.is_zero() => self.policy.initial,
            Some(d) => d.saturating_mul(2),
        }
        .min(self.policy.max);
        self.last = Some(delay);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn first_restart_is_immediate_then_delays_double_from_initial() {
        let mut b = Backoff::new(BackoffPolicy::default());
        let delays: Vec<u64> = (0..5).map(|_| b.next_delay(secs(1)).as_secs()).collect();
        assert_eq!(delays, vec![0, 10, 20, 40, 80]);
    }

    #[test]
    fn delay_is_capped_at_max() {
        let mut b = Backoff::new(BackoffPolicy {
            initial: secs(10),
            max: secs(30),
        });
        let delays: Vec<u64> = (0..5).map(|_| b.next_delay(secs(1)).as_secs()).collect();
        assert_eq!(delays, vec![0, 10, 20, 30, 30]);
    }

    #[test]
    fn long_stable_run_resets_the_backoff() {
        let mut b = Backoff::new(BackoffPolicy::default());
        b.next_delay(secs(1));
        b.next_delay(secs(1));
        assert_eq!(b.next_delay(secs(600)), Duration::ZERO);
        assert_eq!(b.next_delay(secs(1)), secs(10));
    }
}

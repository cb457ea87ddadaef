//! What happens after an attempt: its [`Outcome`] (an HTTP status with an
//! optional `Retry-After`, or a transport error) flows through
//! [`classify`] into a [`Verdict`], and through [`RetryPolicy::decide`],
//! together with the attempt number and a random source for jitter, into a
//! [`Decision`]: delivered, retry after a delay, dead-letter with a reason,
//! or gone.
//!
//! # Rules
//! - 2xx: delivered.
//! - 408, 429, 5xx, other unexpected statuses (1xx, 6xx+) and transport
//!   failures (connect, timeout, TLS, DNS, connection reset): retried.
//! - 410: gone; the caller disables the `Webhook` and dead-letters the event
//!   with reason `gone`.
//! - 3xx: dead-letter `redirect_not_followed`; other 4xx: `http_4xx`;
//!   refused by the address policy: `address_refused`; body over the size
//!   bound: `payload_too_large`; a request that cannot be built:
//!   `invalid_request`. None of these can succeed by trying again.
//! - A retryable failure on the last allowed attempt: `retries_exhausted`.
//!
//! # Delay
//! `attempt` counts from 1 and includes the first try. After attempt `n`
//! fails, the nominal delay is `initial·2^(n-1)` (exponential),
//! `initial·n` (linear) or `initial` (constant), never above `max_delay`.
//! Jitter then spreads it: *equal* jitter (the default) draws uniformly from
//! `[d/2, d)`, *full* jitter from `[0, d)`. Equal jitter keeps at least half
//! of every delay, so the schedule's minimum span is known and guaranteed;
//! full jitter can retry almost at once.
//!
//! `Retry-After` (seconds or an HTTP-date) on a retryable response is first
//! clamped to `retry_after_cap` (default 1 h), then used only if it is
//! *longer* than the jittered backoff: a receiver may ask us to slow down,
//! but never to hammer it faster than the schedule, and a `Retry-After: 0`
//! on every response cannot burn the attempt budget in seconds.
//!
//! # Default schedule
//! 20 attempts, exponential from 1 s, capped at 10 h, equal jitter. Nominal
//! delays 1 s, 2 s, 4 s, … 32768 s (≈9.1 h) after attempts 1–16, then 10 h
//! three times: 173 535 s (≈48.2 h) in total, and with equal jitter never
//! less than half that, 86 767 s (24 h 6 min), so a failing endpoint is
//! retried for at least a day.

use rand::Rng;
use std::time::Duration;

/// Dead-letter reason when a retryable failure happens on the last attempt.
pub const RETRIES_EXHAUSTED: &str = "retries_exhausted";
/// Dead-letter reason for an event whose endpoint answered 410 Gone.
pub const GONE: &str = "gone";

/// How the nominal delay grows with the attempt number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backoff {
    /// `initial · 2^(n-1)`.
    #[default]
    Exponential,
    /// `initial · n`.
    Linear,
    /// `initial` every time.
    Constant,
}

/// How randomness spreads a nominal delay `d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Jitter {
    /// Exactly `d`.
    None,
    /// Uniform in `[0, d)`.
    Full,
    /// Uniform in `[d/2, d)`.
    #[default]
    Equal,
}

impl Jitter {
    /// Applies the jitter to `nominal` given a uniform `sample` in `[0, 1)`
    /// (clamped into that range).
    pub fn apply(self, nominal: Duration, sample: f64) -> Duration {
        let sample = if sample.is_finite() {
            sample.clamp(0.0, 1.0)
        } else {
            0.0
        };
        match self {
            Jitter::None => nominal,
            Jitter::Full => nominal.mul_f64(sample),
            Jitter::Equal => nominal / 2 + (nominal / 2).mul_f64(sample),
        }
    }

    /// The smallest delay this jitter can produce from `nominal`.
    pub fn floor(self, nominal: Duration) -> Duration {
        self.apply(nominal, 0.0)
    }
}

/// A `Webhook`'s retry schedule and the platform's `Retry-After` cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; at least 1.
    pub max_attempts: u32,
    /// Nominal delay after the first failed attempt.
    pub initial_delay: Duration,
    /// Upper bound on any nominal delay.
    pub max_delay: Duration,
    /// How the delay grows.
    pub backoff: Backoff,
    /// How the delay is randomised.
    pub jitter: Jitter,
    /// Upper bound on what a `Retry-After` header can ask for.
    pub retry_after_cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 20,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(10 * 3_600),
            backoff: Backoff::Exponential,
            jitter: Jitter::Equal,
            retry_after_cap: Duration::from_secs(3_600),
        }
    }
}

/// Why a retry policy from a spec cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// `maxAttempts` was 0.
    #[error("maxAttempts must be at least 1")]
    NoAttempts,
    /// `initialDelay` was zero.
    #[error("initialDelay must be greater than zero")]
    ZeroDelay,
    /// `maxDelay` was below `initialDelay`.
    #[error("maxDelay must not be less than initialDelay")]
    MaxBelowInitial,
}

/// A transport-level failure: no HTTP status was received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportError {
    /// The TCP connection could not be made.
    Connect,
    /// The attempt exceeded its timeout.
    Timeout,
    /// The TLS handshake failed (certificate, protocol).
    Tls,
    /// The host name did not resolve.
    Dns,
    /// The connection broke mid-exchange, or the response was malformed.
    Network,
    /// Every resolved address was refused by the address policy.
    AddressRefused,
    /// The request body exceeds the delivery size bound.
    PayloadTooLarge,
    /// The request could not be built (bad URL or header).
    InvalidRequest,
}

/// What one attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The endpoint answered.
    Response {
        /// The HTTP status code.
        status: u16,
        /// The `Retry-After` header, already read by [`parse_retry_after`].
        retry_after: Option<Duration>,
    },
    /// No answer.
    Transport(TransportError),
}

/// An attempt that did not deliver, for reasons and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// A non-2xx status.
    Status(u16),
    /// No status at all.
    Transport(TransportError),
}

impl Failure {
    /// A stable snake_case reason: `http_5xx`, `http_429`, `http_4xx`,
    /// `redirect_not_followed`, `timeout`, `address_refused`, ….
    pub fn reason(self) -> &'static str {
        match self {
            Failure::Status(408) => "http_408",
            Failure::Status(410) => "http_410",
            Failure::Status(429) => "http_429",
            Failure::Status(300..=399) => "redirect_not_followed",
            Failure::Status(400..=499) => "http_4xx",
            Failure::Status(500..=599) => "http_5xx",
            Failure::Status(_) => "http_unexpected_status",
            Failure::Transport(error) => match error {
                TransportError::Connect => "connect",
                TransportError::Timeout => "timeout",
                TransportError::Tls => "tls",
                TransportError::Dns => "dns",
                TransportError::Network => "network",
                TransportError::AddressRefused => "address_refused",
                TransportError::PayloadTooLarge => "payload_too_large",
                TransportError::InvalidRequest => "invalid_request",
            },
        }
    }

    /// Whether the endpoint looks unhealthy, so that the failure should count
    /// towards opening its circuit breaker: exactly the retryable failures.
    pub fn counts_against_circuit(self) -> bool {
        matches!(classify_failure(self), Verdict::Retryable(_))
    }
}

/// An outcome's meaning, before the attempt count is considered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx.
    Delivered,
    /// Worth trying again, honouring the optional `Retry-After`.
    Retryable(Failure),
    /// Trying again cannot help.
    Permanent(Failure),
    /// 410: the endpoint is gone for good.
    Gone,
}

/// What to do with the delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Done.
    Delivered,
    /// Schedule attempt `n + 1` this long from now.
    Retry {
        /// The delay.
        after: Duration,
        /// Why this attempt failed.
        failure: Failure,
    },
    /// Give up: write the event to the dead-letter topic with `reason`.
    DeadLetter {
        /// [`Failure::reason`], or [`RETRIES_EXHAUSTED`].
        reason: &'static str,
        /// The last attempt's failure.
        failure: Failure,
    },
    /// Disable the `Webhook` and dead-letter the event with reason [`GONE`].
    Gone,
}

impl Decision {
    /// A stable label for the deliveries metric: `delivered`, `retry`,
    /// `dead_letter` or `gone`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Decision::Delivered => "delivered",
            Decision::Retry { .. } => "retry",
            Decision::DeadLetter { .. } => "dead_letter",
            Decision::Gone => "gone",
        }
    }
}

/// Maps an outcome to its meaning; see the module docs for the table.
pub fn classify(outcome: &Outcome) -> Verdict {
    match *outcome {
        Outcome::Response {
            status: 200..=299, ..
        } => Verdict::Delivered,
        Outcome::Response { status, .. } => classify_failure(Failure::Status(status)),
        Outcome::Transport(error) => classify_failure(Failure::Transport(error)),
    }
}

fn classify_failure(failure: Failure) -> Verdict {
    match failure {
        Failure::Status(410) => Verdict::Gone,
        Failure::Status(408 | 429) => Verdict::Retryable(failure),
        Failure::Status(300..=499) => Verdict::Permanent(failure),
        Failure::Status(_) => Verdict::Retryable(failure),
        Failure::Transport(
            TransportError::AddressRefused
            | TransportError::PayloadTooLarge
            | TransportError::InvalidRequest,
        ) => Verdict::Permanent(failure),
        Failure::Transport(_) => Verdict::Retryable(failure),
    }
}

impl RetryPolicy {
    /// Checks a policy built from a spec.
    ///
    /// # Errors
    /// [`PolicyError`] for zero attempts, a zero initial delay, or a maximum
    /// delay below the initial one.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.max_attempts == 0 {
            Err(PolicyError::NoAttempts)
        } else if self.initial_delay.is_zero() {
            Err(PolicyError::ZeroDelay)
        } else if self.max_delay < self.initial_delay {
            Err(PolicyError::MaxBelowInitial)
        } else {
            Ok(())
        }
    }

    /// The nominal (unjittered) delay after attempt `attempt` (from 1) fails.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let n = attempt.max(1);
        let delay = match self.backoff {
            Backoff::Exponential => 1u32
                .checked_shl(n - 1)
                .and_then(|factor| self.initial_delay.checked_mul(factor)),
            Backoff::Linear => self.initial_delay.checked_mul(n),
            Backoff::Constant => Some(self.initial_delay),
        };
        delay.map_or(self.max_delay, |d| d.min(self.max_delay))
    }

    /// The jittered delay after attempt `attempt` fails.
    pub fn delay<R: Rng + ?Sized>(&self, attempt: u32, rng: &mut R) -> Duration {
        self.jitter
            .apply(self.backoff(attempt), rng.random::<f64>())
    }

    /// Decides what follows attempt `attempt` (from 1), which ended in
    /// `outcome`.
    ///
    /// # Guarantees
    /// Never returns `Retry` once `attempt >= max_attempts`; a `Retry` delay
    /// is at least the jittered backoff and at most
    /// `max(max_delay, retry_after_cap)`.
    pub fn decide<R: Rng + ?Sized>(
        &self,
        attempt: u32,
        outcome: &Outcome,
        rng: &mut R,
    ) -> Decision {
        match classify(outcome) {
            Verdict::Delivered => Decision::Delivered,
            Verdict::Gone => Decision::Gone,
            Verdict::Permanent(failure) => Decision::DeadLetter {
                reason: failure.reason(),
                failure,
            },
            Verdict::Retryable(failure) if attempt >= self.max_attempts => Decision::DeadLetter {
                reason: RETRIES_EXHAUSTED,
                failure,
            },
            Verdict::Retryable(failure) => {
                let backoff = self.delay(attempt, rng);
                let asked = match outcome {
                    Outcome::Response { retry_after, .. } => retry_after.unwrap_or_default(),
                    Outcome::Transport(_) => Duration::ZERO,
                };
                Decision::Retry {
                    after: backoff.max(asked.min(self.retry_after_cap)),
                    failure,
                }
            }
        }
    }

    /// Sum of the nominal delays between the first and the last attempt.
    pub fn nominal_span(&self) -> Duration {
        (1..self.max_attempts).map(|n| self.backoff(n)).sum()
    }

    /// The shortest time the whole schedule can take given the jitter:
    /// the last attempt starts at least this long after the first.
    pub fn min_span(&self) -> Duration {
        (1..self.max_attempts)
            .map(|n| self.jitter.floor(self.backoff(n)))
            .sum()
    }
}

/// Reads a `Retry-After` header value: delay-seconds (`120`) or an
/// HTTP-date (`Wed, 21 Oct 2015 07:28:00 GMT`), relative to `now`.
///
/// A date in the past gives zero; a number too large to represent
/// saturates (the policy's cap applies later). Returns `None` for anything
/// else, including negative numbers and the obsolete RFC 850 and asctime
/// date forms, in which case the header is ignored.
pub fn parse_retry_after(value: &str, now: jiff::Timestamp) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let date = jiff::fmt::rfc2822::DateTimeParser::new()
        .parse_timestamp(value)
        .ok()?;
    Some(Duration::try_from(date.duration_since(now)).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests;

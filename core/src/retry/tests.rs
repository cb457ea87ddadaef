//! Unit tests for [`super`]; jitter is made deterministic by a seeded RNG
//! or by explicit samples.

use super::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

const HOUR: Duration = Duration::from_secs(3_600);
const DAY: Duration = Duration::from_secs(86_400);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn response(status: u16) -> Outcome {
    Outcome::Response {
        status,
        retry_after: None,
    }
}

fn no_jitter() -> RetryPolicy {
    RetryPolicy {
        jitter: Jitter::None,
        ..RetryPolicy::default()
    }
}

fn rng() -> StdRng {
    StdRng::seed_from_u64(7)
}

#[test]
fn default_schedule_keeps_trying_for_at_least_a_day_whatever_the_jitter() {
    let policy = RetryPolicy::default();
    assert_eq!(policy.validate(), Ok(()));
    assert_eq!(policy.nominal_span(), secs(173_535));
    assert_eq!(policy.min_span(), Duration::from_millis(86_767_500));
    assert!(policy.min_span() >= DAY);

    // And a drawn schedule lies between the two.
    let mut rng = rng();
    let drawn: Duration = (1..policy.max_attempts)
        .map(|n| policy.delay(n, &mut rng))
        .sum();
    assert!(drawn >= policy.min_span() && drawn <= policy.nominal_span());
}

#[test]
fn exponential_backoff_doubles_up_to_the_maximum() {
    let policy = no_jitter();
    let delays: Vec<u64> = (1..=19).map(|n| policy.backoff(n).as_secs()).collect();
    assert_eq!(&delays[..5], &[1, 2, 4, 8, 16]);
    assert_eq!(delays[15], 32_768);
    assert_eq!(&delays[16..], &[36_000, 36_000, 36_000]);
    assert_eq!(policy.backoff(u32::MAX), 10 * HOUR);
    assert_eq!(policy.backoff(0), secs(1));
}

#[test]
fn linear_and_constant_backoff_grow_as_named() {
    let linear = RetryPolicy {
        backoff: Backoff::Linear,
        initial_delay: secs(30),
        max_delay: secs(100),
        ..no_jitter()
    };
    let delays: Vec<u64> = (1..=5).map(|n| linear.backoff(n).as_secs()).collect();
    assert_eq!(delays, [30, 60, 90, 100, 100]);

    let constant = RetryPolicy {
        backoff: Backoff::Constant,
        initial_delay: secs(5),
        max_attempts: 4,
        ..no_jitter()
    };
    assert_eq!(constant.backoff(9), secs(5));
    assert_eq!(constant.nominal_span(), secs(15));
}

#[test]
fn equal_jitter_keeps_at_least_half_and_full_jitter_can_reach_zero() {
    let d = secs(100);
    assert_eq!(Jitter::Equal.apply(d, 0.0), secs(50));
    assert_eq!(Jitter::Equal.apply(d, 0.5), secs(75));
    assert_eq!(Jitter::Full.apply(d, 0.0), Duration::ZERO);
    assert_eq!(Jitter::Full.apply(d, 0.25), secs(25));
    assert_eq!(Jitter::None.apply(d, 0.9), d);
    assert_eq!(Jitter::Equal.apply(d, f64::NAN), secs(50));
    assert_eq!(Jitter::Full.apply(d, 7.0), d);

    let policy = RetryPolicy::default();
    let mut rng = rng();
    for _ in 0..1_000 {
        let delay = policy.delay(5, &mut rng);
        assert!(delay >= secs(8) && delay < secs(16), "{delay:?}");
    }
}

#[test]
fn same_seed_gives_the_same_schedule() {
    let policy = RetryPolicy::default();
    let draw = |seed| {
        let mut rng = StdRng::seed_from_u64(seed);
        (1..10)
            .map(|n| policy.delay(n, &mut rng))
            .collect::<Vec<_>>()
    };
    assert_eq!(draw(1), draw(1));
    assert_ne!(draw(1), draw(2));
}

#[test]
fn success_statuses_are_delivered() {
    for status in [200, 201, 202, 204, 299] {
        assert_eq!(
            no_jitter().decide(1, &response(status), &mut rng()),
            Decision::Delivered
        );
    }
}

#[test]
fn server_errors_timeouts_and_throttling_are_retried() {
    let policy = no_jitter();
    for status in [408, 429, 500, 502, 503, 504, 599, 100, 600] {
        let decision = policy.decide(3, &response(status), &mut rng());
        assert_eq!(
            decision,
            Decision::Retry {
                after: secs(4),
                failure: Failure::Status(status)
            },
            "{status}"
        );
    }
    for error in [
        TransportError::Connect,
        TransportError::Timeout,
        TransportError::Tls,
        TransportError::Dns,
        TransportError::Network,
    ] {
        let decision = policy.decide(1, &Outcome::Transport(error), &mut rng());
        assert!(matches!(decision, Decision::Retry { .. }), "{error:?}");
        assert!(Failure::Transport(error).counts_against_circuit());
    }
    assert_eq!(Failure::Status(503).reason(), "http_5xx");
    assert_eq!(Failure::Status(429).reason(), "http_429");
}

#[test]
fn client_errors_and_redirects_are_dead_lettered_at_once() {
    let policy = no_jitter();
    let cases = [
        (response(400), "http_4xx"),
        (response(401), "http_4xx"),
        (response(404), "http_4xx"),
        (response(422), "http_4xx"),
        (response(301), "redirect_not_followed"),
        (response(307), "redirect_not_followed"),
        (
            Outcome::Transport(TransportError::AddressRefused),
            "address_refused",
        ),
        (
            Outcome::Transport(TransportError::PayloadTooLarge),
            "payload_too_large",
        ),
        (
            Outcome::Transport(TransportError::InvalidRequest),
            "invalid_request",
        ),
    ];
    for (outcome, reason) in cases {
        let decision = policy.decide(1, &outcome, &mut rng());
        assert!(
            matches!(decision, Decision::DeadLetter { reason: r, .. } if r == reason),
            "{outcome:?} gave {decision:?}"
        );
        assert_eq!(decision.as_str(), "dead_letter");
    }
    assert!(!Failure::Status(404).counts_against_circuit());
}

#[test]
fn gone_disables_the_webhook_instead_of_retrying() {
    let decision = no_jitter().decide(1, &response(410), &mut rng());
    assert_eq!(decision, Decision::Gone);
    assert_eq!(decision.as_str(), "gone");
    assert_eq!(classify(&response(410)), Verdict::Gone);
}

#[test]
fn retryable_failure_on_the_last_attempt_is_retries_exhausted() {
    let policy = RetryPolicy {
        max_attempts: 3,
        ..no_jitter()
    };
    assert!(matches!(
        policy.decide(2, &response(500), &mut rng()),
        Decision::Retry { .. }
    ));
    assert_eq!(
        policy.decide(3, &response(500), &mut rng()),
        Decision::DeadLetter {
            reason: RETRIES_EXHAUSTED,
            failure: Failure::Status(500)
        }
    );
    let once = RetryPolicy {
        max_attempts: 1,
        ..no_jitter()
    };
    assert!(matches!(
        once.decide(1, &Outcome::Transport(TransportError::Timeout), &mut rng()),
        Decision::DeadLetter {
            reason: RETRIES_EXHAUSTED,
            ..
        }
    ));
}

fn throttled(retry_after: Duration) -> Outcome {
    Outcome::Response {
        status: 429,
        retry_after: Some(retry_after),
    }
}

#[test]
fn retry_after_longer_than_the_backoff_is_honoured() {
    let decision = no_jitter().decide(1, &throttled(secs(120)), &mut rng());
    assert!(matches!(decision, Decision::Retry { after, .. } if after == secs(120)));
}

#[test]
fn retry_after_longer_than_cap_is_clamped() {
    let decision = no_jitter().decide(1, &throttled(DAY), &mut rng());
    assert!(matches!(decision, Decision::Retry { after, .. } if after == HOUR));
}

#[test]
fn retry_after_shorter_than_the_backoff_does_not_speed_retries_up() {
    // Attempt 12 fails: the backoff is 2048 s, the receiver asks for 0 s.
    let decision = no_jitter().decide(12, &throttled(Duration::ZERO), &mut rng());
    assert!(matches!(decision, Decision::Retry { after, .. } if after == secs(2_048)));
}

#[test]
fn invalid_policies_are_refused() {
    let base = RetryPolicy::default();
    let zero_attempts = RetryPolicy {
        max_attempts: 0,
        ..base.clone()
    };
    assert_eq!(zero_attempts.validate(), Err(PolicyError::NoAttempts));
    let zero_delay = RetryPolicy {
        initial_delay: Duration::ZERO,
        ..base.clone()
    };
    assert_eq!(zero_delay.validate(), Err(PolicyError::ZeroDelay));
    let inverted = RetryPolicy {
        max_delay: Duration::from_millis(500),
        ..base
    };
    assert_eq!(inverted.validate(), Err(PolicyError::MaxBelowInitial));
}

#[test]
fn retry_after_reads_seconds_and_http_dates() {
    let now: jiff::Timestamp = "2015-10-21T07:27:00Z".parse().unwrap();
    assert_eq!(parse_retry_after("120", now), Some(secs(120)));
    assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
    assert_eq!(
        parse_retry_after("99999999999999999999999", now),
        Some(secs(u64::MAX))
    );
    assert_eq!(
        parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
        Some(secs(60))
    );
    assert_eq!(
        parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
        Some(Duration::ZERO)
    );
    for bad in ["", "-5", "1.5", "soon", "Wednesday, 21-Oct-15 07:28:00 GMT"] {
        assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
    }
}

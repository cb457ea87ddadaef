//! The status model: what a `Webhook`'s delivery state is, and the one decision every site
//! that holds a delivery asks — [`hold`]: deliver now, postpone for how long, or dead-letter.
//! The dispatcher's pipeline (before a job is queued) and its delivery task (when a queued job
//! gets its turn) both call it, so a pause or a missing key is judged the same way at both.
//! [`verdicts`] turns a [`View`] of an endpoint into the dispatcher's conditions.
//!
//! Decisions:
//! - A paused `Webhook`'s deliveries are parked for as long as it has been paused so far,
//!   within [`MIN_PARK`] and the longest retry tier: a short pause costs a short wait, a long
//!   one few re-parks.
//! - An unusable spec parks for the longest tier (a person must change it); missing keys for
//!   [`NO_KEYS_POSTPONE`] (the controller is usually about to write them).

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::circuit::CircuitState;
use crate::conditions::{Verdict, reasons, settle, types};

/// Field manager of everything the dispatcher writes.
pub const DISPATCHER_MANAGER: &str = "hookline.dev/dispatcher";
/// Field manager of everything the controller writes.
pub const CONTROLLER_MANAGER: &str = "hookline.dev/controller";

/// Shortest time a delivery to a paused `Webhook` is parked.
pub const MIN_PARK: Duration = Duration::from_secs(10);
/// How long a delivery waits for a `Webhook`'s signing keys to appear.
pub const NO_KEYS_POSTPONE: Duration = Duration::from_secs(10);

/// Whether an endpoint can take a delivery now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    /// Yes.
    Ready,
    /// `spec.paused`: keep deliveries for later.
    Paused,
    /// No signing keys yet: keep deliveries for later.
    NoKeys,
    /// Disabled after 410 Gone: deliveries stop.
    Disabled,
    /// The spec cannot be used: deliveries stop.
    Invalid,
}

/// What to do with a delivery given its endpoint's [`Availability`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Deliver it now.
    Deliver,
    /// Keep it (durably, through the retry topics) and look again after this long.
    Postpone(Duration),
    /// Dead-letter it: the endpoint will not take deliveries again by itself.
    DeadLetter {
        /// snake_case reason, as in the dead-letter record.
        reason: &'static str,
        /// For a person.
        message: &'static str,
    },
}

/// The one decision about a delivery to an endpoint that is `availability`, paused for
/// `paused_for` so far (zero when not paused), with `longest` the longest retry tier.
pub fn hold(availability: Availability, paused_for: Duration, longest: Duration) -> Hold {
    match availability {
        Availability::Ready => Hold::Deliver,
        Availability::Paused => Hold::Postpone(paused_for.clamp(MIN_PARK, longest.max(MIN_PARK))),
        Availability::Invalid => Hold::Postpone(longest),
        Availability::NoKeys => Hold::Postpone(NO_KEYS_POSTPONE),
        Availability::Disabled => Hold::DeadLetter {
            reason: "webhook_disabled",
            message: "the Webhook was disabled after 410 Gone",
        },
    }
}

/// `Timeout`, `ConnectError`, `HttpStatus`, `AddressRefused`, … from a
/// snake_case failure reason (the CRD documents CamelCase reasons).
pub fn failure_reason(reason: &str) -> &'static str {
    match reason {
        "timeout" => "Timeout",
        "connect" | "network" => "ConnectError",
        "dns" => "DnsError",
        "tls" => "TlsError",
        "address_refused" => "AddressRefused",
        "invalid_request" => "InvalidRequest",
        "payload_too_large" => "PayloadTooLarge",
        "redirect_not_followed" => "RedirectNotFollowed",
        "circuit_open" => "CircuitOpen",
        r if r.starts_with("http_") => "HttpStatus",
        _ => "DeliveryFailed",
    }
}

/// What the conditions are computed from.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    /// Whether it can take deliveries.
    pub availability: Availability,
    /// Why the settings cannot be used, when they cannot.
    pub invalid: Option<String>,
    /// The circuit state.
    pub circuit: CircuitState,
    /// The last success.
    pub last_success: Option<Timestamp>,
    /// When the last attempt failed.
    pub last_failure: Option<Timestamp>,
    /// The signing Secret's name.
    pub secret_name: String,
}

/// `Delivering` and `Degraded`.
pub fn verdicts(v: &View) -> [Verdict; 2] {
    let delivering = match v.availability {
        Availability::Disabled => (false, reasons::GONE, "disabled after the receiver answered 410 Gone; change the spec or set the annotation hookline.dev/enable to a new value to resume".to_owned()),
        Availability::Paused => (false, reasons::PAUSED, "spec.paused is true; events are kept and delivered after it is resumed".to_owned()),
        Availability::Invalid => (false, reasons::INVALID_SPEC, format!("the dispatcher cannot use this spec: {}", v.invalid.as_deref().unwrap_or("invalid"))),
        Availability::NoKeys => (false, reasons::SECRET_NOT_FOUND, format!("waiting for a usable signing key in Secret {}; events are kept", v.secret_name)),
        Availability::Ready if v.circuit == CircuitState::Open => (false, reasons::CIRCUIT_OPEN, "circuit breaker open after repeated failures; deliveries resume after the cool-down".to_owned()),
        Availability::Ready => (true, reasons::DELIVERING, "delivering events to the URL".to_owned()),
    };
    let failing = match (v.last_failure, v.last_success) {
        (Some(f), Some(s)) => f > s,
        (Some(_), None) => true,
        _ => false,
    };
    let degraded = if v.availability == Availability::Disabled {
        (
            true,
            reasons::GONE,
            "the receiver answered 410 Gone".to_owned(),
        )
    } else if v.circuit != CircuitState::Closed {
        (
            true,
            reasons::CIRCUIT_OPEN,
            format!("circuit breaker {}", v.circuit.as_str()),
        )
    } else if failing {
        (
            true,
            reasons::DELIVERIES_FAILING,
            "the last attempt failed; see status.lastFailure".to_owned(),
        )
    } else {
        (false, reasons::DELIVERING, "deliveries succeed".to_owned())
    };
    [
        Verdict {
            type_: types::DELIVERING,
            ok: delivering.0,
            reason: delivering.1,
            message: delivering.2,
        },
        Verdict {
            type_: types::DEGRADED,
            ok: degraded.0,
            reason: degraded.1,
            message: degraded.2,
        },
    ]
}

/// The conditions, keeping `lastTransitionTime` of those whose status did not flip.
pub fn conditions(
    existing: &[Condition],
    v: &View,
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    settle(existing, &verdicts(v), generation, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn a_short_pause_parks_for_the_minimum_not_the_longest_tier() {
        assert_eq!(
            hold(Availability::Paused, Duration::from_secs(1), HOUR),
            Hold::Postpone(MIN_PARK)
        );
        assert_eq!(
            hold(Availability::Paused, Duration::from_secs(120), HOUR),
            Hold::Postpone(Duration::from_secs(120))
        );
        assert_eq!(
            hold(Availability::Paused, 3 * HOUR, HOUR),
            Hold::Postpone(HOUR)
        );
    }

    #[test]
    fn each_availability_has_one_answer() {
        assert_eq!(hold(Availability::Ready, HOUR, HOUR), Hold::Deliver);
        assert_eq!(
            hold(Availability::Invalid, Duration::ZERO, HOUR),
            Hold::Postpone(HOUR)
        );
        assert_eq!(
            hold(Availability::NoKeys, Duration::ZERO, HOUR),
            Hold::Postpone(NO_KEYS_POSTPONE)
        );
        assert!(matches!(
            hold(Availability::Disabled, Duration::ZERO, HOUR),
            Hold::DeadLetter {
                reason: "webhook_disabled",
                ..
            }
        ));
    }
}

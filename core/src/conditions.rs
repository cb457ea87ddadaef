//! Conditions of `Webhook.status.conditions`: their types and reasons as constants, so the
//! controller, the dispatcher and the tests agree on the spelling, and the one rule both
//! writers settle them by — a condition's `lastTransitionTime` changes only when its status
//! flips; the reason and message follow what is true now.
//!
//! The controller owns `Ready`, `SecretReady` and `DispatcherReady`; the dispatcher owns
//! `Delivering` and `Degraded`.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition types.
pub mod types {
    /// Everything the Webhook needs is in place: valid spec, signing secret, running dispatcher.
    pub const READY: &str = "Ready";
    /// The signing secret exists and holds a valid key.
    pub const SECRET_READY: &str = "SecretReady";
    /// The tenant's dispatcher Deployment is available.
    pub const DISPATCHER_READY: &str = "DispatcherReady";
    /// The dispatcher is delivering to this URL (false when paused, disabled or circuit open).
    pub const DELIVERING: &str = "Delivering";
    /// Deliveries are failing (circuit open, failure ratio high, or disabled after 410 Gone).
    pub const DEGRADED: &str = "Degraded";
}

/// Condition reasons (CamelCase, as Kubernetes requires).
pub mod reasons {
    /// All good.
    pub const RECONCILED: &str = "Reconciled";
    /// The spec fails a check the schema cannot express.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// `http://` URL while the platform does not allow http.
    pub const HTTP_NOT_ALLOWED: &str = "HttpNotAllowed";
    /// URL host is an IP address in a blocked range.
    pub const ADDRESS_NOT_ALLOWED: &str = "AddressNotAllowed";
    /// Referenced secret missing.
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    /// Referenced secret present but its key is unusable.
    pub const SECRET_INVALID: &str = "SecretInvalid";
    /// Secret generated or found valid.
    pub const SECRET_AVAILABLE: &str = "SecretAvailable";
    /// Dispatcher Deployment has its minimum available replicas.
    pub const DISPATCHER_AVAILABLE: &str = "DispatcherAvailable";
    /// Dispatcher Deployment exists but is not (yet) available.
    pub const DISPATCHER_UNAVAILABLE: &str = "DispatcherUnavailable";
    /// Kafka topics could not be created.
    pub const TOPICS_FAILED: &str = "TopicsFailed";
    /// Deliveries held back by `spec.paused`.
    pub const PAUSED: &str = "Paused";
    /// Disabled after the receiver answered 410 Gone.
    pub const GONE: &str = "Gone";
    /// Circuit breaker open.
    pub const CIRCUIT_OPEN: &str = "CircuitOpen";
    /// Deliveries succeed.
    pub const DELIVERING: &str = "Delivering";
    /// The last attempt failed (`Degraded`).
    pub const DELIVERIES_FAILING: &str = "DeliveriesFailing";
}

/// One condition as decided, before times are settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Condition type.
    pub type_: &'static str,
    /// True or false.
    pub ok: bool,
    /// CamelCase reason.
    pub reason: &'static str,
    /// For a person.
    pub message: String,
}

impl Verdict {
    /// A condition with status True.
    pub fn yes(type_: &'static str, reason: &'static str, message: impl Into<String>) -> Verdict {
        Verdict {
            type_,
            ok: true,
            reason,
            message: message.into(),
        }
    }
    /// A condition with status False.
    pub fn no(type_: &'static str, reason: &'static str, message: impl Into<String>) -> Verdict {
        Verdict {
            type_,
            ok: false,
            reason,
            message: message.into(),
        }
    }
}

/// `Ready` from the other two (or from a validation failure, passed as `invalid`).
pub fn ready(invalid: Option<&Verdict>, secret: &Verdict, dispatcher: &Verdict) -> Verdict {
    if let Some(v) = invalid {
        return Verdict::no(types::READY, v.reason, v.message.clone());
    }
    for v in [secret, dispatcher] {
        if !v.ok {
            return Verdict::no(types::READY, v.reason, v.message.clone());
        }
    }
    Verdict::yes(
        types::READY,
        reasons::RECONCILED,
        "signing secret and dispatcher are ready",
    )
}

/// Turns verdicts into conditions, keeping `lastTransitionTime` of any whose status did not flip.
pub fn settle(
    existing: &[Condition],
    verdicts: &[Verdict],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    verdicts
        .iter()
        .map(|v| {
            let status = if v.ok { "True" } else { "False" };
            let since = existing
                .iter()
                .find(|c| c.type_ == v.type_ && c.status == status)
                .map_or(Time(now), |c| c.last_transition_time.clone());
            Condition {
                type_: v.type_.to_owned(),
                status: status.to_owned(),
                reason: v.reason.to_owned(),
                message: v.message.clone(),
                observed_generation: generation,
                last_transition_time: since,
            }
        })
        .collect()
}

/// The verdicts whose status differs from `existing` (or that are new): what deserves an Event.
pub fn flipped<'a>(existing: &[Condition], verdicts: &'a [Verdict]) -> Vec<&'a Verdict> {
    verdicts
        .iter()
        .filter(|v| {
            let status = if v.ok { "True" } else { "False" };
            !existing
                .iter()
                .any(|c| c.type_ == v.type_ && c.status == status && c.reason == v.reason)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn transition_time_is_kept_while_the_status_holds_and_moves_when_it_flips() {
        let v1 = [Verdict::no(
            types::DISPATCHER_READY,
            reasons::DISPATCHER_UNAVAILABLE,
            "starting",
        )];
        let c1 = settle(&[], &v1, Some(1), t("2026-11-23T10:00:00Z"));
        assert_eq!(c1[0].last_transition_time.0, t("2026-11-23T10:00:00Z"));

        let v2 = [Verdict::no(
            types::DISPATCHER_READY,
            reasons::DISPATCHER_UNAVAILABLE,
            "0 of 1 available",
        )];
        let c2 = settle(&c1, &v2, Some(1), t("2026-11-23T10:05:00Z"));
        assert_eq!(
            c2[0].last_transition_time.0,
            t("2026-11-23T10:00:00Z"),
            "status held: time kept"
        );
        assert_eq!(c2[0].message, "0 of 1 available", "message follows");

        let v3 = [Verdict::yes(
            types::DISPATCHER_READY,
            reasons::DISPATCHER_AVAILABLE,
            "1 of 1",
        )];
        let c3 = settle(&c2, &v3, Some(2), t("2026-11-23T10:06:00Z"));
        assert_eq!(
            c3[0].last_transition_time.0,
            t("2026-11-23T10:06:00Z"),
            "flipped: time moves"
        );
        assert_eq!(c3[0].observed_generation, Some(2));
    }

    #[test]
    fn ready_carries_the_first_failing_reason() {
        let secret = Verdict::no(
            types::SECRET_READY,
            reasons::SECRET_NOT_FOUND,
            "Secret x not found",
        );
        let disp = Verdict::yes(types::DISPATCHER_READY, reasons::DISPATCHER_AVAILABLE, "ok");
        let r = ready(None, &secret, &disp);
        assert!(!r.ok);
        assert_eq!(r.reason, reasons::SECRET_NOT_FOUND);
        let secret_ok = Verdict::yes(types::SECRET_READY, reasons::SECRET_AVAILABLE, "ok");
        assert!(ready(None, &secret_ok, &disp).ok);
    }

    #[test]
    fn only_flipped_or_new_conditions_are_reported() {
        let v = [Verdict::yes(types::READY, reasons::RECONCILED, "ok")];
        assert_eq!(flipped(&[], &v).len(), 1);
        let existing = settle(&[], &v, None, t("2026-11-23T10:00:00Z"));
        assert!(flipped(&existing, &v).is_empty());
    }
}

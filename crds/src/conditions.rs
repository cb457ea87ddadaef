//! Condition types and reasons of `Webhook.status.conditions`, as constants so the controller,
//! the dispatcher and the tests agree on the spelling.
//!
//! The controller owns `Ready`, `SecretReady` and `DispatcherReady`; the dispatcher owns
//! `Delivering` and `Degraded`.

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
}

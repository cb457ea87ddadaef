//! The `Webhook` custom resource (`hookline.dev/v1alpha1`).
//!
//! A tenant writes a [`WebhookSpec`]; the API server checks it against the schema and CEL
//! rules generated from these types (see [`crate::crd`]); the controller and the dispatcher
//! write [`WebhookStatus`], each through its own field manager:
//!
//! | field manager              | status fields it owns                                                            |
//! | -------------------------- | -------------------------------------------------------------------------------- |
//! | `hookline.dev/controller`  | `observedGeneration`, `secret`, conditions `Ready`, `SecretReady`, `DispatcherReady` |
//! | `hookline.dev/dispatcher`  | `delivered`, `failed`, `lastSuccessTime`, `lastFailure`, `circuit`, `lastTest`, `disabled`, conditions `Delivering`, `Degraded` |
//!
//! `conditions` is a map-list keyed by `type`, so server-side apply lets both managers own
//! their own entries without overwriting each other's.

// `printcolumn(...)` is repeated once per column by design of the kube derive; clippy reads the
// repeated `type_ =` keys as duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Regular expression every event type pattern in `spec.eventTypes` must match: dot-separated
/// names of letters, digits, `_` and `-`, where `*` matches any run of characters.
pub const EVENT_TYPE_PATTERN: &str = r"^(\*|[a-zA-Z0-9_*][a-zA-Z0-9._*-]*)$";

/// Header names (compared case-insensitively) that `spec.headers` may not set: Hookline owns them,
/// or they would carry a credential in plain sight in the resource.
pub const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "host",
    "authorization",
    "user-agent",
    "connection",
    "transfer-encoding",
];

/// Prefix of the header names Hookline sets for Standard Webhooks (`webhook-id`, …); reserved.
pub const RESERVED_HEADER_PREFIX: &str = "webhook-";

/// One endpoint URL and the event types delivered to it.
///
/// A tenant with three URLs has three `Webhook`s. Everything under `delivery` is optional and
/// defaulted as documented on each field.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "hookline.dev",
    version = "v1alpha1",
    kind = "Webhook",
    plural = "webhooks",
    singular = "webhook",
    namespaced,
    shortname = "wh",
    category = "hookline",
    status = "WebhookStatus",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#,
        description = "Whether the Webhook is set up to deliver"
    ),
    printcolumn(
        name = "URL",
        type_ = "string",
        json_path = ".spec.url",
        description = "Where events are delivered"
    ),
    printcolumn(
        name = "Events",
        type_ = "string",
        json_path = ".spec.eventTypes",
        description = "Event types subscribed to"
    ),
    printcolumn(
        name = "Delivered",
        type_ = "integer",
        json_path = ".status.delivered",
        description = "Events delivered (2xx)"
    ),
    printcolumn(
        name = "Failed",
        type_ = "integer",
        json_path = ".status.failed",
        description = "Events that never succeeded and were dead-lettered"
    ),
    printcolumn(
        name = "Last Success",
        type_ = "date",
        json_path = ".status.lastSuccessTime",
        description = "When the last delivery succeeded"
    ),
    printcolumn(
        name = "Circuit",
        type_ = "string",
        json_path = ".status.circuit",
        description = "Circuit breaker state",
        priority = 1
    ),
    printcolumn(
        name = "Paused",
        type_ = "boolean",
        json_path = ".spec.paused",
        description = "Deliveries held back by the tenant",
        priority = 1
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].reason"#,
        description = "Why it is (not) ready",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    doc = "A webhook subscription: deliver events of the listed types to one URL, signed per Standard Webhooks."
)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSpec {
    /// Endpoint the events are POSTed to. Must be an absolute `https://` URL with a host name
    /// (or an IP address the platform allows); `http://` is accepted only when the platform
    /// enables `allowHttp`. Credentials in the URL (`user:pass@`) are refused: they would be
    /// visible to everyone who can read the resource. A `#fragment` is refused: it is never sent.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("isURL(self)").message("url must be an absolute URL, e.g. https://hooks.example.com/events").reason(Reason::FieldValueInvalid))]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')").message("url scheme must be https (or http where the platform allows it)").reason(Reason::FieldValueInvalid))]
    #[x_kube(validation = Rule::new("!isURL(self) || url(self).getHostname() != ''").message("url must name a host").reason(Reason::FieldValueInvalid))]
    #[x_kube(validation = Rule::new("!self.matches('^[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#]*@')").message("url must not carry credentials (user:password@); they would be readable by anyone who can read the Webhook").reason(Reason::FieldValueForbidden))]
    #[x_kube(validation = Rule::new("!self.contains('#')").message("url must not carry a #fragment: it is never sent to the receiver; remove it").reason(Reason::FieldValueInvalid))]
    pub url: String,

    /// Event types delivered to this URL: exact names such as `transaction.approved`, or patterns
    /// where `*` matches any run of characters (`transaction.*`, or `*` for everything). 1 to 64
    /// distinct entries of at most 253 characters; `**` is refused (`*` already matches any
    /// run, dots included).
    #[schemars(
        length(min = 1, max = 64),
        inner(
            length(min = 1, max = 253),
            regex(pattern = r"^(\*|[a-zA-Z0-9_*][a-zA-Z0-9._*-]*)$")
        )
    )]
    #[x_kube(merge_strategy = ListMerge::Set)]
    #[x_kube(validation = Rule::new("self.all(t, !t.contains('**'))").message("event type patterns may not contain '**': '*' already matches any run of characters, dots included (e.g. transaction.*)").reason(Reason::FieldValueInvalid))]
    pub event_types: Vec<String>,

    /// Hold deliveries back while true. Events that arrive meanwhile are kept (the dispatcher does
    /// not commit past them) and delivered when the Webhook is resumed. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,

    /// Secret holding the signing key under the data key `secret` as `whsec_<base64>` (24–64
    /// bytes once decoded). When absent, Hookline generates one named `<webhook>-signing` and
    /// rotates it on request (annotation `hookline.dev/rotate-secret`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,

    /// How events are delivered: timeout, retries, ordering, concurrency and rate. Every field
    /// is optional; the defaults are documented on each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,

    /// Static extra headers sent with every delivery, at most 32. Names must be valid HTTP
    /// header names; `webhook-*`, `content-type`, `content-length`, `host`, `authorization`,
    /// `user-agent`, `connection` and `transfer-encoding` are reserved (Hookline sets them, or
    /// they would expose a credential in the resource). Values at most 1024 characters, no
    /// line breaks.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32, "additionalProperties" = {"type": "string", "maxLength": 1024}))]
    #[x_kube(validation = Rule::new("self.all(k, k.size() <= 128 && k.matches('^[A-Za-z0-9!#$%&*+.^_|~-]+$'))").message("header names must be HTTP tokens of at most 128 characters (letters, digits, !#$%&*+.^_|~-)").reason(Reason::FieldValueInvalid))]
    #[x_kube(validation = Rule::new("self.all(k, !k.lowerAscii().startsWith('webhook-') && !(k.lowerAscii() in ['content-type', 'content-length', 'host', 'authorization', 'user-agent', 'connection', 'transfer-encoding']))").message("headers may not set webhook-*, content-type, content-length, host, authorization, user-agent, connection or transfer-encoding").reason(Reason::FieldValueForbidden))]
    #[x_kube(validation = Rule::new("self.all(k, !self[k].contains('\\n') && !self[k].contains('\\r'))").message("header values may not contain line breaks").reason(Reason::FieldValueInvalid))]
    pub headers: BTreeMap<String, String>,
}

/// Reference to a Secret in the Webhook's own namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretRef {
    /// Name of the Secret (same namespace as the Webhook). It must hold the key under data key
    /// `secret`.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
}

/// Delivery settings; every field optional.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliverySpec {
    /// Time allowed for one attempt (connect, send, response headers and the bounded body read),
    /// as a duration such as `30s` or `1500ms`. From 100ms to 2m; default `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('100ms') && duration(self) <= duration('2m')").message("timeout must be between 100ms and 2m").reason(Reason::FieldValueInvalid))]
    pub timeout: Option<String>,

    /// Retry schedule for failed attempts (network errors, timeouts, 408, 429 and 5xx).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,

    /// `PerKey` (default): events with the same Kafka key reach this URL in the order they were
    /// produced, also across retries; a key that is retrying holds back only later events of that
    /// key. `Unordered`: no ordering, more throughput.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering: Option<Ordering>,

    /// Most attempts in flight to this URL at once. 1 to 1024; default 32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub max_in_flight: Option<i32>,

    /// Upper bound on the rate of attempts to this URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
}

/// How failed attempts are retried. The default schedule (exponential from 1s, capped at 10h
/// between attempts, 20 attempts, equal jitter) keeps trying for at least 24 hours (about 48 h nominal).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.initialDelay) || !has(self.maxDelay) || duration(self.initialDelay) <= duration(self.maxDelay)").message("retry.initialDelay must not exceed retry.maxDelay").reason(Reason::FieldValueInvalid))]
pub struct RetrySpec {
    /// Attempts in all, the first included, before the event is dead-lettered. 1 (no retries)
    /// to 50; default 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 50))]
    pub max_attempts: Option<i32>,

    /// How the delay grows between attempts; default `exponential`. Jitter is always applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,

    /// Delay before the first retry, such as `1s`. From 100ms to 1h; default `1s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('100ms') && duration(self) <= duration('1h')").message("initialDelay must be between 100ms and 1h").reason(Reason::FieldValueInvalid))]
    pub initial_delay: Option<String>,

    /// Longest delay between two attempts, such as `10h`. From 1s to 24h; default `10h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('24h')").message("maxDelay must be between 1s and 24h").reason(Reason::FieldValueInvalid))]
    pub max_delay: Option<String>,
}

/// Growth of the delay between attempts.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Backoff {
    /// initialDelay × 2^(attempt-1), capped at maxDelay.
    Exponential,
    /// initialDelay × attempt, capped at maxDelay.
    Linear,
    /// initialDelay every time.
    Constant,
}

/// Ordering guarantee per Kafka key.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Ordering {
    /// Same key, same order, also across retries.
    PerKey,
    /// No ordering guarantee.
    Unordered,
}

/// Token-bucket rate limit.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitSpec {
    /// Attempts per second allowed to this URL, 1 to 100000. Bursts up to the same number.
    #[schemars(range(min = 1, max = 100000))]
    pub per_second: i32,
}

/// What happened to the Webhook, written by the controller and the dispatcher (see the module
/// docs for who owns which field).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookStatus {
    /// The `metadata.generation` the controller last reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`, `SecretReady`, `DispatcherReady` (controller); `Delivering`, `Degraded`
    /// (dispatcher). A condition's `lastTransitionTime` changes only when its status flips.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// Events delivered with a 2xx response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered: Option<i64>,

    /// Events that never succeeded and were dead-lettered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<i64>,

    /// When the last delivery succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_time: Option<Time>,

    /// The last failed attempt: when, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<FailureStatus>,

    /// Circuit breaker state: `closed`, `open` or `half-open`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit: Option<String>,

    /// Result of the last test send (annotation `hookline.dev/test`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_test: Option<TestStatus>,

    /// Set when the receiver answered 410 Gone: deliveries stop until the spec changes or the
    /// annotation `hookline.dev/enable` is set to a new value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<DisabledStatus>,

    /// The signing secret in use (never the key itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretStatus>,
}

/// A failed attempt.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailureStatus {
    /// When it failed.
    pub time: Time,
    /// Machine-readable reason, such as `Timeout`, `ConnectError`, `HttpStatus`, `AddressRefused`.
    pub reason: String,
    /// What happened, for a person.
    pub message: String,
    /// HTTP status code, when the receiver answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<i32>,
}

/// Outcome of a test send.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TestStatus {
    /// The value of the `hookline.dev/test` annotation this result answers.
    pub nonce: String,
    /// When the test was sent.
    pub time: Time,
    /// Whether the receiver answered 2xx.
    pub success: bool,
    /// HTTP status code, when the receiver answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<i32>,
    /// Time to the response headers, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<i64>,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Why and since when deliveries are disabled.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DisabledStatus {
    /// Since when.
    pub since: Time,
    /// Why, such as `Gone`.
    pub reason: String,
    /// The spec generation that was disabled; a newer generation re-enables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
}

/// The signing secret in use.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretStatus {
    /// Name of the Secret.
    pub name: String,
    /// Generation of the key: 1 for the first, +1 on every rotation.
    pub generation: i64,
    /// When the current key was made current.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_at: Option<Time>,
    /// Until when the previous key is still signed with too (rotation overlap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_valid_until: Option<Time>,
}

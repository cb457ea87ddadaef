//! The API's request and response bodies and query parameters, as Rust types: serde reads and
//! writes them, and schemars turns them into the OpenAPI document ([`crate::openapi`]), so the
//! document cannot say what the code does not do. A `Webhook`'s `spec` and `status` are the
//! CRD's own types: the API is a view on the custom resource, not a second model of it.

use std::collections::BTreeMap;

use hookline_crds::{
    ReplayRateLimit, ReplaySource, Webhook, WebhookReplay, WebhookReplaySpec, WebhookReplayStatus,
    WebhookSpec, WebhookStatus,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::store::{DeliveryDetail, DeliveryView, Stats, Status};

/// A `Webhook` as the API shows it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookView {
    /// The name (unique in the tenant).
    pub name: String,
    /// The tenant (namespace).
    pub tenant: String,
    /// The version to send back in `If-Match` (also the `ETag`) to change it safely.
    pub resource_version: String,
    /// Bumped by every change of `spec`.
    pub generation: i64,
    /// When it was created (RFC 3339).
    pub created_at: Option<String>,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// What was asked: URL, event types, delivery settings.
    pub spec: WebhookSpec,
    /// What happened: readiness, delivery counts, last success and failure, last test.
    pub status: Option<WebhookStatus>,
}

impl WebhookView {
    /// The view of `w`.
    pub fn of(w: Webhook) -> WebhookView {
        let m = w.metadata;
        WebhookView {
            name: m.name.unwrap_or_default(),
            tenant: m.namespace.unwrap_or_default(),
            resource_version: m.resource_version.unwrap_or_default(),
            generation: m.generation.unwrap_or_default(),
            created_at: m.creation_timestamp.map(|t| t.0.to_string()),
            labels: m.labels.unwrap_or_default(),
            spec: w.spec,
            status: w.status,
        }
    }
}

/// The tenant's `Webhook`s.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct WebhookList {
    /// Every `Webhook` of the tenant, by name.
    pub items: Vec<WebhookView>,
}

/// A DNS-1123 label, what [`crate::extract::is_label`] accepts: a tenant (namespace) name.
pub const LABEL_PATTERN: &str = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";

/// A DNS-1123 subdomain, what [`crate::extract::is_subdomain`] accepts: a `Webhook`'s name.
pub const SUBDOMAIN_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$";

/// A new `Webhook`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookCreate {
    /// Its name: a DNS subdomain (lower case letters, digits, `-` and `.`), unique in the tenant.
    #[schemars(length(max = 253), regex(pattern = SUBDOMAIN_PATTERN))]
    pub name: String,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// URL, event types and delivery settings; validated by the cluster field by field.
    #[schemars(with = "WebhookSpec")]
    pub spec: Value,
}

/// A `Webhook`'s new labels and spec (`PUT`); everything not given is reset.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WebhookReplace {
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The whole new spec.
    #[schemars(with = "WebhookSpec")]
    pub spec: Value,
    /// The version this replaces (as `If-Match`; one of the two is enough).
    #[serde(default)]
    pub resource_version: Option<String>,
}

/// A JSON merge patch (RFC 7396) of a `Webhook`'s labels and spec: given fields are set,
/// `null` removes one, the rest stays. `{"spec": {"paused": true}}` pauses it.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookPatch {
    /// Labels to set (a `null` value removes one).
    #[serde(default)]
    pub labels: Option<BTreeMap<String, Option<String>>>,
    /// Spec fields to set.
    #[serde(default)]
    #[schemars(with = "Option<BTreeMap<String, Value>>")]
    pub spec: Option<Value>,
}

/// Where a test send stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TestState {
    /// Asked for; the dispatcher has not answered yet.
    Pending,
    /// Sent; see `success`.
    Done,
}

/// A test send: a signed `webhook.test` event to the URL, outside the delivery log.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TestResult {
    /// This test's id.
    pub id: String,
    /// Pending or done.
    pub state: TestState,
    /// Whether the receiver answered 2xx.
    pub success: Option<bool>,
    /// The receiver's HTTP status.
    pub status_code: Option<i32>,
    /// Time to the response headers.
    pub latency_ms: Option<i64>,
    /// Why it failed.
    pub error: Option<String>,
    /// When it was sent (RFC 3339).
    pub sent_at: Option<String>,
}

impl TestResult {
    /// Test `id`, asked for and not answered yet.
    pub fn pending(id: &str) -> TestResult {
        TestResult {
            id: id.to_owned(),
            state: TestState::Pending,
            success: None,
            status_code: None,
            latency_ms: None,
            error: None,
            sent_at: None,
        }
    }
}

/// A signing secret, as receivers configure it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretView {
    /// The Secret holding it.
    pub secret_name: String,
    /// The current key, `whsec_<base64>`.
    pub secret: String,
    /// The previous key while deliveries are still signed with it too (after a rotation).
    pub previous: Option<String>,
    /// Until when the previous key is signed with (RFC 3339).
    pub previous_valid_until: Option<String>,
    /// The key's generation: 1 for the first, +1 by every rotation.
    pub generation: Option<i64>,
}

/// A rotation asked for.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotationRequested {
    /// The rotation's id.
    pub id: String,
    /// The key generation before it; the new key has a higher one (see `GET …/secret`).
    pub generation_before: Option<i64>,
}

/// A page of the delivery log, newest first.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryPage {
    /// The deliveries (one event at one `Webhook` each).
    pub items: Vec<DeliveryView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// What became of one event at every `Webhook` it matched.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventDeliveries {
    /// The event id.
    pub event_id: String,
    /// One entry per `Webhook`, with its attempts.
    pub deliveries: Vec<DeliveryDetail>,
}

/// Filters and paging of `GET …/deliveries`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeliveriesQuery {
    /// Only this `Webhook`.
    pub webhook: Option<String>,
    /// Only deliveries in this state.
    pub status: Option<Status>,
    /// Only this event type.
    pub event_type: Option<String>,
    /// First attempt at or after (RFC 3339).
    pub since: Option<String>,
    /// First attempt before (RFC 3339).
    pub until: Option<String>,
    /// `nextCursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size, 1–500 (default 50).
    #[schemars(range(min = 1, max = 500))]
    pub limit: Option<u32>,
}

/// A stats window and its bucket width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
pub enum Window {
    /// The last hour, in 1-minute buckets.
    #[serde(rename = "1h")]
    Hour,
    /// The last 6 hours, in 5-minute buckets.
    #[serde(rename = "6h")]
    SixHours,
    /// The last 24 hours, in 15-minute buckets.
    #[serde(rename = "24h")]
    Day,
    /// The last 7 days, in 1-hour buckets.
    #[serde(rename = "7d")]
    Week,
    /// The last 30 days, in 6-hour buckets.
    #[serde(rename = "30d")]
    Month,
}

impl Window {
    /// (window, bucket) in minutes.
    pub fn minutes(self) -> (i64, i64) {
        match self {
            Window::Hour => (60, 1),
            Window::SixHours => (360, 5),
            Window::Day => (1_440, 15),
            Window::Week => (10_080, 60),
            Window::Month => (43_200, 360),
        }
    }
}

/// Parameters of `GET …/stats`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    /// Only this `Webhook` (default: all of the tenant's).
    pub webhook: Option<String>,
    /// The window (default `24h`).
    pub window: Option<Window>,
}

/// Stats of a window.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatsView {
    /// Start of the window (RFC 3339).
    pub from: String,
    /// End of the window (RFC 3339).
    pub to: String,
    /// Counts and percentiles.
    #[serde(flatten)]
    pub stats: Stats,
}

/// What an event id may be (as the dispatcher reads it, `hookline_core::envelope`): visible ASCII,
/// no spaces; 1 to 255 of them.
pub const EVENT_ID_PATTERN: &str = "^[!-~]+$";

/// One event to publish.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishEvent {
    /// The event id (`webhook-id` on the wire, the receivers' idempotency key): 1–255 visible
    /// ASCII characters. Default: the `Idempotency-Key` header, else a new `evt_…` id.
    #[serde(default)]
    #[schemars(length(min = 1, max = 255), regex(pattern = EVENT_ID_PATTERN))]
    pub id: Option<String>,
    /// The event type, matched against each Webhook's `eventTypes`: letters, digits, `.`, `_`,
    /// `-`, starting with a letter or digit.
    #[serde(rename = "type")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-zA-Z0-9][a-zA-Z0-9._-]*$")
    )]
    pub event_type: String,
    /// When it happened (RFC 3339). Default: when it was received.
    #[serde(default)]
    #[schemars(extend("format" = "date-time"))]
    pub timestamp: Option<String>,
    /// The ordering key: events with the same key reach each Webhook in the order published.
    /// Default: the id (no ordering between events).
    #[serde(default)]
    pub key: Option<String>,
    /// The event's data, any JSON; delivered byte for byte.
    #[schemars(with = "Value")]
    pub data: Box<serde_json::value::RawValue>,
}

/// A batch of events to publish.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishBatch {
    /// 1 to 500 events.
    #[schemars(length(min = 1, max = 500))]
    pub events: Vec<PublishEvent>,
}

/// An event accepted: it is in Kafka.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Published {
    /// Its id.
    pub id: String,
}

/// A batch accepted: every event is in Kafka.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct PublishedBatch {
    /// The events' ids, in the order sent.
    pub ids: Vec<String>,
}

/// A replay of one `Webhook`'s missed events (`POST …/webhooks/{name}/replays`): becomes a
/// `WebhookReplay` of the tenant, created with the caller's token.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ReplayCreate {
    /// Its name (a DNS subdomain); generated (`<webhook>-replay-<random>`) when absent.
    #[serde(default)]
    #[schemars(length(max = 253), regex(pattern = SUBDOMAIN_PATTERN))]
    pub name: Option<String>,
    /// `{"deadLetters": {"reasons": [...]}}` or `{"timeRange": {"from": ..., "to": ...}}`.
    #[schemars(with = "ReplaySource")]
    pub source: Value,
    /// Only events of these type patterns.
    #[serde(default)]
    pub event_types: Vec<String>,
    /// Only these event ids.
    #[serde(default)]
    pub event_ids: Vec<String>,
    /// `{"perSecond": n}`: how fast events are queued again (default 1000).
    #[serde(default)]
    #[schemars(with = "Option<ReplayRateLimit>")]
    pub rate_limit: Option<Value>,
}

/// `POST …/deliveries/{eventId}/resend`: which `Webhook` to send the event to again.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResendRequest {
    /// The `Webhook`; when absent, every `Webhook` the delivery log shows the event went to.
    #[serde(default)]
    pub webhook: Option<String>,
}

/// A `WebhookReplay` as the API shows it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplayView {
    /// The name.
    pub name: String,
    /// The tenant (namespace).
    pub tenant: String,
    /// Who asked for it through the API.
    pub requested_by: Option<String>,
    /// When it was created (RFC 3339).
    pub created_at: Option<String>,
    /// What was asked.
    pub spec: WebhookReplaySpec,
    /// Where it stands: phase, matched, delivered, failed, conditions.
    pub status: Option<WebhookReplayStatus>,
}

impl ReplayView {
    /// The view of `r`.
    pub fn of(r: WebhookReplay) -> ReplayView {
        let m = r.metadata;
        ReplayView {
            name: m.name.unwrap_or_default(),
            tenant: m.namespace.unwrap_or_default(),
            requested_by: m
                .annotations
                .and_then(|a| a.get(hookline_crds::annotations::REQUESTED_BY).cloned()),
            created_at: m.creation_timestamp.map(|t| t.0.to_string()),
            spec: r.spec,
            status: r.status,
        }
    }
}

/// The replays a resend created, one per `Webhook`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Resent {
    /// The replays.
    pub replays: Vec<ReplayView>,
}

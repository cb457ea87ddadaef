//! The `WebhookReplay` custom resource (`hookline.dev/v1alpha1`): re-deliver, once, the events a
//! `Webhook` missed — its dead letters, or the events of a time range that matched it.
//!
//! A tenant (or the tenant API on its behalf) creates one; the controller runs it and is the only
//! writer of [`WebhookReplayStatus`] (field manager `hookline.dev/controller`). The spec cannot be
//! changed once created: a different replay is a new object. Deleting the object cancels the
//! replay: the controller stops reading the source and the dispatcher drops the replay's
//! deliveries that have not started.

// `printcolumn(...)` is repeated once per column by design of the kube derive.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Condition type: True once the replay ended; its reason says how (`Succeeded`,
/// `NothingMatched`, `EventsFailed`, `WebhookDeleted`, `InvalidSpec`; `WebhookNotFound` or
/// `Running` while False).
pub const COMPLETE: &str = "Complete";
/// Condition type: True while the replay reads its source and re-delivers.
pub const PROGRESSING: &str = "Progressing";

/// Re-deliver what a `Webhook` missed.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "hookline.dev",
    version = "v1alpha1",
    kind = "WebhookReplay",
    plural = "webhookreplays",
    singular = "webhookreplay",
    namespaced,
    shortname = "whr",
    category = "hookline",
    status = "WebhookReplayStatus",
    printcolumn(
        name = "Webhook",
        type_ = "string",
        json_path = ".spec.webhookRef.name",
        description = "The Webhook re-delivered to"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Pending, Running, Succeeded or Failed"
    ),
    printcolumn(
        name = "Matched",
        type_ = "integer",
        json_path = ".status.matched",
        description = "Events found in the source that match"
    ),
    printcolumn(
        name = "Delivered",
        type_ = "integer",
        json_path = ".status.delivered",
        description = "Matched events delivered again"
    ),
    printcolumn(
        name = "Failed",
        type_ = "integer",
        json_path = ".status.failed",
        description = "Matched events that failed again (dead-lettered again)"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Complete")].reason"#,
        description = "Why it is where it is",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    doc = "A replay: re-deliver once, through the normal signed delivery path, the dead letters of a Webhook or the events of a time range that matched it."
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("a WebhookReplay's spec cannot be changed; create a new one").reason(Reason::FieldValueForbidden))]
#[serde(rename_all = "camelCase")]
pub struct WebhookReplaySpec {
    /// The `Webhook`, in the same namespace, to re-deliver to.
    pub webhook_ref: WebhookRef,

    /// Where the events come from: exactly one of `deadLetters` and `timeRange`.
    pub source: ReplaySource,

    /// Only events whose type matches one of these patterns (`*` matches any run of characters);
    /// empty: every event the source gives for the Webhook.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(
            length(min = 1, max = 253),
            regex(pattern = r"^(\*|[a-zA-Z0-9_*][a-zA-Z0-9._*-]*)$")
        )
    )]
    pub event_types: Vec<String>,

    /// Only these event ids (at most 1000); empty: every id. The tenant API's `resend` sets one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000), inner(length(min = 1, max = 255)))]
    pub event_ids: Vec<String>,

    /// How fast events are re-queued for delivery; the Webhook's own rate limit applies as well.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<ReplayRateLimit>,
}

/// A `Webhook` in the replay's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct WebhookRef {
    /// Its name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Where a replay reads events.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.deadLetters) != has(self.timeRange)").message("source must set exactly one of deadLetters and timeRange").reason(Reason::FieldValueInvalid))]
pub struct ReplaySource {
    /// The Webhook's dead letters present when the replay starts (`hookline.<namespace>.dlq`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letters: Option<DeadLetterSource>,

    /// The events produced in `[from, to)` (by Kafka record time) whose type the Webhook
    /// subscribes to now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_range: Option<TimeRange>,
}

/// Dead letters, optionally only those of some reasons.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterSource {
    /// Only dead letters with one of these reasons (`retries_exhausted`, `http_4xx`, `gone`,
    /// `webhook_disabled`, …); empty: every reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 64)))]
    pub reasons: Vec<String>,
}

/// A window of record time, `from` included, `to` excluded.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("timestamp(self.from) < timestamp(self.to)").message("timeRange.from must be before timeRange.to").reason(Reason::FieldValueInvalid))]
pub struct TimeRange {
    /// Start (RFC 3339), included.
    pub from: Time,
    /// End (RFC 3339), excluded.
    pub to: Time,
}

/// Pace of a replay.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplayRateLimit {
    /// Events re-queued per second, 1 to 100000 (default 1000).
    #[schemars(range(min = 1, max = 100000))]
    pub per_second: i32,
}

/// Where a replay stands.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ReplayPhase {
    /// Not started: waiting for its Webhook, or for the controller.
    Pending,
    /// Reading the source and re-delivering.
    Running,
    /// Every matched event was delivered again.
    Succeeded,
    /// It ended with events that failed again, or could not run (the condition says why).
    Failed,
}

impl ReplayPhase {
    /// Whether the replay has ended.
    pub fn is_final(self) -> bool {
        matches!(self, ReplayPhase::Succeeded | ReplayPhase::Failed)
    }
}

/// One partition of the source, fixed when the replay starts.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PartitionRange {
    /// The partition.
    pub partition: i32,
    /// First offset read.
    pub start: i64,
    /// Offset after the last one read.
    pub end: i64,
}

/// What the controller reports about a replay.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookReplayStatus {
    /// Where it stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ReplayPhase>,

    /// The source topic, and each partition's offsets as fixed at the start: what arrives later
    /// is not part of this replay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_topic: Option<String>,

    /// Each partition's offsets, fixed at the start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_ranges: Vec<PartitionRange>,

    /// Records in the source ranges (what `scanned` counts up to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<i64>,

    /// Source records read so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scanned: Option<i64>,

    /// Events that match, each counted once (an event id found twice is replayed once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched: Option<i64>,

    /// Matched events delivered again (2xx).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered: Option<i64>,

    /// Matched events that failed again and were dead-lettered again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<i64>,

    /// When the controller started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,

    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,

    /// `Complete` (True once ended; its reason says how) and `Progressing`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

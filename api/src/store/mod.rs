//! The delivery log: what [`crate::ingest`] reads from the tenants' attempts topics flows in as
//! a [`Batch`] (records plus the Kafka position after them), and the API's read handlers ask
//! for one event's fate ([`DeliveryLog::event`]), a filtered page of deliveries
//! ([`DeliveryLog::list`]) and counts with latency percentiles over time ([`DeliveryLog::stats`]).
//!
//! # Guarantees
//! - A batch's rows and the position after it are written in one transaction, and a record at
//!   an offset below the stored position is skipped: a restart, a re-assignment or a batch
//!   applied twice neither loses nor double-counts an attempt.
//! - The store is an index: an empty one (new, or its file deleted) is rebuilt from the
//!   attempts topics, as far back as their retention (14 days by default) goes.
//!
//! # Decisions
//! - One trait, [`DeliveryLog`], is all the API knows of the store. SQLite ([`sqlite`]) fits one
//!   node (see `BENCHMARKS.md` for its size per million attempts); a platform whose log outgrows
//!   one disk implements the trait over a server database (PostgreSQL, ClickHouse) and changes
//!   nothing else.
//! - A *delivery* is one event at one `Webhook`; its status is the last attempt's: `delivered`,
//!   `retrying` (a retry is scheduled) or `dead_lettered` (`pending` while only a suppressed
//!   duplicate of it is known). A suppressed duplicate counts in `duplicates` and leaves the
//!   status as it is.

pub mod rollup;
pub mod sqlite;

use hookline_core::retry_topics::AttemptRecord;
use serde::{Deserialize, Serialize};

/// A store error (the database failed; never the caller's fault).
#[derive(Debug, thiserror::Error)]
#[error("delivery log: {0}")]
pub struct StoreError(pub String);

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError(e.to_string())
    }
}

/// Result of store operations.
pub type Result<T> = std::result::Result<T, StoreError>;

/// Where ingestion stands in one attempts-topic partition: the next offset to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The next offset to read.
    pub next_offset: i64,
}

/// One attempt record read from Kafka, with where it was read.
#[derive(Debug, Clone)]
pub struct Ingested {
    /// The tenant (namespace) whose attempts topic it came from.
    pub tenant: String,
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The offset.
    pub offset: i64,
    /// The record.
    pub record: AttemptRecord,
}

/// Records to store in one transaction, and the positions to store with them (records for
/// partitions read past without a usable record, such as an unparsable one, still move the
/// position).
#[derive(Debug, Default)]
pub struct Batch {
    /// The records, in the order read.
    pub records: Vec<Ingested>,
    /// The next offset of each partition read.
    pub positions: Vec<Position>,
}

/// A delivery's status: its last attempt's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "DeliveryStatus")]
pub enum Status {
    /// Read, not attempted yet (only a duplicate of it was recorded so far).
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// A retry is scheduled.
    Retrying,
    /// Given up on: in the dead-letter topic with a reason.
    DeadLettered,
}

impl Status {
    /// The status an attempt's `outcome` leaves its delivery in.
    pub fn after(outcome: &str) -> Status {
        match outcome {
            "delivered" => Status::Delivered,
            "retry" => Status::Retrying,
            _ => Status::DeadLettered,
        }
    }

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Delivered => "delivered",
            Status::Retrying => "retrying",
            Status::DeadLettered => "dead_lettered",
        }
    }

    /// Reads a stored name.
    pub fn parse(s: &str) -> Option<Status> {
        [
            Status::Pending,
            Status::Delivered,
            Status::Retrying,
            Status::DeadLettered,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

/// One attempt, as the log shows it.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptView {
    /// The attempt number, from 1 (a dead letter without a request repeats the last number).
    pub attempt: u32,
    /// Whether a request was made (`false`: dead-lettered without one, e.g. a disabled `Webhook`).
    pub sent: bool,
    /// When it started (RFC 3339).
    pub time: String,
    /// `delivered`, `retry`, `dead_letter`, `gone` (410: the `Webhook` was disabled) or
    /// `duplicate` (a copy with the same id, not delivered).
    pub outcome: String,
    /// The receiver's HTTP status, when it answered.
    pub status_code: Option<u16>,
    /// Time to the end of the bounded body read.
    pub latency_ms: u64,
    /// Why it failed, snake_case (`http_5xx`, `timeout`, `connect`, …).
    pub reason: Option<String>,
    /// What failed, for a person.
    pub error: Option<String>,
    /// When the next attempt is due (RFC 3339), after a failed attempt with a retry.
    pub next_attempt_at: Option<String>,
    /// Why the delivery was dead-lettered, when this attempt ended it there.
    pub dead_letter_reason: Option<String>,
}

/// One delivery (an event at one `Webhook`), as the list shows it.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryView {
    /// The event id (`webhook-id`).
    pub event_id: String,
    /// The `Webhook`.
    pub webhook: String,
    /// The event type.
    pub event_type: String,
    /// The event's ordering key.
    pub key: Option<String>,
    /// Where it stands.
    pub status: Status,
    /// Attempts made.
    pub attempts: u32,
    /// The first attempt's time (RFC 3339).
    pub first_attempt_at: String,
    /// The last attempt's time (RFC 3339).
    pub last_attempt_at: String,
    /// The last answer's HTTP status.
    pub last_status_code: Option<u16>,
    /// The last failure's reason.
    pub last_reason: Option<String>,
    /// When the next attempt is due, while retrying.
    pub next_attempt_at: Option<String>,
    /// Why it was dead-lettered.
    pub dead_letter_reason: Option<String>,
    /// Copies of the event (the same id, read again within the dedup window) not delivered.
    pub duplicates: u32,
}

/// One delivery with its attempts, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryDetail {
    /// The delivery.
    #[serde(flatten)]
    pub delivery: DeliveryView,
    /// Its attempts, oldest first.
    pub attempt_log: Vec<AttemptView>,
}

/// What the list is filtered by; every field optional. Times are Unix milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this `Webhook`.
    pub webhook: Option<String>,
    /// Only this status.
    pub status: Option<Status>,
    /// Only this event type.
    pub event_type: Option<String>,
    /// First attempt at or after.
    pub since_ms: Option<i64>,
    /// First attempt before.
    pub until_ms: Option<i64>,
}

/// Where a page starts: after the delivery with this first-attempt time and sequence number
/// (the list is newest first; the pair is unique).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// First attempt of the last delivery of the previous page, Unix ms.
    pub first_ms: i64,
    /// Its sequence number in the store.
    pub seq: i64,
}

/// One page of deliveries, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// The deliveries.
    pub items: Vec<DeliveryView>,
    /// Where the next page starts, when there is one.
    pub next: Option<Cursor>,
}

/// Counts of one time bucket.
#[derive(Debug, Clone, Default, PartialEq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    /// Attempts that were delivered.
    pub delivered: u64,
    /// Attempts that failed (whatever came next).
    pub failed: u64,
    /// Failed attempts after which a retry was scheduled.
    pub retrying: u64,
    /// Deliveries dead-lettered.
    pub dead_lettered: u64,
    /// Copies of events not delivered because their id was seen within the dedup window.
    pub duplicates: u64,
}

/// Counts and attempt-latency percentiles of one time bucket.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Bucket {
    /// Start of the bucket (RFC 3339).
    pub start: String,
    /// The counts.
    #[serde(flatten)]
    pub counts: Counts,
    /// Latency percentiles of the requests made, in ms (upper bounds of histogram buckets);
    /// absent when no request was made.
    pub latency_ms: Option<Percentiles>,
}

/// Latency percentiles (ms).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Percentiles {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
}

/// The stats of a window: buckets oldest first, and totals.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// Bucket width in seconds.
    pub bucket_seconds: u64,
    /// The buckets, oldest first (every bucket of the window, empty ones too).
    pub buckets: Vec<Bucket>,
    /// The whole window.
    pub total: Counts,
    /// Latency percentiles over the whole window.
    pub latency_ms: Option<Percentiles>,
}

/// The delivery log. Every method is blocking; the API calls them off the async threads.
pub trait DeliveryLog: Send + Sync + 'static {
    /// Where ingestion stands in every partition seen so far.
    ///
    /// # Errors
    /// When the database fails.
    fn positions(&self) -> Result<Vec<Position>>;

    /// Stores `batch` and its positions atomically, skipping records below a stored position.
    ///
    /// # Errors
    /// When the database fails; nothing of the batch is stored then.
    fn apply(&self, batch: &Batch) -> Result<()>;

    /// Every delivery of `event_id` in `tenant`, with attempts; empty when unknown.
    ///
    /// # Errors
    /// When the database fails.
    fn event(&self, tenant: &str, event_id: &str) -> Result<Vec<DeliveryDetail>>;

    /// One page of `tenant`'s deliveries matching `filter`, newest first, after `after`.
    ///
    /// # Errors
    /// When the database fails.
    fn list(
        &self,
        tenant: &str,
        filter: &Filter,
        after: Option<Cursor>,
        limit: usize,
    ) -> Result<Page>;

    /// Counts and percentiles of `tenant` (one `Webhook`, or all) from `from_ms` to `to_ms`
    /// in buckets of `bucket_ms`.
    ///
    /// # Errors
    /// When the database fails.
    fn stats(
        &self,
        tenant: &str,
        webhook: Option<&str>,
        from_ms: i64,
        to_ms: i64,
        bucket_ms: i64,
    ) -> Result<Stats>;

    /// Deletes deliveries first attempted before `before_ms`, and older stats; returns how many
    /// deliveries went.
    ///
    /// # Errors
    /// When the database fails.
    fn expire(&self, before_ms: i64) -> Result<u64>;
}

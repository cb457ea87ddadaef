//! What the dispatcher writes to Kafka besides consuming, as plain data: a
//! delivery scheduled for later flows out as a retry record (the event's own
//! envelope plus [`RetryMeta`] headers) into one of the delay tiers chosen by
//! [`Tiers`]; read back, [`Tiers::step`] says whether to hold it, re-park it
//! in another tier, or deliver it. Dead letters carry [`DeadLetter`] headers,
//! and each attempt becomes one [`AttemptRecord`] on the attempts topic.
//!
//! # Retry records
//! - value: [`crate::envelope::Event::to_envelope`], read back with
//!   [`crate::envelope::parse`]; key: the event's original key;
//! - partition: the index of the events-topic partition the event came from,
//!   so that a key's retries sit with its events on the same replica;
//! - timestamp: when it was written; it becomes *actionable* one tier delay
//!   later. A tier is first-in first-out, so its head is always the first
//!   record to become actionable and a partition whose head is not actionable
//!   yet is paused, not polled;
//! - headers: `hookline-webhook` (the one `Webhook` it is for),
//!   `hookline-attempts` (attempts already made; postponements do not count),
//!   `hookline-due` (Unix ms of the next attempt) and `hookline-seq` (its
//!   offset in the events topic: the order of a key's events).
//!
//! A record whose due time is further away than its tier's delay is re-parked
//! into the largest tier not longer than what remains, so a 9-hour delay
//! costs a handful of hops, not a poll per second.
//!
//! # Refused records
//! A retry record or dead letter that Kafka refuses for good (larger than the
//! producer's or the topic's size limit, or invalid) would stall its
//! partition if it were retried. A dead letter [`reference`] stands in for
//! it instead: no value, the event's key, and headers naming where the event
//! can still be read (original topic, partition, offset, `hookline-event-id`),
//! the reason ([`refused::TOO_LARGE`], [`refused::INVALID`]) and what was
//! refused. The refused record's own headers say where its event came from,
//! so any record of the retry or dead-letter path can be replaced this way.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Header names of retry and dead-letter records.
pub mod headers {
    /// The `Webhook` a retry or dead letter is for.
    pub const WEBHOOK: &str = "hookline-webhook";
    /// Attempts already made.
    pub const ATTEMPTS: &str = "hookline-attempts";
    /// Unix milliseconds of the next attempt.
    pub const DUE: &str = "hookline-due";
    /// The event's offset in its events-topic partition.
    pub const SEQ: &str = "hookline-seq";
    /// Dead letter: snake_case reason.
    pub const REASON: &str = "hookline-reason";
    /// Dead letter: what happened, for a person.
    pub const ERROR: &str = "hookline-error";
    /// Dead letter: the topic the event was read from.
    pub const ORIGINAL_TOPIC: &str = "hookline-original-topic";
    /// Dead letter: its partition.
    pub const ORIGINAL_PARTITION: &str = "hookline-original-partition";
    /// Dead letter: its offset.
    pub const ORIGINAL_OFFSET: &str = "hookline-original-offset";
    /// Dead letter: the last HTTP status, when the receiver answered.
    pub const STATUS: &str = "hookline-status";
    /// Dead letter: when it was written (RFC 3339).
    pub const DEAD_LETTERED_AT: &str = "hookline-dead-lettered-at";
    /// Dead letter standing in for a refused record ([`super::reference`]): the event's id.
    pub const EVENT_ID: &str = "hookline-event-id";
}

/// Where a scheduled delivery stands, carried in a retry record's headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryMeta {
    /// The one `Webhook` to deliver to.
    pub webhook: String,
    /// Attempts already made (0 for a delivery postponed before its first).
    pub attempts: u32,
    /// Unix milliseconds of the next attempt.
    pub due_ms: i64,
    /// Offset of the event in its events-topic partition.
    pub seq: i64,
    /// The replay it is part of ([`crate::replay`]), if any.
    pub replay: Option<crate::replay::ReplayTag>,
}

/// Why retry headers could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("retry record header `{0}` is missing or malformed")]
pub struct MetaError(pub &'static str);

impl RetryMeta {
    /// The headers to write.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut hs = vec![
            (headers::WEBHOOK, self.webhook.clone()),
            (headers::ATTEMPTS, self.attempts.to_string()),
            (headers::DUE, self.due_ms.to_string()),
            (headers::SEQ, self.seq.to_string()),
        ];
        if let Some(tag) = &self.replay {
            hs.extend(tag.headers());
        }
        hs
    }

    /// Reads the headers of a retry record (last value of a repeated header wins).
    ///
    /// # Errors
    /// [`MetaError`] naming the first header missing or not a number.
    pub fn from_headers(hs: &[(&str, &[u8])]) -> Result<RetryMeta, MetaError> {
        let text = |name: &'static str| {
            hs.iter()
                .rev()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .and_then(|(_, v)| std::str::from_utf8(v).ok())
                .filter(|v| !v.is_empty())
                .ok_or(MetaError(name))
        };
        let number = |name: &'static str| -> Result<i64, MetaError> {
            text(name)?.trim().parse().map_err(|_| MetaError(name))
        };
        Ok(RetryMeta {
            webhook: text(headers::WEBHOOK)?.to_owned(),
            attempts: u32::try_from(number(headers::ATTEMPTS)?)
                .map_err(|_| MetaError(headers::ATTEMPTS))?,
            due_ms: number(headers::DUE)?,
            seq: number(headers::SEQ)?,
            replay: crate::replay::ReplayTag::from_headers(hs),
        })
    }
}

/// What to do with a retry record just read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Not yet: keep it (pause its partition) until this Unix ms.
    Hold(i64),
    /// Due later than this tier can wait: write it to tier `index` again.
    Repark(usize),
    /// Deliver now.
    Deliver,
}

/// The delay tiers, shortest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tiers {
    tiers: Vec<(Duration, String)>,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Tiers {
    /// Tiers from `(delay, topic)` pairs, in any order.
    ///
    /// # Panics
    /// When `tiers` is empty; the flags require at least one.
    pub fn new(mut tiers: Vec<(Duration, String)>) -> Tiers {
        assert!(!tiers.is_empty(), "at least one retry tier");
        tiers.sort_by_key(|(d, _)| *d);
        Tiers { tiers }
    }

    /// The tier of a topic, if it is one.
    pub fn index_of(&self, topic: &str) -> Option<usize> {
        self.tiers.iter().position(|(_, t)| t == topic)
    }

    /// The delay of tier `index`.
    pub fn delay(&self, index: usize) -> Duration {
        self.tiers[index.min(self.tiers.len() - 1)].0
    }

    /// The topic of tier `index`.
    pub fn topic(&self, index: usize) -> &str {
        &self.tiers[index.min(self.tiers.len() - 1)].1
    }

    /// Every tier topic.
    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.tiers.iter().map(|(_, t)| t.as_str())
    }

    /// The index of the longest tier.
    pub fn longest(&self) -> usize {
        self.tiers.len() - 1
    }

    /// The tier for a delivery due `remaining` from now: the largest delay not
    /// above it, or the smallest tier when it is shorter than every delay.
    pub fn for_remaining(&self, remaining: Duration) -> usize {
        self.tiers
            .iter()
            .rposition(|(d, _)| *d <= remaining)
            .unwrap_or(0)
    }

    /// Decides about a record of tier `index`, written at `written_ms` and
    /// due at `due_ms`, at `now_ms`.
    ///
    /// # Guarantees
    /// Never holds past the later of the record's actionable time and its due
    /// time; re-parks only when the wait left is longer than the smallest tier
    /// (shorter waits are held in memory, pausing only this partition).
    pub fn step(&self, index: usize, written_ms: i64, due_ms: i64, now_ms: i64) -> Step {
        let actionable = written_ms.saturating_add(millis(self.delay(index)));
        if now_ms < actionable {
            return Step::Hold(actionable);
        }
        let remaining = due_ms.saturating_sub(now_ms);
        if remaining <= 0 {
            Step::Deliver
        } else if remaining <= millis(self.delay(0)) {
            Step::Hold(due_ms)
        } else {
            let remaining = Duration::from_millis(u64::try_from(remaining).unwrap_or(0));
            Step::Repark(self.for_remaining(remaining))
        }
    }
}

/// Why and from where an event was dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// snake_case reason ([`crate::retry::Failure::reason`], an envelope
    /// error's reason, `retries_exhausted`, `gone`, `webhook_disabled`, …).
    pub reason: String,
    /// What happened, for a person; never a URL or a secret.
    pub error: String,
    /// The topic it was first read from.
    pub topic: String,
    /// Its partition there.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
    /// The `Webhook`, for a delivery; `None` for a record that could not be parsed.
    pub webhook: Option<String>,
    /// Attempts made.
    pub attempts: Option<u32>,
    /// The last HTTP status.
    pub status: Option<u16>,
}

impl DeadLetter {
    /// The headers to add to the record, stamped with `now`.
    pub fn headers(&self, now: jiff::Timestamp) -> Vec<(&'static str, String)> {
        let mut hs = vec![
            (headers::REASON, self.reason.clone()),
            (headers::ERROR, self.error.clone()),
            (headers::ORIGINAL_TOPIC, self.topic.clone()),
            (headers::ORIGINAL_PARTITION, self.partition.to_string()),
            (headers::ORIGINAL_OFFSET, self.offset.to_string()),
            (headers::DEAD_LETTERED_AT, now.to_string()),
        ];
        if let Some(w) = &self.webhook {
            hs.push((headers::WEBHOOK, w.clone()));
        }
        if let Some(a) = self.attempts {
            hs.push((headers::ATTEMPTS, a.to_string()));
        }
        if let Some(s) = self.status {
            hs.push((headers::STATUS, s.to_string()));
        }
        hs
    }
}

/// Reasons of the dead letter that stands in for a record Kafka refused for good
/// ([`reference`]).
pub mod refused {
    /// Larger than the producer's `message.max.bytes` or its topic's `max.message.bytes`.
    pub const TOO_LARGE: &str = "record_too_large";
    /// Refused by the broker as invalid.
    pub const INVALID: &str = "record_invalid";
}

/// The dead letter that stands in for a retry record or dead letter Kafka refused for good
/// (`reason`: one of [`refused`]; `error`: what Kafka said), so its partition moves on and the
/// event can still be found: its value is left out, and its origin is read from the refused
/// record's `headers` — a dead letter's `hookline-original-*`, or a retry record's
/// `hookline-seq` (its offset in `events_topic`) on `partition`, the index it shares with its
/// events partition. The webhook, attempts and status are carried over; a refused dead letter's
/// own reason and error go into the error text, with `what` was refused (kind, bytes, topic).
///
/// `None` for a record that names no origin (an attempt or dedup record): nothing stands in for
/// it.
pub fn reference(
    headers: &[(&str, &[u8])],
    events_topic: &str,
    partition: i32,
    what: (&str, usize, &str),
    reason: &str,
    error: &str,
) -> Option<DeadLetter> {
    let text = |name: &'static str| {
        headers
            .iter()
            .rev()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
            .filter(|v| !v.is_empty())
    };
    let number = |name: &'static str| text(name).and_then(|v| v.trim().parse::<i64>().ok());
    let (kind, bytes, topic) = what;
    let (origin_topic, origin_partition, offset, was) = match (
        text(headers::ORIGINAL_TOPIC),
        number(headers::ORIGINAL_PARTITION).and_then(|p| i32::try_from(p).ok()),
        number(headers::ORIGINAL_OFFSET),
    ) {
        (Some(t), Some(p), Some(o)) => {
            let was = match (text(headers::REASON), text(headers::ERROR)) {
                (Some(r), Some(e)) => format!("; dead-lettered for `{r}`: {e}"),
                (Some(r), None) => format!("; dead-lettered for `{r}`"),
                _ => String::new(),
            };
            (t.to_owned(), p, o, was)
        }
        _ => (
            events_topic.to_owned(),
            partition,
            number(headers::SEQ)?,
            String::new(),
        ),
    };
    Some(DeadLetter {
        reason: reason.to_owned(),
        error: error_text(&format!(
            "the {kind} ({bytes} bytes) to {topic} was refused by Kafka: {error}; \
             this dead letter only refers to the event at its original offset{was}"
        )),
        topic: origin_topic,
        partition: origin_partition,
        offset,
        webhook: text(headers::WEBHOOK).map(str::to_owned),
        attempts: number(headers::ATTEMPTS).and_then(|a| u32::try_from(a).ok()),
        status: number(headers::STATUS).and_then(|s| u16::try_from(s).ok()),
    })
}

/// One delivery attempt, as written (JSON) to the attempts topic, keyed by event id; also one
/// record when a delivery is dead-lettered without an attempt (`sent: false`, e.g. its `Webhook`
/// was disabled). The delivery log of `hookline-api` is built from these records alone, so they
/// carry what a person asks about a delivery — never a URL, a secret or a body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AttemptRecord {
    /// The event id (`webhook-id`).
    pub event_id: String,
    /// The event type.
    pub event_type: String,
    /// The event's ordering key, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The `Webhook`.
    pub webhook: String,
    /// The attempt number, from 1 (for `sent: false`, the attempts made before).
    pub attempt: u32,
    /// Whether a request was made (`false`: dead-lettered without an attempt).
    #[serde(default = "yes")]
    pub sent: bool,
    /// The HTTP status, when the receiver answered.
    pub status: Option<u16>,
    /// Time to the end of the bounded body read.
    pub latency_ms: u64,
    /// `delivered`, `retry`, `dead_letter` or `gone` ([`crate::retry::Decision::as_str`]), or
    /// [`DUPLICATE`].
    pub outcome: String,
    /// Why it failed, snake_case.
    pub reason: Option<String>,
    /// What failed, for a person (at most [`ERROR_TEXT_MAX`] bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the next attempt is due (RFC 3339), for `outcome: retry`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    /// The dead letter's reason, when this record ends the delivery in the dead-letter topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_reason: Option<String>,
    /// When the attempt started (RFC 3339).
    pub time: String,
    /// The uid of the `WebhookReplay` this delivery is part of; on a replay's final record it
    /// is written before the retry record's offset is committed (the replay's count relies on
    /// it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<String>,
}

fn yes() -> bool {
    true
}

/// [`AttemptRecord::outcome`] of an events record not delivered because its id was seen within
/// the dedup window ([`crate::dedup`]).
pub const DUPLICATE: &str = "duplicate";

/// Longest [`AttemptRecord::error`] kept, in bytes.
pub const ERROR_TEXT_MAX: usize = 512;

/// `text` cut to at most [`ERROR_TEXT_MAX`] bytes on a character boundary.
pub fn error_text(text: &str) -> String {
    let mut end = text.len().min(ERROR_TEXT_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiers() -> Tiers {
        Tiers::new(
            [
                (1, "1s"),
                (3600, "1h"),
                (10, "10s"),
                (60, "1m"),
                (600, "10m"),
            ]
            .iter()
            .map(|(s, n)| (Duration::from_secs(*s), format!("t.{n}")))
            .collect(),
        )
    }

    #[test]
    fn an_attempt_record_round_trips_and_an_older_one_reads_with_defaults() {
        let r = AttemptRecord {
            event_id: "evt_1".into(),
            event_type: "transaction.approved".into(),
            key: Some("tx-9".into()),
            webhook: "fraud".into(),
            attempt: 2,
            sent: true,
            status: Some(503),
            latency_ms: 12,
            outcome: "retry".into(),
            reason: Some("http_5xx".into()),
            error: Some("HTTP 503".into()),
            next_attempt_at: Some("2026-12-01T00:00:10Z".into()),
            dead_letter_reason: None,
            time: "2026-12-01T00:00:00Z".into(),
            replay: Some("uid-1".into()),
        };
        let json = serde_json::to_vec(&r).unwrap();
        assert_eq!(serde_json::from_slice::<AttemptRecord>(&json).unwrap(), r);
        let old: AttemptRecord = serde_json::from_str(
            r#"{"eventId":"e","eventType":"t","webhook":"w","attempt":1,"status":200,
                "latencyMs":3,"outcome":"delivered","reason":null,"time":"2026-12-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert!(old.sent);
        assert_eq!(old.key, None);
    }

    #[test]
    fn error_text_is_cut_on_a_character_boundary() {
        let long = "é".repeat(ERROR_TEXT_MAX);
        let cut = error_text(&long);
        assert!(cut.len() <= ERROR_TEXT_MAX && cut.len() >= ERROR_TEXT_MAX - 1);
        assert_eq!(error_text("short"), "short");
    }

    #[test]
    fn retry_headers_round_trip() {
        let meta = RetryMeta {
            webhook: "fraud".into(),
            attempts: 3,
            due_ms: 1_700_000_000_123,
            seq: 42,
            replay: None,
        };
        let owned = meta.headers();
        let hs: Vec<(&str, &[u8])> = owned.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        assert_eq!(RetryMeta::from_headers(&hs).unwrap(), meta);
    }

    #[test]
    fn a_retry_record_without_its_headers_is_refused_naming_the_header() {
        let hs: Vec<(&str, &[u8])> = vec![(headers::WEBHOOK, b"fraud"), (headers::ATTEMPTS, b"x")];
        assert_eq!(
            RetryMeta::from_headers(&hs).unwrap_err(),
            MetaError(headers::ATTEMPTS)
        );
    }

    #[test]
    fn the_tier_is_the_largest_not_longer_than_what_remains() {
        let t = tiers();
        assert_eq!(t.topic(t.for_remaining(Duration::from_millis(400))), "t.1s");
        assert_eq!(t.topic(t.for_remaining(Duration::from_secs(10))), "t.10s");
        assert_eq!(t.topic(t.for_remaining(Duration::from_secs(599))), "t.1m");
        assert_eq!(
            t.topic(t.for_remaining(Duration::from_secs(9 * 3600))),
            "t.1h"
        );
        assert_eq!(t.index_of("t.10m"), Some(3));
        assert_eq!(t.longest(), 4);
    }

    #[test]
    fn a_record_is_held_until_its_tier_delay_has_passed() {
        let t = tiers();
        let ten_s = t.index_of("t.10s").unwrap();
        assert_eq!(t.step(ten_s, 1_000, 11_000, 5_000), Step::Hold(11_000));
        assert_eq!(t.step(ten_s, 1_000, 11_000, 11_000), Step::Deliver);
    }

    #[test]
    fn a_record_due_much_later_is_reparked_and_one_due_soon_is_held() {
        let t = tiers();
        let one_m = t.index_of("t.1m").unwrap();
        // Actionable at 61 s, due at 2 h: park again in the 1 h tier.
        assert_eq!(
            t.step(one_m, 1_000, 7_200_000, 61_000),
            Step::Repark(t.index_of("t.1h").unwrap())
        );
        // Due 500 ms after it became actionable: hold it in memory.
        assert_eq!(t.step(one_m, 1_000, 61_500, 61_000), Step::Hold(61_500));
    }

    #[test]
    fn a_refused_retry_record_is_referred_to_by_its_events_offset() {
        let meta = RetryMeta {
            webhook: "fraud".into(),
            attempts: 1,
            due_ms: 1_700_000_000_000,
            seq: 41,
            replay: None,
        };
        let owned = meta.headers();
        let hs: Vec<(&str, &[u8])> = owned.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        let dl = reference(
            &hs,
            "hookline.acme.events",
            3,
            ("retry record", 2_000_000, "hookline.acme.retry.1s"),
            refused::TOO_LARGE,
            "Broker: Message size too large",
        )
        .unwrap();
        assert_eq!(
            (dl.topic.as_str(), dl.partition, dl.offset),
            ("hookline.acme.events", 3, 41)
        );
        assert_eq!(dl.reason, "record_too_large");
        assert_eq!(dl.webhook.as_deref(), Some("fraud"));
        assert_eq!(dl.attempts, Some(1));
        assert!(
            dl.error
                .contains("retry record (2000000 bytes) to hookline.acme.retry.1s"),
            "{}",
            dl.error
        );
    }

    #[test]
    fn a_refused_dead_letter_keeps_its_origin_and_says_why_it_was_dead_lettered() {
        let original = DeadLetter {
            reason: "http_4xx".into(),
            error: "HTTP 400".into(),
            topic: "hookline.acme.events".into(),
            partition: 2,
            offset: 7,
            webhook: Some("fraud".into()),
            attempts: Some(1),
            status: Some(400),
        };
        let owned = original.headers("2026-01-01T00:00:00Z".parse().unwrap());
        let hs: Vec<(&str, &[u8])> = owned.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        let dl = reference(
            &hs,
            "ignored",
            9,
            ("dead letter", 2_000_000, "hookline.acme.dlq"),
            refused::TOO_LARGE,
            "Broker: Message size too large",
        )
        .unwrap();
        assert_eq!(
            (dl.topic.as_str(), dl.partition, dl.offset),
            ("hookline.acme.events", 2, 7)
        );
        assert_eq!(dl.status, Some(400));
        assert!(
            dl.error.ends_with("dead-lettered for `http_4xx`: HTTP 400"),
            "{}",
            dl.error
        );
        assert!(dl.error.len() <= ERROR_TEXT_MAX);
    }

    #[test]
    fn a_record_without_an_origin_has_no_reference() {
        let hs: Vec<(&str, &[u8])> = vec![(headers::WEBHOOK, b"fraud")];
        assert_eq!(
            reference(
                &hs,
                "e",
                0,
                ("attempt record", 10, "a"),
                refused::INVALID,
                "x"
            ),
            None
        );
    }

    #[test]
    fn dead_letter_headers_name_the_origin_and_the_reason() {
        let dl = DeadLetter {
            reason: "http_4xx".into(),
            error: "receiver answered 400".into(),
            topic: "hookline.acme.events".into(),
            partition: 2,
            offset: 7,
            webhook: Some("fraud".into()),
            attempts: Some(1),
            status: Some(400),
        };
        let hs = dl.headers("2026-01-01T00:00:00Z".parse().unwrap());
        let get = |k: &str| hs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get(headers::REASON), Some("http_4xx"));
        assert_eq!(get(headers::ORIGINAL_OFFSET), Some("7"));
        assert_eq!(get(headers::STATUS), Some("400"));
        assert_eq!(get(headers::WEBHOOK), Some("fraud"));
    }
}

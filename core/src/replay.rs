//! Replays (`WebhookReplay`) as plain data: which source records a replay takes, how a replayed
//! delivery is marked in Kafka and on the wire, and how outcomes are counted.
//!
//! # How a replay flows
//! 1. The controller reads the source (the dead-letter topic, or the events topic between two
//!    offsets found by time), keeps what [`Filter`] accepts, each event id once, and writes each
//!    as a retry record due now to the first retry tier (`hookline.<ns>.retry.1s`), on the
//!    events partition the event came from, with [`ReplayTag`] headers. Reading and writing are
//!    one Kafka transaction per chunk, together with the source position, so a restarted
//!    controller resumes where the last committed chunk ended: nothing is queued twice.
//! 2. The dispatcher delivers it like any retry (signing, retries, dead letters, ordering, address
//!    guard), adds the HTTP header [`HTTP_HEADER`], and drops it when the replay was deleted.
//!    When the delivery ends it writes the final attempt record, carrying the replay's uid,
//!    and a done-marker ([`done_hash`]) to the dedup topic before the retry record's offset is
//!    committed, so a restarted dispatcher skips what a replay already delivered.
//! 3. The controller counts final attempt records of the replay ([`Tally`]) into the status.

use std::collections::HashMap;

use crate::dedup::{IdHash, id_hash};
use crate::matching::Matcher;
use crate::retry_topics::headers as dl;

/// Header names of a replayed retry record.
pub mod headers {
    /// The `WebhookReplay`'s name.
    pub const NAME: &str = "hookline-replay";
    /// The `WebhookReplay`'s uid.
    pub const UID: &str = "hookline-replay-uid";
}

/// HTTP header of a replayed delivery; its value is the `WebhookReplay`'s name. The
/// `webhook-id` is the event's own id, as on the first delivery, so a receiver that
/// de-duplicates by it can.
pub const HTTP_HEADER: &str = "hookline-replay";

/// Which replay a record belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReplayTag {
    /// The `WebhookReplay`'s name.
    pub name: String,
    /// Its uid (a re-created replay of the same name is another replay).
    pub uid: String,
}

impl ReplayTag {
    /// The headers to add.
    pub fn headers(&self) -> [(&'static str, String); 2] {
        [
            (headers::NAME, self.name.clone()),
            (headers::UID, self.uid.clone()),
        ]
    }

    /// The tag of a record, when it has one (both headers, UTF-8, non-empty).
    pub fn from_headers(hs: &[(&str, &[u8])]) -> Option<ReplayTag> {
        let text = |name: &str| {
            hs.iter()
                .rev()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .and_then(|(_, v)| std::str::from_utf8(v).ok())
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        Some(ReplayTag {
            name: text(headers::NAME)?,
            uid: text(headers::UID)?,
        })
    }
}

/// The hash a replayed delivery is remembered by once it ended (in the dedup topic, next to the
/// events' ids; distinct from any event id's hash).
pub fn done_hash(uid: &str, event_id: &str) -> IdHash {
    id_hash(&format!("replay\u{0}{uid}\u{0}{event_id}"))
}

/// What a replay takes from its source.
#[derive(Debug, Clone)]
pub struct Filter {
    /// The `Webhook`.
    pub webhook: String,
    /// Dead-letter reasons taken (empty: all); only for the dead-letter source.
    pub reasons: Vec<String>,
    /// The replay's own event-type patterns (none: all).
    pub event_types: Option<Matcher>,
    /// The `Webhook`'s subscription; only for the time-range source.
    pub subscribed: Option<Matcher>,
    /// Event ids taken (empty: all).
    pub ids: Vec<String>,
    /// Record time window `[from, to)` in Unix ms; only for the time-range source.
    pub window_ms: Option<(i64, i64)>,
}

/// Why a source record is not taken (for counting, and for tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// A dead letter of another `Webhook`, or of a record that never had one.
    OtherWebhook,
    /// A dead letter of a reason not asked for.
    Reason,
    /// Outside the time window.
    Time,
    /// Its type is not asked for.
    Type,
    /// Its id is not asked for.
    Id,
}

impl Filter {
    /// Whether a dead letter with `headers` is for the replay's `Webhook` and reasons.
    pub fn dead_letter(&self, hs: &[(&str, &[u8])]) -> Result<(), Skip> {
        let text = |name: &str| {
            hs.iter()
                .rev()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .and_then(|(_, v)| std::str::from_utf8(v).ok())
        };
        if text(dl::WEBHOOK) != Some(self.webhook.as_str()) {
            return Err(Skip::OtherWebhook);
        }
        if !self.reasons.is_empty()
            && !text(dl::REASON).is_some_and(|r| self.reasons.iter().any(|x| x == r))
        {
            return Err(Skip::Reason);
        }
        Ok(())
    }

    /// Whether a record at `time_ms` of an event `id` of `event_type` is taken.
    pub fn event(&self, time_ms: Option<i64>, id: &str, event_type: &str) -> Result<(), Skip> {
        if let Some((from, to)) = self.window_ms
            && !time_ms.is_some_and(|t| t >= from && t < to)
        {
            return Err(Skip::Time);
        }
        if let Some(m) = &self.subscribed
            && !m.matches(event_type)
        {
            return Err(Skip::Type);
        }
        if let Some(m) = &self.event_types
            && !m.matches(event_type)
        {
            return Err(Skip::Type);
        }
        if !self.ids.is_empty() && !self.ids.iter().any(|i| i == id) {
            return Err(Skip::Id);
        }
        Ok(())
    }
}

/// How a replayed delivery ended, from its final attempt record's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Delivered (2xx).
    Delivered,
    /// Dead-lettered again (or dropped because its `Webhook` was deleted).
    Failed,
}

impl End {
    /// The end an attempt record's `outcome` means; `None` for one that does not end a delivery
    /// (`retry`, `duplicate`).
    pub fn of_outcome(outcome: &str) -> Option<End> {
        match outcome {
            "delivered" => Some(End::Delivered),
            "dead_letter" | "gone" => Some(End::Failed),
            _ => None,
        }
    }
}

/// Outcomes of one replay, counted once per event id (a delivery repeated after a dispatcher
/// crash is one event).
#[derive(Debug, Default, Clone)]
pub struct Tally {
    ends: HashMap<IdHash, End>,
    delivered: i64,
    failed: i64,
}

impl Tally {
    /// Counts the end of `event_id`'s delivery; a later end of the same id replaces the
    /// earlier one only when it is a delivery (delivered once is delivered).
    pub fn add(&mut self, event_id: &str, end: End) {
        let before = self.ends.insert(id_hash(event_id), end);
        let keep = match (before, end) {
            (Some(End::Delivered), End::Failed) => Some(End::Delivered),
            _ => None,
        };
        if let Some(k) = keep {
            self.ends.insert(id_hash(event_id), k);
        }
        match (before, keep.unwrap_or(end)) {
            (None, End::Delivered) => self.delivered += 1,
            (None, End::Failed) => self.failed += 1,
            (Some(End::Failed), End::Delivered) => {
                self.failed -= 1;
                self.delivered += 1;
            }
            _ => {}
        }
    }

    /// Events delivered.
    pub fn delivered(&self) -> i64 {
        self.delivered
    }

    /// Events that failed again.
    pub fn failed(&self) -> i64 {
        self.failed
    }

    /// Events with an end.
    pub fn ended(&self) -> i64 {
        self.delivered + self.failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter() -> Filter {
        Filter {
            webhook: "fraud".into(),
            reasons: vec![],
            event_types: None,
            subscribed: None,
            ids: vec![],
            window_ms: None,
        }
    }

    #[test]
    fn a_tag_round_trips_through_headers_and_needs_both() {
        let t = ReplayTag {
            name: "r1".into(),
            uid: "u-1".into(),
        };
        let hs: Vec<(String, String)> = t
            .headers()
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        let pairs: Vec<(&str, &[u8])> =
            hs.iter().map(|(k, v)| (k.as_str(), v.as_bytes())).collect();
        assert_eq!(ReplayTag::from_headers(&pairs), Some(t));
        assert_eq!(ReplayTag::from_headers(&pairs[..1]), None);
        assert_eq!(ReplayTag::from_headers(&[]), None);
    }

    #[test]
    fn done_hashes_differ_per_replay_and_from_the_event_id() {
        assert_ne!(done_hash("a", "evt_1"), done_hash("b", "evt_1"));
        assert_ne!(done_hash("a", "evt_1"), id_hash("evt_1"));
        assert_eq!(done_hash("a", "evt_1"), done_hash("a", "evt_1"));
    }

    #[test]
    fn dead_letters_are_taken_for_the_webhook_and_reasons_asked() {
        let mut f = filter();
        let mine: &[(&str, &[u8])] = &[
            ("hookline-webhook", b"fraud"),
            ("hookline-reason", b"http_503"),
        ];
        let other: &[(&str, &[u8])] = &[
            ("hookline-webhook", b"other"),
            ("hookline-reason", b"http_503"),
        ];
        let raw: &[(&str, &[u8])] = &[("hookline-reason", b"invalid_json")];
        assert_eq!(f.dead_letter(mine), Ok(()));
        assert_eq!(f.dead_letter(other), Err(Skip::OtherWebhook));
        assert_eq!(f.dead_letter(raw), Err(Skip::OtherWebhook));
        f.reasons = vec!["retries_exhausted".into()];
        assert_eq!(f.dead_letter(mine), Err(Skip::Reason));
        f.reasons.push("http_503".into());
        assert_eq!(f.dead_letter(mine), Ok(()));
    }

    #[test]
    fn events_are_taken_inside_the_window_with_a_subscribed_type_and_asked_id() {
        let mut f = filter();
        f.window_ms = Some((1_000, 2_000));
        f.subscribed = Some(Matcher::new(["transaction.*"]).unwrap());
        assert_eq!(f.event(Some(1_000), "a", "transaction.rejected"), Ok(()));
        assert_eq!(
            f.event(Some(2_000), "a", "transaction.rejected"),
            Err(Skip::Time)
        );
        assert_eq!(
            f.event(Some(999), "a", "transaction.rejected"),
            Err(Skip::Time)
        );
        assert_eq!(f.event(None, "a", "transaction.rejected"), Err(Skip::Time));
        assert_eq!(f.event(Some(1_500), "a", "user.created"), Err(Skip::Type));
        f.event_types = Some(Matcher::new(["transaction.review"]).unwrap());
        assert_eq!(
            f.event(Some(1_500), "a", "transaction.rejected"),
            Err(Skip::Type)
        );
        assert_eq!(f.event(Some(1_500), "a", "transaction.review"), Ok(()));
        f.ids = vec!["b".into()];
        assert_eq!(
            f.event(Some(1_500), "a", "transaction.review"),
            Err(Skip::Id)
        );
        assert_eq!(f.event(Some(1_500), "b", "transaction.review"), Ok(()));
    }

    #[test]
    fn a_tally_counts_each_event_once_and_a_later_delivery_wins() {
        let mut t = Tally::default();
        t.add("a", End::Delivered);
        t.add("a", End::Delivered);
        t.add("b", End::Failed);
        assert_eq!((t.delivered(), t.failed()), (1, 1));
        t.add("b", End::Delivered);
        assert_eq!((t.delivered(), t.failed()), (2, 0));
        t.add("a", End::Failed);
        assert_eq!((t.delivered(), t.failed(), t.ended()), (2, 0, 2));
        assert_eq!(End::of_outcome("retry"), None);
        assert_eq!(End::of_outcome("duplicate"), None);
        assert_eq!(End::of_outcome("gone"), Some(End::Failed));
    }
}

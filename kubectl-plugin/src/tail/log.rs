//! The delivery log as `tail` follows it, pure: pages of deliveries (newest first, as the API
//! returns them) flow into a [`Tracker`], which hands back what is new or changed since the
//! last poll, oldest first, and the `since` of the next poll; [`line`] prints one delivery.
//!
//! # Decisions
//! - A delivery is one event at one `Webhook`; it is printed when first seen and again when its
//!   status or attempt count changes (a retry, then its end), never twice for the same state.
//! - The API's `since` filters by *first* attempt, so a delivery whose status changes later is
//!   only seen again while its first attempt is in the polled window. The window therefore
//!   reaches back to the oldest delivery still `pending` or `retrying` (and [`MARGIN`] before the
//!   newest one, for attempts the API ingests late), never before the `--since` floor.
//! - While following, statuses are filtered here rather than by the API, so a delivery that is
//!   retrying is tracked and shown once it is delivered or dead-lettered.

use std::collections::{BTreeSet, HashMap};

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

/// How far before the newest first attempt seen each poll reaches back.
pub const MARGIN: SignedDuration = SignedDuration::from_secs(30);

/// One delivery as the API lists it (`DeliveryView` in `api/openapi.json`), with the latency of
/// its last request (from `GET …/deliveries/{eventId}`) added by `tail`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// The event id (`webhook-id`).
    pub event_id: String,
    /// The `Webhook`.
    pub webhook: String,
    /// The event type.
    pub event_type: String,
    /// `pending`, `delivered`, `retrying` or `dead_lettered`.
    pub status: String,
    /// Attempts made.
    pub attempts: u32,
    /// The first attempt's time (RFC 3339).
    pub first_attempt_at: String,
    /// The last attempt's time (RFC 3339).
    pub last_attempt_at: String,
    /// The last answer's HTTP status.
    #[serde(default)]
    pub last_status_code: Option<u16>,
    /// The last failure's reason.
    #[serde(default)]
    pub last_reason: Option<String>,
    /// Why it was dead-lettered.
    #[serde(default)]
    pub dead_letter_reason: Option<String>,
    /// Latency of the last request made, in ms.
    #[serde(default)]
    pub latency_ms: Option<u64>,
}

impl Delivery {
    fn first(&self) -> Option<Timestamp> {
        self.first_attempt_at.parse().ok()
    }

    fn last(&self) -> Option<Timestamp> {
        self.last_attempt_at.parse().ok()
    }
}

fn is_final(status: &str) -> bool {
    matches!(status, "delivered" | "dead_lettered")
}

/// Which statuses to show: the API's names, from what a person types.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusFilter(BTreeSet<&'static str>);

impl StatusFilter {
    /// Reads `--status` values: `delivered`, `retrying`, `dead_letter` (or `dead_lettered`,
    /// `dead-letter`), `pending`, and `failed` (= `retrying` and `dead_lettered`). None: all.
    ///
    /// # Errors
    /// A message naming the value and the accepted ones.
    pub fn parse(values: &[String]) -> Result<StatusFilter, String> {
        let mut set = BTreeSet::new();
        for v in values.iter().flat_map(|v| v.split(',')) {
            match v.trim().to_ascii_lowercase().replace('-', "_").as_str() {
                "delivered" => set.extend(["delivered"]),
                "retrying" => set.extend(["retrying"]),
                "dead_letter" | "dead_lettered" => set.extend(["dead_lettered"]),
                "pending" => set.extend(["pending"]),
                "failed" => set.extend(["retrying", "dead_lettered"]),
                other => {
                    return Err(format!(
                        "--status {other:?}: expected delivered, failed, retrying, dead_letter or pending"
                    ));
                }
            }
        }
        Ok(StatusFilter(set))
    }

    /// The one API status to ask for, when exactly one is wanted.
    pub fn single(&self) -> Option<&'static str> {
        (self.0.len() == 1)
            .then(|| self.0.iter().next().copied())
            .flatten()
    }

    /// Whether `d` is shown.
    pub fn shows(&self, d: &Delivery) -> bool {
        self.0.is_empty() || self.0.contains(d.status.as_str())
    }
}

#[derive(Debug, Clone)]
struct Seen {
    status: String,
    attempts: u32,
    first: Timestamp,
}

/// What was printed, and the window of the next poll.
#[derive(Debug)]
pub struct Tracker {
    floor: Timestamp,
    seen: HashMap<(String, String), Seen>,
}

impl Tracker {
    /// A tracker that never looks before `floor` (now minus `--since`).
    pub fn new(floor: Timestamp) -> Tracker {
        Tracker {
            floor,
            seen: HashMap::new(),
        }
    }

    /// Never looks before `floor` from now on (after reading only the newest part of the
    /// window: what is older was not shown and should not appear later out of order).
    pub fn raise_floor(&mut self, floor: Timestamp) {
        self.floor = self.floor.max(floor);
    }

    /// The deliveries of `items` that are new or changed, oldest first (by last attempt), and
    /// remembers them. Unreadable times sort first.
    pub fn fresh(&mut self, items: Vec<Delivery>) -> Vec<Delivery> {
        let mut out: Vec<Delivery> = Vec::new();
        for d in items {
            let key = (d.event_id.clone(), d.webhook.clone());
            let changed = self
                .seen
                .get(&key)
                .is_none_or(|s| s.status != d.status || s.attempts != d.attempts);
            if changed {
                let first = d.first().unwrap_or(self.floor);
                self.seen.insert(
                    key,
                    Seen {
                        status: d.status.clone(),
                        attempts: d.attempts,
                        first,
                    },
                );
                out.push(d);
            }
        }
        out.sort_by_key(|d| (d.last(), d.first()));
        out
    }

    /// The `since` of the next poll (see the module docs); forgets what it will not see again.
    pub fn next_since(&mut self) -> Timestamp {
        let newest = self.seen.values().map(|s| s.first).max();
        let oldest_open = self
            .seen
            .values()
            .filter(|s| !is_final(&s.status))
            .map(|s| s.first)
            .min();
        let since = match (newest, oldest_open) {
            (None, _) => self.floor,
            (Some(n), open) => {
                let behind = n.checked_sub(MARGIN).unwrap_or(n);
                open.map_or(behind, |o| o.min(behind)).max(self.floor)
            }
        };
        self.seen.retain(|_, s| s.first >= since);
        since
    }
}

/// The header of [`line`]'s columns.
pub fn header() -> String {
    row([
        "TIME", "EVENT", "TYPE", "WEBHOOK", "STATUS", "ATTEMPTS", "HTTP", "LATENCY", "REASON",
    ])
}

/// One delivery as a line: last attempt time, event id, type, webhook, status, attempts, last
/// HTTP status, latency of the last request, and the reason of a failure.
pub fn line(d: &Delivery) -> String {
    let http = d
        .last_status_code
        .map_or_else(|| "-".into(), |c| c.to_string());
    let latency = d
        .latency_ms
        .map_or_else(|| "-".into(), |ms| format!("{ms}ms"));
    let reason = d
        .dead_letter_reason
        .clone()
        .or_else(|| d.last_reason.clone())
        .filter(|_| d.status != "delivered")
        .unwrap_or_default();
    row([
        &d.last_attempt_at,
        &d.event_id,
        &d.event_type,
        &d.webhook,
        &d.status,
        &d.attempts.to_string(),
        &http,
        &latency,
        &reason,
    ])
}

/// Minimum widths of the columns (wider cells push the rest right).
const WIDTHS: [usize; 9] = [24, 24, 24, 16, 13, 8, 4, 8, 0];

fn row(cells: [&str; 9]) -> String {
    let mut out = String::new();
    for (cell, width) in cells.iter().zip(WIDTHS) {
        out.push_str(&format!("{cell:<width$} "));
    }
    out.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(id: &str, status: &str, attempts: u32, first: &str, last: &str) -> Delivery {
        Delivery {
            event_id: id.into(),
            webhook: "orders".into(),
            event_type: "transaction.approved".into(),
            status: status.into(),
            attempts,
            first_attempt_at: first.into(),
            last_attempt_at: last.into(),
            last_status_code: None,
            last_reason: None,
            dead_letter_reason: None,
            latency_ms: None,
        }
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    const T0: &str = "2026-12-01T12:00:00Z";

    #[test]
    fn deliveries_are_printed_oldest_first_once_per_state() {
        let mut t = Tracker::new(at("2026-12-01T11:50:00Z"));
        // Newest first, as the API pages them; fractional seconds of varying length.
        let page = vec![
            d(
                "b",
                "retrying",
                1,
                "2026-12-01T12:00:01.5Z",
                "2026-12-01T12:00:01.5Z",
            ),
            d("a", "delivered", 1, T0, "2026-12-01T12:00:01.25Z"),
        ];
        let ids: Vec<String> = t
            .fresh(page.clone())
            .into_iter()
            .map(|d| d.event_id)
            .collect();
        assert_eq!(ids, ["a", "b"]);
        assert!(
            t.fresh(page).is_empty(),
            "the same states are not printed again"
        );
        let later = vec![d(
            "b",
            "delivered",
            2,
            "2026-12-01T12:00:01.5Z",
            "2026-12-01T12:00:03Z",
        )];
        assert_eq!(t.fresh(later).len(), 1, "a status change is printed");
    }

    #[test]
    fn the_window_reaches_back_to_the_oldest_open_delivery_but_not_past_the_floor() {
        let floor = at("2026-12-01T11:00:00Z");
        let mut t = Tracker::new(floor);
        assert_eq!(t.next_since(), floor);
        t.fresh(vec![
            d(
                "old",
                "retrying",
                1,
                "2026-12-01T11:30:00Z",
                "2026-12-01T11:30:00Z",
            ),
            d("new", "delivered", 1, T0, T0),
        ]);
        assert_eq!(t.next_since(), at("2026-12-01T11:30:00Z"));
        t.fresh(vec![d(
            "old",
            "dead_lettered",
            5,
            "2026-12-01T11:30:00Z",
            T0,
        )]);
        assert_eq!(
            t.next_since(),
            at("2026-12-01T11:59:30Z"),
            "the margin before the newest"
        );
        // Forgotten: before the window, it would never come back.
        assert!(
            !t.seen
                .contains_key(&("old".to_owned(), "orders".to_owned()))
        );
        let mut early = Tracker::new(at("2026-12-01T11:59:50Z"));
        early.fresh(vec![d("x", "delivered", 1, T0, T0)]);
        assert_eq!(early.next_since(), at("2026-12-01T11:59:50Z"));
    }

    #[test]
    fn failed_means_retrying_or_dead_lettered_and_one_status_goes_to_the_api() {
        let f = StatusFilter::parse(&["failed".into()]).unwrap();
        assert!(f.shows(&d("a", "retrying", 1, T0, T0)));
        assert!(f.shows(&d("a", "dead_lettered", 1, T0, T0)));
        assert!(!f.shows(&d("a", "delivered", 1, T0, T0)));
        assert_eq!(f.single(), None);
        let one = StatusFilter::parse(&["dead-letter".into()]).unwrap();
        assert_eq!(one.single(), Some("dead_lettered"));
        let all = StatusFilter::parse(&[]).unwrap();
        assert!(all.shows(&d("a", "pending", 0, T0, T0)) && all.single().is_none());
        assert!(
            StatusFilter::parse(&["lost".into()])
                .unwrap_err()
                .contains("\"lost\"")
        );
        let both = StatusFilter::parse(&["delivered,retrying".into()]).unwrap();
        assert!(both.shows(&d("a", "retrying", 1, T0, T0)));
    }

    #[test]
    fn a_line_shows_http_status_latency_and_the_failure_reason() {
        let mut x = d("evt_1", "dead_lettered", 3, T0, T0);
        x.last_status_code = Some(503);
        x.latency_ms = Some(12);
        x.last_reason = Some("http_5xx".into());
        x.dead_letter_reason = Some("retries_exhausted".into());
        let text = line(&x);
        assert!(text.starts_with("2026-12-01T12:00:00Z     evt_1"), "{text}");
        assert!(
            text.ends_with("dead_lettered 3        503  12ms     retries_exhausted"),
            "{text}"
        );
        assert!(header().starts_with("TIME "));
    }
}

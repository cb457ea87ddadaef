//! The delivery guarantees of `hookline-dispatcher`, proved end to end through the
//! controller-created dispatcher (issue 5, "Done when"): events produced to a tenant's topic flow
//! through its dispatcher to a recording receiver, and the counts, ids and order of arrival there
//! (and, for retries, the smallest delay the schedule allows) are checked, never how fast
//! something went. One test binary, by theme:
//!
//! - [`fan_out`]: each of three `Webhook`s gets exactly the events its types match, signed with
//!   its own key.
//! - [`retries`]: retries with the same `webhook-id` and increasing attempt numbers, and
//!   `Retry-After`.
//! - [`at_least_once`]: every event arrives across a `kill -9` of the dispatcher mid-stream.
//! - [`ordering`]: per-key order under transient failures, and isolation from a slow URL.

mod at_least_once;
mod fan_out;
mod ordering;
mod retries;

use hookline_tests::receiver::Recorded;

fn id(r: &Recorded) -> &str {
    r.header("webhook-id").expect("webhook-id")
}

fn ids(rs: &[Recorded]) -> Vec<&str> {
    rs.iter().map(id).collect()
}

fn is_2xx(r: &Recorded) -> bool {
    (200..300).contains(&r.status)
}

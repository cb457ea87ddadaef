//! `hookline-dispatcher` end to end, as the controller runs it (a Deployment whose Pod the pod
//! runner starts under the tenant's own ServiceAccount): events produced to the tenant's events
//! topic flow through the dispatcher to a recording receiver, and what the receiver, the
//! dead-letter topic and the `Webhook`'s status saw is checked. One test binary, by theme:
//!
//! - [`outcomes`]: what one event ends as — delivered signed and counted, a 5xx retried with the
//!   same `webhook-id`, a 4xx or a malformed record dead-lettered with its reason (and the
//!   consumer carries on), 410 Gone disabling the `Webhook`, a test send.
//! - [`ordering`]: per-key order while a key retries and through a burst, and a slow URL that
//!   does not slow the others.
//! - [`lifecycle`]: what survives a change of the dispatcher or the `Webhook` — a restart with a
//!   retry pending, a key rotation, a pause and a resume.

mod lifecycle;
mod ordering;
mod outcomes;

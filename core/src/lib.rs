//! `hookline-core`: the pure Hookline domain. Plain types and functions with no Kafka, HTTP or
//! Kubernetes I/O — no tokio, kube, rdkafka, reqwest or hyper anywhere in this crate's
//! dependency tree (`make test` checks it) — that the controller, the dispatcher and the API
//! build on. Time and randomness come in as arguments, so everything here is unit-tested
//! without a clock or a network.
//!
//! A record's path through it, in the order the dispatcher uses it: [`envelope`] turns a Kafka
//! record into an [`envelope::Event`]; [`matching`] picks the `Webhook`s whose `eventTypes` it
//! matches; per webhook, [`ordering`] and [`lanes`] decide whether it may go now or waits behind
//! an earlier event of the same key, [`status::hold`] whether its endpoint takes deliveries at
//! all, [`circuit`] and [`ratelimit`] whether the endpoint may be called now, [`ssrf`] vets the
//! address it resolves to, and [`signing`] signs the attempt with the keys of [`secret`]; the
//! outcome goes through [`retry`] to become delivered, retried later, dead-lettered or gone,
//! written as the records of [`retry_topics`]; [`drain`] measures how fast an endpoint clears
//! its work; finally [`ordering::OffsetTracker`] says which Kafka offset may be committed.
//!
//! The contracts between the binaries are defined here once: [`args`] (the dispatcher's flags,
//! written by the controller), [`kafka`] (client settings), [`naming`] (object and topic
//! names), [`secret`] (the signing Secret's layout), [`conditions`] and [`status`] (condition
//! types, reasons, field managers and how conditions settle), [`duration`] (the CRD's
//! durations).

pub mod args;
pub mod circuit;
pub mod conditions;
pub mod dedup;
pub mod drain;
pub mod duration;
pub mod envelope;
pub mod kafka;
pub mod lanes;
pub mod matching;
pub mod memory;
pub mod naming;
pub mod ordering;
pub mod ratelimit;
pub mod replay;
pub mod retry;
pub mod retry_topics;
pub mod secret;
pub mod signing;
pub mod ssrf;
pub mod status;

/// API group of every Hookline resource.
pub const GROUP: &str = "hookline.dev";
/// `apiVersion` of the Hookline resources.
pub const API_VERSION: &str = "hookline.dev/v1alpha1";

//! The pure core of `hookline-dispatcher`: plain types and functions, with no
//! Kafka, HTTP or Kubernetes I/O, that the dispatcher's edges call.
//!
//! A record flows through them in this order: [`envelope`] turns a Kafka
//! record into an [`envelope::Event`]; [`matching`] picks the `Webhook`s whose
//! `eventTypes` it matches; per webhook, [`ordering`] decides whether it may
//! go now or waits behind an earlier event of the same key, [`circuit`] and
//! [`ratelimit`] decide whether the endpoint may be called now, [`ssrf`]
//! vets the address it resolves to, and [`signing`] signs the attempt; the
//! outcome goes through [`retry`] to become delivered, retried later,
//! dead-lettered or gone; finally [`ordering::OffsetTracker`] says which
//! Kafka offset may be committed. [`duration`] parses the CRD's durations.
//!
//! The runtime around that core (used by the `hookline-dispatcher` binary):
//! [`config`] (flags and Kafka settings), [`webhooks`] and [`secrets`] (the
//! tenant's `Webhook`s and their signing keys), [`lanes`] (per-key order
//! across memory and the retry topics), [`retry_topics`] (the records written
//! to Kafka), [`delivery`] (the HTTP client), [`pipeline`] (consume, fan out,
//! deliver, settle, commit) with its [`consumer`] and [`worker`] tasks,
//! [`reflector`], [`status`], [`metrics`] and [`server`].

pub mod circuit;
pub mod config;
pub mod consumer;
pub mod delivery;
pub mod drain;
pub mod error;
pub mod lanes;
pub mod metrics;
pub mod pipeline;
pub mod reflector;
pub mod retry_topics;
pub mod secrets;
pub mod server;
pub mod status;
pub mod webhooks;
pub mod worker;
pub use hookline_crds::duration;
pub mod envelope;
pub mod matching;
pub mod ordering;
pub mod ratelimit;
pub mod retry;
pub mod signing;
pub mod ssrf;

/// Installs ring as the process's rustls crypto provider, once. reqwest is built without a
/// provider of its own (so only ring, which kube already links, is compiled in); call this
/// before building any reqwest client. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

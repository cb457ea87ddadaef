//! `hookline-dispatcher`: consumes one tenant's Kafka topics and delivers each event, signed, to
//! every `Webhook` that subscribes to it. The domain decisions (parsing, matching, ordering,
//! retry policy, signing, address policy, conditions) live in the pure crate `hookline-core`;
//! this crate is the I/O around them, in folders in the order a record travels:
//!
//! 1. [`kafka`] — the consumer that reads the events and retry topics and the [`kafka::writer`]
//!    that makes retries, dead letters and attempt records durable.
//! 2. [`pipeline`] — one loop that turns records into jobs (parse, match, fan out), holds them
//!    in per-key lanes, applies back-pressure ([`pipeline::pressure`]), settles offsets as jobs
//!    complete and commits them.
//! 3. [`delivery`] — a job's attempt: in-flight slot, hold decision, rate limit, circuit, the
//!    signed HTTP POST through the SSRF-guarded client, the retry decision, and test sends.
//! 4. [`tenant`] — the tenant's `Webhook`s as endpoints (spec snapshot + runtime state), their
//!    signing keys, and the status writer that reports back into each `Webhook`.
//! 5. [`ops`] — flags and Kafka client settings, Prometheus metrics, `/healthz` and `/readyz`.
//!
//! Dependencies point one way: `pipeline` → `delivery` → `kafka`, `tenant` → `ops`; nothing
//! imports a module that imports it.

pub mod delivery;
pub mod error;
pub mod kafka;
pub mod ops;
pub mod pipeline;
pub mod tenant;

/// Installs ring as the process's rustls crypto provider, once. reqwest is built without a
/// provider of its own (so only ring, which kube already links, is compiled in); call this
/// before building any reqwest client. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

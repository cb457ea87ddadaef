//! `hookline-bench`: measures the delivery path of Hookline — events produced
//! to Kafka, consumed, signed and POSTed by `hookline-dispatcher`, received by
//! a local HTTP sink — against a raw HTTP client doing the same requests with
//! no Kafka and no signing, and writes what it found as JSON and a table.
//!
//! Flow: [`cluster`] (the environment, a tenant and run topics, on the test
//! harness `hookline-tests`) → [`producer`] (the load) → [`dispatcher`] (the
//! process under test) → [`sink`] (receive and record) / [`baseline`] (the raw
//! client) → [`runner`] (one run, watched by [`sampler`] through [`procstat`])
//! → [`scenarios`] (points of issue 7, a module each, repeated) → [`stats`]
//! and [`report`]. Every time is read from [`clock`]. Scenario 7 measures
//! `hookline-api` instead, with the machinery of [`delivery_log`].

pub mod baseline;
pub mod clock;
pub mod cluster;
pub mod delivery_log;
pub mod dispatcher;
pub mod procstat;
pub mod producer;
pub mod report;
pub mod runner;
pub mod sampler;
pub mod scenarios;
pub mod sink;
pub mod stats;

/// Installs ring as rustls's process-wide provider (reqwest is built without
/// one in this workspace). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

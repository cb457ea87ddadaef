//! What the platform team operates the dispatcher with: its [`config`] (flags and Kafka client
//! settings), Prometheus [`metrics`], and the [`health`] server (`/metrics`, `/healthz`,
//! `/readyz`).

pub mod config;
pub mod health;
pub mod metrics;

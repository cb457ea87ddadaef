//! `hookline-controller`: reconciles `Webhook`s into signing Secrets and conditions
//! ([`webhook`]), and tenants into a dispatcher Deployment with its RBAC and Kafka topics
//! ([`tenant`]), with Events and metrics, and runs `WebhookReplay`s ([`replay`]); leader-elected.
//!
//! Pure parts (validation, child objects and the tenant plan, the tenant index, secret
//! lifecycle, leader-election rules) sit in their own modules with unit tests; [`webhook`],
//! [`tenant`] and [`topics`] talk to the API server and Kafka, and [`run`] wires the two
//! reconcilers to their watches.

pub mod children;
pub mod context;
pub mod error;
pub mod leader;
pub mod metrics;
pub mod replay;
pub mod run;
pub mod secret;
pub mod settings;
pub mod tenant;
pub mod tenant_index;
pub mod tenant_plan;
pub mod topics;
pub mod validate;
pub mod webhook;

#[cfg(test)]
mod fixtures;

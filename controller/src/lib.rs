//! `hookline-controller`: reconciles `Webhook`s into signing Secrets, a dispatcher Deployment
//! per tenant with its RBAC, the tenant's Kafka topics, conditions and Events.
//!
//! Pure parts (validation, child objects, secret lifecycle, conditions, leader-election rules)
//! sit in their own modules with unit tests; [`reconcile`] is the only place that talks to the
//! API server and Kafka.

pub mod children;
pub mod conditions;
pub mod error;
pub mod leader;
pub mod metrics;
pub mod reconcile;
pub mod secret;
pub mod settings;
pub mod topics;
pub mod validate;

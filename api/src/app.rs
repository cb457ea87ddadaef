//! What every request handler shares ([`App`]): the clients that call the kube-apiserver as
//! the caller, authentication, the delivery log, metrics and the API's limits.

use std::sync::Arc;
use std::time::Duration;

use crate::auth::Auth;
use crate::kube_as::Kube;
use crate::ops::Metrics;
use crate::publish::Publisher;
use crate::store::DeliveryLog;

/// What every handler needs.
pub struct App {
    /// The kube-apiserver, as the caller.
    pub kube: Kube,
    /// Authentication and delivery-log access.
    pub auth: Auth,
    /// The delivery log.
    pub store: Arc<dyn DeliveryLog>,
    /// Metrics.
    pub metrics: Metrics,
    /// Largest body accepted.
    pub max_body: usize,
    /// How long a test send is waited for.
    pub test_wait: Duration,
    /// Writes published events to Kafka.
    pub publisher: Publisher,
    /// The OpenAPI document, rendered once.
    pub openapi: String,
}

//! The controller's errors. `category()` is the bounded label used in metrics and as the
//! Event reason; transient errors requeue with backoff, invalid specs wait for a change.

/// What went wrong during a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a request.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Kafka topic management failed.
    #[error("Kafka: {0}")]
    Kafka(String),
    /// A call to the API server took too long.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// The object lacks something every stored object has (namespace, name).
    #[error("object is missing {0}")]
    MissingField(&'static str),
}

impl Error {
    /// Bounded label for metrics and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubeApi",
            Error::Kafka(_) => "Kafka",
            Error::MissingField(_) => "MissingField",
            Error::Timeout(_) => "Timeout",
        }
    }
}

/// Result of the controller.
pub type Result<T, E = Error> = std::result::Result<T, E>;

//! The dispatcher runtime's errors at its edges: what the Kubernetes API, Kafka and the HTTP
//! stack can refuse, and a `Webhook` spec the dispatcher cannot use ([`SpecError`]).
//! [`Error::category`] is the bounded label used in metrics and logs. Delivery outcomes are not
//! errors: they flow through [`hookline_core::retry`].

/// What went wrong at the dispatcher's edges.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a request.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A Kafka client call failed.
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The delivery HTTP client could not be built (its TLS stack).
    #[error("building the HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
    /// A call took too long.
    #[error("timed out: {0}")]
    Timeout(&'static str),
}

impl Error {
    /// Bounded label for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubeApi",
            Error::Kafka(_) => "Kafka",
            Error::HttpClient(_) => "HttpClient",
            Error::Timeout(_) => "Timeout",
        }
    }
}

/// Result of the dispatcher runtime.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A `Webhook` spec the dispatcher cannot use (what the API server's schema should have
/// refused). The endpoint keeps it and reports it in its `Delivering` condition; its deliveries
/// wait for a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// The spec field, as in the CRD (`url`, `delivery.timeout`, …).
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl SpecError {
    /// `field` is wrong because of `message`.
    pub fn new(field: &'static str, message: impl std::fmt::Display) -> SpecError {
        SpecError {
            field,
            message: message.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_are_stable_labels() {
        assert_eq!(Error::Timeout("status patch").category(), "Timeout");
    }

    #[test]
    fn a_spec_error_names_its_field() {
        assert_eq!(
            SpecError::new("delivery.timeout", "too long").to_string(),
            "delivery.timeout: too long"
        );
    }
}

//! The dispatcher runtime's errors: what the Kubernetes API, Kafka and a
//! `Webhook`'s own spec can refuse. [`Error::category`] is the bounded label
//! used in metrics and logs. Delivery outcomes are not errors: they flow
//! through [`crate::retry`].

/// What went wrong at the dispatcher's edges.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a request.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A Kafka client call failed.
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// A `Webhook` spec the dispatcher cannot use (the controller reports it
    /// as `Ready=False`; the dispatcher skips the `Webhook`).
    #[error("invalid Webhook spec: {0}")]
    InvalidSpec(String),
    /// A signing Secret is missing or holds no usable key.
    #[error("signing secret: {0}")]
    Secret(String),
    /// A call took too long.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// Serializing a status or record failed (a bug).
    #[error("serialization: {0}")]
    Serialization(#[from] serde_json::Error),
}

impl Error {
    /// Bounded label for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubeApi",
            Error::Kafka(_) => "Kafka",
            Error::InvalidSpec(_) => "InvalidSpec",
            Error::Secret(_) => "Secret",
            Error::Timeout(_) => "Timeout",
            Error::Serialization(_) => "Serialization",
        }
    }
}

/// Result of the dispatcher runtime.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_are_stable_labels() {
        assert_eq!(Error::Timeout("status patch").category(), "Timeout");
        assert_eq!(Error::InvalidSpec("x".into()).category(), "InvalidSpec");
    }
}

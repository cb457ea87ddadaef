//! Kafka at the dispatcher's edges: records come in through the [`consumer`] (one group over the
//! events and retry topics, manual commits) and leave through the [`writer`] (retries, dead
//! letters, attempt records; `acks=all`).

pub mod consumer;
pub mod writer;

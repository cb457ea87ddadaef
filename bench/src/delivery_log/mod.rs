//! The machinery of scenario 7 (issue 12): `hookline-api`'s delivery log and tenant API.
//! Realistic attempt records come from [`records`]; they flow into the store directly
//! ([`store`]: `apply` throughput, a multi-million-attempt fill, query latencies in process),
//! through Kafka into a release `hookline-api` against a plain consumer ([`ingest`]), and the
//! filled store and the `Webhook` API are asked over HTTP with a real tenant token ([`http`]).

pub mod http;
pub mod ingest;
pub mod records;
pub mod store;

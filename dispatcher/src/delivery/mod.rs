//! One event's delivery to one `Webhook`: the [`job`] model, the [`attempt`] from in-flight
//! slot to a durable result, the HTTP [`client`] that signs and POSTs, the SSRF-guarded
//! [`resolver`] it connects through, and [`test_send`]s.

pub mod attempt;
pub mod client;
pub mod job;
pub mod resolver;
pub mod test_send;

//! The tenant's `Webhook`s as the dispatcher sees them: the [`reflector`] keeps the
//! [`endpoints`] registry in line with the API server, [`keys`] loads each signing Secret, each
//! endpoint's [`stats`] collect what happened, and [`status`] writes what happened back into each `Webhook`'s status.

pub mod endpoints;
pub mod keys;
pub mod reflector;
pub mod stats;
pub mod status;

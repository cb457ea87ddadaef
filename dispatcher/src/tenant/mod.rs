//! The tenant's `Webhook`s as the dispatcher sees them: the [`reflector`] keeps the
//! [`endpoints`] registry in line with the API server (each endpoint's [`settings`] read from
//! its spec), [`keys`] loads each signing Secret, each endpoint's [`stats`] collect what
//! happened, and [`status`] writes it back into each `Webhook`'s status. [`replays`] knows
//! which `WebhookReplay`s exist, so a deleted one's deliveries are dropped.

pub mod endpoints;
pub mod keys;
pub mod reflector;
pub mod replays;
pub mod settings;
pub mod stats;
pub mod status;

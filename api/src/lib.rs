//! `hookline-api`: the customer side of Hookline. A tenant's bearer token comes in over HTTP,
//! is authenticated with TokenReview ([`auth`]) and passed through to the kube-apiserver for
//! every read and write of the tenant's `Webhook`s ([`kube_as`]), so Kubernetes RBAC decides
//! and the audit log names the person; the delivery log ([`store`]) is fed from the tenants'
//! attempts topics ([`ingest`]) and read after a SelfSubjectAccessReview as the caller
//! ([`routes`]); events are published over HTTP through [`publish`]. Request and response types live in [`model`], errors in [`problem`], and the
//! OpenAPI document is generated from them ([`openapi`]).

pub mod app;
pub mod auth;
pub mod extract;
pub mod ingest;
pub mod kube_as;
pub mod model;
pub mod openapi;
pub mod ops;
pub mod problem;
pub mod publish;
pub mod routes;
pub mod settings;
pub mod store;

//! Calls to the kube-apiserver *as the caller*: the caller's own bearer token is passed through
//! on every request, so the API server authenticates it, its RBAC decides, and its audit log
//! names the person. [`Kube`] holds two clients: `own` (the API's ServiceAccount, used only for
//! TokenReview) and `bare` (the same cluster and CA, with no credentials of its own), on which
//! [`AsCaller`] sends requests carrying the caller's `Authorization` header.
//!
//! # Decisions
//! - Pass-through rather than impersonation: impersonating would need the `impersonate` verb
//!   on users and groups cluster-wide, a power equal to cluster-admin. Passing the token
//!   through, the API can never do more than the caller could with `kubectl`.

use std::collections::BTreeMap;

use axum::http::{HeaderValue, Request, header};
use hookline_crds::{Webhook, WebhookReplay};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{GetParams, ListParams, ObjectList, Patch, PatchParams, PostParams};
use kube::core::Resource;
use kube::core::request::Error as RequestError;
use kube::{Client, Config};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The two clients.
#[derive(Clone)]
pub struct Kube {
    /// The API's own identity (TokenReview only).
    pub own: Client,
    bare: Client,
}

impl Kube {
    /// Both clients from `config` (the API's own credentials; the bare client drops them).
    ///
    /// # Errors
    /// When a client cannot be built.
    pub fn new(config: Config) -> Result<Kube, kube::Error> {
        let own = Client::try_from(config.clone())?;
        let mut bare = config;
        bare.auth_info = kube::config::AuthInfo::default();
        Ok(Kube {
            own,
            bare: Client::try_from(bare)?,
        })
    }

    /// Calls as the holder of `token`.
    pub fn as_caller<'a>(&'a self, token: &'a str) -> AsCaller<'a> {
        AsCaller { kube: self, token }
    }
}

/// Requests carrying one caller's token.
pub struct AsCaller<'a> {
    kube: &'a Kube,
    token: &'a str,
}

fn with_query(mut req: Request<Vec<u8>>, query: &str) -> Request<Vec<u8>> {
    let uri = req.uri().to_string();
    let sep = if uri.contains('?') { '&' } else { '?' };
    if let Ok(u) = format!("{uri}{sep}{query}").parse() {
        *req.uri_mut() = u;
    }
    req
}

fn webhooks(tenant: &str) -> kube::core::Request {
    kube::core::Request::new(Webhook::url_path(&(), Some(tenant)))
}

/// Strict field validation: unknown fields are refused, not dropped.
const STRICT: &str = "fieldValidation=Strict";

impl AsCaller<'_> {
    async fn call<T: DeserializeOwned>(&self, req: Request<Vec<u8>>) -> kube::Result<T> {
        let mut req = req;
        let value = HeaderValue::from_str(&format!("Bearer {}", self.token)).map_err(|_| {
            kube::Error::BuildRequest(RequestError::Validation(
                "the token is not a header value".into(),
            ))
        })?;
        req.headers_mut().insert(header::AUTHORIZATION, value);
        self.kube.bare.request(req).await
    }

    /// The tenant's `Webhook`s.
    ///
    /// # Errors
    /// The API server's refusal, or a transport error.
    pub async fn list_webhooks(&self, tenant: &str) -> kube::Result<ObjectList<Webhook>> {
        let req = webhooks(tenant)
            .list(&ListParams::default())
            .map_err(kube::Error::BuildRequest)?;
        self.call(req).await
    }

    /// One `Webhook`.
    ///
    /// # Errors
    /// The API server's refusal (404 when missing), or a transport error.
    pub async fn get_webhook(&self, tenant: &str, name: &str) -> kube::Result<Webhook> {
        let req = webhooks(tenant)
            .get(name, &GetParams::default())
            .map_err(kube::Error::BuildRequest)?;
        self.call(req).await
    }

    /// Creates `object` (a `Webhook` as JSON), refusing unknown fields.
    ///
    /// # Errors
    /// The API server's refusal (validation, 409 when it exists), or a transport error.
    pub async fn create_webhook(&self, tenant: &str, object: &Value) -> kube::Result<Webhook> {
        let body = serde_json::to_vec(object).map_err(kube::Error::SerdeError)?;
        let req = webhooks(tenant)
            .create(&PostParams::default(), body)
            .map_err(kube::Error::BuildRequest)?;
        self.call(with_query(req, STRICT)).await
    }

    /// Replaces `name` with `object` (whose `metadata.resourceVersion` is the precondition).
    ///
    /// # Errors
    /// The API server's refusal (409 when the version moved on), or a transport error.
    pub async fn replace_webhook(
        &self,
        tenant: &str,
        name: &str,
        object: &Value,
    ) -> kube::Result<Webhook> {
        let body = serde_json::to_vec(object).map_err(kube::Error::SerdeError)?;
        let req = webhooks(tenant)
            .replace(name, &PostParams::default(), body)
            .map_err(kube::Error::BuildRequest)?;
        self.call(with_query(req, STRICT)).await
    }

    /// Applies a JSON merge patch to `name`.
    ///
    /// # Errors
    /// The API server's refusal, or a transport error.
    pub async fn merge_webhook(
        &self,
        tenant: &str,
        name: &str,
        patch: &Value,
    ) -> kube::Result<Webhook> {
        let req = webhooks(tenant)
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .map_err(kube::Error::BuildRequest)?;
        self.call(with_query(req, STRICT)).await
    }

    /// Deletes `name`, only if still at `resource_version` when one is given.
    ///
    /// # Errors
    /// The API server's refusal (409 on a failed precondition), or a transport error.
    pub async fn delete_webhook(
        &self,
        tenant: &str,
        name: &str,
        resource_version: Option<&str>,
    ) -> kube::Result<Value> {
        let mut options = BTreeMap::from([
            ("apiVersion", Value::from("v1")),
            ("kind", Value::from("DeleteOptions")),
            ("propagationPolicy", Value::from("Background")),
        ]);
        if let Some(rv) = resource_version {
            options.insert("preconditions", serde_json::json!({"resourceVersion": rv}));
        }
        let body = serde_json::to_vec(&options).map_err(kube::Error::SerdeError)?;
        let uri = format!("{}/{name}", Webhook::url_path(&(), Some(tenant)));
        let req = Request::delete(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
            .map_err(|e| kube::Error::BuildRequest(RequestError::BuildRequest(e)))?;
        self.call(req).await
    }

    /// Creates `object` (a `WebhookReplay` as JSON), refusing unknown fields.
    ///
    /// # Errors
    /// The API server's refusal (RBAC, validation, 409 when it exists), or a transport error.
    pub async fn create_replay(&self, tenant: &str, object: &Value) -> kube::Result<WebhookReplay> {
        let body = serde_json::to_vec(object).map_err(kube::Error::SerdeError)?;
        let req = kube::core::Request::new(WebhookReplay::url_path(&(), Some(tenant)))
            .create(&PostParams::default(), body)
            .map_err(kube::Error::BuildRequest)?;
        self.call(with_query(req, STRICT)).await
    }

    /// One `WebhookReplay`.
    ///
    /// # Errors
    /// The API server's refusal (404 when missing), or a transport error.
    pub async fn get_replay(&self, tenant: &str, name: &str) -> kube::Result<WebhookReplay> {
        let req = kube::core::Request::new(WebhookReplay::url_path(&(), Some(tenant)))
            .get(name, &GetParams::default())
            .map_err(kube::Error::BuildRequest)?;
        self.call(req).await
    }

    /// A Secret of the tenant.
    ///
    /// # Errors
    /// The API server's refusal, or a transport error.
    pub async fn get_secret(&self, tenant: &str, name: &str) -> kube::Result<Secret> {
        let req = kube::core::Request::new(Secret::url_path(&(), Some(tenant)))
            .get(name, &GetParams::default())
            .map_err(kube::Error::BuildRequest)?;
        self.call(req).await
    }

    /// Whether the caller may `verb` the `group`/`resource` in `tenant` (a
    /// SelfSubjectAccessReview, answered by the API server's authorizers).
    ///
    /// # Errors
    /// The API server's refusal, or a transport error.
    pub async fn can(
        &self,
        tenant: &str,
        verb: &str,
        group: &str,
        resource: &str,
    ) -> kube::Result<bool> {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(tenant.to_owned()),
                    verb: Some(verb.to_owned()),
                    group: Some(group.to_owned()),
                    resource: Some(resource.to_owned()),
                    ..ResourceAttributes::default()
                }),
                ..SelfSubjectAccessReviewSpec::default()
            },
            ..SelfSubjectAccessReview::default()
        };
        let body = serde_json::to_vec(&review).map_err(kube::Error::SerdeError)?;
        let req = kube::core::Request::new(SelfSubjectAccessReview::url_path(&(), None))
            .create(&PostParams::default(), body)
            .map_err(kube::Error::BuildRequest)?;
        let answer: SelfSubjectAccessReview = self.call(req).await?;
        Ok(answer.status.is_some_and(|s| s.allowed))
    }
}

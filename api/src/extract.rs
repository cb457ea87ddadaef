//! What a handler takes from a request, with every refusal as a [`Problem`]: the caller
//! ([`Caller`], authenticated by [`crate::auth`]), path segments ([`Tenant`], [`Named`]),
//! query parameters ([`Params`]) and a JSON body ([`Body`]: `application/json` or, for `PATCH`,
//! `application/merge-patch+json`; at most `--max-body` bytes; unknown fields refused).

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use crate::app::App;
use crate::auth::Caller;
use crate::problem::Problem;

impl FromRequestParts<Arc<App>> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Caller, Problem> {
        app.auth.authenticate(&parts.headers).await
    }
}

/// Whether `s` is a DNS-1123 label (what a namespace name is).
pub fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Whether `s` is a DNS-1123 subdomain (what most object names are).
pub fn is_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_label)
}

fn path_problem(e: &axum::extract::rejection::PathRejection) -> Problem {
    Problem::bad_request(format!("path: {}", e.body_text()))
}

fn tenant(t: String) -> Result<String, Problem> {
    if is_label(&t) {
        Ok(t)
    } else {
        Err(Problem::field(
            "tenant",
            "not a namespace name (lower-case letters, digits and '-', at most 63)",
        ))
    }
}

/// The `{tenant}` of a path.
pub struct Tenant(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Tenant {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Tenant, Problem> {
        let Path(t): Path<String> = Path::from_request_parts(parts, state)
            .await
            .map_err(|e| path_problem(&e))?;
        Ok(Tenant(tenant(t)?))
    }
}

/// The `{tenant}` and one more segment (`{name}`, `{eventId}`) of a path.
pub struct Named(pub String, pub String);

impl<S: Send + Sync> FromRequestParts<S> for Named {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Named, Problem> {
        let Path((t, n)): Path<(String, String)> = Path::from_request_parts(parts, state)
            .await
            .map_err(|e| path_problem(&e))?;
        Ok(Named(tenant(t)?, n))
    }
}

/// The `{tenant}`, `{name}` and a third segment of a path.
pub struct Named3(pub String, pub String, pub String);

impl<S: Send + Sync> FromRequestParts<S> for Named3 {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Named3, Problem> {
        let Path((t, n, x)): Path<(String, String, String)> =
            Path::from_request_parts(parts, state)
                .await
                .map_err(|e| path_problem(&e))?;
        Ok(Named3(tenant(t)?, n, x))
    }
}

/// Query parameters; unknown ones are refused.
pub struct Params<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Params<T>, Problem> {
        let Query(q) = Query::<T>::from_request_parts(parts, state)
            .await
            .map_err(|e| Problem::bad_request(format!("query: {}", e.body_text())))?;
        Ok(Params(q))
    }
}

/// A JSON body, read but not parsed yet (for handlers that authorise before they parse):
/// `application/json` (or, for `PATCH`, `application/merge-patch+json`), at most `--max-body`
/// bytes, read within [`BODY_READ_TIMEOUT`].
pub struct RawJson(pub bytes::Bytes);

/// How long a client may take to send its body.
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl FromRequest<Arc<App>> for RawJson {
    type Rejection = Problem;

    async fn from_request(req: Request, app: &Arc<App>) -> Result<RawJson, Problem> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if content_type != "application/json" && content_type != "application/merge-patch+json" {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                format!(
                    "the body must be application/json (or application/merge-patch+json for PATCH), not {content_type:?}"
                ),
            ));
        }
        let limit = app.max_body;
        let read = axum::body::to_bytes(req.into_body(), limit);
        match tokio::time::timeout(BODY_READ_TIMEOUT, read).await {
            Err(_) => Err(Problem::new(
                StatusCode::REQUEST_TIMEOUT,
                "body-timeout",
                format!("the body did not arrive within {BODY_READ_TIMEOUT:?}"),
            )),
            Ok(Err(_)) => Err(Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-large",
                format!("the body is larger than {limit} bytes"),
            )),
            Ok(Ok(bytes)) => Ok(RawJson(bytes)),
        }
    }
}

/// `bytes` as `T`.
///
/// # Errors
/// A 400 saying where the JSON is wrong.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    serde_json::from_slice(bytes).map_err(|e| Problem::bad_request(format!("body: {e}")))
}

/// A JSON body, parsed (see [`RawJson`]); unknown fields are refused by the types.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<App>> for Body<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, app: &Arc<App>) -> Result<Body<T>, Problem> {
        let RawJson(bytes) = RawJson::from_request(req, app).await?;
        parse_json(&bytes).map(Body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_kubernetes_rules() {
        assert!(is_label("acme-1"));
        assert!(!is_label("Acme"));
        assert!(!is_label("-a"));
        assert!(!is_label(&"a".repeat(64)));
        assert!(is_subdomain("fraud.decisions"));
        assert!(!is_subdomain("a..b"));
        assert!(!is_subdomain("a_b"));
    }
}

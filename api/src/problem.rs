//! Every error the API answers with, as an RFC 9457 `application/problem+json` body: a
//! [`Problem`] is built where the error is understood (a bad query, a missing permission, a
//! refusal of the kube-apiserver) and turned into the response here. A kube-apiserver refusal
//! keeps its status and, for validation failures, its causes field by field.

use std::collections::BTreeMap;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Base of the problem type URIs.
pub const TYPE_BASE: &str = "https://hookline.dev/problems/";

/// One field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct FieldError {
    /// The field's path (`spec.url`, `spec.delivery.timeout`, `name`, …).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// The permission a refused request lacked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Access {
    /// The RBAC verb (`get`, `list`, `create`, `update`, `patch`, `delete`).
    pub verb: String,
    /// The API group (`hookline.dev`, or empty for the core group).
    pub group: String,
    /// The resource (`webhooks`, `deliveries`, `secrets`).
    pub resource: String,
    /// The namespace (the tenant).
    pub namespace: String,
}

/// An RFC 9457 problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the kind of problem.
    pub title: &'static str,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong here, for a person.
    pub detail: String,
    /// Fields that failed validation, when the problem is about fields.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub errors: Vec<FieldError>,
    /// The permission that was missing, for a 403.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub missing: Option<Box<Access>>,
    /// Seconds to wait before retrying, for a 503.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub retry_after: Option<u64>,
}

impl Problem {
    /// A problem with `status`, type slug `slug` and `detail`.
    pub fn new(status: StatusCode, slug: &str, detail: impl Into<String>) -> Problem {
        Problem {
            kind: format!("{TYPE_BASE}{slug}"),
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail: detail.into(),
            errors: Vec::new(),
            missing: None,
            retry_after: None,
        }
    }

    /// 400: the request itself is wrong.
    pub fn bad_request(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, "bad-request", detail)
    }

    /// 400 naming one field (a query parameter or a body field).
    pub fn field(field: &str, message: impl Into<String>) -> Problem {
        let message = message.into();
        let mut p = Problem::bad_request(format!("{field}: {message}"));
        p.errors.push(FieldError {
            field: field.to_owned(),
            message,
        });
        p
    }

    /// 401: no usable bearer token.
    pub fn unauthorized(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::UNAUTHORIZED, "unauthenticated", detail)
    }

    /// 403: RBAC refused `access`.
    pub fn forbidden(access: Access, detail: impl Into<String>) -> Problem {
        let mut p = Problem::new(StatusCode::FORBIDDEN, "forbidden", detail);
        p.missing = Some(Box::new(access));
        p
    }

    /// 404.
    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "not-found", detail)
    }

    /// 412: an `If-Match` precondition failed.
    pub fn precondition(detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::PRECONDITION_FAILED,
            "precondition-failed",
            detail,
        )
    }

    /// 503: a dependency (the kube-apiserver, the store) is unavailable; retry later.
    pub fn unavailable(detail: impl Into<String>) -> Problem {
        let mut p = Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail);
        p.retry_after = Some(5);
        p
    }

    /// Maps an error of a call to the kube-apiserver made for `access`.
    pub fn from_kube(e: kube::Error, access: &Access) -> Problem {
        let kube::Error::Api(status) = e else {
            return Problem::unavailable(format!("the Kubernetes API is unreachable: {e}"));
        };
        let code = StatusCode::from_u16(status.code).unwrap_or(StatusCode::BAD_GATEWAY);
        let mut p = match code.as_u16() {
            401 => Problem::unauthorized(status.message.clone()),
            403 => Problem::forbidden(access.clone(), status.message.clone()),
            404 => Problem::not_found(status.message.clone()),
            409 => Problem::new(code, "conflict", status.message.clone()),
            400 | 422 => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                status.message.clone(),
            ),
            429 => Problem::new(code, "too-many-requests", status.message.clone()),
            500..=599 => Problem::unavailable(status.message.clone()),
            _ => Problem::new(code, "kubernetes", status.message.clone()),
        };
        if matches!(code.as_u16(), 400 | 422) {
            p.errors = status
                .details
                .iter()
                .flat_map(|d| d.causes.iter())
                .map(|c| FieldError {
                    field: c.field.clone(),
                    message: c.message.clone(),
                })
                .collect();
            if p.errors.is_empty() {
                p.errors = strict_decoding_fields(&status.message);
            }
        }
        p
    }
}

/// The fields named in a strict-decoding refusal (`unknown field "spec.foo"`), which the
/// kube-apiserver reports in its message only.
fn strict_decoding_fields(message: &str) -> Vec<FieldError> {
    let mut out = Vec::new();
    for part in message.split(", ") {
        if let Some(rest) = part.split("unknown field \"").nth(1)
            && let Some(field) = rest.split('"').next()
        {
            out.push(FieldError {
                field: field.to_owned(),
                message: "unknown field".to_owned(),
            });
        }
    }
    out
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry_after = self.retry_after;
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut res = (status, body).into_response();
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(s) = retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        res
    }
}

/// The problems an operation may answer with, by status, for the OpenAPI document.
pub fn documented() -> BTreeMap<u16, &'static str> {
    BTreeMap::from([
        (
            400,
            "The request is malformed: a bad parameter, body, cursor or time range",
        ),
        (401, "No bearer token, or one the cluster does not accept"),
        (
            403,
            "The caller's RBAC does not allow this; `missing` names the permission",
        ),
        (404, "No such tenant object"),
        (413, "The body is larger than the API accepts"),
        (415, "The body is not JSON"),
        (
            503,
            "The Kubernetes API or the delivery log is unavailable; retry after `Retry-After`",
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, message: &str, causes: Vec<(&str, &str)>) -> kube::Error {
        let details = kube::core::response::StatusDetails {
            causes: causes
                .into_iter()
                .map(|(f, m)| kube::core::response::StatusCause {
                    field: f.into(),
                    message: m.into(),
                    reason: "FieldValueInvalid".into(),
                })
                .collect(),
            name: String::new(),
            group: String::new(),
            kind: String::new(),
            uid: String::new(),
            retry_after_seconds: 0,
        };
        kube::Error::Api(
            kube::core::Status {
                code,
                message: message.into(),
                details: Some(details),
                ..Default::default()
            }
            .boxed(),
        )
    }

    fn access() -> Access {
        Access {
            verb: "create".into(),
            group: "hookline.dev".into(),
            resource: "webhooks".into(),
            namespace: "b".into(),
        }
    }

    #[test]
    fn a_validation_refusal_keeps_its_fields() {
        let p = Problem::from_kube(
            status(
                422,
                "Webhook is invalid",
                vec![("spec.url", "must be https")],
            ),
            &access(),
        );
        assert_eq!(p.status, 422);
        assert_eq!(p.errors[0].field, "spec.url");
    }

    #[test]
    fn unknown_fields_of_strict_decoding_are_named() {
        let p = Problem::from_kube(
            status(
                400,
                r#".spec.x: strict decoding error: unknown field "spec.colour", unknown field "spec.size""#,
                vec![],
            ),
            &access(),
        );
        let fields: Vec<_> = p.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["spec.colour", "spec.size"]);
    }

    #[test]
    fn a_refusal_by_rbac_names_the_missing_permission() {
        let p = Problem::from_kube(status(403, "forbidden", vec![]), &access());
        assert_eq!(p.status, 403);
        assert_eq!(p.missing, Some(Box::new(access())));
    }

    #[test]
    fn an_unreachable_cluster_is_a_503_with_retry_after() {
        let res = Problem::unavailable("down").into_response();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()[header::RETRY_AFTER], "5");
        assert_eq!(
            res.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
    }
}

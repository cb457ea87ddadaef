//! `/api/v1/tenants/{tenant}/webhooks…`: the tenant's `Webhook` custom resources, read and
//! written with the caller's own token ([`crate::kube_as`]), so `kubectl`, GitOps and the API
//! see and change the same objects. Versions travel as `ETag`/`If-Match` (the
//! `resourceVersion`); a test send and a secret rotation are annotations the controller and the
//! dispatcher already act on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hookline_core::secret::{ANN_GENERATION, ANN_PREVIOUS_VALID_UNTIL, KEY_CURRENT, KEY_PREVIOUS};
use hookline_crds::{Webhook, annotations};
use serde_json::json;

use crate::app::App;
use crate::auth::{Caller, GROUP};
use crate::extract::{Body, Named, Named3, Tenant, is_subdomain};
use crate::model::{
    RotationRequested, SecretView, TestResult, TestState, WebhookCreate, WebhookList, WebhookPatch,
    WebhookReplace, WebhookView,
};
use crate::problem::{Access, Problem};

fn access(verb: &str, resource: &str, tenant: &str) -> Access {
    Access {
        verb: verb.to_owned(),
        group: if resource == "secrets" {
            String::new()
        } else {
            GROUP.to_owned()
        },
        resource: resource.to_owned(),
        namespace: tenant.to_owned(),
    }
}

fn name(n: &str) -> Result<(), Problem> {
    if is_subdomain(n) {
        Ok(())
    } else {
        Err(Problem::field(
            "name",
            "not a Kubernetes object name (lower-case letters, digits, '-' and '.', at most 253)",
        ))
    }
}

/// The `resourceVersion` of an `If-Match` header (`"123"`, `W/"123"` or `123`): digits that fit
/// a `u64`, as the kube-apiserver's are (a longer one makes it answer 500, not a conflict).
pub fn if_match(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| Problem::field("If-Match", "not text"))?
        .trim();
    let v = v.strip_prefix("W/").unwrap_or(v).trim_matches('"');
    if !v.bytes().all(|b| b.is_ascii_digit()) || v.parse::<u64>().is_err() {
        return Err(Problem::field(
            "If-Match",
            "must be the resourceVersion (the ETag) of the Webhook",
        ));
    }
    Ok(Some(v.to_owned()))
}

fn with_etag(status: StatusCode, view: WebhookView) -> Response {
    let etag = HeaderValue::from_str(&format!("\"{}\"", view.resource_version))
        .unwrap_or(HeaderValue::from_static("\"\""));
    let mut res = (status, Json(view)).into_response();
    res.headers_mut().insert(header::ETAG, etag);
    res
}

/// `GET …/webhooks`.
pub async fn list(
    State(app): State<Arc<App>>,
    caller: Caller,
    Tenant(tenant): Tenant,
) -> Result<Json<WebhookList>, Problem> {
    let list = app
        .kube
        .as_caller(&caller.token)
        .list_webhooks(&tenant)
        .await
        .map_err(|e| Problem::from_kube(e, &access("list", "webhooks", &tenant)))?;
    Ok(Json(WebhookList {
        items: list.items.into_iter().map(WebhookView::of).collect(),
    }))
}

/// `POST …/webhooks`.
pub async fn create(
    State(app): State<Arc<App>>,
    caller: Caller,
    Tenant(tenant): Tenant,
    Body(body): Body<WebhookCreate>,
) -> Result<Response, Problem> {
    name(&body.name)?;
    let object = json!({
        "apiVersion": hookline_crds::API_VERSION,
        "kind": "Webhook",
        "metadata": {"name": body.name, "namespace": tenant, "labels": body.labels},
        "spec": body.spec,
    });
    let w = app
        .kube
        .as_caller(&caller.token)
        .create_webhook(&tenant, &object)
        .await
        .map_err(|e| Problem::from_kube(e, &access("create", "webhooks", &tenant)))?;
    let mut res = with_etag(StatusCode::CREATED, WebhookView::of(w));
    if let Ok(loc) =
        HeaderValue::from_str(&format!("/api/v1/tenants/{tenant}/webhooks/{}", body.name))
    {
        res.headers_mut().insert(header::LOCATION, loc);
    }
    Ok(res)
}

async fn get_one(app: &App, caller: &Caller, tenant: &str, n: &str) -> Result<Webhook, Problem> {
    name(n)?;
    app.kube
        .as_caller(&caller.token)
        .get_webhook(tenant, n)
        .await
        .map_err(|e| Problem::from_kube(e, &access("get", "webhooks", tenant)))
}

/// `GET …/webhooks/{name}`.
pub async fn get(
    State(app): State<Arc<App>>,
    caller: Caller,
    Named(tenant, n): Named,
) -> Result<Response, Problem> {
    let w = get_one(&app, &caller, &tenant, &n).await?;
    Ok(with_etag(StatusCode::OK, WebhookView::of(w)))
}

/// A 409 from the API server when the caller named a version is a failed precondition.
fn precondition_or(e: kube::Error, wanted: Option<&str>, a: &Access) -> Problem {
    let p = Problem::from_kube(e, a);
    match wanted {
        Some(rv) if p.status == 409 => Problem::precondition(format!(
            "the Webhook changed since resourceVersion {rv}; GET it again and retry"
        )),
        _ => p,
    }
}

/// `PUT …/webhooks/{name}`.
pub async fn replace(
    State(app): State<Arc<App>>,
    caller: Caller,
    Named(tenant, n): Named,
    headers: HeaderMap,
    Body(body): Body<WebhookReplace>,
) -> Result<Response, Problem> {
    let wanted = match (if_match(&headers)?, body.resource_version.clone()) {
        (Some(a), Some(b)) if a != b => {
            return Err(Problem::bad_request(
                "If-Match and resourceVersion name different versions",
            ));
        }
        (a, b) => a.or(b),
    };
    let current = get_one(&app, &caller, &tenant, &n).await?;
    let rv = current
        .metadata
        .resource_version
        .clone()
        .unwrap_or_default();
    if let Some(w) = &wanted
        && *w != rv
    {
        return Err(Problem::precondition(format!(
            "the Webhook is at resourceVersion {rv}, not {w}; GET it again and retry"
        )));
    }
    let mut object = serde_json::to_value(&current)
        .map_err(|e| Problem::unavailable(format!("reading the Webhook: {e}")))?;
    object["metadata"]["labels"] = json!(body.labels);
    object["metadata"]["resourceVersion"] = json!(rv);
    object["spec"] = body.spec;
    if let Some(o) = object.as_object_mut() {
        o.remove("status");
    }
    let a = access("update", "webhooks", &tenant);
    let w = app
        .kube
        .as_caller(&caller.token)
        .replace_webhook(&tenant, &n, &object)
        .await
        .map_err(|e| precondition_or(e, wanted.as_deref(), &a))?;
    Ok(with_etag(StatusCode::OK, WebhookView::of(w)))
}

/// `PATCH …/webhooks/{name}`.
pub async fn patch(
    State(app): State<Arc<App>>,
    caller: Caller,
    Named(tenant, n): Named,
    headers: HeaderMap,
    Body(body): Body<WebhookPatch>,
) -> Result<Response, Problem> {
    name(&n)?;
    let wanted = if_match(&headers)?;
    let mut patch = json!({});
    if let Some(spec) = body.spec {
        if !spec.is_object() {
            return Err(Problem::field("spec", "must be an object"));
        }
        patch["spec"] = spec;
    }
    if let Some(labels) = body.labels {
        patch["metadata"]["labels"] = json!(labels);
    }
    if let Some(rv) = &wanted {
        patch["metadata"]["resourceVersion"] = json!(rv);
    }
    let a = access("patch", "webhooks", &tenant);
    let w = app
        .kube
        .as_caller(&caller.token)
        .merge_webhook(&tenant, &n, &patch)
        .await
        .map_err(|e| precondition_or(e, wanted.as_deref(), &a))?;
    Ok(with_etag(StatusCode::OK, WebhookView::of(w)))
}

/// `DELETE …/webhooks/{name}`.
pub async fn delete(
    State(app): State<Arc<App>>,
    caller: Caller,
    Named(tenant, n): Named,
    headers: HeaderMap,
) -> Result<StatusCode, Problem> {
    name(&n)?;
    let wanted = if_match(&headers)?;
    let a = access("delete", "webhooks", &tenant);
    app.kube
        .as_caller(&caller.token)
        .delete_webhook(&tenant, &n, wanted.as_deref())
        .await
        .map_err(|e| precondition_or(e, wanted.as_deref(), &a))?;
    Ok(StatusCode::NO_CONTENT)
}

/// What `w` says of the test `id`: done, pending, or unknown (`None`).
pub fn test_result(w: &Webhook, id: &str) -> Option<TestResult> {
    let last = w.status.as_ref().and_then(|s| s.last_test.as_ref());
    if let Some(t) = last.filter(|t| t.nonce == id) {
        return Some(TestResult {
            id: id.to_owned(),
            state: TestState::Done,
            success: Some(t.success),
            status_code: t.status_code,
            latency_ms: t.latency_ms,
            error: t.error.clone(),
            sent_at: Some(t.time.0.to_string()),
        });
    }
    let asked = w
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(annotations::TEST))
        .is_some_and(|v| v == id);
    asked.then(|| TestResult::pending(id))
}

fn test_response(tenant: &str, n: &str, r: TestResult) -> Response {
    if r.state == TestState::Done {
        return (StatusCode::OK, Json(r)).into_response();
    }
    let loc = format!("/api/v1/tenants/{tenant}/webhooks/{n}/test/{}", r.id);
    let mut res = (StatusCode::ACCEPTED, Json(r)).into_response();
    if let Ok(v) = HeaderValue::from_str(&loc) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res
}

/// `POST …/webhooks/{name}/test`: asks the dispatcher for a test send and waits for its answer
/// up to `--test-wait`; 200 with the outcome, or 202 with a `Location` to poll.
pub async fn test(
    State(app): State<Arc<App>>,
    caller: Caller,
    Named(tenant, n): Named,
) -> Result<Response, Problem> {
    name(&n)?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let as_caller = app.kube.as_caller(&caller.token);
    let patch = json!({"metadata": {"annotations": {annotations::TEST: id}}});
    as_caller
        .merge_webhook(&tenant, &n, &patch)
        .await
        .map_err(|e| Problem::from_kube(e, &access("patch", "webhooks", &tenant)))?;
    let deadline = Instant::now() + app.test_wait;
    loop {
        let w = get_one(&app, &caller, &tenant, &n).await?;
        let r = test_result(&w, &id).unwrap_or_else(|| TestResult::pending(&id));
        if r.state == TestState::Done || Instant::now() >= deadline {
            return Ok(test_response(&tenant, &n, r));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `GET …/webhooks/{name}/test/{id}`.
pub async fn test_status(
    State(app): State<Arc<App>>,
    caller: Caller,
    Named3(tenant, n, id): Named3,
) -> Result<Response, Problem> {
    let w = get_one(&app, &caller, &tenant, &n).await?;
    let r = test_result(&w, &id).ok_or_else(|| {
        Problem::not_found(format!(
            "no test {id:?} of Webhook {n:?} (only the latest is kept)"
        ))
    })?;
    Ok(test_response(&tenant, &n, r))
}

/// `POST …/webhooks/{name}/rotate-secret`.
pub async fn rotate(
    State(app): State<Arc<App>>,
    caller: Caller,
    Named(tenant, n): Named,
) -> Result<Response, Problem> {
    let w = get_one(&app, &caller, &tenant, &n).await?;
    if let Some(r) = &w.spec.secret_ref {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "own-secret",
            format!(
                "this Webhook signs with its own Secret {:?}; rotate the key there",
                r.name
            ),
        ));
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    let patch = json!({"metadata": {"annotations": {annotations::ROTATE_SECRET: id}}});
    app.kube
        .as_caller(&caller.token)
        .merge_webhook(&tenant, &n, &patch)
        .await
        .map_err(|e| Problem::from_kube(e, &access("patch", "webhooks", &tenant)))?;
    let before = w.status.and_then(|s| s.secret).map(|s| s.generation);
    Ok((
        StatusCode::ACCEPTED,
        Json(RotationRequested {
            id,
            generation_before: before,
        }),
    )
        .into_response())
}

/// `GET …/webhooks/{name}/secret`: needs `get secrets` in the tenant, checked by the API
/// server on the caller's own request.
pub async fn secret(
    State(app): State<Arc<App>>,
    caller: Caller,
    Named(tenant, n): Named,
) -> Result<Json<SecretView>, Problem> {
    let w = get_one(&app, &caller, &tenant, &n).await?;
    let secret_name = w
        .status
        .as_ref()
        .and_then(|s| s.secret.as_ref())
        .map(|s| s.name.clone())
        .or_else(|| w.spec.secret_ref.as_ref().map(|r| r.name.clone()))
        .unwrap_or_else(|| hookline_core::naming::signing_secret(&n));
    let s = app
        .kube
        .as_caller(&caller.token)
        .get_secret(&tenant, &secret_name)
        .await
        .map_err(|e| Problem::from_kube(e, &access("get", "secrets", &tenant)))?;
    let data = s.data.unwrap_or_default();
    let text = |k: &str| {
        data.get(k)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
    };
    let current = text(KEY_CURRENT).ok_or_else(|| {
        Problem::not_found(format!(
            "Secret {secret_name:?} has no key {KEY_CURRENT:?} yet"
        ))
    })?;
    let ann = s.metadata.annotations.unwrap_or_default();
    Ok(Json(SecretView {
        secret_name,
        secret: current,
        previous: text(KEY_PREVIOUS),
        previous_valid_until: ann.get(ANN_PREVIOUS_VALID_UNTIL).cloned(),
        generation: ann.get(ANN_GENERATION).and_then(|g| g.parse().ok()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_takes_strong_weak_and_bare_versions_and_refuses_others() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::IF_MATCH, HeaderValue::from_str(v).unwrap());
            m
        };
        assert_eq!(if_match(&h("\"42\"")).unwrap().as_deref(), Some("42"));
        assert_eq!(if_match(&h("W/\"42\"")).unwrap().as_deref(), Some("42"));
        assert_eq!(if_match(&h("42")).unwrap().as_deref(), Some("42"));
        assert_eq!(if_match(&HeaderMap::new()).unwrap(), None);
        assert_eq!(if_match(&h("*")).unwrap_err().status, 400);
        assert_eq!(if_match(&h("\"abc\"")).unwrap_err().status, 400);
        assert_eq!(
            if_match(&h("18446744073709551615")).unwrap().as_deref(),
            Some("18446744073709551615")
        );
        assert_eq!(
            if_match(&h("18446744073709551616")).unwrap_err().status,
            400
        );
    }
}

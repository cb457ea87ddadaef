//! Replays through the API: `POST …/webhooks/{name}/replays` and `POST
//! …/deliveries/{eventId}/resend` both create `WebhookReplay` objects with the caller's own
//! token, so RBAC decides (`create webhookreplays` in the tenant) and the cluster — its audit log,
//! `kubectl get webhookreplays` — shows what was replayed and by whom; the controller runs them.
//! `GET …/webhooks/{name}/replays/{replay}` follows one.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hookline_crds::annotations;
use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use crate::app::App;
use crate::auth::{Caller, GROUP};
use crate::extract::{Body, Named, Named3, is_subdomain};
use crate::model::{ReplayCreate, ReplayView, ResendRequest, Resent};
use crate::problem::{Access, Problem};

/// How far before an event's first attempt its record is looked for in the events topic on a
/// resend (a record is written before it is first attempted; an hour covers a long lag).
pub const RESEND_LOOKBACK: SignedDuration = SignedDuration::from_hours(1);

fn access(verb: &str, tenant: &str) -> Access {
    Access {
        verb: verb.to_owned(),
        group: GROUP.to_owned(),
        resource: "webhookreplays".to_owned(),
        namespace: tenant.to_owned(),
    }
}

fn generated_name(webhook: &str) -> String {
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..6];
    let base: String = webhook.chars().take(253 - 15).collect();
    format!("{}-replay-{suffix}", base.trim_end_matches(['-', '.']))
}

async fn create(
    app: &App,
    caller: &Caller,
    tenant: &str,
    name: &str,
    spec: Value,
) -> Result<ReplayView, Problem> {
    let object = json!({
        "apiVersion": hookline_crds::API_VERSION,
        "kind": "WebhookReplay",
        "metadata": {
            "name": name,
            "namespace": tenant,
            "annotations": {annotations::REQUESTED_BY: caller.user},
        },
        "spec": spec,
    });
    let r = app
        .kube
        .as_caller(&caller.token)
        .create_replay(tenant, &object)
        .await
        .map_err(|e| Problem::from_kube(e, &access("create", tenant)))?;
    Ok(ReplayView::of(r))
}

fn created(tenant: &str, webhook: &str, view: ReplayView) -> Response {
    let location = format!(
        "/api/v1/tenants/{tenant}/webhooks/{webhook}/replays/{}",
        view.name
    );
    let mut res = (StatusCode::CREATED, Json(view)).into_response();
    if let Ok(loc) = HeaderValue::from_str(&location) {
        res.headers_mut().insert(header::LOCATION, loc);
    }
    res
}

/// `POST …/webhooks/{name}/replays`.
pub async fn replay(
    State(app): State<Arc<App>>,
    caller: Caller,
    Named(tenant, webhook): Named,
    Body(body): Body<ReplayCreate>,
) -> Result<Response, Problem> {
    if !is_subdomain(&webhook) {
        return Err(Problem::field("name", "not a Webhook name"));
    }
    let name = body.name.unwrap_or_else(|| generated_name(&webhook));
    if !is_subdomain(&name) {
        return Err(Problem::field(
            "name",
            "not a Kubernetes object name (lower-case letters, digits, '-' and '.', at most 253)",
        ));
    }
    let mut spec = json!({"webhookRef": {"name": webhook}, "source": body.source});
    if !body.event_types.is_empty() {
        spec["eventTypes"] = json!(body.event_types);
    }
    if !body.event_ids.is_empty() {
        spec["eventIds"] = json!(body.event_ids);
    }
    if let Some(r) = body.rate_limit {
        spec["rateLimit"] = r;
    }
    let view = create(&app, &caller, &tenant, &name, spec).await?;
    Ok(created(&tenant, &webhook, view))
}

/// `GET …/webhooks/{name}/replays/{replay}`.
pub async fn get(
    State(app): State<Arc<App>>,
    caller: Caller,
    Named3(tenant, webhook, name): Named3,
) -> Result<Json<ReplayView>, Problem> {
    if !is_subdomain(&name) || !is_subdomain(&webhook) {
        return Err(Problem::not_found(format!(
            "no replay {name:?} of Webhook {webhook:?} (not object names)"
        )));
    }
    let r = app
        .kube
        .as_caller(&caller.token)
        .get_replay(&tenant, &name)
        .await
        .map_err(|e| Problem::from_kube(e, &access("get", &tenant)))?;
    if r.spec.webhook_ref.name != webhook {
        return Err(Problem::not_found(format!(
            "replay {name:?} is not one of Webhook {webhook:?}"
        )));
    }
    Ok(Json(ReplayView::of(r)))
}

/// `POST …/deliveries/{eventId}/resend`: one replay per `Webhook` the event went to (or the one
/// named), reading the events topic around the event's first attempt for that one id.
pub async fn resend(
    State(app): State<Arc<App>>,
    caller: Caller,
    Named(tenant, event_id): Named,
    Body(body): Body<ResendRequest>,
) -> Result<Response, Problem> {
    let wanted = body.webhook;
    app.auth
        .allow(&caller, &tenant, "get", "deliveries")
        .await?;
    // Refused before the log is read: whoever may not replay learns nothing of the event.
    app.auth
        .allow(&caller, &tenant, "create", "webhookreplays")
        .await?;
    let store = app.store.clone();
    let (t, id) = (tenant.clone(), event_id.clone());
    let deliveries = super::deliveries::blocking(move || store.event(&t, &id)).await?;
    let targets: Vec<_> = deliveries
        .iter()
        .filter(|d| wanted.as_ref().is_none_or(|w| *w == d.delivery.webhook))
        .collect();
    if targets.is_empty() {
        return Err(Problem::not_found(format!(
            "no delivery of event {event_id:?}{} in the delivery log of tenant {tenant:?}",
            wanted
                .as_ref()
                .map(|w| format!(" to Webhook {w:?}"))
                .unwrap_or_default()
        )));
    }
    let mut replays = Vec::new();
    for d in targets {
        let first: Timestamp = d
            .delivery
            .first_attempt_at
            .parse()
            .map_err(|_| Problem::unavailable("the delivery log holds an unreadable time"))?;
        let from = first - RESEND_LOOKBACK;
        let to = first + SignedDuration::from_secs(60);
        let spec = json!({
            "webhookRef": {"name": d.delivery.webhook},
            "source": {"timeRange": {"from": from.to_string(), "to": to.to_string()}},
            "eventIds": [event_id],
        });
        let name = generated_name(&d.delivery.webhook);
        replays.push(create(&app, &caller, &tenant, &name, spec).await?);
    }
    Ok((StatusCode::CREATED, Json(Resent { replays })).into_response())
}

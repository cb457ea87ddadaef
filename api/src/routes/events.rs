//! `/api/v1/tenants/{tenant}/events` and `…/events:batch`: publishing over HTTP. The caller
//! must be allowed to `create` the virtual resource `webhookevents.hookline.dev` in the tenant
//! (a SelfSubjectAccessReview as the caller, cached briefly); the body is parsed only then, each
//! event checked by the dispatcher's own rules, the tenant's rate taken, and the answer is
//! `202` only once Kafka acknowledged every record ([`crate::publish`]).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hookline_core::envelope::is_valid_event_id;
use hookline_core::naming;
use jiff::Timestamp;

use crate::app::App;
use crate::auth::Caller;
use crate::extract::{RawJson, Tenant, parse_json};
use crate::model::{PublishBatch, PublishEvent, Published, PublishedBatch};
use crate::problem::Problem;
use crate::publish::prepare;

/// Most events in one batch.
pub const MAX_BATCH: usize = 500;

/// The `Idempotency-Key` header, when given.
///
/// # Errors
/// 400 when it is not a valid event id.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, Problem> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(k) if is_valid_event_id(k) => Ok(Some(k)),
        _ => Err(Problem::field(
            "Idempotency-Key",
            "must be 1 to 255 visible ASCII characters without spaces (it becomes the event id)",
        )),
    }
}

/// `POST …/events`.
pub async fn publish(
    State(app): State<Arc<App>>,
    caller: Caller,
    Tenant(tenant): Tenant,
    headers: HeaderMap,
    RawJson(body): RawJson,
) -> Result<Response, Problem> {
    app.auth
        .allow(&caller, &tenant, "create", "webhookevents")
        .await?;
    let event: PublishEvent = parse_json(&body)?;
    let out = prepare(
        event,
        idempotency_key(&headers)?,
        Timestamp::now(),
        &app.publisher.limits,
        "",
    )?;
    app.publisher.admit(&tenant, 1)?;
    app.publisher
        .send(&naming::events_topic(&tenant), std::slice::from_ref(&out))
        .await?;
    Ok((StatusCode::ACCEPTED, Json(Published { id: out.id })).into_response())
}

/// `POST …/events:batch`.
pub async fn publish_batch(
    State(app): State<Arc<App>>,
    caller: Caller,
    Tenant(tenant): Tenant,
    RawJson(body): RawJson,
) -> Result<Response, Problem> {
    app.auth
        .allow(&caller, &tenant, "create", "webhookevents")
        .await?;
    let batch: PublishBatch = parse_json(&body)?;
    if batch.events.is_empty() || batch.events.len() > MAX_BATCH {
        return Err(Problem::field(
            "events",
            format!(
                "must hold 1 to {MAX_BATCH} events, not {}",
                batch.events.len()
            ),
        ));
    }
    let now = Timestamp::now();
    let records = batch
        .events
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            prepare(
                e,
                None,
                now,
                &app.publisher.limits,
                &format!("events[{i}]."),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    app.publisher.admit(&tenant, records.len())?;
    app.publisher
        .send(&naming::events_topic(&tenant), &records)
        .await?;
    let ids = records.into_iter().map(|r| r.id).collect();
    Ok((StatusCode::ACCEPTED, Json(PublishedBatch { ids })).into_response())
}

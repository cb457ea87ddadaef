//! The router of `/api/v1`: each request is counted by route template, method and status
//! ([`crate::ops::Metrics`]), then handed to [`webhooks`] (the custom resources, as the caller)
//! [`deliveries`] (the delivery log) or [`events`] (publishing); anything unrouted is a `404`/`405` problem. The
//! OpenAPI document ([`crate::openapi`]) is served unauthenticated at `/api/v1/openapi.json`.

pub mod deliveries;
pub mod events;
pub mod replays;
pub mod webhooks;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::app::App;
use crate::problem::Problem;

async fn count(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unrouted", |p| p.as_str())
        .to_owned();
    let method = req.method().as_str().to_owned();
    let started = Instant::now();
    let res = next.run(req).await;
    app.metrics
        .requests
        .with_label_values(&[&route, &method, res.status().as_str()])
        .inc();
    app.metrics
        .request_seconds
        .with_label_values(&[&route])
        .observe(started.elapsed().as_secs_f64());
    res
}

async fn openapi(State(app): State<Arc<App>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        app.openapi.clone(),
    )
        .into_response()
}

async fn not_found() -> Problem {
    Problem::not_found("no such API path; the document is at /api/v1/openapi.json")
}

async fn not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "this path does not take that method; see /api/v1/openapi.json",
    )
}

/// The API's router.
pub fn router(app: Arc<App>) -> Router {
    const T: &str = "/api/v1/tenants/{tenant}";
    Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route(
            &format!("{T}/webhooks"),
            get(webhooks::list).post(webhooks::create),
        )
        .route(
            &format!("{T}/webhooks/{{name}}"),
            get(webhooks::get)
                .put(webhooks::replace)
                .patch(webhooks::patch)
                .delete(webhooks::delete),
        )
        .route(&format!("{T}/webhooks/{{name}}/test"), post(webhooks::test))
        .route(
            &format!("{T}/webhooks/{{name}}/test/{{id}}"),
            get(webhooks::test_status),
        )
        .route(
            &format!("{T}/webhooks/{{name}}/rotate-secret"),
            post(webhooks::rotate),
        )
        .route(
            &format!("{T}/webhooks/{{name}}/secret"),
            get(webhooks::secret),
        )
        .route(
            &format!("{T}/webhooks/{{name}}/replays"),
            post(replays::replay),
        )
        .route(
            &format!("{T}/webhooks/{{name}}/replays/{{id}}"),
            get(replays::get),
        )
        .route(&format!("{T}/deliveries"), get(deliveries::list))
        .route(
            &format!("{T}/deliveries/{{eventId}}/resend"),
            post(replays::resend),
        )
        .route(
            &format!("{T}/deliveries/{{eventId}}"),
            get(deliveries::event),
        )
        .route(&format!("{T}/stats"), get(deliveries::stats))
        .route(&format!("{T}/events"), post(events::publish))
        .route(&format!("{T}/events:batch"), post(events::publish_batch))
        .fallback(not_found)
        .method_not_allowed_fallback(not_allowed)
        .layer(middleware::from_fn_with_state(app.clone(), count))
        .with_state(app)
}

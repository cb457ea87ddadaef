//! The OpenAPI 3.1 document of `/api/v1`, generated from the Rust types: every schema comes
//! from schemars (the same generator that writes the CRD, so a `Webhook`'s `spec` here is the
//! CRD's), and [`OPERATIONS`] lists each route with its parameters, body and answers. The
//! document is committed as `api/openapi.json`; a test fails when it drifts (regenerate with
//! `make openapi`), and another that every documented operation is routed.

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{Map, Value, json};

use crate::model::{
    DeliveriesQuery, DeliveryPage, EventDeliveries, ReplayCreate, ReplayView, ResendRequest,
    Resent, RotationRequested, SecretView, StatsQuery, StatsView, TestResult, WebhookCreate,
    WebhookList, WebhookPatch, WebhookReplace, WebhookView,
};
use crate::model::{EVENT_ID_PATTERN, LABEL_PATTERN, SUBDOMAIN_PATTERN};
use crate::model::{PublishBatch, PublishEvent, Published, PublishedBatch};
use crate::problem::{Problem, documented};

/// A schema for one place in the document.
type Make = fn(&mut SchemaGenerator) -> Value;

fn s<T: JsonSchema>(g: &mut SchemaGenerator) -> Value {
    g.subschema_for::<T>().to_value()
}

/// One operation.
pub struct Op {
    /// HTTP method, lower case.
    pub method: &'static str,
    /// Path template.
    pub path: &'static str,
    /// `operationId`.
    pub id: &'static str,
    /// One line.
    pub summary: &'static str,
    /// What a reader needs beyond the summary.
    pub description: &'static str,
    /// The query parameters' type.
    pub query: Option<Make>,
    /// The body type and its media types.
    pub body: Option<(Make, &'static [&'static str])>,
    /// The success answer: status, description, body type.
    pub ok: (u16, &'static str, Option<Make>),
    /// Problems beyond the common ones.
    pub problems: &'static [(u16, &'static str)],
}

const JSON: &[&str] = &["application/json"];
const MERGE: &[&str] = &["application/merge-patch+json", "application/json"];
const WRITE: &[(u16, &str)] = &[
    (409, "The Webhook exists already, or changed meanwhile"),
    (412, "`If-Match` names a version that is no longer current"),
    (
        422,
        "The cluster refused the Webhook; `errors` names each field",
    ),
];

/// Every operation of `/api/v1` (the router must route each; a test checks it).
pub const OPERATIONS: &[Op] = &[
    Op {
        method: "get",
        path: "/api/v1/tenants/{tenant}/webhooks",
        id: "listWebhooks",
        summary: "List the tenant's Webhooks",
        description: "Every Webhook custom resource of the tenant (namespace), read with the caller's own token: what `kubectl get webhooks -n <tenant>` shows.",
        query: None,
        body: None,
        ok: (200, "The Webhooks", Some(s::<WebhookList>)),
        problems: &[],
    },
    Op {
        method: "post",
        path: "/api/v1/tenants/{tenant}/webhooks",
        id: "createWebhook",
        summary: "Create a Webhook",
        description: "Creates the Webhook custom resource. The cluster validates it field by field (unknown fields are refused); the controller then provisions its signing Secret and reports readiness in `status`.",
        query: None,
        body: Some((s::<WebhookCreate>, JSON)),
        ok: (
            201,
            "Created; `Location` and `ETag` are set",
            Some(s::<WebhookView>),
        ),
        problems: WRITE,
    },
    Op {
        method: "get",
        path: "/api/v1/tenants/{tenant}/webhooks/{name}",
        id: "getWebhook",
        summary: "Get a Webhook",
        description: "With its status; the `ETag` is its `resourceVersion`.",
        query: None,
        body: None,
        ok: (200, "The Webhook", Some(s::<WebhookView>)),
        problems: &[],
    },
    Op {
        method: "put",
        path: "/api/v1/tenants/{tenant}/webhooks/{name}",
        id: "replaceWebhook",
        summary: "Replace a Webhook's labels and spec",
        description: "Send `If-Match: \"<resourceVersion>\"` (or `resourceVersion` in the body) to change it only if nobody else did since you read it.",
        query: None,
        body: Some((s::<WebhookReplace>, JSON)),
        ok: (200, "The Webhook", Some(s::<WebhookView>)),
        problems: WRITE,
    },
    Op {
        method: "patch",
        path: "/api/v1/tenants/{tenant}/webhooks/{name}",
        id: "patchWebhook",
        summary: "Change some fields of a Webhook (JSON merge patch)",
        description: "`{\"spec\": {\"paused\": true}}` pauses it; `null` removes a field. `If-Match` makes it conditional.",
        query: None,
        body: Some((s::<WebhookPatch>, MERGE)),
        ok: (200, "The Webhook", Some(s::<WebhookView>)),
        problems: WRITE,
    },
    Op {
        method: "delete",
        path: "/api/v1/tenants/{tenant}/webhooks/{name}",
        id: "deleteWebhook",
        summary: "Delete a Webhook",
        description: "Deliveries to it stop; its generated Secret goes with it. `If-Match` makes it conditional.",
        query: None,
        body: None,
        ok: (204, "Deleted", None),
        problems: &[
            (409, "Changed meanwhile"),
            (412, "`If-Match` names a version that is no longer current"),
        ],
    },
    Op {
        method: "post",
        path: "/api/v1/tenants/{tenant}/webhooks/{name}/test",
        id: "testWebhook",
        summary: "Send a signed test event to the Webhook's URL",
        description: "A `webhook.test` event, signed like every delivery and kept out of the delivery log. Answers 200 with the outcome once the dispatcher reports it, or 202 with a `Location` to poll.",
        query: None,
        body: None,
        ok: (
            200,
            "The outcome (202: still pending, poll `Location`)",
            Some(s::<TestResult>),
        ),
        problems: &[(202, "Sent for; poll `Location`")],
    },
    Op {
        method: "get",
        path: "/api/v1/tenants/{tenant}/webhooks/{name}/test/{id}",
        id: "getWebhookTest",
        summary: "The outcome of a test send",
        description: "Only the latest test of a Webhook is kept.",
        query: None,
        body: None,
        ok: (
            200,
            "The outcome (202 while pending)",
            Some(s::<TestResult>),
        ),
        problems: &[(202, "Still pending")],
    },
    Op {
        method: "post",
        path: "/api/v1/tenants/{tenant}/webhooks/{name}/rotate-secret",
        id: "rotateWebhookSecret",
        summary: "Rotate the Webhook's generated signing secret",
        description: "A new key becomes current; deliveries are signed with both keys for the platform's overlap (24 h by default), so receivers can switch without a gap.",
        query: None,
        body: None,
        ok: (202, "Rotation requested", Some(s::<RotationRequested>)),
        problems: &[(409, "The Webhook uses its own Secret (`spec.secretRef`)")],
    },
    Op {
        method: "get",
        path: "/api/v1/tenants/{tenant}/webhooks/{name}/secret",
        id: "getWebhookSecret",
        summary: "The Webhook's signing secret",
        description: "Needs `get secrets` in the tenant (the `hookline-tenant-edit` role has it; `hookline-tenant-view` does not).",
        query: None,
        body: None,
        ok: (200, "The keys receivers verify with", Some(s::<SecretView>)),
        problems: &[],
    },
    Op {
        method: "post",
        path: "/api/v1/tenants/{tenant}/webhooks/{name}/replays",
        id: "replayWebhook",
        summary: "Re-deliver what the Webhook missed: its dead letters, or a time range of events",
        description: "Creates a `WebhookReplay` with the caller's token (RBAC: `create webhookreplays` in the tenant; `hookline-tenant-edit` has it). The controller re-delivers each matching event once through the normal signed path, with the header `hookline-replay: <name>` and the event's own `webhook-id`; follow it at `Location`.",
        query: None,
        body: Some((s::<ReplayCreate>, JSON)),
        ok: (201, "Created; `Location` is set", Some(s::<ReplayView>)),
        problems: &[
            (409, "A replay of that name exists already"),
            (
                422,
                "The cluster refused the replay; `errors` names each field",
            ),
        ],
    },
    Op {
        method: "get",
        path: "/api/v1/tenants/{tenant}/webhooks/{name}/replays/{id}",
        id: "getWebhookReplay",
        summary: "A replay and where it stands",
        description: "Phase (`Pending`, `Running`, `Succeeded`, `Failed`), matched, delivered and failed counts, conditions.",
        query: None,
        body: None,
        ok: (200, "The replay", Some(s::<ReplayView>)),
        problems: &[],
    },
    Op {
        method: "get",
        path: "/api/v1/tenants/{tenant}/deliveries",
        id: "listDeliveries",
        summary: "The delivery log, newest first",
        description: "One entry per event and Webhook. Needs `list deliveries.hookline.dev` in the tenant. Pass `nextCursor` as `cursor` for the next page.",
        query: Some(s::<DeliveriesQuery>),
        body: None,
        ok: (200, "A page of deliveries", Some(s::<DeliveryPage>)),
        problems: &[],
    },
    Op {
        method: "get",
        path: "/api/v1/tenants/{tenant}/deliveries/{eventId}",
        id: "getEventDeliveries",
        summary: "What became of one event at every Webhook it matched",
        description: "Each attempt's time, number, outcome, HTTP status, latency and error, the next retry and the dead-letter reason. Needs `get deliveries.hookline.dev`.",
        query: None,
        body: None,
        ok: (200, "The event's deliveries", Some(s::<EventDeliveries>)),
        problems: &[],
    },
    Op {
        method: "post",
        path: "/api/v1/tenants/{tenant}/deliveries/{eventId}/resend",
        id: "resendEvent",
        summary: "Send one event again",
        description: "Creates one `WebhookReplay` per Webhook the delivery log shows the event went to (or only `webhook`; send `{}` for all), each taking that event id from the events topic around its first attempt. Needs `get deliveries` and `create webhookreplays` in the tenant.",
        query: None,
        body: Some((s::<ResendRequest>, JSON)),
        ok: (201, "The replays created", Some(s::<Resent>)),
        problems: &[(
            404,
            "No delivery of that event (to that Webhook) in the log",
        )],
    },
    Op {
        method: "get",
        path: "/api/v1/tenants/{tenant}/stats",
        id: "getStats",
        summary: "Delivered, failed, retrying and dead-lettered counts and latency percentiles over time",
        description: "Needs `list deliveries.hookline.dev`. Percentiles are upper bounds of fixed histogram buckets.",
        query: Some(s::<StatsQuery>),
        body: None,
        ok: (200, "The window's buckets and totals", Some(s::<StatsView>)),
        problems: &[],
    },
    Op {
        method: "post",
        path: "/api/v1/tenants/{tenant}/events",
        id: "publishEvent",
        summary: "Publish one event",
        description: "Checked by the dispatcher's own rules, written to the tenant's events topic, and answered 202 only once Kafka acknowledged it (`acks=all`): a 202 means the event is durable. Needs `create webhookevents.hookline.dev` in the tenant (role `hookline-publisher`). `Idempotency-Key` becomes the event id when the body has none. 503 with `Retry-After` when Kafka does not acknowledge in time; retry with the same id.",
        query: None,
        body: Some((s::<PublishEvent>, JSON)),
        ok: (202, "Durable in Kafka", Some(s::<Published>)),
        problems: &[
            (
                409,
                "The tenant has no events topic yet (it is made with its first Webhook)",
            ),
            (
                429,
                "The tenant publishes faster than the platform allows; wait `Retry-After`",
            ),
        ],
    },
    Op {
        method: "post",
        path: "/api/v1/tenants/{tenant}/events:batch",
        id: "publishEvents",
        summary: "Publish up to 500 events at once",
        description: "All or nothing for validation: one bad event (named as `events[i].field`) and nothing is written. 202 only once every event was acknowledged; after a 503 some may be written — send the batch again with the same ids.",
        query: None,
        body: Some((s::<PublishBatch>, JSON)),
        ok: (
            202,
            "Every event durable in Kafka",
            Some(s::<PublishedBatch>),
        ),
        problems: &[
            (
                409,
                "The tenant has no events topic yet (it is made with its first Webhook)",
            ),
            (
                429,
                "The tenant publishes faster than the platform allows; wait `Retry-After`",
            ),
        ],
    },
];

fn path_params(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| {
            let (description, schema) = match name {
                "tenant" => (
                    "The tenant: a Kubernetes namespace",
                    json!({"type": "string", "maxLength": 63, "pattern": LABEL_PATTERN}),
                ),
                "name" => (
                    "The Webhook's name",
                    json!({"type": "string", "maxLength": 253, "pattern": SUBDOMAIN_PATTERN}),
                ),
                "eventId" => (
                    "The event id (`webhook-id` on the wire)",
                    json!({"type": "string"}),
                ),
                _ => (
                    "The test's id, or the replay's name",
                    json!({"type": "string"}),
                ),
            };
            json!({"name": name, "in": "path", "required": true, "description": description,
                   "schema": schema})
        })
        .collect()
}

fn query_params(g: &mut SchemaGenerator, make: Make) -> Vec<Value> {
    let r = make(g);
    let name = r["$ref"]
        .as_str()
        .and_then(|r| r.rsplit('/').next())
        .unwrap_or_default()
        .to_owned();
    let def = g.definitions().get(&name).cloned().unwrap_or(Value::Null);
    let props = def["properties"].as_object().cloned().unwrap_or_default();
    props
        .into_iter()
        .map(|(k, mut schema)| {
            let description = schema
                .as_object_mut()
                .and_then(|o| o.remove("description"))
                .unwrap_or(Value::Null);
            json!({"name": k, "in": "query", "required": false, "description": description,
                   "schema": schema})
        })
        .collect()
}

fn problem_response(g: &mut SchemaGenerator, description: &str) -> Value {
    json!({"description": description,
           "content": {"application/problem+json": {"schema": s::<Problem>(g)}}})
}

/// The document.
pub fn document() -> Value {
    let mut g = SchemaSettings::draft2020_12()
        .with(|s| s.definitions_path = "/components/schemas".into())
        .for_deserialize()
        .into_generator();
    let mut paths = Map::new();
    for op in OPERATIONS {
        let mut params = path_params(op.path);
        if let Some(q) = op.query {
            params.extend(query_params(&mut g, q));
        }
        let mut responses = Map::new();
        let (code, description, body) = op.ok;
        let mut ok = json!({"description": description});
        if let Some(b) = body {
            ok["content"] = json!({"application/json": {"schema": b(&mut g)}});
        }
        if matches!(op.method, "get" | "post" | "put" | "patch")
            && op.path.contains("{name}")
            && !op.path.ends_with("}/test")
        {
            ok["headers"] = json!({"ETag": {"description": "The resourceVersion, for If-Match", "schema": {"type": "string"}}});
        }
        responses.insert(code.to_string(), ok);
        for (code, description) in documented().into_iter().chain(op.problems.iter().copied()) {
            let r = if code < 300 {
                let mut r = json!({"description": description, "headers": {"Location": {"description": "Where to poll", "schema": {"type": "string"}}}});
                if let Some(b) = body {
                    r["content"] = json!({"application/json": {"schema": b(&mut g)}});
                }
                r
            } else {
                problem_response(&mut g, description)
            };
            responses.insert(code.to_string(), r);
        }
        responses.insert(
            "default".into(),
            problem_response(
                &mut g,
                "Any other problem (405, 429, …), as RFC 9457 problem details",
            ),
        );
        let mut operation = json!({
            "operationId": op.id, "summary": op.summary, "description": op.description,
            "parameters": params, "responses": responses,
        });
        if op.id == "publishEvent"
            && let Some(p) = operation["parameters"].as_array_mut()
        {
            p.push(json!({"name": "Idempotency-Key", "in": "header", "required": false,
                          "description": "Becomes the event id when the body has none: send the same key again and it is the same event",
                          "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": EVENT_ID_PATTERN}}));
        }
        if matches!(op.method, "put" | "patch" | "delete")
            && let Some(p) = operation["parameters"].as_array_mut()
        {
            p.push(json!({"name": "If-Match", "in": "header", "required": false,
                          "description": "The Webhook's resourceVersion (its ETag): change it only if it is still that one",
                          "schema": {"type": "string", "pattern": "^(W/)?\"?[0-9]{1,19}\"?$"}}));
        }
        if let Some((make, media)) = op.body {
            let schema = make(&mut g);
            let content: Map<String, Value> = media
                .iter()
                .map(|m| ((*m).to_owned(), json!({"schema": schema})))
                .collect();
            operation["requestBody"] = json!({"required": true, "content": content});
        }
        let entry = paths.entry(op.path.to_owned()).or_insert_with(|| json!({}));
        entry[op.method] = operation;
    }
    paths.insert(
        "/api/v1/openapi.json".into(),
        json!({"get": {"operationId": "getOpenApi", "summary": "This document", "security": [],
                       "responses": {"200": {"description": "The OpenAPI document",
                                             "content": {"application/json": {"schema": {"type": "object"}}}}}}}),
    );
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Hookline tenant API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Manage a tenant's Webhooks and read what happened to every delivery. \
                Authenticate with `Authorization: Bearer <token>`: a Kubernetes ServiceAccount token \
                or an OIDC ID token the cluster accepts. Every request runs as that identity, so \
                Kubernetes RBAC decides (roles `hookline-tenant-view` and `hookline-tenant-edit`). \
                Errors are RFC 9457 problem details.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                "description": "A Kubernetes ServiceAccount token or an OIDC ID token the kube-apiserver accepts"}},
            "schemas": g.take_definitions(true),
        },
    })
}

/// The document as committed (pretty JSON, newline-terminated).
pub fn render() -> String {
    let mut s = serde_json::to_string_pretty(&document()).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_document_is_the_generated_one() {
        let committed = include_str!("../openapi.json");
        assert!(
            committed == render(),
            "api/openapi.json is stale: run `make openapi` and commit it"
        );
    }

    #[test]
    fn every_reference_resolves() {
        let doc = document();
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for part in text.split("\"$ref\":\"").skip(1) {
            let r = part.split('"').next().unwrap();
            let name = r.strip_prefix("#/components/schemas/").expect(r);
            assert!(schemas.contains_key(name), "{r} does not resolve");
        }
        let spec = &schemas["WebhookView"]["properties"]["spec"]["properties"];
        assert!(
            spec["url"].is_object(),
            "the CRD's spec schema is in the document"
        );
    }

    #[test]
    fn query_parameters_come_from_the_query_types() {
        let doc = document();
        let params = doc["paths"]["/api/v1/tenants/{tenant}/deliveries"]["get"]["parameters"]
            .as_array()
            .unwrap();
        let names: Vec<&str> = params.iter().map(|p| p["name"].as_str().unwrap()).collect();
        for n in [
            "tenant",
            "webhook",
            "status",
            "eventType",
            "since",
            "until",
            "cursor",
            "limit",
        ] {
            assert!(names.contains(&n), "{n} missing from {names:?}");
        }
    }
}

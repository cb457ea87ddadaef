//! `kubectl hookline status [WEBHOOK]`: what a person asks first about a `Webhook` — is it
//! ready and if not why, is it delivering, how many delivered and failed, when it last
//! succeeded and failed and why, the circuit, pause and 410-disable, the last test send and the
//! signing key — read from the `Webhook` (spec and both writers' status) and summarized by the
//! pure [`Summary::of`]; one `Webhook` as a page, all of the namespace as a table.

use clap::Args;
use hookline_core::conditions::types;
use hookline_crds::{
    DisabledStatus, FailureStatus, SecretStatus, TestStatus, Webhook, WebhookStatus,
};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use serde::Serialize;

use crate::cluster::ClusterArgs;
use crate::error::{Error, Object, Result};
use crate::output::{self, OutputArgs, columns};
use crate::timespec::{relative, stamp};

/// `status` flags.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The Webhook; all of the namespace when left out.
    pub webhook: Option<String>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// One `Webhook`, summarized (the `-o json|yaml` shape).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// `spec.url`.
    pub url: String,
    /// `spec.eventTypes`.
    pub event_types: Vec<String>,
    /// The `Ready` condition's status: `True`, `False` or `Unknown` (not reconciled yet).
    pub ready: String,
    /// The `Ready` condition's reason.
    pub reason: Option<String>,
    /// `spec.paused`.
    pub paused: bool,
    /// Events delivered (2xx).
    pub delivered: i64,
    /// Events dead-lettered.
    pub failed: i64,
    /// `closed`, `open` or `half-open`; absent before the dispatcher reported.
    pub circuit: Option<String>,
    /// Set after the receiver answered 410 Gone.
    pub disabled: Option<DisabledStatus>,
    /// When the last delivery succeeded.
    pub last_success_time: Option<Timestamp>,
    /// The last failed attempt.
    pub last_failure: Option<FailureStatus>,
    /// The last test send.
    pub last_test: Option<TestStatus>,
    /// The generated signing key's generation and rotation.
    pub secret: Option<SecretStatus>,
    /// The Secret named by `spec.secretRef`, when the tenant provides the key.
    pub secret_ref: Option<String>,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `status.observedGeneration`: lower than `generation` while the controller catches up.
    pub observed_generation: Option<i64>,
    /// Every condition, as both writers set them.
    pub conditions: Vec<Condition>,
}

impl Summary {
    /// The summary of `wh`.
    pub fn of(wh: &Webhook) -> Summary {
        let status = wh.status.clone().unwrap_or_default();
        let ready = condition(&status, types::READY);
        let WebhookStatus {
            observed_generation,
            conditions,
            delivered,
            failed,
            last_success_time,
            last_failure,
            circuit,
            last_test,
            disabled,
            secret,
        } = status.clone();
        Summary {
            name: wh.name_any(),
            namespace: wh.namespace().unwrap_or_default(),
            url: wh.spec.url.clone(),
            event_types: wh.spec.event_types.clone(),
            ready: ready.map_or_else(|| "Unknown".to_owned(), |c| c.status.clone()),
            reason: ready.map(|c| c.reason.clone()),
            paused: wh.spec.paused,
            delivered: delivered.unwrap_or(0),
            failed: failed.unwrap_or(0),
            circuit,
            disabled,
            last_success_time: last_success_time.map(|t| t.0),
            last_failure,
            last_test,
            secret,
            secret_ref: wh.spec.secret_ref.as_ref().map(|r| r.name.clone()),
            generation: wh.metadata.generation,
            observed_generation,
            conditions,
        }
    }

    /// The page of one `Webhook` at `now`.
    pub fn page(&self, now: Timestamp) -> String {
        let or = |text: Option<String>, none: &str| text.unwrap_or_else(|| none.to_owned());
        let disabled = self.disabled.as_ref().map(|d| {
            format!(
                "yes, since {} ({}); set annotation hookline.dev/enable to a new value or change the spec to re-enable",
                stamp(d.since.0, now),
                d.reason
            )
        });
        let mut rows: Vec<(&str, String)> = vec![
            ("Webhook", format!("{}/{}", self.namespace, self.name)),
            ("URL", self.url.clone()),
            ("Event types", self.event_types.join(", ")),
            ("Ready", with_reason(&self.ready, self.reason.as_deref())),
            ("Paused", yes_no(self.paused).to_owned()),
            ("Disabled", or(disabled, "no")),
            ("Circuit", or(self.circuit.clone(), "-")),
            ("Delivered", self.delivered.to_string()),
            ("Failed", format!("{} (dead-lettered)", self.failed)),
            (
                "Last success",
                or(self.last_success_time.map(|t| stamp(t, now)), "never"),
            ),
            (
                "Last failure",
                or(self.last_failure.as_ref().map(|f| failure(f, now)), "none"),
            ),
            (
                "Last test",
                or(self.last_test.as_ref().map(|t| test(t, now)), "none"),
            ),
            ("Signing key", self.signing_key(now)),
        ];
        if let (Some(g), Some(o)) = (self.generation, self.observed_generation)
            && o < g
        {
            rows.push((
                "Note",
                format!("the controller has not reconciled the latest spec yet (generation {g}, observed {o})"),
            ));
        }
        let mut out: String = rows
            .iter()
            .map(|(k, v)| format!("{:<14}{v}\n", format!("{k}:")))
            .collect();
        out.push_str("Conditions:\n");
        if self.conditions.is_empty() {
            out.push_str("  none yet (the controller has not reconciled it)\n");
        } else {
            let mut table = vec![
                ["TYPE", "STATUS", "REASON", "SINCE", "MESSAGE"]
                    .map(String::from)
                    .to_vec(),
            ];
            table.extend(self.conditions.iter().map(|c| {
                vec![
                    c.type_.clone(),
                    c.status.clone(),
                    c.reason.clone(),
                    relative(c.last_transition_time.0, now),
                    c.message.clone(),
                ]
            }));
            for line in columns(&table).lines() {
                out.push_str("  ");
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    fn signing_key(&self, now: Timestamp) -> String {
        if let Some(name) = &self.secret_ref {
            return format!(
                "from Secret {name} (spec.secretRef: the tenant provides and rotates it)"
            );
        }
        let Some(s) = &self.secret else {
            return "not generated yet".into();
        };
        let mut text = format!("generation {} in Secret {}", s.generation, s.name);
        if let Some(at) = &s.rotated_at {
            text.push_str(&format!(", current since {}", stamp(at.0, now)));
        }
        if let Some(until) = &s.previous_valid_until
            && until.0 > now
        {
            text.push_str(&format!(
                "; the previous key is signed with too until {}",
                stamp(until.0, now)
            ));
        }
        text
    }

    /// The table row of this `Webhook` (see [`table`]).
    fn row(&self, now: Timestamp) -> Vec<String> {
        let ago = |t: Option<Timestamp>| t.map_or_else(|| "-".to_owned(), |t| relative(t, now));
        vec![
            self.name.clone(),
            self.ready.clone(),
            self.reason.clone().unwrap_or_else(|| "-".into()),
            self.delivered.to_string(),
            self.failed.to_string(),
            self.circuit.clone().unwrap_or_else(|| "-".into()),
            if self.disabled.is_some() {
                "disabled".into()
            } else {
                yes_no(self.paused).into()
            },
            ago(self.last_success_time),
            self.last_failure.as_ref().map_or_else(
                || "-".into(),
                |f| format!("{} {}", relative(f.time.0, now), f.reason),
            ),
            self.last_test.as_ref().map_or_else(
                || "-".into(),
                |t| {
                    format!(
                        "{} {}",
                        relative(t.time.0, now),
                        if t.success { "ok" } else { "failed" }
                    )
                },
            ),
        ]
    }
}

/// Every summary as one table at `now`.
pub fn table(summaries: &[Summary], now: Timestamp) -> String {
    let head = [
        "NAME",
        "READY",
        "REASON",
        "DELIVERED",
        "FAILED",
        "CIRCUIT",
        "PAUSED",
        "LAST SUCCESS",
        "LAST FAILURE",
        "LAST TEST",
    ];
    let mut rows = vec![head.map(String::from).to_vec()];
    rows.extend(summaries.iter().map(|s| s.row(now)));
    columns(&rows)
}

fn condition<'a>(status: &'a WebhookStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

fn with_reason(status: &str, reason: Option<&str>) -> String {
    match reason {
        Some(r) if !r.is_empty() => format!("{status} ({r})"),
        _ => status.to_owned(),
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn failure(f: &FailureStatus, now: Timestamp) -> String {
    let code = f
        .status_code
        .map(|c| format!("HTTP {c}"))
        .filter(|c| !f.message.contains(c.as_str()))
        .map(|c| format!(" ({c})"))
        .unwrap_or_default();
    format!("{} {}: {}{code}", stamp(f.time.0, now), f.reason, f.message)
}

/// A test send's outcome in one line: `succeeded: HTTP 200 in 12 ms` or `failed: …: why`.
pub fn test_outcome(t: &TestStatus) -> String {
    let mut text = String::from(if t.success { "succeeded" } else { "failed" });
    if let Some(code) = t.status_code {
        text.push_str(&format!(": HTTP {code}"));
    }
    if let Some(ms) = t.latency_ms {
        text.push_str(&format!(" in {ms} ms"));
    }
    if let Some(e) = t.error.as_deref().filter(|_| !t.success) {
        text.push_str(&format!(": {e}"));
    }
    text
}

fn test(t: &TestStatus, now: Timestamp) -> String {
    format!(
        "{} {} (nonce {})",
        stamp(t.time.0, now),
        test_outcome(t),
        t.nonce
    )
}

#[derive(Serialize)]
struct List<'a> {
    items: &'a [Summary],
}

/// Runs `status`.
///
/// # Errors
/// When the `Webhook` does not exist or cannot be read.
pub async fn run(args: StatusArgs) -> Result<()> {
    let cluster = args.cluster.connect().await?;
    let api = Api::<Webhook>::namespaced(cluster.client, &cluster.namespace);
    let now = Timestamp::now();
    let format = args.output.format;
    match &args.webhook {
        Some(name) => {
            let object = Object::webhook(&cluster.namespace, name);
            let wh = api
                .get(name)
                .await
                .map_err(|e| Error::kube("reading", &object, e))?;
            let summary = Summary::of(&wh);
            output::print(format, &summary, || summary.page(now))
        }
        None => {
            let object = Object::webhook(&cluster.namespace, "*");
            let list = api
                .list(&ListParams::default())
                .await
                .map_err(|e| Error::kube("listing", &object, e))?;
            let mut summaries: Vec<Summary> = list.items.iter().map(Summary::of).collect();
            summaries.sort_by(|a, b| a.name.cmp(&b.name));
            if summaries.is_empty() && format == output::Format::Table {
                eprintln!("No Webhooks in namespace {}.", cluster.namespace);
                return Ok(());
            }
            output::print(format, &List { items: &summaries }, || {
                table(&summaries, now)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn webhook(status: serde_json::Value) -> Webhook {
        serde_json::from_value(json!({
            "apiVersion": "hookline.dev/v1alpha1", "kind": "Webhook",
            "metadata": {"name": "orders", "namespace": "acme", "generation": 3},
            "spec": {"url": "https://hooks.acme.example/orders", "eventTypes": ["transaction.*"]},
            "status": status,
        }))
        .unwrap()
    }

    fn now() -> Timestamp {
        "2026-12-01T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn a_failing_webhook_shows_why_when_and_its_last_test() {
        let wh = webhook(json!({
            "observedGeneration": 2,
            "delivered": 10, "failed": 2, "circuit": "open",
            "lastSuccessTime": "2026-12-01T11:00:00Z",
            "lastFailure": {"time": "2026-12-01T11:59:00Z", "reason": "HttpStatus", "message": "HTTP 503", "statusCode": 503},
            "lastTest": {"nonce": "n1", "time": "2026-12-01T11:58:00Z", "success": false, "statusCode": 500, "latencyMs": 7, "error": "HTTP 500"},
            "secret": {"name": "orders-signing", "generation": 2, "rotatedAt": "2026-12-01T10:00:00Z", "previousValidUntil": "2026-12-02T10:00:00Z"},
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "Reconciled", "message": "ok", "lastTransitionTime": "2026-11-30T12:00:00Z"},
                {"type": "Degraded", "status": "True", "reason": "CircuitOpen", "message": "the circuit is open", "lastTransitionTime": "2026-12-01T11:59:00Z"}
            ]
        }));
        let s = Summary::of(&wh);
        assert_eq!(
            (s.ready.as_str(), s.reason.as_deref()),
            ("True", Some("Reconciled"))
        );
        let page = s.page(now());
        for want in [
            "Webhook:      acme/orders",
            "Ready:        True (Reconciled)",
            "Circuit:      open",
            "Failed:       2 (dead-lettered)",
            "Last success: 2026-12-01T11:00:00Z (60m ago)",
            "Last failure: 2026-12-01T11:59:00Z (60s ago) HttpStatus: HTTP 503",
            "Last test:    2026-12-01T11:58:00Z (2m ago) failed: HTTP 500 in 7 ms: HTTP 500 (nonce n1)",
            "generation 2 in Secret orders-signing",
            "previous key is signed with too until 2026-12-02T10:00:00Z (in 22h)",
            "generation 3, observed 2",
            "Degraded  True    CircuitOpen  60s ago  the circuit is open",
        ] {
            assert!(page.contains(want), "missing {want:?} in\n{page}");
        }
    }

    #[test]
    fn a_failure_shows_its_status_code_unless_the_message_says_it() {
        let f = |code: Option<i32>, message: &str| FailureStatus {
            time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()),
            reason: "HttpStatus".into(),
            message: message.into(),
            status_code: code,
        };
        assert!(failure(&f(Some(503), "HTTP 503"), now()).ends_with("HttpStatus: HTTP 503"));
        assert!(failure(&f(Some(503), "slow down"), now()).ends_with("slow down (HTTP 503)"));
        assert!(failure(&f(None, "timed out"), now()).ends_with("HttpStatus: timed out"));
    }

    #[test]
    fn a_new_webhook_reads_unknown_and_never_rather_than_failing() {
        let s = Summary::of(&webhook(json!(null)));
        assert_eq!(s.ready, "Unknown");
        let page = s.page(now());
        assert!(page.contains("Last success: never"), "{page}");
        assert!(page.contains("none yet"), "{page}");
        let table = table(&[s], now());
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("NAME    READY    REASON"), "{table}");
        assert!(lines[1].starts_with("orders  Unknown  -"), "{table}");
    }

    #[test]
    fn json_carries_the_status_fields_in_camel_case() {
        let s = Summary::of(&webhook(
            json!({"delivered": 5, "lastSuccessTime": "2026-12-01T11:00:00Z"}),
        ));
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["delivered"], 5);
        assert_eq!(v["lastSuccessTime"], "2026-12-01T11:00:00Z");
        assert_eq!(v["eventTypes"], json!(["transaction.*"]));
    }
}

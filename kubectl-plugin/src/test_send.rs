//! `kubectl hookline test WEBHOOK`: a fresh nonce goes into the annotation `hookline.dev/test`
//! (a JSON merge patch, so nothing else changes); the tenant's dispatcher sends the signed
//! `webhook.test` event `test_<nonce>` to the URL and writes the outcome into
//! `status.lastTest`; the command watches the `Webhook` until `lastTest.nonce` is this nonce and
//! prints the status code, latency and error.
//!
//! # Guarantees
//! - A result is only ever this test's: it is matched by nonce, never by time.
//! - Exit 0 only for a 2xx answer; 1 when the test failed; 3 when no result came in time (the
//!   message then says what the `Webhook`'s conditions say, since a dispatcher that is not
//!   running is the usual cause).

use clap::Args;
use hookline_core::conditions::types;
use hookline_crds::{TestStatus, Webhook, annotations};
use kube::Api;

use crate::cluster::ClusterArgs;
use crate::error::{Error, Object, Result};
use crate::output::{self, OutputArgs};
use crate::status::{Summary, test_outcome};
use crate::{annotation, timespec, watch};

/// `test` flags.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// The Webhook whose URL gets the test event.
    pub webhook: String,
    /// How long to wait for the dispatcher's result.
    #[arg(long, default_value = "30s")]
    pub timeout: String,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// The result of test `nonce` in `wh`, once the dispatcher has written it.
pub fn result_of(wh: &Webhook, nonce: &str) -> Option<TestStatus> {
    wh.status
        .as_ref()?
        .last_test
        .clone()
        .filter(|t| t.nonce == nonce)
}

/// Why a test may not have been answered: the `Webhook`'s readiness, for the timeout message.
pub fn hint(wh: &Webhook) -> String {
    let s = Summary::of(wh);
    let not_ok: Vec<String> = s
        .conditions
        .iter()
        .filter(|c| c.type_ != types::DEGRADED && c.status != "True")
        .map(|c| format!("{}={} ({}): {}", c.type_, c.status, c.reason, c.message))
        .collect();
    if s.conditions.is_empty() {
        "the Webhook has no conditions yet: is the Hookline controller running?".to_owned()
    } else if not_ok.is_empty() {
        "its conditions are all fine; is the tenant's dispatcher running? (kubectl hookline status shows it)".to_owned()
    } else {
        format!("the Webhook says {}", not_ok.join("; "))
    }
}

/// Runs `test`.
///
/// # Errors
/// [`Error::Failed`] when the receiver did not answer 2xx; [`Error::TimedOut`] when no result
/// came within `--timeout`; others when the `Webhook` cannot be patched or watched.
pub async fn run(args: TestArgs) -> Result<()> {
    let timeout = timespec::duration("--timeout", &args.timeout).map_err(Error::Usage)?;
    let cluster = args.cluster.connect().await?;
    let api = Api::<Webhook>::namespaced(cluster.client, &cluster.namespace);
    let object = Object::webhook(&cluster.namespace, &args.webhook);
    let nonce = annotation::set(&api, &object, annotations::TEST).await?;
    eprintln!(
        "Sending test event test_{nonce} to Webhook {}/{} …",
        cluster.namespace, args.webhook
    );
    let waited = watch::until(&api, &object, "test result", Some(timeout), |wh| {
        result_of(wh, &nonce)
    })
    .await;
    let result = match waited {
        Ok(r) => r,
        Err(Error::TimedOut(msg)) => {
            let why = match api.get(&args.webhook).await {
                Ok(wh) => hint(&wh),
                Err(e) => format!("and the Webhook cannot be read: {e}"),
            };
            return Err(Error::TimedOut(format!("{msg}: {why}")));
        }
        Err(e) => return Err(e),
    };
    output::print(args.output.format, &result, || {
        format!("test_{}: {}\n", result.nonce, test_outcome(&result))
    })?;
    if result.success {
        Ok(())
    } else {
        Err(Error::Failed(format!(
            "the test send to Webhook {} failed",
            args.webhook
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn webhook(status: serde_json::Value) -> Webhook {
        serde_json::from_value(json!({
            "apiVersion": "hookline.dev/v1alpha1", "kind": "Webhook",
            "metadata": {"name": "orders", "namespace": "acme"},
            "spec": {"url": "https://x.example/", "eventTypes": ["*"]},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn only_the_result_of_this_nonce_counts() {
        let earlier = webhook(
            json!({"lastTest": {"nonce": "old", "time": "2026-12-01T12:00:00Z", "success": true}}),
        );
        assert_eq!(result_of(&earlier, "new"), None);
        let answered = webhook(
            json!({"lastTest": {"nonce": "new", "time": "2026-12-01T12:00:01Z", "success": true, "statusCode": 204, "latencyMs": 3}}),
        );
        let r = result_of(&answered, "new").unwrap();
        assert_eq!(test_outcome(&r), "succeeded: HTTP 204 in 3 ms");
        assert_eq!(result_of(&webhook(json!(null)), "new"), None);
    }

    #[test]
    fn a_timeout_names_the_condition_that_is_not_true() {
        let down = webhook(json!({"conditions": [
            {"type": "Ready", "status": "False", "reason": "DispatcherUnavailable", "message": "0 of 1 replicas", "lastTransitionTime": "2026-12-01T12:00:00Z"}
        ]}));
        assert!(
            hint(&down).contains("Ready=False (DispatcherUnavailable): 0 of 1"),
            "{}",
            hint(&down)
        );
        assert!(hint(&webhook(json!(null))).contains("controller"));
    }
}

//! `kubectl hookline rotate WEBHOOK`: a new value in the annotation `hookline.dev/rotate-secret`
//! makes the controller put a new key in the generated signing Secret, keep the previous one
//! beside it (signed with too) for the platform's rotation overlap, and report it in
//! `status.secret`: `generation` + 1, `rotatedAt`, `previousValidUntil`. The command waits for
//! the higher generation and prints the overlap window: the time receivers have to switch keys.
//!
//! A `Webhook` with `spec.secretRef` is refused before anything changes: the tenant owns that
//! Secret, and the controller never rotates it.

use std::time::Duration;

use clap::Args;
use hookline_crds::{SecretStatus, Webhook, annotations};
use jiff::Timestamp;
use kube::Api;

use crate::cluster::ClusterArgs;
use crate::error::{Error, Object, Result};
use crate::output::{self, OutputArgs};
use crate::timespec::{self, stamp};
use crate::{annotation, watch};

/// `rotate` flags.
#[derive(Debug, Args)]
pub struct RotateArgs {
    /// The Webhook whose generated signing key is rotated.
    pub webhook: String,
    /// How long to wait for the controller to report the new key.
    #[arg(long, default_value = "60s")]
    pub timeout: String,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Why `wh` cannot be rotated by Hookline, if it cannot.
pub fn refusal(wh: &Webhook) -> Option<String> {
    wh.spec.secret_ref.as_ref().map(|r| {
        format!(
            "Webhook {} signs with Secret {} (spec.secretRef), which you own: Hookline does not rotate it. \
             Rotate it yourself: put the new key in data \"secret\", the old one in data \"previous\" and \
             the end of the overlap in annotation hookline.dev/previous-valid-until (RFC 3339)",
            wh.metadata.name.as_deref().unwrap_or_default(),
            r.name
        )
    })
}

/// The key generation `wh` reports (0 before the controller generated one).
pub fn generation(wh: &Webhook) -> i64 {
    wh.status
        .as_ref()
        .and_then(|s| s.secret.as_ref())
        .map_or(0, |s| s.generation)
}

/// What the rotation gave, for a person.
pub fn describe(s: &SecretStatus, now: Timestamp) -> String {
    let mut text = format!(
        "Rotated: key generation {} in Secret {}",
        s.generation, s.name
    );
    if let Some(at) = &s.rotated_at {
        text.push_str(&format!(", current since {}", stamp(at.0, now)));
    }
    text.push('\n');
    match (&s.rotated_at, &s.previous_valid_until) {
        (Some(from), Some(until)) => {
            let overlap = Duration::try_from(until.0.duration_since(from.0)).unwrap_or_default();
            text.push_str(&format!(
                "Overlap: every delivery is signed with both keys until {} ({} window); receivers must \
                 switch to the new key before then:\n  kubectl get secret {} -o jsonpath='{{.data.secret}}' | base64 -d\n",
                stamp(until.0, now),
                hookline_core::duration::format(overlap),
                s.name
            ));
        }
        _ => text.push_str("Overlap: none (there was no previous key to keep)\n"),
    }
    text
}

/// Runs `rotate`.
///
/// # Errors
/// [`Error::Failed`] for a `Webhook` with `spec.secretRef`; [`Error::TimedOut`] when the
/// controller does not report the new key within `--timeout`.
pub async fn run(args: RotateArgs) -> Result<()> {
    let timeout = timespec::duration("--timeout", &args.timeout).map_err(Error::Usage)?;
    let cluster = args.cluster.connect().await?;
    let api = Api::<Webhook>::namespaced(cluster.client, &cluster.namespace);
    let object = Object::webhook(&cluster.namespace, &args.webhook);
    let wh = api
        .get(&args.webhook)
        .await
        .map_err(|e| Error::kube("reading", &object, e))?;
    if let Some(why) = refusal(&wh) {
        return Err(Error::Failed(why));
    }
    let before = generation(&wh);
    annotation::set(&api, &object, annotations::ROTATE_SECRET).await?;
    eprintln!(
        "Asked for a new signing key (generation {} → {}) …",
        before,
        before + 1
    );
    let awaiting = format!("key generation {} in status.secret", before + 1);
    let secret = watch::until(&api, &object, &awaiting, Some(timeout), |wh| {
        wh.status
            .as_ref()
            .and_then(|s| s.secret.clone())
            .filter(|s| s.generation > before)
    })
    .await?;
    let now = Timestamp::now();
    output::print(args.output.format, &secret, || describe(&secret, now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_webhook_with_its_own_secret_is_refused_with_what_to_do() {
        let wh: Webhook = serde_json::from_value(json!({
            "apiVersion": "hookline.dev/v1alpha1", "kind": "Webhook",
            "metadata": {"name": "orders"},
            "spec": {"url": "https://x.example/", "eventTypes": ["*"], "secretRef": {"name": "mine"}},
        }))
        .unwrap();
        let why = refusal(&wh).unwrap();
        assert!(
            why.contains("Secret mine") && why.contains("previous-valid-until"),
            "{why}"
        );
        assert_eq!(generation(&wh), 0);
    }

    #[test]
    fn the_overlap_window_is_printed_with_its_length() {
        let s: SecretStatus = serde_json::from_value(json!({
            "name": "orders-signing", "generation": 3,
            "rotatedAt": "2026-12-01T12:00:00Z", "previousValidUntil": "2026-12-02T12:00:00Z"
        }))
        .unwrap();
        let text = describe(&s, "2026-12-01T12:00:01Z".parse().unwrap());
        assert!(
            text.starts_with("Rotated: key generation 3 in Secret orders-signing"),
            "{text}"
        );
        assert!(
            text.contains("until 2026-12-02T12:00:00Z (in 23h) (24h window)"),
            "{text}"
        );
        let first = SecretStatus {
            previous_valid_until: None,
            ..s
        };
        assert!(describe(&first, Timestamp::UNIX_EPOCH).contains("Overlap: none"));
    }
}

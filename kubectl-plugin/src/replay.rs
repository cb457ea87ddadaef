//! `kubectl hookline replay WEBHOOK …`: flags become a `WebhookReplay` ([`build`], pure) that
//! the command creates next to the `Webhook`; the controller runs it (reads the source, re-queues
//! what matches, counts the outcomes into its status). Unless `--no-wait`, the command follows
//! the replay's status with a progress line — source records scanned of the total, then matched
//! events delivered or failed again — until its phase is `Succeeded` (exit 0) or `Failed`
//! (exit 1, with the `Complete` condition's message).
//!
//! # Decisions
//! - The `Webhook` is read first, so a typo fails at once rather than as a replay that stays
//!   `Pending`.
//! - Interrupting the command does not cancel the replay (deleting the object does); the
//!   command says so when it starts following.

use clap::{ArgGroup, Args};
use hookline_crds::{
    DeadLetterSource, ReplayPhase, ReplayRateLimit, ReplaySource, TimeRange, Webhook, WebhookRef,
    WebhookReplay, WebhookReplaySpec, WebhookReplayStatus,
};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;
use kube::api::PostParams;

use crate::cluster::ClusterArgs;
use crate::error::{Error, Object, Result};
use crate::output::{self, Format, OutputArgs};
use crate::progress::{self, Line};
use crate::{annotation, timespec, watch};

/// The condition a finished replay carries; its reason and message say how it ended.
pub use hookline_crds::REPLAY_COMPLETE as COMPLETE;

/// Longest object name (a DNS subdomain).
const NAME_MAX: usize = 253;

/// `replay` flags.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("source").required(true).args(["dead_letters", "from"])))]
pub struct ReplayArgs {
    /// The Webhook to re-deliver to.
    pub webhook: String,
    /// Replay the Webhook's dead letters (those present when the replay starts).
    #[arg(long)]
    pub dead_letters: bool,
    /// With --dead-letters: only dead letters of this reason (retries_exhausted, http_4xx, gone,
    /// webhook_disabled, …); repeatable.
    #[arg(long = "reason", value_name = "REASON", conflicts_with = "from")]
    pub reasons: Vec<String>,
    /// Replay the events produced from this time (RFC 3339, `now`, or `-2h`), included.
    #[arg(long, requires = "to", allow_hyphen_values = true)]
    pub from: Option<String>,
    /// … up to this time, excluded.
    #[arg(long, requires = "from", allow_hyphen_values = true)]
    pub to: Option<String>,
    /// Only events whose type matches this pattern (`*` matches any run); repeatable.
    #[arg(long = "event-type", value_name = "PATTERN")]
    pub event_types: Vec<String>,
    /// Events re-queued per second (default: the controller's, 1000); the Webhook's own rate
    /// limit applies as well.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..=100_000))]
    pub rate: Option<i32>,
    /// Name of the WebhookReplay; default `<webhook>-replay-<random>`.
    #[arg(long)]
    pub name: Option<String>,
    /// Create the replay and return without following it.
    #[arg(long)]
    pub no_wait: bool,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `<webhook>-replay-<random>`, shortened to fit a name.
pub fn default_name(webhook: &str, random: &str) -> String {
    let suffix = format!("-replay-{random}");
    let keep = NAME_MAX.saturating_sub(suffix.len()).min(webhook.len());
    let base = webhook[..keep].trim_end_matches(['-', '.']);
    format!("{base}{suffix}")
}

/// The source the flags ask for, with relative times resolved against `now`.
///
/// # Errors
/// A message naming the flag when a time cannot be read or `--from` is not before `--to`.
pub fn source(args: &ReplayArgs, now: Timestamp) -> std::result::Result<ReplaySource, String> {
    if args.dead_letters {
        return Ok(ReplaySource {
            dead_letters: Some(DeadLetterSource {
                reasons: args.reasons.clone(),
            }),
            time_range: None,
        });
    }
    let (Some(from), Some(to)) = (&args.from, &args.to) else {
        return Err("give --dead-letters, or --from and --to".into());
    };
    let from = timespec::instant("--from", from, now)?;
    let to = timespec::instant("--to", to, now)?;
    if from >= to {
        return Err(format!("--from ({from}) must be before --to ({to})"));
    }
    Ok(ReplaySource {
        dead_letters: None,
        time_range: Some(TimeRange {
            from: Time(from),
            to: Time(to),
        }),
    })
}

/// The `WebhookReplay` the flags ask for.
pub fn build(args: &ReplayArgs, name: &str, source: ReplaySource) -> WebhookReplay {
    let spec = WebhookReplaySpec {
        webhook_ref: WebhookRef {
            name: args.webhook.clone(),
        },
        source,
        event_types: args.event_types.clone(),
        event_ids: Vec::new(),
        rate_limit: args.rate.map(|per_second| ReplayRateLimit { per_second }),
    };
    WebhookReplay::new(name, spec)
}

/// The progress line of a replay in `status`.
pub fn progress_text(status: Option<&WebhookReplayStatus>) -> String {
    let Some(s) = status.filter(|s| s.phase.is_some()) else {
        return "waiting for the controller to start the replay (Pending)".into();
    };
    let n = |v: Option<i64>| v.unwrap_or(0);
    if s.phase == Some(ReplayPhase::Pending) {
        return "Pending: waiting for the Webhook or the controller".into();
    }
    let scanning = match s.total {
        Some(total) => n(s.scanned) < total,
        None => true,
    };
    if scanning {
        progress::bar(
            "scanning  ",
            n(s.scanned),
            s.total,
            &format!("records, {} matched", n(s.matched)),
        )
    } else {
        progress::bar(
            "delivering",
            n(s.delivered) + n(s.failed),
            Some(n(s.matched)),
            &format!("({} delivered, {} failed)", n(s.delivered), n(s.failed)),
        )
    }
}

/// How a finished replay ended, for a person.
pub fn summary(name: &str, status: &WebhookReplayStatus) -> String {
    let n = |v: Option<i64>| v.unwrap_or(0);
    let phase = match status.phase {
        Some(ReplayPhase::Succeeded) => "succeeded",
        Some(ReplayPhase::Failed) => "failed",
        _ => "is not finished",
    };
    let took = match (&status.start_time, &status.completion_time) {
        (Some(a), Some(b)) => std::time::Duration::try_from(b.0.duration_since(a.0))
            .map(|d| format!(" in {}", hookline_core::duration::format(d)))
            .unwrap_or_default(),
        _ => String::new(),
    };
    let mut text = format!(
        "WebhookReplay {name} {phase}{took}: {} scanned, {} matched, {} delivered, {} failed\n",
        n(status.scanned),
        n(status.matched),
        n(status.delivered),
        n(status.failed)
    );
    if let Some(c) = status.conditions.iter().find(|c| c.type_ == COMPLETE)
        && !c.message.is_empty()
    {
        text.push_str(&format!("{} ({}): {}\n", c.type_, c.reason, c.message));
    }
    text
}

/// Runs `replay`.
///
/// # Errors
/// [`Error::Usage`] for bad times; [`Error::NotFound`] when the `Webhook` does not exist;
/// [`Error::Failed`] when the replay ends `Failed`.
pub async fn run(args: ReplayArgs) -> Result<()> {
    let source = source(&args, Timestamp::now()).map_err(Error::Usage)?;
    let cluster = args.cluster.connect().await?;
    let ns = cluster.namespace.as_str();
    let webhooks = Api::<Webhook>::namespaced(cluster.client.clone(), ns);
    let wh_object = Object::webhook(ns, &args.webhook);
    webhooks
        .get(&args.webhook)
        .await
        .map_err(|e| Error::kube("reading", &wh_object, e))?;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| default_name(&args.webhook, &annotation::random_suffix()));
    let object = Object {
        kind: "WebhookReplay",
        namespace: ns,
        name: &name,
    };
    let replays = Api::<WebhookReplay>::namespaced(cluster.client, ns);
    let created = replays
        .create(&PostParams::default(), &build(&args, &name, source))
        .await
        .map_err(|e| Error::kube("creating", &object, e))?;
    let format = args.output.format;
    if args.no_wait {
        return output::print(format, &created, || {
            format!("webhookreplay.hookline.dev/{name} created\n")
        });
    }
    if format == Format::Table {
        println!("webhookreplay.hookline.dev/{name} created");
    }
    eprintln!(
        "Following it (Ctrl-C stops following, not the replay; kubectl delete webhookreplay {name} -n {ns} cancels it)"
    );
    let mut line = Line::stderr();
    let finished = watch::until(&replays, &object, "the replay to finish", None, |r| {
        let status = r.status.as_ref();
        line.show(progress_text(status));
        status
            .and_then(|s| s.phase)
            .is_some_and(ReplayPhase::is_final)
            .then(|| r.clone())
    })
    .await;
    line.finish();
    let finished = finished?;
    let status = finished.status.clone().unwrap_or_default();
    output::print(format, &finished, || summary(&name, &status))?;
    match status.phase {
        Some(ReplayPhase::Succeeded) => Ok(()),
        _ => Err(Error::Failed(format!("WebhookReplay {name} failed"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use serde_json::json;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        replay: ReplayArgs,
    }

    fn parse(args: &[&str]) -> std::result::Result<ReplayArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("replay").chain(args.iter().copied())).map(|c| c.replay)
    }

    #[test]
    fn dead_letters_with_reasons_and_filters_become_the_spec() {
        let args = parse(&[
            "orders",
            "--dead-letters",
            "--reason",
            "gone",
            "--reason",
            "http_4xx",
            "--event-type",
            "transaction.*",
            "--rate",
            "50",
        ])
        .unwrap();
        let src = source(&args, Timestamp::UNIX_EPOCH).unwrap();
        let r = build(&args, "orders-replay-abcde", src);
        assert_eq!(
            serde_json::to_value(&r.spec).unwrap(),
            json!({
                "webhookRef": {"name": "orders"},
                "source": {"deadLetters": {"reasons": ["gone", "http_4xx"]}},
                "eventTypes": ["transaction.*"],
                "rateLimit": {"perSecond": 50}
            })
        );
        assert_eq!(r.metadata.name.as_deref(), Some("orders-replay-abcde"));
    }

    #[test]
    fn a_time_range_takes_relative_times_and_must_run_forward() {
        let now: Timestamp = "2026-12-01T12:00:00Z".parse().unwrap();
        let args = parse(&["orders", "--from", "-2h", "--to", "now"]).unwrap();
        let src = source(&args, now).unwrap();
        assert_eq!(
            serde_json::to_value(&src).unwrap(),
            json!({"timeRange": {"from": "2026-12-01T10:00:00Z", "to": "2026-12-01T12:00:00Z"}})
        );
        let backwards = parse(&["orders", "--from", "now", "--to", "-1h"]).unwrap();
        assert!(
            source(&backwards, now)
                .unwrap_err()
                .contains("must be before")
        );
    }

    #[test]
    fn exactly_one_source_is_required_and_reasons_need_dead_letters() {
        assert!(parse(&["orders"]).is_err());
        assert!(parse(&["orders", "--dead-letters", "--from", "-1h", "--to", "now"]).is_err());
        assert!(parse(&["orders", "--from", "-1h"]).is_err());
        assert!(parse(&["orders", "--from", "-1h", "--to", "now", "--reason", "gone"]).is_err());
        assert!(parse(&["orders", "--dead-letters", "--rate", "0"]).is_err());
    }

    #[test]
    fn the_default_name_fits_a_dns_subdomain() {
        assert_eq!(default_name("orders", "ab12c"), "orders-replay-ab12c");
        let long = format!("{}-x", "a".repeat(250));
        let name = default_name(&long, "ab12c");
        assert!(
            name.len() <= NAME_MAX && name.ends_with("-replay-ab12c"),
            "{name}"
        );
    }

    #[test]
    fn progress_scans_first_then_counts_deliveries_and_the_summary_quotes_the_condition() {
        let status =
            |v: serde_json::Value| -> WebhookReplayStatus { serde_json::from_value(v).unwrap() };
        assert!(progress_text(None).contains("Pending"));
        let scanning =
            status(json!({"phase": "Running", "total": 100, "scanned": 40, "matched": 7}));
        let line = progress_text(Some(&scanning));
        assert!(
            line.starts_with("scanning   [") && line.contains("40/100 records, 7 matched"),
            "{line}"
        );
        let delivering = status(
            json!({"phase": "Running", "total": 100, "scanned": 100, "matched": 8, "delivered": 5, "failed": 1}),
        );
        let line = progress_text(Some(&delivering));
        assert!(line.contains("6/8 (5 delivered, 1 failed)"), "{line}");
        let failed = status(json!({
            "phase": "Failed", "scanned": 100, "matched": 8, "delivered": 7, "failed": 1,
            "startTime": "2026-12-01T12:00:00Z", "completionTime": "2026-12-01T12:00:42Z",
            "conditions": [{"type": "Complete", "status": "True", "reason": "EventsFailed", "message": "1 event failed again", "lastTransitionTime": "2026-12-01T12:00:42Z"}]
        }));
        let text = summary("orders-replay-x", &failed);
        assert!(text.starts_with("WebhookReplay orders-replay-x failed in 42s: 100 scanned, 8 matched, 7 delivered, 1 failed"), "{text}");
        assert!(
            text.contains("Complete (EventsFailed): 1 event failed again"),
            "{text}"
        );
    }
}

//! Runs `WebhookReplay`s: the reconciler starts one runner per replay (by uid) on the leading
//! replica; the runner fixes the source range, queues the matching events for delivery and
//! counts their outcomes into the status until every matched event has ended.
//!
//! # How a runner works
//! - **Source range.** At the start, each source partition's range is fixed in the status:
//!   the dead-letter topic from its low to its high watermark, or the events topic between the
//!   offsets of `from` and `to` (Kafka's time index). Later records are not part of the replay.
//! - **Queueing** ([`kafka::inject`], a blocking thread). The range is read in order per partition;
//!   what [`Filter`] accepts, each event id once per partition, is written as a retry record due
//!   now to the first retry tier, with [`ReplayTag`] headers, on the events partition it came
//!   from and with its key (so its delivery keeps per-key order). Records go in Kafka
//!   transactions of up to [`kafka::CHUNK`] records, each committing the source position with it
//!   (`send_offsets_to_transaction`, group `hookline-replay.<uid>`): a runner that restarts —
//!   after a controller crash or a new leader — reads the range again from its start to
//!   recount (`matched` is exact) but writes only past the committed position, so no event is
//!   queued twice. A second runner of the same replay fences the first (same transactional id).
//! - **Counting** ([`kafka::tally`], a blocking thread). The dispatcher writes each replayed delivery's
//!   final attempt record (carrying the replay's uid) before it settles the delivery; the
//!   runner reads the tenant's attempts topic from the replay's start and counts each event id
//!   once ([`Tally`]).
//! - **Status** every second; `Succeeded` when every matched event was delivered, `Failed` when
//!   some failed again (dead-lettered again), the `Webhook` was deleted, or the source cannot be
//!   read. Deleting the `WebhookReplay` stops the runner at its next status write (the
//!   dispatcher drops the replay's deliveries not yet started).

mod kafka;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hookline_core::matching::Matcher;
use hookline_core::naming;
use hookline_core::replay::{Filter, ReplayTag};
use hookline_crds::{
    REPLAY_COMPLETE, REPLAY_PROGRESSING, ReplayPhase, Webhook, WebhookReplay, WebhookReplayStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::context::Context;
use crate::error::Error;

use kafka::kafka_config;
pub use kafka::{CHUNK, Injection, Progress, inject, ranges, tally};

/// Default pace when the spec sets none.
pub const DEFAULT_RATE: f64 = 1_000.0;
const FIELD_MANAGER: &str = "hookline.dev/controller";

/// The reconciler's context: the controller's, and the runners by replay uid.
pub struct ReplayContext {
    /// The controller's context.
    pub ctx: Arc<Context>,
    runners: Mutex<HashMap<String, CancellationToken>>,
}

impl ReplayContext {
    /// No runner yet.
    pub fn new(ctx: Arc<Context>) -> ReplayContext {
        ReplayContext {
            ctx,
            runners: Mutex::new(HashMap::new()),
        }
    }

    fn forget(&self, uid: &str) {
        self.runners.lock().expect("runners").remove(uid);
    }
}

impl Drop for ReplayContext {
    fn drop(&mut self) {
        for stop in self.runners.lock().expect("runners").values() {
            stop.cancel();
        }
    }
}

/// Starts a runner for a replay that has none and has not ended.
///
/// # Errors
/// When its `Webhook` cannot be looked up.
pub async fn reconcile(r: Arc<WebhookReplay>, rc: Arc<ReplayContext>) -> Result<Action, Error> {
    if r.status
        .as_ref()
        .and_then(|s| s.phase)
        .is_some_and(ReplayPhase::is_final)
        || r.meta().deletion_timestamp.is_some()
    {
        return Ok(Action::await_change());
    }
    let (Some(ns), Some(uid)) = (r.namespace(), r.uid()) else {
        return Ok(Action::await_change());
    };
    if rc.runners.lock().expect("runners").contains_key(&uid) {
        return Ok(Action::requeue(Duration::from_secs(60)));
    }
    let wanted = ObjectRef::<Webhook>::new(&r.spec.webhook_ref.name).within(&ns);
    let Some(webhook) = rc.ctx.webhooks.get(&wanted) else {
        let api = Api::<Webhook>::namespaced(rc.ctx.client.clone(), &ns);
        if let Some(found) = api.get_opt(&r.spec.webhook_ref.name).await? {
            if !rc.ctx.settings.serves(found.labels()) {
                // Another Hookline instance's Webhook: its controller runs this replay.
                return Ok(Action::await_change());
            }
            // Ours, but not in the store yet: it is still being filled after a (re)start, and
            // waiting for a change here would leave a replay under way unresumed.
            return Ok(Action::requeue(Duration::from_secs(2)));
        }
        let status = WebhookReplayStatus {
            phase: Some(ReplayPhase::Pending),
            conditions: vec![condition(
                REPLAY_COMPLETE,
                "False",
                "WebhookNotFound",
                &format!(
                    "Webhook {:?} does not exist in namespace {ns}; the replay starts when it does",
                    r.spec.webhook_ref.name
                ),
            )],
            ..WebhookReplayStatus::default()
        };
        patch_status(&rc.ctx, &r, &status).await?;
        return Ok(Action::requeue(Duration::from_secs(10)));
    };
    let stop = CancellationToken::new();
    rc.runners
        .lock()
        .expect("runners")
        .insert(uid.clone(), stop.clone());
    let rc2 = rc.clone();
    tokio::spawn(async move {
        let name = r.name_any();
        if let Err(e) = run(&rc2.ctx, &r, &webhook, &stop).await {
            warn!(namespace = %ns, replay = %name, error = %e, "replay runner stopped; it resumes at the next reconcile");
        }
        rc2.forget(&uid);
    });
    Ok(Action::requeue(Duration::from_secs(60)))
}

/// Retries a failed reconcile after a pause.
pub fn error_policy(r: Arc<WebhookReplay>, e: &Error, _rc: Arc<ReplayContext>) -> Action {
    warn!(replay = %r.name_any(), error = %e, "replay reconcile failed");
    Action::requeue(Duration::from_secs(10))
}

fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        last_transition_time: Time(jiff::Timestamp::now()),
        observed_generation: None,
    }
}

/// Writes `status` (merge patch, guarded by the replay's uid so a re-created namesake is never
/// written); `Ok(false)` when the replay is gone.
async fn patch_status(
    ctx: &Context,
    r: &WebhookReplay,
    status: &WebhookReplayStatus,
) -> Result<bool, Error> {
    let api =
        Api::<WebhookReplay>::namespaced(ctx.client.clone(), &r.namespace().unwrap_or_default());
    let patch = json!({
        "metadata": {"uid": r.uid()},
        "status": status,
    });
    match api
        .patch_status(
            &r.name_any(),
            &PatchParams {
                field_manager: Some(FIELD_MANAGER.to_owned()),
                ..PatchParams::default()
            },
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn base(ctx: &Context) -> hookline_core::kafka::Settings {
    hookline_core::kafka::base(&ctx.settings.kafka_bootstrap, std::env::vars())
}

/// The source of a replay: its topic and what it takes.
fn source(r: &WebhookReplay, webhook: &Webhook, ns: &str) -> Result<(String, Filter), String> {
    let topics = naming::topics(ns);
    let patterns = |p: &[String]| -> Result<Option<Matcher>, String> {
        if p.is_empty() {
            Ok(None)
        } else {
            Matcher::new(p).map(Some).map_err(|e| e.to_string())
        }
    };
    let mut filter = Filter {
        webhook: r.spec.webhook_ref.name.clone(),
        reasons: Vec::new(),
        event_types: patterns(&r.spec.event_types)?,
        subscribed: None,
        ids: r.spec.event_ids.clone(),
        window_ms: None,
    };
    if let Some(d) = &r.spec.source.dead_letters {
        filter.reasons = d.reasons.clone();
        Ok((topics.dead_letter, filter))
    } else if let Some(t) = &r.spec.source.time_range {
        filter.subscribed = patterns(&webhook.spec.event_types)?;
        filter.window_ms = Some((t.from.0.as_millisecond(), t.to.0.as_millisecond()));
        Ok((topics.events, filter))
    } else {
        Err("source sets neither deadLetters nor timeRange".to_owned())
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Kafka(e.to_string()))?
        .map_err(Error::Kafka)
}

async fn run(
    ctx: &Arc<Context>,
    r: &WebhookReplay,
    webhook: &Webhook,
    stop: &CancellationToken,
) -> Result<(), Error> {
    let ns = r.namespace().unwrap_or_default();
    let uid = r.uid().unwrap_or_default();
    let tag = ReplayTag {
        name: r.name_any(),
        uid: uid.clone(),
    };
    let mut status = r.status.clone().unwrap_or_default();
    let (topic, filter) = match source(r, webhook, &ns) {
        Ok(s) => s,
        Err(e) => return finish(ctx, r, status, "InvalidSpec", &e).await,
    };
    if status.source_ranges.is_empty() || status.start_time.is_none() {
        let config = kafka_config(hookline_core::kafka::replay_reader(
            &base(ctx),
            &format!("hookline-replay.{uid}"),
        ));
        let (t, w) = (topic.clone(), filter.window_ms);
        let ranges = blocking(move || ranges(&config, &t, w)).await?;
        status.source_topic = Some(topic.clone());
        status.total = Some(ranges.iter().map(|r| r.end - r.start).sum());
        status.source_ranges = ranges;
        status.start_time = Some(Time(jiff::Timestamp::now()));
        status.phase = Some(ReplayPhase::Running);
        status.conditions = vec![
            condition(
                REPLAY_COMPLETE,
                "False",
                "Running",
                "reading the source and re-delivering",
            ),
            condition(
                REPLAY_PROGRESSING,
                "True",
                "Started",
                &format!("replaying from {topic}"),
            ),
        ];
        if !patch_status(ctx, r, &status).await? {
            return Ok(());
        }
        ctx.event(
            &r.object_ref(&()),
            EventType::Normal,
            "Started",
            format!(
                "replaying {} records of {topic} to Webhook {}",
                status.total.unwrap_or(0),
                r.spec.webhook_ref.name
            ),
        )
        .await;
        info!(namespace = %ns, replay = %tag.name, topic = %topic, total = status.total, "replay started");
    }
    let progress = Arc::new(Progress::default());
    let started_ms = status
        .start_time
        .as_ref()
        .map_or(0, |t| t.0.as_millisecond());
    let tally_thread = {
        let config = kafka_config(hookline_core::kafka::replay_reader(
            &base(ctx),
            &format!("hookline-replay-tally.{uid}"),
        ));
        let (attempts, uid, p) = (naming::topics(&ns).attempts, uid.clone(), progress.clone());
        tokio::task::spawn_blocking(move || {
            tally(&config, &attempts, started_ms - 60_000, &uid, &p)
        })
    };
    let inject_thread = {
        let reader = kafka_config(hookline_core::kafka::replay_reader(
            &base(ctx),
            &format!("hookline-replay.{uid}"),
        ));
        let writer = kafka_config(hookline_core::kafka::replay_writer(
            &base(ctx),
            &format!("hookline-replay.{uid}"),
        ));
        let job = Injection {
            topic,
            ranges: status.source_ranges.clone(),
            filter,
            tag,
            retry_topic: naming::topics(&ns).retry[0].1.clone(),
            rate: r
                .spec
                .rate_limit
                .as_ref()
                .map_or(DEFAULT_RATE, |l| f64::from(l.per_second.max(1))),
        };
        let p = progress.clone();
        tokio::task::spawn_blocking(move || inject(&reader, &writer, &job, &p))
    };
    let outcome = watch(ctx, r, status, &progress, inject_thread, stop).await;
    progress.stop.store(true, Ordering::Relaxed);
    let _ = tally_thread.await;
    outcome
}

/// Writes the status every second until the replay ends, is deleted, or `stop`.
async fn watch(
    ctx: &Arc<Context>,
    r: &WebhookReplay,
    mut status: WebhookReplayStatus,
    progress: &Progress,
    mut inject_thread: tokio::task::JoinHandle<Result<(), String>>,
    stop: &CancellationToken,
) -> Result<(), Error> {
    let ns = r.namespace().unwrap_or_default();
    let mut injecting = true;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            _ = tick.tick() => {}
            done = &mut inject_thread, if injecting => {
                injecting = false;
                match done {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        progress.stop.store(true, Ordering::Relaxed);
                        return Err(Error::Kafka(e));
                    }
                    Err(e) => return Err(Error::Kafka(e.to_string())),
                }
            }
        }
        let load = |a: &AtomicI64| Some(a.load(Ordering::Relaxed));
        status.scanned = load(&progress.scanned);
        status.matched = load(&progress.matched);
        status.delivered = load(&progress.delivered);
        status.failed = load(&progress.failed);
        let wanted = ObjectRef::<Webhook>::new(&r.spec.webhook_ref.name).within(&ns);
        if ctx.webhooks.get(&wanted).is_none() {
            return finish(
                ctx,
                r,
                status,
                "WebhookDeleted",
                "the Webhook was deleted during the replay",
            )
            .await;
        }
        let queued_all = progress.queued_all.load(Ordering::Relaxed);
        let matched = progress.matched.load(Ordering::Relaxed);
        let ended =
            progress.delivered.load(Ordering::Relaxed) + progress.failed.load(Ordering::Relaxed);
        if queued_all && ended >= matched {
            let failed = progress.failed.load(Ordering::Relaxed);
            let (reason, message) = if matched == 0 {
                (
                    "NothingMatched",
                    "no event in the source matched".to_owned(),
                )
            } else if failed == 0 {
                (
                    "Succeeded",
                    format!("all {matched} matched events were delivered again"),
                )
            } else {
                (
                    "EventsFailed",
                    format!(
                        "{failed} of {matched} matched events failed again and were dead-lettered again"
                    ),
                )
            };
            return finish(ctx, r, status, reason, &message).await;
        }
        if !patch_status(ctx, r, &status).await? {
            info!(namespace = %ns, replay = %r.name_any(), "replay deleted: cancelled");
            return Ok(());
        }
    }
}

/// Ends the replay with `reason` (Succeeded and NothingMatched succeed; anything else fails).
async fn finish(
    ctx: &Context,
    r: &WebhookReplay,
    mut status: WebhookReplayStatus,
    reason: &str,
    message: &str,
) -> Result<(), Error> {
    let ok = matches!(reason, "Succeeded" | "NothingMatched");
    status.phase = Some(if ok {
        ReplayPhase::Succeeded
    } else {
        ReplayPhase::Failed
    });
    status.completion_time = Some(Time(jiff::Timestamp::now()));
    status.conditions = vec![
        condition(REPLAY_COMPLETE, "True", reason, message),
        condition(REPLAY_PROGRESSING, "False", reason, message),
    ];
    if patch_status(ctx, r, &status).await? {
        ctx.event(
            &r.object_ref(&()),
            if ok {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason,
            message.to_owned(),
        )
        .await;
        info!(namespace = %r.namespace().unwrap_or_default(), replay = %r.name_any(), reason, message, "replay ended");
    }
    Ok(())
}

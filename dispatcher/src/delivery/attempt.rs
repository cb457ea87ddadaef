//! One delivery attempt, from a [`Job`] to a settled result: [`deliver`] waits for the
//! endpoint's in-flight slot, asks [`Endpoint::hold`] whether it takes deliveries now (the
//! same decision the pipeline made when it queued the job), takes a rate-limit token and the
//! circuit breaker's leave, makes the attempt with the [`Deliverer`], decides with the retry
//! policy, and makes the result durable — a retry record or a dead letter acknowledged by Kafka
//! (through the [`Writer`]) — before it reports a [`Completion`] back. [`postpone`] writes a job
//! to the retry path without an attempt; [`forward`] re-parks or dead-letters a raw record.
//!
//! A record Kafka refuses for good (too large for the producer or its topic, or invalid) is
//! replaced by a dead letter that refers to its event ([`Writer::reference`]), counted in
//! `hookline_dispatcher_writes_refused_total` and logged; the delivery is then over, as any
//! dead-lettered one, so its partition and its key's lane move on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hookline_core::dedup::{IdHash, Remembered};
use hookline_core::replay::done_hash;
use hookline_core::retry::{Decision, GONE, Verdict, classify};
use hookline_core::retry_topics::{AttemptRecord, DeadLetter, RetryMeta, error_text};
use hookline_core::status::Hold;
use jiff::Timestamp;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::delivery::client::{Deliverer, Request};
use crate::delivery::job::{Completion, Done, Job, Source, ms, now_ms};
use crate::kafka::writer::{Out, Writer};
use crate::ops::metrics::Metrics;
#[cfg(doc)]
use crate::tenant::endpoints::Endpoint;

/// How long a delivery waits when its endpoint's memory share is full.
pub const OVERFLOW_POSTPONE: Duration = Duration::from_secs(10);
/// How long a delivery waits for an open circuit without a known end.
pub const CIRCUIT_POSTPONE: Duration = Duration::from_secs(5);

/// What every task needs.
pub struct Shared {
    /// Writes retry, dead-letter and attempt records.
    pub writer: Writer,
    /// Makes attempts.
    pub deliverer: Deliverer,
    /// Metrics.
    pub metrics: Metrics,
    /// Where completions go.
    pub completions: mpsc::UnboundedSender<Completion>,
    /// Cancelled on shutdown: no new attempts start.
    pub stop: CancellationToken,
}

/// What became of a record given to [`Shared::write`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Kafka acknowledged it.
    Acked,
    /// Kafka refused it for good, for this dead-letter reason; a reference to its event is in
    /// the dead-letter topic instead (for a record of the retry or dead-letter path).
    Refused(&'static str),
}

impl Shared {
    /// Writes `out` and waits for Kafka's acknowledgement. When Kafka refuses it for good, a
    /// dead letter referring to its event is written instead ([`Writer::reference`]; an attempt
    /// or dedup record is dropped), and the refusal is counted and logged.
    pub async fn write(&self, out: Out) -> Written {
        let Err(refused) = self.writer.write(&out).await else {
            return Written::Acked;
        };
        let kind = self.writer.kind(&out);
        self.metrics.write_refused(kind.as_str(), refused.reason);
        let size = out.size();
        let Some(reference) = self.writer.reference(&out, &refused) else {
            warn!(topic = %out.topic, record = kind.as_str(), size, reason = refused.reason, error = %refused.error, "Kafka refused a record for good; dropped");
            return Written::Refused(refused.reason);
        };
        let dl = &reference.dead_letter;
        let webhook = dl.webhook.clone().unwrap_or_default();
        let event_id = reference.event_id.clone().unwrap_or_default();
        match self.writer.write(&reference.out).await {
            Ok(()) => {
                self.metrics.dead_letter(&webhook, refused.reason);
                warn!(%event_id, %webhook, topic = %out.topic, record = kind.as_str(), size, reason = refused.reason, error = %refused.error, original_topic = %dl.topic, partition = dl.partition, offset = dl.offset, "Kafka refused a record for good; dead-lettered a reference to its event instead");
            }
            Err(again) => {
                error!(%event_id, %webhook, topic = %out.topic, record = kind.as_str(), size, reason = refused.reason, error = %refused.error, reference_error = %again.error, original_topic = %dl.topic, partition = dl.partition, offset = dl.offset, "Kafka refused a record and its dead-letter reference for good; the event is only at its original offset");
            }
        }
        Written::Refused(refused.reason)
    }

    /// Writes `job` to the retry path, due at `due_ms`, after `attempts` attempts. When Kafka
    /// refuses the retry record for good, the delivery ends as a dead letter referring to the
    /// event ([`Shared::write`]), recorded in the attempts topic and the `Webhook`'s count.
    pub async fn schedule(&self, job: &Job, attempts: u32, due_ms: i64) -> Written {
        let meta = RetryMeta {
            webhook: job.endpoint.name.to_string(),
            attempts,
            due_ms,
            seq: job.seq,
            replay: job.replay.as_deref().cloned(),
        };
        let out = self
            .writer
            .retry_record(&meta, job.source.partition, &job.event, now_ms());
        let written = self.write(out).await;
        match written {
            Written::Acked => self
                .metrics
                .retry(&job.endpoint.name, attempts > job.attempts),
            Written::Refused(reason) => {
                job.endpoint.stats(|s| s.dead_letter());
                let rec = AttemptRecord {
                    sent: false,
                    attempt: attempts,
                    outcome: "dead_letter".to_owned(),
                    reason: Some(reason.to_owned()),
                    error: Some(error_text(
                        "the retry record was refused by Kafka; dead-lettered as a reference",
                    )),
                    dead_letter_reason: Some(reason.to_owned()),
                    ..record(job, Timestamp::now())
                };
                self.record(job, &rec, true).await;
            }
        }
        written
    }

    /// Writes `job` to the dead-letter topic.
    pub async fn bury(
        &self,
        job: &Job,
        reason: &str,
        error: &str,
        attempts: u32,
        status: Option<u16>,
    ) {
        let dl = DeadLetter {
            reason: reason.to_owned(),
            error: error.to_owned(),
            topic: self.writer.events_topic.clone(),
            partition: job.source.partition,
            offset: job.seq,
            webhook: Some(job.endpoint.name.to_string()),
            attempts: Some(attempts),
            status,
        };
        let out = self.writer.dead_letter_record(&dl, &job.event);
        // A refused dead letter is counted and logged with its reference's reason.
        if self.write(out).await == Written::Acked {
            self.metrics.dead_letter(&job.endpoint.name, reason);
            info!(event_id = %job.event.id, webhook = %job.endpoint.name, reason, "dead-lettered");
        }
        job.endpoint.stats(|s| s.dead_letter());
    }

    fn complete(&self, job: &Job, done: Done, replay_done: Option<IdHash>) {
        let _ = self.completions.send(Completion {
            source: job.source.clone(),
            lane: job.lane.clone().map(|l| (l, job.seq)),
            done,
            replay_done,
        });
    }

    /// Writes the attempt record of `job`: best effort, except the one that ends a replayed
    /// delivery, which the replay's count relies on: that one is acknowledged first, then the
    /// delivery's done-marker in the dedup topic (so a dispatcher that reads its retry record
    /// again skips it), both before the job settles. In that order: a crash between the two
    /// delivers the event once more (the count takes each event once), whereas a marker without
    /// its attempt record would keep the replay from ever counting that event.
    async fn record(&self, job: &Job, record: &AttemptRecord, ends: bool) {
        if !(ends && job.replay.is_some()) {
            self.writer.record_attempt(record);
            return;
        }
        self.write(self.writer.attempt_out(record)).await;
        if let Some(out) = self.done_marker(job) {
            self.write(out).await;
        }
    }

    /// The dedup-topic record remembering that a replayed delivery ended, when dedup is on.
    fn done_marker(&self, job: &Job) -> Option<Out> {
        let tag = job.replay.as_ref()?;
        let topic = self.writer.dedup_topic.as_deref()?;
        let at_s = u64::try_from(Timestamp::now().as_second()).unwrap_or(0);
        Some(self.writer.remember_record(
            topic,
            job.source.partition,
            &Remembered {
                hash: done_hash(&tag.uid, &job.event.id),
                offset: job.source.offset,
                at_s,
            },
        ))
    }
}

/// Writes `job` to the retry path due at `due_ms` without an attempt, and
/// reports [`Done::Postponed`] (the lane already counts it as pending), or
/// [`Done::Withdrawn`] when Kafka refused the retry record for good and it was
/// dead-lettered instead.
pub async fn postpone(job: Job, due_ms: i64, shared: Arc<Shared>) {
    let done = match shared.schedule(&job, job.attempts, due_ms).await {
        Written::Acked => Done::Postponed,
        Written::Refused(_) => Done::Withdrawn,
    };
    shared.complete(&job, done, None);
}

/// Writes a record as it is (re-park in another tier, or dead letter of an
/// unparsable record) and reports [`Done::Finished`] for `source` — also when
/// Kafka refused it for good and a reference was dead-lettered instead.
pub async fn forward(out: Out, source: Source, shared: Arc<Shared>) {
    shared.write(out).await;
    let _ = shared.completions.send(Completion {
        source,
        lane: None,
        done: Done::Finished,
        replay_done: None,
    });
}

/// The attempt record of `job` started at `started`, before the attempt's outcome is filled in.
fn record(job: &Job, started: Timestamp) -> AttemptRecord {
    AttemptRecord {
        event_id: job.event.id.clone(),
        event_type: job.event.event_type.clone(),
        key: job.event.key.clone(),
        webhook: job.endpoint.name.to_string(),
        attempt: job.attempts + 1,
        sent: true,
        status: None,
        latency_ms: 0,
        outcome: String::new(),
        reason: None,
        error: None,
        next_attempt_at: None,
        dead_letter_reason: None,
        time: started.to_string(),
        replay: job.replay.as_ref().map(|t| t.uid.clone()),
    }
}

/// Delivers `job` and reports what became of it.
pub async fn deliver(job: Job, shared: Arc<Shared>) {
    let done = attempt(&job, &shared).await;
    // Every path that finishes a job wrote its final attempt record (and, for a replayed one,
    // its done-marker) already.
    let replay_done = job
        .replay
        .as_ref()
        .filter(|_| done == Done::Finished && shared.writer.dedup_topic.is_some())
        .map(|tag| done_hash(&tag.uid, &job.event.id));
    shared.complete(&job, done, replay_done);
}

async fn hold_off(job: &Job, shared: &Shared, wait: Duration) -> Done {
    let due_ms = now_ms().saturating_add(ms(wait));
    match shared.schedule(job, job.attempts, due_ms).await {
        Written::Acked => Done::Rescheduled { due_ms },
        Written::Refused(_) => Done::Finished,
    }
}

async fn attempt(job: &Job, shared: &Shared) -> Done {
    let endpoint = &job.endpoint;
    let permit = tokio::select! {
        p = endpoint.semaphore().acquire_owned() => p,
        () = shared.stop.cancelled() => return Done::Abandoned,
        () = job.source.revoked.cancelled() => return Done::Abandoned,
    };
    let longest = shared.writer.tiers.delay(shared.writer.tiers.longest());
    match endpoint.hold(longest) {
        Hold::Deliver => {}
        Hold::Postpone(wait) => return hold_off(job, shared, wait).await,
        Hold::DeadLetter { reason, message } => {
            shared.bury(job, reason, message, job.attempts, None).await;
            let rec = AttemptRecord {
                sent: false,
                attempt: job.attempts,
                outcome: "dead_letter".to_owned(),
                reason: Some(reason.to_owned()),
                error: Some(error_text(message)),
                dead_letter_reason: Some(reason.to_owned()),
                ..record(job, Timestamp::now())
            };
            shared.record(job, &rec, true).await;
            return Done::Finished;
        }
    }
    let Ok(settings) = endpoint.settings() else {
        return hold_off(job, shared, longest).await;
    };
    loop {
        match endpoint.take_token(Instant::now()) {
            Ok(()) => break,
            Err(wait) => tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shared.stop.cancelled() => return Done::Abandoned,
                () = job.source.revoked.cancelled() => return Done::Abandoned,
            },
        }
    }
    if let Err(rejected) = endpoint.circuit_acquire(Instant::now()) {
        let wait = rejected
            .retry_at
            .map_or(CIRCUIT_POSTPONE, |at| {
                at.saturating_duration_since(Instant::now())
            })
            .max(Duration::from_millis(100));
        return hold_off(job, shared, wait).await;
    }
    if shared.stop.is_cancelled() || job.source.revoked.is_cancelled() {
        return Done::Abandoned;
    }
    let started = Timestamp::now();
    let number = job.attempts + 1;
    let keys = endpoint.keys_at(started);
    let result = shared
        .deliverer
        .send(Request {
            url: &settings.url,
            headers: &settings.headers,
            event_id: &job.event.id,
            payload: &job.payload,
            keys: &keys,
            attempt: number,
            replay: job.replay.as_deref().map(|t| t.name.as_str()),
            timeout: settings.timeout,
        })
        .await;
    let decision = settings
        .policy
        .decide(number, &result.outcome, &mut rand::rng());
    // A receiver that answered 410 is disabled before the permit goes back: an attempt that
    // takes the permit next sees it disabled and sends nothing (disabling after the attempt
    // record's write let every permit send again meanwhile).
    if matches!(decision, Decision::Gone) && endpoint.disable(Timestamp::now()) {
        warn!(webhook = %endpoint.name, "receiver answered 410 Gone: Webhook disabled");
    }
    drop(permit);
    let healthy = match classify(&result.outcome) {
        Verdict::Delivered | Verdict::Gone => true,
        Verdict::Retryable(f) | Verdict::Permanent(f) => !f.counts_against_circuit(),
    };
    endpoint.attempt_finished(Instant::now(), healthy);
    let status = result.status();
    let reason = match decision {
        Decision::Delivered => None,
        Decision::Retry { failure, .. } | Decision::DeadLetter { failure, .. } => {
            Some(failure.reason())
        }
        Decision::Gone => Some("http_410"),
    };
    shared.metrics.attempt(
        &endpoint.name,
        decision.as_str(),
        status,
        result.latency.as_secs_f64(),
    );
    let next_attempt_at = match decision {
        Decision::Retry { after, .. } => Some(
            Timestamp::now()
                .checked_add(jiff::SignedDuration::try_from(after).unwrap_or_default())
                .unwrap_or_default()
                .to_string(),
        ),
        _ => None,
    };
    let dead_letter_reason = match decision {
        Decision::DeadLetter { reason, .. } => Some(reason.to_owned()),
        Decision::Gone => Some(GONE.to_owned()),
        Decision::Delivered | Decision::Retry { .. } => None,
    };
    let rec = AttemptRecord {
        attempt: number,
        status,
        latency_ms: u64::try_from(result.latency.as_millis()).unwrap_or(u64::MAX),
        outcome: decision.as_str().to_owned(),
        reason: reason.map(str::to_owned),
        error: reason.map(|_| error_text(&result.message)),
        next_attempt_at,
        dead_letter_reason,
        ..record(job, started)
    };
    shared
        .record(job, &rec, !matches!(decision, Decision::Retry { .. }))
        .await;
    endpoint.stats(|stats| match reason {
        None => stats.success(Timestamp::now()),
        Some(r) => stats.failure(Timestamp::now(), r, &result.message, status),
    });
    let latency_ms = u64::try_from(result.latency.as_millis()).unwrap_or(u64::MAX);
    match reason {
        Some(reason) => {
            info!(event_id = %job.event.id, webhook = %endpoint.name, attempt = number, outcome = decision.as_str(), reason, status, latency_ms, error = %result.message, "attempt failed")
        }
        None => {
            debug!(event_id = %job.event.id, webhook = %endpoint.name, attempt = number, latency_ms, "delivered")
        }
    }
    match decision {
        Decision::Delivered => Done::Finished,
        Decision::Retry { after, .. } => {
            let due_ms = now_ms().saturating_add(ms(after));
            match shared.schedule(job, number, due_ms).await {
                Written::Acked => Done::Rescheduled { due_ms },
                Written::Refused(_) => Done::Finished,
            }
        }
        Decision::DeadLetter { reason, .. } => {
            shared
                .bury(job, reason, &result.message, number, status)
                .await;
            Done::Finished
        }
        Decision::Gone => {
            shared
                .bury(job, GONE, &result.message, number, status)
                .await;
            Done::Finished
        }
    }
}

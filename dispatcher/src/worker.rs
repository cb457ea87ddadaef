//! The tasks the pipeline spawns, so that nothing slow ever runs in its loop:
//! a [`Job`] (one event for one `Webhook`) flows into [`deliver`], which waits
//! for the endpoint's in-flight slot, rate-limit token and circuit breaker,
//! makes the attempt, decides with the retry policy, and makes the result
//! durable — a retry record or a dead letter acknowledged by Kafka — before
//! it reports a [`Completion`] back. [`postpone`] writes a job to the retry
//! path without an attempt; [`forward`] re-parks or dead-letters a raw record.
//! Test sends ([`test_send`]) go straight to the URL and into the status.
//!
//! Every write to the retry and dead-letter topics is retried until Kafka
//! acknowledges it (`acks=all`, idempotent producer): an offset is settled
//! only after that, and a delivery whose write never succeeds is redelivered
//! after a restart. Attempt records are best effort and never awaited.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hookline_crds::TestStatus;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::delivery::{Deliverer, Request};
use crate::envelope::Event;
use crate::lanes::LaneKey;
use crate::metrics::Metrics;
use crate::retry::{Decision, Outcome};
use crate::retry_topics::{AttemptRecord, DeadLetter, RetryMeta, Tiers};
use crate::webhooks::{Availability, Endpoint};

/// How long a delivery waits when its signing key is missing.
pub const NO_KEYS_POSTPONE: Duration = Duration::from_secs(10);
/// How long a delivery waits when its endpoint's memory share is full.
pub const OVERFLOW_POSTPONE: Duration = Duration::from_secs(10);
/// How long a delivery waits for an open circuit without a known end.
pub const CIRCUIT_POSTPONE: Duration = Duration::from_secs(5);

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    Timestamp::now().as_millisecond()
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Where a record was read, and so what to settle when it is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The topic.
    pub topic: Arc<str>,
    /// The partition (also the partition of the events topic the event came
    /// from, and so of its lane).
    pub partition: i32,
    /// The offset.
    pub offset: i64,
    /// The assignment epoch it was read under.
    pub epoch: u64,
}

/// Counts a delivery held in memory, per endpoint and in all, while it lives.
pub struct Held {
    endpoint: Arc<Endpoint>,
    total: Arc<AtomicUsize>,
}

impl Held {
    /// Counts one more.
    pub fn new(endpoint: Arc<Endpoint>, total: Arc<AtomicUsize>) -> Held {
        endpoint.in_memory.fetch_add(1, Ordering::Relaxed);
        total.fetch_add(1, Ordering::Relaxed);
        Held { endpoint, total }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.endpoint.in_memory.fetch_sub(1, Ordering::Relaxed);
        self.total.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One event to deliver to one `Webhook`.
pub struct Job {
    /// The endpoint.
    pub endpoint: Arc<Endpoint>,
    /// The event, shared by every job of its record.
    pub event: Arc<Event>,
    /// Its Standard Webhooks body, shared likewise.
    pub payload: Bytes,
    /// Attempts already made.
    pub attempts: u32,
    /// What to settle when it is done.
    pub source: Source,
    /// Its offset in the events topic: its place in its lane.
    pub seq: i64,
    /// Its lane, for `PerKey` webhooks and keyed events.
    pub lane: Option<LaneKey>,
    /// Keeps the memory counters.
    pub held: Held,
}

/// What became of a job or record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    /// Delivered, dead-lettered or dropped: the lane moves on.
    Finished,
    /// The job that held its lane is in the retry path, due then.
    Rescheduled {
        /// Unix ms.
        due_ms: i64,
    },
    /// Written to the retry path without holding its lane (the lane knew).
    Postponed,
    /// Nothing durable happened (shutdown): do not settle.
    Abandoned,
}

/// A finished task, for the pipeline.
#[derive(Debug)]
pub struct Completion {
    /// What to settle.
    pub source: Source,
    /// The job's lane and seq, if it has one.
    pub lane: Option<(LaneKey, i64)>,
    /// The outcome.
    pub done: Done,
}

/// What every task needs.
pub struct Shared {
    /// Writes retry, dead-letter and attempt records.
    pub producer: FutureProducer,
    /// Makes attempts.
    pub deliverer: Deliverer,
    /// The retry tiers.
    pub tiers: Tiers,
    /// The events topic (for dead-letter origins).
    pub events_topic: Arc<str>,
    /// The dead-letter topic.
    pub dead_letter_topic: String,
    /// The attempts topic.
    pub attempts_topic: String,
    /// Metrics.
    pub metrics: Metrics,
    /// Where completions go.
    pub completions: mpsc::UnboundedSender<Completion>,
    /// Cancelled on shutdown: no new attempts start.
    pub stop: CancellationToken,
}

/// A record to write, owned so that it can be retried.
pub struct Out {
    /// The topic.
    pub topic: String,
    /// The partition, when it must be that one.
    pub partition: Option<i32>,
    /// The key.
    pub key: Option<Vec<u8>>,
    /// The value.
    pub value: Bytes,
    /// The headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The record timestamp (Unix ms).
    pub timestamp: Option<i64>,
}

impl Shared {
    /// Writes `out` and waits for Kafka's acknowledgement, retrying with
    /// backoff until it comes (the caller is aborted at the end of shutdown).
    pub async fn write(&self, mut out: Out) {
        let mut backoff = Duration::from_millis(200);
        loop {
            let mut headers = OwnedHeaders::new_with_capacity(out.headers.len());
            for (k, v) in &out.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v),
                });
            }
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&out.topic)
                .payload(&out.value[..])
                .headers(headers);
            if let Some(k) = &out.key {
                record = record.key(&k[..]);
            }
            if let Some(p) = out.partition {
                record = record.partition(p);
            }
            if let Some(ts) = out.timestamp {
                record = record.timestamp(ts);
            }
            match self.producer.send(record, Duration::from_secs(30)).await {
                Ok(_) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::UnknownPartition), _))
                    if out.partition.is_some() =>
                {
                    warn!(topic = %out.topic, "partition missing in the retry topic; letting Kafka choose (per-key order across replicas may suffer)");
                    out.partition = None;
                }
                Err((e, _)) => {
                    warn!(topic = %out.topic, error = %e, "writing to Kafka failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    /// Writes `job` to the retry path, due at `due_ms`, after `attempts` attempts.
    pub async fn schedule(&self, job: &Job, attempts: u32, due_ms: i64) {
        let now = now_ms();
        let tier = self.tiers.for_remaining(Duration::from_millis(
            u64::try_from(due_ms - now).unwrap_or(0),
        ));
        let meta = RetryMeta {
            webhook: job.endpoint.name.to_string(),
            attempts,
            due_ms,
            seq: job.seq,
        };
        let out = Out {
            topic: self.tiers.topic(tier).to_owned(),
            partition: Some(job.source.partition),
            key: job.event.key.as_ref().map(|k| k.as_bytes().to_vec()),
            value: job.event.to_envelope(),
            headers: meta
                .headers()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.into_bytes()))
                .collect(),
            timestamp: Some(now),
        };
        self.write(out).await;
        self.metrics
            .retry(&job.endpoint.name, attempts > job.attempts);
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
            topic: self.events_topic.to_string(),
            partition: job.source.partition,
            offset: job.seq,
            webhook: Some(job.endpoint.name.to_string()),
            attempts: Some(attempts),
            status,
        };
        let out = Out {
            topic: self.dead_letter_topic.clone(),
            partition: None,
            key: job.event.key.as_ref().map(|k| k.as_bytes().to_vec()),
            value: job.event.to_envelope(),
            headers: dl
                .headers(Timestamp::now())
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.into_bytes()))
                .collect(),
            timestamp: None,
        };
        self.write(out).await;
        self.metrics.dead_letter(&job.endpoint.name, reason);
        job.endpoint.stats.lock().expect("stats lock").dead_letter();
        info!(event_id = %job.event.id, webhook = %job.endpoint.name, reason, "dead-lettered");
    }

    fn record_attempt(&self, record: &AttemptRecord) {
        let Ok(value) = serde_json::to_vec(record) else {
            return;
        };
        let fr: FutureRecord<'_, str, [u8]> = FutureRecord::to(&self.attempts_topic)
            .key(record.event_id.as_str())
            .payload(&value[..]);
        if let Err((e, _)) = self.producer.send_result(fr) {
            debug!(error = %e, "attempt record dropped");
        }
    }

    fn complete(&self, job: &Job, done: Done) {
        let _ = self.completions.send(Completion {
            source: job.source.clone(),
            lane: job.lane.clone().map(|l| (l, job.seq)),
            done,
        });
    }
}

/// Writes `job` to the retry path due at `due_ms` without an attempt, and
/// reports [`Done::Postponed`] (the lane already counts it as pending).
pub async fn postpone(job: Job, due_ms: i64, shared: Arc<Shared>) {
    shared.schedule(&job, job.attempts, due_ms).await;
    shared.complete(&job, Done::Postponed);
}

/// Writes a record as it is (re-park in another tier, or dead letter of an
/// unparsable record) and reports [`Done::Finished`] for `source`.
pub async fn forward(out: Out, source: Source, shared: Arc<Shared>) {
    shared.write(out).await;
    let _ = shared.completions.send(Completion {
        source,
        lane: None,
        done: Done::Finished,
    });
}

/// Delivers `job` and reports what became of it.
pub async fn deliver(job: Job, shared: Arc<Shared>) {
    let done = attempt(&job, &shared).await;
    shared.complete(&job, done);
}

async fn hold_off(job: &Job, shared: &Shared, wait: Duration) -> Done {
    let due_ms = now_ms().saturating_add(ms(wait));
    shared.schedule(job, job.attempts, due_ms).await;
    Done::Rescheduled { due_ms }
}

async fn attempt(job: &Job, shared: &Shared) -> Done {
    let endpoint = &job.endpoint;
    let permit = tokio::select! {
        p = endpoint.semaphore().acquire_owned() => p,
        () = shared.stop.cancelled() => return Done::Abandoned,
    };
    let longest = shared.tiers.delay(shared.tiers.longest());
    match endpoint.availability() {
        Availability::Ready => {}
        Availability::Paused | Availability::Invalid => {
            return hold_off(job, shared, longest).await;
        }
        Availability::NoKeys => return hold_off(job, shared, NO_KEYS_POSTPONE).await,
        Availability::Disabled => {
            shared
                .bury(
                    job,
                    "webhook_disabled",
                    "the Webhook was disabled after 410 Gone",
                    job.attempts,
                    None,
                )
                .await;
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
    if shared.stop.is_cancelled() {
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
            timeout: settings.timeout,
        })
        .await;
    drop(permit);
    endpoint.attempt_finished(Instant::now());
    let verdict = crate::retry::classify(&result.outcome);
    let healthy = match verdict {
        crate::retry::Verdict::Delivered => true,
        crate::retry::Verdict::Retryable(f) | crate::retry::Verdict::Permanent(f) => {
            !f.counts_against_circuit()
        }
        crate::retry::Verdict::Gone => true,
    };
    endpoint.circuit_record(Instant::now(), healthy);
    let decision = settings
        .policy
        .decide(number, &result.outcome, &mut rand::rng());
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
    shared.record_attempt(&AttemptRecord {
        event_id: job.event.id.clone(),
        event_type: job.event.event_type.clone(),
        webhook: endpoint.name.to_string(),
        attempt: number,
        status,
        latency_ms: u64::try_from(result.latency.as_millis()).unwrap_or(u64::MAX),
        outcome: decision.as_str().to_owned(),
        reason: reason.map(str::to_owned),
        time: started.to_string(),
    });
    {
        let mut stats = endpoint.stats.lock().expect("stats lock");
        match reason {
            None => stats.success(Timestamp::now()),
            Some(r) => stats.failure(Timestamp::now(), r, &result.message, status),
        }
    }
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
            shared.schedule(job, number, due_ms).await;
            Done::Rescheduled { due_ms }
        }
        Decision::DeadLetter { reason, .. } => {
            shared
                .bury(job, reason, &result.message, number, status)
                .await;
            Done::Finished
        }
        Decision::Gone => {
            if endpoint.disable(Timestamp::now()) {
                warn!(webhook = %endpoint.name, "receiver answered 410 Gone: Webhook disabled");
            }
            shared
                .bury(job, crate::retry::GONE, &result.message, number, status)
                .await;
            Done::Finished
        }
    }
}

/// Sends the signed `webhook.test` event `test_<nonce>` to one endpoint and
/// records the result in its status. Ignores pause, circuit and rate limit:
/// a test is an explicit request to reach the URL now.
pub async fn test_send(endpoint: Arc<Endpoint>, nonce: String, deliverer: Deliverer) {
    let started = Timestamp::now();
    let id: String = format!("test_{nonce}")
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(255)
        .collect();
    let data = serde_json::json!({"webhook": endpoint.name.as_ref(), "nonce": nonce});
    let event = Event {
        id,
        event_type: "webhook.test".to_owned(),
        timestamp: started,
        data: serde_json::value::to_raw_value(&data).expect("JSON"),
        key: None,
        format: crate::envelope::Format::Envelope,
    };
    let payload = event.payload();
    // A Webhook created with the annotation is seen before its Secret is read.
    for _ in 0..50 {
        if endpoint.has_keys() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let keys = endpoint.keys_at(started);
    let result = match endpoint.settings() {
        Err(e) => Err(format!("the spec cannot be used: {e}")),
        Ok(_) if keys.is_empty() => Err("no signing key available yet".to_owned()),
        Ok(settings) => Ok(deliverer
            .send(Request {
                url: &settings.url,
                headers: &settings.headers,
                event_id: &event.id,
                payload: &payload,
                keys: &keys,
                attempt: 1,
                timeout: settings.timeout,
            })
            .await),
    };
    let status = match &result {
        Ok(a) => TestStatus {
            nonce,
            time: Time(started),
            success: matches!(
                a.outcome,
                Outcome::Response {
                    status: 200..=299,
                    ..
                }
            ),
            status_code: a.status().map(i32::from),
            latency_ms: Some(i64::try_from(a.latency.as_millis()).unwrap_or(i64::MAX)),
            error: (!matches!(
                a.outcome,
                Outcome::Response {
                    status: 200..=299,
                    ..
                }
            ))
            .then(|| a.message.clone()),
        },
        Err(e) => TestStatus {
            nonce,
            time: Time(started),
            success: false,
            status_code: None,
            latency_ms: None,
            error: Some(e.clone()),
        },
    };
    info!(webhook = %endpoint.name, success = status.success, "test send");
    endpoint.stats.lock().expect("stats lock").test(status);
}

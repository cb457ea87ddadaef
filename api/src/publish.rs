//! Publishing events over HTTP: an event posted to `…/events` is checked by the very rules the
//! dispatcher applies to a Kafka record ([`hookline_core::envelope::parse`]), written to the
//! tenant's events topic as Hookline's envelope keyed by its ordering key, and answered `202`
//! only once Kafka acknowledged it with `acks=all` ([`Publisher::send`]).
//!
//! # Guarantees
//! - A `202` means the record is in Kafka, replicated as the topic requires.
//! - A record is never acknowledged after its request was answered `503`: the producer gives up
//!   on a record ([`Publisher`]'s `message.timeout.ms`) no later than the request does. What
//!   remains is the usual at-least-once edge: Kafka may have written a record whose
//!   acknowledgement was lost, so a client retrying after a `503` may publish it twice — with
//!   the same event id, which receivers dedupe on (`webhook-id`).
//! - A batch is all-or-nothing for validation (one bad event: nothing is written) and
//!   all-or-something for durability: `202` only when every record was acknowledged; after a
//!   `503` some may be written, and re-sending the batch with the same ids is the way to finish.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::model::PublishEvent;
use crate::problem::Problem;
use axum::http::StatusCode;
use hookline_core::envelope::{self, EnvelopeError, Limits, Record};
use hookline_core::ratelimit::RateLimiter;
use jiff::Timestamp;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// One record ready to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The event id.
    pub id: String,
    /// The record key (the ordering key).
    pub key: String,
    /// The record value (Hookline's envelope).
    pub value: Vec<u8>,
}

/// The field an envelope error is about.
fn field_of(e: &EnvelopeError) -> &'static str {
    match e {
        EnvelopeError::InvalidType(_) => "type",
        EnvelopeError::InvalidId(_) => "id",
        EnvelopeError::InvalidTimestamp(_) => "timestamp",
        EnvelopeError::MissingField(f) => f,
        EnvelopeError::InvalidField { field, .. } => field,
        _ => "data",
    }
}

/// The record of `event`: its id is the body's, else `idempotency_key`, else a new one; its
/// key the body's, else the id; its timestamp the body's, else `now`. `prefix` names the event
/// in errors (`""` for one event, `events[3].` in a batch).
///
/// # Errors
/// A 400 naming the field the dispatcher would refuse, or a 413 when the record is larger than
/// `limits`.
pub fn prepare(
    event: PublishEvent,
    idempotency_key: Option<&str>,
    now: Timestamp,
    limits: &Limits,
    prefix: &str,
) -> Result<Outgoing, Problem> {
    let id = event
        .id
        .or_else(|| idempotency_key.map(str::to_owned))
        .unwrap_or_else(|| format!("evt_{}", uuid::Uuid::new_v4().simple()));
    let key = event.key.unwrap_or_else(|| id.clone());
    let timestamp = event.timestamp.unwrap_or_else(|| now.to_string());
    // The envelope the dispatcher reads, written from the parsed fields; `data` byte for byte.
    #[derive(serde::Serialize)]
    struct Envelope<'a> {
        id: &'a str,
        #[serde(rename = "type")]
        event_type: &'a str,
        timestamp: &'a str,
        data: &'a serde_json::value::RawValue,
    }
    let value = serde_json::to_vec(&Envelope {
        id: &id,
        event_type: &event.event_type,
        timestamp: &timestamp,
        data: &event.data,
    })
    .map_err(|e| Problem::field(&format!("{prefix}data"), e.to_string()))?;
    let record = Record {
        key: Some(key.as_bytes()),
        value: Some(&value),
        headers: &[],
        timestamp: None,
    };
    match envelope::parse(&record, limits) {
        Ok(_) => Ok(Outgoing { id, key, value }),
        Err(e @ EnvelopeError::TooLarge { .. }) => Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "event-too-large",
            format!("{prefix}event: {e}"),
        )),
        Err(e) => Err(Problem::field(
            &format!("{prefix}{}", field_of(&e)),
            e.to_string(),
        )),
    }
}

/// Writes events to tenants' topics and limits each tenant's rate.
pub struct Publisher {
    producer: FutureProducer,
    timeout: Duration,
    rate: f64,
    limiters: Mutex<HashMap<String, RateLimiter>>,
    /// Largest record accepted.
    pub limits: Limits,
}

impl Publisher {
    /// A publisher with the Kafka client `settings` (see [`hookline_core::kafka::producer`]);
    /// a record not acknowledged within `timeout` fails; each tenant may publish `rate` events
    /// per second (bursts of one second's worth).
    ///
    /// # Errors
    /// When the producer cannot be created.
    pub fn new(
        settings: hookline_core::kafka::Settings,
        timeout: Duration,
        rate: f64,
        limits: Limits,
    ) -> anyhow::Result<Publisher> {
        let mut config = ClientConfig::new();
        for (k, v) in settings {
            config.set(k, v);
        }
        // Never acknowledged after the request gave up (see the module docs).
        config.set("message.timeout.ms", timeout.as_millis().to_string());
        config.set("linger.ms", "2");
        Ok(Publisher {
            producer: config.create()?,
            timeout,
            rate,
            limiters: Mutex::new(HashMap::new()),
            limits,
        })
    }

    /// Takes `n` events of `tenant`'s rate.
    ///
    /// # Errors
    /// A 429 with how long to wait.
    pub fn admit(&self, tenant: &str, n: usize) -> Result<(), Problem> {
        let now = Instant::now();
        let mut limiters = self.limiters.lock().expect("rate limiters");
        let burst = u32::try_from(self.rate.ceil() as u64)
            .unwrap_or(u32::MAX)
            .max(500);
        let limiter = match limiters.get_mut(tenant) {
            Some(l) => l,
            None => {
                let l = RateLimiter::new(self.rate, burst, now)
                    .map_err(|_| Problem::unavailable("the publishing rate is misconfigured"))?;
                limiters.entry(tenant.to_owned()).or_insert(l)
            }
        };
        for _ in 0..n {
            if let Err(wait) = limiter.try_acquire(now) {
                let mut p = Problem::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate-limited",
                    format!(
                        "tenant {tenant:?} publishes more than {} events per second",
                        self.rate
                    ),
                );
                p.retry_after = Some(wait.as_secs().max(1));
                return Err(p);
            }
        }
        Ok(())
    }

    /// Writes `records` to `topic` and waits for every acknowledgement.
    ///
    /// # Errors
    /// A 503 with `Retry-After` when Kafka does not acknowledge them all within the timeout.
    pub async fn send(&self, topic: &str, records: &[Outgoing]) -> Result<(), Problem> {
        let sends = records.iter().map(|r| {
            let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic)
                .key(r.key.as_str())
                .payload(r.value.as_slice());
            self.producer.send(record, self.timeout)
        });
        let results = tokio::time::timeout(
            self.timeout + Duration::from_secs(1),
            futures::future::join_all(sends),
        )
        .await
        .map_err(|_| Problem::unavailable("Kafka did not acknowledge the events in time"))?;
        for r in results {
            match r {
                Ok(_) => {}
                Err((
                    KafkaError::MessageProduction(
                        RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic,
                    ),
                    _,
                )) => {
                    return Err(Problem::new(
                        StatusCode::CONFLICT,
                        "no-events-topic",
                        format!(
                            "topic {topic:?} does not exist: a tenant's topics are made with its first Webhook"
                        ),
                    ));
                }
                Err((e, _)) => {
                    return Err(Problem::unavailable(format!(
                        "Kafka did not take the event: {e}"
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::json;

    fn event(v: serde_json::Value) -> PublishEvent {
        serde_json::from_str(&v.to_string()).unwrap()
    }

    fn now() -> Timestamp {
        "2026-12-01T10:00:00Z".parse().unwrap()
    }

    #[test]
    fn ids_keys_and_times_are_filled_in_and_the_record_reads_back_as_the_dispatcher_reads_it() {
        let out = prepare(
            event(json!({"type": "transaction.approved", "data": {"tx": 1}})),
            Some("idem-1"),
            now(),
            &Limits::default(),
            "",
        )
        .unwrap();
        assert_eq!((out.id.as_str(), out.key.as_str()), ("idem-1", "idem-1"));
        let parsed = envelope::parse(
            &Record {
                key: Some(out.key.as_bytes()),
                value: Some(&out.value),
                ..Record::default()
            },
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(parsed.timestamp, now());
        assert_eq!(parsed.data.get(), r#"{"tx":1}"#);
        let own = prepare(
            event(json!({"id": "e1", "key": "tx-9", "type": "t", "data": null})),
            Some("ignored"),
            now(),
            &Limits::default(),
            "",
        )
        .unwrap();
        assert_eq!((own.id.as_str(), own.key.as_str()), ("e1", "tx-9"));
        let generated = prepare(
            event(json!({"type": "t", "data": 1})),
            None,
            now(),
            &Limits::default(),
            "",
        )
        .unwrap();
        assert!(generated.id.starts_with("evt_"));
    }

    #[test]
    fn data_is_written_byte_for_byte_in_the_envelope_the_dispatcher_reads() {
        // Key order and spacing of `data` are the producer's: the signature covers these bytes.
        let body = r#"{"type":"t","id":"e1","data": {"z": 1,  "a": [true, null]}}"#;
        let event: PublishEvent = serde_json::from_str(body).unwrap();
        let out = prepare(event, None, now(), &Limits::default(), "").unwrap();
        assert_eq!(
            std::str::from_utf8(&out.value).unwrap(),
            r#"{"id":"e1","type":"t","timestamp":"2026-12-01T10:00:00Z","data":{"z": 1,  "a": [true, null]}}"#
        );
        let missing = serde_json::from_str::<PublishEvent>(r#"{"type":"t"}"#).unwrap_err();
        assert!(
            missing.to_string().contains("missing field `data`"),
            "{missing}"
        );
    }

    #[test]
    fn what_the_dispatcher_would_refuse_is_refused_naming_the_field() {
        let bad = |v: serde_json::Value| {
            prepare(event(v), None, now(), &Limits::default(), "events[2].").unwrap_err()
        };
        let p = bad(json!({"type": "no spaces allowed", "data": {}}));
        assert_eq!(
            (p.status, p.errors[0].field.as_str()),
            (400, "events[2].type")
        );
        let p = bad(json!({"type": "t", "id": "has space", "data": {}}));
        assert_eq!(p.errors[0].field, "events[2].id");
        let p = bad(json!({"type": "t", "timestamp": "yesterday", "data": {}}));
        assert_eq!(p.errors[0].field, "events[2].timestamp");
        let small = Limits {
            max_record_bytes: 100,
        };
        let p = prepare(
            event(json!({"type": "t", "data": "x".repeat(200)})),
            None,
            now(),
            &small,
            "",
        )
        .unwrap_err();
        assert_eq!(p.status, 413);
    }
}

//! Records into jobs: an events record is parsed and fanned out to the
//! endpoints whose patterns match its type (or dead-lettered as it was, with
//! the reason, when it cannot be parsed); a retry record is re-parked in
//! another tier when its due time is further off, dropped when its `Webhook`
//! is gone, or turned into a job for its one endpoint. Every record is
//! tracked in its partition's [`OffsetTracker`](crate::ordering::OffsetTracker)
//! with the number of jobs it fanned out to.

use std::sync::Arc;

use rdkafka::message::{Headers, Message, OwnedMessage};
use tracing::{debug, info};

use super::Pipeline;
use crate::envelope::{self, Event};
use crate::retry_topics::{DeadLetter, RetryMeta, Step};
use crate::webhooks::Endpoint;
use crate::worker::{self, Held, Job, Out, Source, now_ms};

pub(super) fn header_pairs(msg: &OwnedMessage) -> Vec<(&str, &[u8])> {
    msg.headers()
        .map(|hs| {
            hs.iter()
                .map(|h| (h.key, h.value.unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn record<'a>(
    msg: &'a OwnedMessage,
    headers: &'a [(&'a str, &'a [u8])],
) -> envelope::Record<'a> {
    envelope::Record {
        key: msg.key(),
        value: msg.payload(),
        headers,
        timestamp: msg
            .timestamp()
            .to_millis()
            .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok()),
    }
}

impl Pipeline {
    pub(super) fn on_event(&mut self, msg: &OwnedMessage, source: Source) {
        let headers = header_pairs(msg);
        let event = match envelope::parse(&record(msg, &headers), &self.p.limits) {
            Ok(event) => Arc::new(event),
            Err(e) => {
                self.p.shared.metrics.record("malformed");
                info!(topic = %source.topic, partition = source.partition, offset = source.offset, reason = e.reason(), "malformed record dead-lettered");
                return self.bury_raw(msg, &headers, source, e.reason(), &e.to_string(), None);
            }
        };
        self.p.shared.metrics.record("event");
        let targets: Vec<Arc<Endpoint>> = self
            .p
            .registry
            .snapshot()
            .into_iter()
            .filter(|e| {
                !e.is_disabled()
                    && e.settings()
                        .is_ok_and(|s| s.matcher.matches(&event.event_type))
            })
            .collect();
        self.track(&source, targets.len());
        debug!(event_id = %event.id, event_type = %event.event_type, webhooks = targets.len(), "event");
        let payload = event.payload();
        for endpoint in targets {
            let job = self.job(
                endpoint,
                event.clone(),
                payload.clone(),
                0,
                source.clone(),
                source.offset,
            );
            self.route(job, false);
        }
    }

    pub(super) fn job(
        &self,
        endpoint: Arc<Endpoint>,
        event: Arc<Event>,
        payload: bytes::Bytes,
        attempts: u32,
        source: Source,
        seq: i64,
    ) -> Job {
        let per_key = endpoint.settings().is_ok_and(|s| s.per_key);
        let lane = event
            .key
            .clone()
            .filter(|_| per_key)
            .map(|k| (endpoint.name.clone(), k));
        Job {
            held: Held::new(endpoint.clone(), self.total.clone()),
            endpoint,
            event,
            payload,
            attempts,
            source,
            seq,
            lane,
        }
    }

    pub(super) fn on_retry(&mut self, msg: &OwnedMessage, source: Source, tier: usize, step: Step) {
        let headers = header_pairs(msg);
        let meta = match RetryMeta::from_headers(&headers) {
            Ok(m) => m,
            Err(e) => {
                return self.bury_raw(
                    msg,
                    &headers,
                    source,
                    "invalid_retry_record",
                    &e.to_string(),
                    None,
                );
            }
        };
        if let Step::Repark(to) = step {
            self.p.shared.metrics.record("repark");
            let out = Out {
                topic: self.p.shared.tiers.topic(to).to_owned(),
                partition: Some(source.partition),
                key: msg.key().map(<[u8]>::to_vec),
                value: bytes::Bytes::copy_from_slice(msg.payload().unwrap_or_default()),
                headers: headers
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), v.to_vec()))
                    .collect(),
                timestamp: Some(now_ms()),
            };
            self.track(&source, 1);
            self.tasks
                .spawn(worker::forward(out, source, self.p.shared.clone()));
            return;
        }
        debug!(tier, webhook = %meta.webhook, seq = meta.seq, "retry due");
        let Some(endpoint) = self.p.registry.get(&meta.webhook) else {
            self.p.shared.metrics.record("orphaned");
            info!(webhook = %meta.webhook, "retry for a Webhook that no longer exists dropped");
            self.track(&source, 0);
            return;
        };
        let event = match envelope::parse(&record(msg, &headers), &self.p.limits) {
            Ok(event) => Arc::new(event),
            Err(e) => {
                return self.bury_raw(
                    msg,
                    &headers,
                    source,
                    e.reason(),
                    &e.to_string(),
                    Some(meta.webhook),
                );
            }
        };
        self.p.shared.metrics.record("retry");
        self.track(&source, 1);
        let payload = event.payload();
        let job = self.job(endpoint, event, payload, meta.attempts, source, meta.seq);
        self.route(job, true);
    }

    pub(super) fn bury_raw(
        &mut self,
        msg: &OwnedMessage,
        headers: &[(&str, &[u8])],
        source: Source,
        reason: &str,
        error: &str,
        webhook: Option<String>,
    ) {
        self.p
            .shared
            .metrics
            .dead_letter(webhook.as_deref().unwrap_or(""), reason);
        let dl = DeadLetter {
            reason: reason.to_owned(),
            error: error.to_owned(),
            topic: source.topic.to_string(),
            partition: source.partition,
            offset: source.offset,
            webhook,
            attempts: None,
            status: None,
        };
        let mut hs: Vec<(String, Vec<u8>)> = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.to_vec()))
            .collect();
        hs.extend(
            dl.headers(jiff::Timestamp::now())
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.into_bytes())),
        );
        let out = Out {
            topic: self.p.shared.dead_letter_topic.clone(),
            partition: None,
            key: msg.key().map(<[u8]>::to_vec),
            value: bytes::Bytes::copy_from_slice(msg.payload().unwrap_or_default()),
            headers: hs,
            timestamp: None,
        };
        self.track(&source, 1);
        self.tasks
            .spawn(worker::forward(out, source, self.p.shared.clone()));
    }
}

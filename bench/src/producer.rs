//! The load: events flow from [`event`] (a Hookline JSON envelope of a fixed
//! size whose `data` carries the produce time `"t"` on the bench
//! [`clock`](crate::clock) and the sequence number) through a librdkafka
//! producer with `acks=all` and idempotence into the events topic, either as
//! fast as the producer's queue takes them ([`produce_max`]) or open-loop at a
//! fixed rate ([`produce_rate`]): each event has a due time `start + i/rate`,
//! its `"t"` is that due time, and a late producer sends what is due at once
//! rather than slowing down, so a stall shows up as latency and is never
//! hidden (no coordinated omission). Both run on a thread of their own
//! (`bench-producer`), so their CPU is told apart from the sink's.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer,
};
use serde::Serialize;

use crate::clock;

/// Event timestamp written into every envelope (the dispatcher passes it on).
const EVENT_TIME: &str = "2026-01-01T00:00:00Z";

/// What events look like.
#[derive(Debug, Clone)]
pub struct Shape {
    /// Event id prefix; the id is `<prefix><seq>`.
    pub prefix: String,
    /// Event types, used round-robin by sequence number.
    pub types: Vec<String>,
    /// Size of the record value in bytes (padded up to it).
    pub value_bytes: usize,
    /// Distinct ordering keys, used round-robin (`k<seq % keys>`).
    pub keys: usize,
}

/// The record value of event `seq` produced at `t_us`, into `buf`.
pub fn event(shape: &Shape, seq: usize, t_us: u64, buf: &mut Vec<u8>) {
    use std::io::Write as _;
    buf.clear();
    let ty = &shape.types[seq % shape.types.len()];
    let _ = write!(
        buf,
        r#"{{"id":"{}{seq}","type":"{ty}","timestamp":"{EVENT_TIME}","data":{{"t":{t_us},"seq":{seq},"pad":""#,
        shape.prefix
    );
    let tail = b"\"}}";
    let pad = shape.value_bytes.saturating_sub(buf.len() + tail.len());
    buf.resize(buf.len() + pad, b'x');
    buf.extend_from_slice(tail);
}

/// Counts acknowledgements.
#[derive(Default)]
pub struct Counting {
    acked: AtomicU64,
    failed: AtomicU64,
}

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, (): ()) {
        match result {
            Ok(_) => self.acked.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// An `acks=all`, idempotent producer.
pub struct Producer {
    inner: ThreadedProducer<Counting>,
}

/// What a production run did.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Produced {
    /// Records handed to the producer.
    pub sent: usize,
    /// Records Kafka acknowledged.
    pub acked: u64,
    /// Records that failed.
    pub failed: u64,
    /// From the first send to the last acknowledgement.
    pub elapsed_s: f64,
    /// Acknowledged records per second.
    pub rate: f64,
    /// How far behind its schedule the open-loop producer fell at worst (µs).
    pub max_lag_us: u64,
}

impl Producer {
    /// A producer to `bootstrap` with `linger.ms = linger_ms`.
    ///
    /// # Errors
    /// When librdkafka refuses the configuration.
    pub fn new(bootstrap: &str, linger_ms: u32) -> anyhow::Result<Producer> {
        let inner = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", linger_ms.to_string())
            .set("compression.type", "none")
            .set("queue.buffering.max.messages", "500000")
            .set("queue.buffering.max.kbytes", "262144")
            .set("message.timeout.ms", "60000")
            .create_with_context(Counting::default())?;
        Ok(Producer { inner })
    }

    fn acked(&self) -> u64 {
        self.inner.context().acked.load(Ordering::Relaxed)
    }

    fn failed(&self) -> u64 {
        self.inner.context().failed.load(Ordering::Relaxed)
    }

    /// Enqueues one record, waiting while the local queue is full.
    fn send(&self, topic: &str, key: &str, value: &[u8], deadline: Instant) -> bool {
        let mut record: BaseRecord<'_, str, [u8]> = BaseRecord::to(topic).key(key).payload(value);
        loop {
            match self.inner.send(record) {
                Ok(()) => return true,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    if Instant::now() > deadline {
                        return false;
                    }
                    record = r;
                    std::thread::sleep(Duration::from_micros(500));
                }
                Err(_) => {
                    self.inner.context().failed.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
            }
        }
    }

    fn finish(
        &self,
        sent: usize,
        acked0: u64,
        failed0: u64,
        started: Instant,
        max_lag_us: u64,
    ) -> Produced {
        let _ = self.inner.flush(Duration::from_secs(60));
        let elapsed_s = started.elapsed().as_secs_f64();
        let acked = self.acked() - acked0;
        Produced {
            sent,
            acked,
            failed: self.failed() - failed0,
            elapsed_s,
            rate: acked as f64 / elapsed_s.max(1e-6),
            max_lag_us,
        }
    }
}

/// Produces events `from..from + n` of `shape` to `topic` as fast as
/// possible, for at most `limit`; waits for every acknowledgement.
pub fn produce_max(
    p: &Producer,
    topic: &str,
    shape: &Shape,
    from: usize,
    n: usize,
    limit: Duration,
) -> Produced {
    let (acked0, failed0) = (p.acked(), p.failed());
    let started = Instant::now();
    let deadline = started + limit;
    let mut buf = Vec::with_capacity(shape.value_bytes + 64);
    let mut sent = 0;
    for seq in from..from + n {
        event(shape, seq, clock::now_us(), &mut buf);
        let key = format!("k{}", seq % shape.keys.max(1));
        if !p.send(topic, &key, &buf, deadline) {
            break;
        }
        sent += 1;
        if Instant::now() > deadline {
            break;
        }
    }
    p.finish(sent, acked0, failed0, started, 0)
}

/// Produces ready-made `records` (key, value) to `topic` as fast as the producer's queue takes
/// them, for at most `limit`; waits for every acknowledgement.
pub fn produce_records(
    p: &Producer,
    topic: &str,
    records: impl Iterator<Item = (String, Vec<u8>)>,
    limit: Duration,
) -> Produced {
    let (acked0, failed0) = (p.acked(), p.failed());
    let started = Instant::now();
    let deadline = started + limit;
    let mut sent = 0;
    for (key, value) in records {
        if !p.send(topic, &key, &value, deadline) || Instant::now() > deadline {
            break;
        }
        sent += 1;
    }
    p.finish(sent, acked0, failed0, started, 0)
}

/// Produces events `from..from + n` of `shape` to `topic` open-loop at
/// `rate` per second (stopping at `limit`); waits for every acknowledgement.
pub fn produce_rate(
    p: &Producer,
    topic: &str,
    shape: &Shape,
    from: usize,
    n: usize,
    rate: f64,
    limit: Duration,
) -> Produced {
    let (acked0, failed0) = (p.acked(), p.failed());
    let started = Instant::now();
    let start_us = clock::now_us();
    let deadline = started + limit;
    let mut buf = Vec::with_capacity(shape.value_bytes + 64);
    let (mut sent, mut max_lag_us) = (0, 0u64);
    for i in 0..n {
        let due_us = start_us + (i as f64 * 1e6 / rate) as u64;
        let now = clock::now_us();
        if now < due_us {
            std::thread::sleep(Duration::from_micros(due_us - now));
        } else {
            max_lag_us = max_lag_us.max(now - due_us);
        }
        let seq = from + i;
        event(shape, seq, due_us, &mut buf);
        let key = format!("k{}", seq % shape.keys.max(1));
        if !p.send(topic, &key, &buf, deadline) || Instant::now() > deadline {
            break;
        }
        sent += 1;
    }
    p.finish(sent, acked0, failed0, started, max_lag_us)
}

/// Runs `f` on a thread named `bench-producer` and awaits its result.
///
/// # Errors
/// When the thread cannot start or panics.
pub async fn on_thread<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("bench-producer".into())
        .spawn(move || {
            let _ = tx.send(f());
        })?;
    Ok(rx.await?)
}

/// A shared producer.
pub type Shared = Arc<Producer>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_have_the_requested_size_and_carry_their_produce_time() {
        let shape = Shape {
            prefix: "r1-e".into(),
            types: vec!["bench.a".into(), "bench.b".into()],
            value_bytes: 1024,
            keys: 10,
        };
        let mut buf = Vec::new();
        event(&shape, 7, 123_456, &mut buf);
        assert_eq!(buf.len(), 1024);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["id"], "r1-e7");
        assert_eq!(v["type"], "bench.b");
        assert_eq!(v["data"]["t"], 123_456);
        assert_eq!(crate::sink::embedded_t(&buf), Some(123_456));
    }
}

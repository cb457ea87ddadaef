//! The load of the publishing benchmark: events of a fixed size flow from a [`Sender`] — HTTP
//! `POST`s to `hookline-api` ([`Http`]) or a raw librdkafka producer with the API's own producer
//! settings ([`Kafka`], the baseline) — either closed loop ([`closed`]: `concurrency` workers,
//! each sending its next request when the previous one was answered, bounded by time and count)
//! or open loop ([`open`]: request *i* is due at `start + i / rate` and is sent then whatever
//! happened before; its latency is counted from the due time, so a stall shows up as latency and
//! is never hidden by coordinated omission). Every event carries its due or send time as `"t"`
//! on the bench clock, so the sink can measure publish → receive latency.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hookline_bench::clock;
use hookline_bench::stats::{self, Latency};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;

/// The event type of every event.
pub const EVENT_TYPE: &str = "bench.event";
/// The timestamp written into every event (the API keeps a given one).
const EVENT_TIME: &str = "2026-01-01T00:00:00Z";

/// Appends event `<prefix><seq>` as published: `{"id","type","timestamp","data":{"t","seq","pad"}}`,
/// padded to `bytes` — which is also the record value the API writes for it (the API re-serialises
/// the same four fields), and the value the raw producer sends.
pub fn event(prefix: &str, seq: usize, t_us: u64, bytes: usize, buf: &mut Vec<u8>) {
    use std::io::Write as _;
    let start = buf.len();
    let _ = write!(
        buf,
        r#"{{"id":"{prefix}{seq}","type":"{EVENT_TYPE}","timestamp":"{EVENT_TIME}","data":{{"t":{t_us},"seq":{seq},"pad":""#
    );
    let tail = b"\"}}";
    let len = buf.len() - start;
    buf.resize(buf.len() + bytes.saturating_sub(len + tail.len()), b'x');
    buf.extend_from_slice(tail);
}

/// What one request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted (202, or every record acknowledged).
    Accepted,
    /// Answered with another status.
    Status(u16),
    /// No answer (connection error, Kafka error).
    Failed,
}

/// Sends `n` events starting at sequence number `first` in one request (a batch when `n > 1`).
pub trait Sender: Send + Sync + 'static {
    /// Sends them; every event's `"t"` is `t_us`.
    fn send(&self, first: usize, n: usize, t_us: u64) -> impl Future<Output = Outcome> + Send;
}

/// Idle keep-alive HTTP/1.1 connections to one address, shared by the workers of every load.
///
/// The client is hyper's connection API, not reqwest: the load generator shares the two cores
/// with the API and Kafka, and reqwest's pool, URL parsing and header map cost ~39 µs of CPU per
/// request (measured 2026-12-01), a third of the whole path's. A request here is a prebuilt
/// header set and one write; what the API does per request is unchanged.
pub struct Conns {
    addr: std::net::SocketAddr,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

impl Conns {
    /// Connections to the host and port of `base` (`http://127.0.0.1:<port>`).
    ///
    /// # Errors
    /// When `base` has no numeric `host:port`.
    pub fn new(base: &str) -> anyhow::Result<Arc<Conns>> {
        let uri: hyper::Uri = base.parse()?;
        let authority = uri
            .authority()
            .ok_or_else(|| anyhow::anyhow!("{base}: no host:port"))?;
        Ok(Arc::new(Conns {
            addr: authority.as_str().parse()?,
            idle: Mutex::new(Vec::new()),
        }))
    }

    /// An idle connection, or a new one.
    async fn take(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        loop {
            let idle = self.idle.lock().expect("connections").pop();
            match idle {
                Some(c) if c.is_ready() => return Ok(c),
                Some(_) => {} // closed by the server: drop it
                None => break,
            }
        }
        let stream = tokio::net::TcpStream::connect(self.addr).await?;
        stream.set_nodelay(true)?;
        let (send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(send)
    }

    /// `request` on a connection; the connection goes back to the pool once its answer is read.
    async fn send(&self, request: hyper::Request<Full<Bytes>>) -> anyhow::Result<u16> {
        let mut conn = self.take().await?;
        let res = conn.send_request(request).await?;
        let status = res.status().as_u16();
        res.into_body().collect().await?;
        self.idle.lock().expect("connections").push(conn);
        Ok(status)
    }
}

/// `hookline-api`: `POST …/events` (one event) or `…/events:batch` (several) with a bearer token.
pub struct Http {
    /// Keep-alive connections to the API.
    pub conns: Arc<Conns>,
    /// `/api/v1/tenants/<tenant>/events`.
    pub path: String,
    /// `Bearer <token>`.
    pub auth: String,
    /// Event id prefix.
    pub prefix: String,
    /// Size of each event.
    pub bytes: usize,
}

impl Sender for Http {
    async fn send(&self, first: usize, n: usize, t_us: u64) -> Outcome {
        let mut body = Vec::with_capacity(n * (self.bytes + 1) + 16);
        let path = if n == 1 {
            event(&self.prefix, first, t_us, self.bytes, &mut body);
            self.path.clone()
        } else {
            body.extend_from_slice(br#"{"events":["#);
            for seq in first..first + n {
                if seq > first {
                    body.push(b',');
                }
                event(&self.prefix, seq, t_us, self.bytes, &mut body);
            }
            body.extend_from_slice(b"]}");
            format!("{}:batch", self.path)
        };
        let request = hyper::Request::post(path)
            .header(hyper::header::HOST, "hookline-api")
            .header(hyper::header::AUTHORIZATION, &self.auth)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)));
        let Ok(request) = request else {
            return Outcome::Failed;
        };
        match tokio::time::timeout(Duration::from_secs(30), self.conns.send(request)).await {
            Ok(Ok(202)) => Outcome::Accepted,
            Ok(Ok(status)) => Outcome::Status(status),
            Ok(Err(_)) | Err(_) => Outcome::Failed,
        }
    }
}

/// The baseline: the same events, keyed by their id as the API keys them, written by a producer
/// with the API's settings, each request awaiting every acknowledgement.
pub struct Kafka {
    /// The producer.
    pub producer: FutureProducer,
    /// The topic.
    pub topic: String,
    /// Event id prefix.
    pub prefix: String,
    /// Size of each event.
    pub bytes: usize,
    /// How long a record may wait for its acknowledgement.
    pub timeout: Duration,
}

impl Sender for Kafka {
    async fn send(&self, first: usize, n: usize, t_us: u64) -> Outcome {
        let records: Vec<(String, Vec<u8>)> = (first..first + n)
            .map(|seq| {
                let mut v = Vec::with_capacity(self.bytes);
                event(&self.prefix, seq, t_us, self.bytes, &mut v);
                (format!("{}{seq}", self.prefix), v)
            })
            .collect();
        let sends = records.iter().map(|(k, v)| {
            self.producer.send(
                FutureRecord::<str, [u8]>::to(&self.topic).key(k).payload(v),
                self.timeout,
            )
        });
        if futures::future::join_all(sends)
            .await
            .iter()
            .all(Result::is_ok)
        {
            Outcome::Accepted
        } else {
            Outcome::Failed
        }
    }
}

/// What a load did.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Done {
    /// Requests sent.
    pub requests: u64,
    /// Events in accepted requests.
    pub accepted_events: u64,
    /// Requests not accepted, by status (`0`: no answer).
    pub rejected: BTreeMap<u16, u64>,
    /// From the first send to the last answer.
    pub elapsed_s: f64,
    /// Accepted events per second.
    pub events_per_s: f64,
    /// Request latency: send → answer (closed loop), due time → answer (open loop).
    pub latency: Latency,
    /// Open loop: how far behind its schedule a request was sent at worst (µs).
    pub max_lag_us: u64,
}

#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    accepted: AtomicU64,
    rejected: Mutex<BTreeMap<u16, u64>>,
    latencies: Mutex<Vec<u32>>,
}

impl Tally {
    fn count(&self, outcome: Outcome, events: usize, lat_us: u64, lats: &mut Vec<u32>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Outcome::Accepted => {
                self.accepted.fetch_add(events as u64, Ordering::Relaxed);
            }
            Outcome::Status(s) => *self.rejected.lock().expect("tally").entry(s).or_default() += 1,
            Outcome::Failed => *self.rejected.lock().expect("tally").entry(0).or_default() += 1,
        }
        lats.push(u32::try_from(lat_us).unwrap_or(u32::MAX));
    }

    fn done(self, elapsed: Duration, max_lag_us: u64) -> Done {
        let accepted = self.accepted.into_inner();
        Done {
            requests: self.requests.into_inner(),
            accepted_events: accepted,
            rejected: self.rejected.into_inner().expect("tally"),
            elapsed_s: elapsed.as_secs_f64(),
            events_per_s: accepted as f64 / elapsed.as_secs_f64().max(1e-6),
            latency: stats::latency(self.latencies.into_inner().expect("tally")),
            max_lag_us,
        }
    }
}

/// `concurrency` workers sending `per_request` events per request until `limit` passes or
/// `max_events` were sent.
pub async fn closed<S: Sender>(
    sender: Arc<S>,
    concurrency: usize,
    per_request: usize,
    limit: Duration,
    max_events: usize,
) -> Done {
    let tally = Arc::new(Tally::default());
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let end = t0 + limit;
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (sender, tally, next) = (sender.clone(), tally.clone(), next.clone());
            tokio::spawn(async move {
                let mut lats = Vec::new();
                while Instant::now() < end {
                    let first = next.fetch_add(per_request, Ordering::Relaxed);
                    if first + per_request > max_events {
                        break;
                    }
                    let sent = clock::now_us();
                    let outcome = sender.send(first, per_request, sent).await;
                    tally.count(outcome, per_request, clock::now_us() - sent, &mut lats);
                }
                tally.latencies.lock().expect("tally").extend(lats);
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    let elapsed = t0.elapsed();
    let tally = Arc::try_unwrap(tally).unwrap_or_default();
    tally.done(elapsed, 0)
}

/// `n` requests of one event each, request `i` (event `first + i`) due at `start + i / rate`
/// and sent then (at most `max_in_flight` in flight: beyond that the run is overloaded and a
/// request waits, still counted from its due time).
pub async fn open<S: Sender>(
    sender: Arc<S>,
    first: usize,
    n: usize,
    rate: f64,
    max_in_flight: usize,
) -> Done {
    let tally = Arc::new(Tally::default());
    let permits = Arc::new(tokio::sync::Semaphore::new(max_in_flight.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let t0 = Instant::now();
    let start_us = clock::now_us() + 2_000;
    let mut max_lag_us = 0;
    for i in 0..n {
        let due_us = start_us + (i as f64 * 1e6 / rate) as u64;
        tokio::time::sleep_until(clock::at_us(due_us).into()).await;
        max_lag_us = max_lag_us.max(clock::now_us().saturating_sub(due_us));
        let (sender, tally, permits) = (sender.clone(), tally.clone(), permits.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let outcome = sender.send(first + i, 1, due_us).await;
            let lat = clock::now_us().saturating_sub(due_us);
            let mut one = Vec::with_capacity(1);
            tally.count(outcome, 1, lat, &mut one);
            tally.latencies.lock().expect("tally").extend(one);
        });
        // Reap finished tasks as we go so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = t0.elapsed();
    let tally = Arc::try_unwrap(tally).unwrap_or_default();
    tally.done(elapsed, max_lag_us)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_padded_to_its_size_and_carries_its_time() {
        let mut buf = b"{\"events\":[".to_vec();
        event("r1-e", 7, 123, 1024, &mut buf);
        let ev = &buf[11..];
        assert_eq!(ev.len(), 1024);
        let v: serde_json::Value = serde_json::from_slice(ev).unwrap();
        assert_eq!(v["id"], "r1-e7");
        assert_eq!(v["data"]["t"], 123);
        assert_eq!(hookline_bench::sink::embedded_t(ev), Some(123));
    }
}

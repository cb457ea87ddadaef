//! The receiving end: requests flow from the dispatcher (or the baseline
//! client) into a hyper HTTP/1.1 keep-alive server on `127.0.0.1`, one
//! listener per simulated receiver, which answers `200` with an empty body and
//! hands `(webhook, webhook-id, body, receive time)` to the run's
//! [`Recorder`]. The recorder keeps, without locks on the hot path: which
//! deliveries arrived (a bitset over event × webhook, so duplicates are
//! counted), a 100 ms timeline of first arrivals (from which sustained rates
//! are read), and optionally the produce→receive latency of each first
//! arrival, from the `"t"` the producer embedded in the event's data.
//!
//! A port can be switched between [`Mode::Ok`], [`Mode::Blackhole`] (accepts,
//! reads the request, never answers within the run: a receiver that always
//! times out) and [`Mode::Down`] (listener closed and connections cut: a
//! receiver that refuses connections), and back.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::clock;

/// Width of a timeline bucket.
pub const BUCKET_US: u64 = 100_000;
/// Timeline length: 15 minutes of 100 ms buckets; later arrivals land in the last one.
const BUCKETS: usize = 9_000;
/// How long a blackholed request is held before the sink gives up on it.
const BLACKHOLE_HOLD: Duration = Duration::from_secs(120);

/// How a port answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `200`, empty body, at once.
    Ok = 0,
    /// Reads the request and never answers (within [`BLACKHOLE_HOLD`]).
    Blackhole = 1,
    /// No listener: connections are refused.
    Down = 2,
}

/// What one run received. Swapped in per run with [`Sink::set_recorder`].
pub struct Recorder {
    prefix: String,
    events: usize,
    webhooks: usize,
    start_us: u64,
    seen: Vec<AtomicU64>,
    per_webhook: Vec<AtomicU64>,
    timeline: Vec<AtomicU32>,
    latency_from_seq: usize,
    latencies: Option<Mutex<Vec<u32>>>,
    /// First arrivals.
    pub unique: AtomicU64,
    /// Repeated arrivals of the same event at the same webhook.
    pub duplicates: AtomicU64,
    /// Requests whose id is not of this run (or out of range), or without one.
    pub foreign: AtomicU64,
    /// Requests with `hookline-attempt` above 1.
    pub retried: AtomicU64,
    /// Requests held by a blackholed port.
    pub blackholed: AtomicU64,
    /// Receive time of the last first arrival (µs on [`clock`]).
    pub last_us: AtomicU64,
    /// Receive time of the first first arrival (µs on [`clock`]).
    pub first_us: AtomicU64,
}

impl Recorder {
    /// A recorder for events `<prefix><seq>`, `seq < events`, sent to
    /// `webhooks` receivers; latencies are kept for `seq >= latency_from_seq`
    /// when `latency` is set.
    pub fn new(
        prefix: &str,
        events: usize,
        webhooks: usize,
        latency: bool,
        latency_from_seq: usize,
    ) -> Recorder {
        let bits = events.saturating_mul(webhooks.max(1));
        Recorder {
            prefix: prefix.to_owned(),
            events,
            webhooks: webhooks.max(1),
            start_us: clock::now_us(),
            seen: (0..bits.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            per_webhook: (0..webhooks.max(1)).map(|_| AtomicU64::new(0)).collect(),
            timeline: (0..BUCKETS).map(|_| AtomicU32::new(0)).collect(),
            latency_from_seq,
            latencies: latency.then(|| Mutex::new(Vec::with_capacity(events.min(2_000_000)))),
            unique: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            blackholed: AtomicU64::new(0),
            last_us: AtomicU64::new(0),
            first_us: AtomicU64::new(u64::MAX),
        }
    }

    /// An inert recorder (before the first run).
    pub fn idle() -> Recorder {
        Recorder::new("-", 0, 1, false, 0)
    }

    /// When this recorder started (µs on [`clock`]).
    pub fn start_us(&self) -> u64 {
        self.start_us
    }

    /// Records one request to `webhook` with event id `id`, `body`, attempt
    /// number `attempt`, received at `recv_us`.
    pub fn record(
        &self,
        webhook: usize,
        id: Option<&str>,
        body: &[u8],
        attempt: u32,
        recv_us: u64,
    ) {
        let seq = id
            .and_then(|id| id.strip_prefix(self.prefix.as_str()))
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|s| *s < self.events && webhook < self.webhooks);
        let Some(seq) = seq else {
            self.foreign.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if attempt > 1 {
            self.retried.fetch_add(1, Ordering::Relaxed);
        }
        let bit = webhook * self.events + seq;
        let mask = 1u64 << (bit % 64);
        if self.seen[bit / 64].fetch_or(mask, Ordering::Relaxed) & mask != 0 {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.unique.fetch_add(1, Ordering::Relaxed);
        self.per_webhook[webhook].fetch_add(1, Ordering::Relaxed);
        let bucket = usize::try_from(recv_us.saturating_sub(self.start_us) / BUCKET_US)
            .unwrap_or(usize::MAX)
            .min(BUCKETS - 1);
        self.timeline[bucket].fetch_add(1, Ordering::Relaxed);
        self.last_us.fetch_max(recv_us, Ordering::Relaxed);
        self.first_us.fetch_min(recv_us, Ordering::Relaxed);
        if let Some(lat) = &self.latencies
            && seq >= self.latency_from_seq
            && let Some(t) = embedded_t(body)
        {
            let us = u32::try_from(recv_us.saturating_sub(t)).unwrap_or(u32::MAX);
            lat.lock().expect("latency samples").push(us);
        }
    }

    /// First arrivals so far.
    pub fn unique(&self) -> u64 {
        self.unique.load(Ordering::Relaxed)
    }

    /// First arrivals per webhook.
    pub fn per_webhook(&self) -> Vec<u64> {
        self.per_webhook
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// The latency samples (µs), unsorted.
    pub fn latencies(&self) -> Vec<u32> {
        self.latencies
            .as_ref()
            .map(|l| l.lock().expect("latency samples").clone())
            .unwrap_or_default()
    }

    /// First arrivals per 100 ms bucket since [`Recorder::start_us`].
    pub fn timeline(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .timeline
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        while v.last() == Some(&0) {
            v.pop();
        }
        v
    }
}

/// Reads the producer's `"t":<µs>` from an event body without parsing the JSON.
pub fn embedded_t(body: &[u8]) -> Option<u64> {
    let at = body.windows(4).position(|w| w == b"\"t\":")? + 4;
    let digits = body[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&body[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

struct Port {
    addr: SocketAddr,
    mode: AtomicU8,
    stop: Mutex<CancellationToken>,
}

/// The sink: `ports` listeners on `127.0.0.1` sharing one recorder.
pub struct Sink {
    ports: Vec<Arc<Port>>,
    recorder: Arc<RwLock<Arc<Recorder>>>,
}

impl Sink {
    /// Binds `ports` listeners on `127.0.0.1:<free port>`, all [`Mode::Ok`].
    ///
    /// # Errors
    /// When a port cannot be bound.
    pub async fn start(ports: usize) -> anyhow::Result<Sink> {
        let recorder = Arc::new(RwLock::new(Arc::new(Recorder::idle())));
        let mut out = Vec::with_capacity(ports);
        for _ in 0..ports.max(1) {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let port = Arc::new(Port {
                addr: listener.local_addr()?,
                mode: AtomicU8::new(Mode::Ok as u8),
                stop: Mutex::new(CancellationToken::new()),
            });
            spawn_accept(listener, port.clone(), recorder.clone());
            out.push(port);
        }
        Ok(Sink {
            ports: out,
            recorder,
        })
    }

    /// Number of listeners.
    pub fn ports(&self) -> usize {
        self.ports.len()
    }

    /// `http://127.0.0.1:<port of listener port % ports>/w/<webhook>`.
    pub fn url(&self, port: usize, webhook: usize) -> String {
        format!(
            "http://{}/w/{webhook}",
            self.ports[port % self.ports.len()].addr
        )
    }

    /// Makes `r` the recorder of every following request.
    pub fn set_recorder(&self, r: Arc<Recorder>) {
        *self.recorder.write().expect("recorder") = r;
    }

    /// The current recorder.
    pub fn recorder(&self) -> Arc<Recorder> {
        self.recorder.read().expect("recorder").clone()
    }

    /// Switches listener `port` to `mode`.
    ///
    /// # Errors
    /// When a listener coming back up cannot bind its old port again.
    pub async fn set_mode(&self, port: usize, mode: Mode) -> anyhow::Result<()> {
        let p = &self.ports[port % self.ports.len()];
        let was = p.mode.swap(mode as u8, Ordering::SeqCst);
        if was == mode as u8 {
            return Ok(());
        }
        if mode == Mode::Down {
            p.stop.lock().expect("port stop").cancel();
        } else if was == Mode::Down as u8 {
            let mut last = None;
            for _ in 0..50 {
                match TcpListener::bind(p.addr).await {
                    Ok(listener) => {
                        *p.stop.lock().expect("port stop") = CancellationToken::new();
                        spawn_accept(listener, p.clone(), self.recorder.clone());
                        return Ok(());
                    }
                    Err(e) => last = Some(e),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            anyhow::bail!("rebinding {}: {:?}", p.addr, last);
        }
        Ok(())
    }
}

fn spawn_accept(listener: TcpListener, port: Arc<Port>, recorder: Arc<RwLock<Arc<Recorder>>>) {
    let stop = port.stop.lock().expect("port stop").clone();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => return,
                a = listener.accept() => a,
            };
            let Ok((stream, _)) = accepted else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (port, recorder, stop) = (port.clone(), recorder.clone(), stop.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| handle(req, port.clone(), recorder.clone()));
                let conn = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), svc);
                tokio::select! {
                    _ = conn => {}
                    () = stop.cancelled() => {}
                }
            });
        }
    });
}

fn webhook_of(path: &str) -> usize {
    path.strip_prefix("/w/")
        .and_then(|s| s.parse().ok())
        .unwrap_or(usize::MAX)
}

async fn handle(
    req: Request<Incoming>,
    port: Arc<Port>,
    recorder: Arc<RwLock<Arc<Recorder>>>,
) -> Result<Response<Empty<Bytes>>, Infallible> {
    let webhook = webhook_of(req.uri().path());
    let id = req
        .headers()
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let attempt = req
        .headers()
        .get("hookline-attempt")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let recv_us = clock::now_us();
    let rec = recorder.read().expect("recorder").clone();
    if port.mode.load(Ordering::Relaxed) == Mode::Blackhole as u8 {
        rec.blackholed.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(BLACKHOLE_HOLD).await;
        let mut resp = Response::new(Empty::new());
        *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        return Ok(resp);
    }
    rec.record(webhook, id.as_deref(), &body, attempt, recv_us);
    Ok(Response::new(Empty::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_produce_time_is_read_from_the_body() {
        let body = br#"{"type":"bench.event","timestamp":"2026-01-01T00:00:00Z","data":{"t":123456,"seq":7,"pad":"xx"}}"#;
        assert_eq!(embedded_t(body), Some(123_456));
        assert_eq!(embedded_t(b"{}"), None);
    }

    #[test]
    fn a_second_arrival_of_an_event_at_a_webhook_is_a_duplicate() {
        let r = Recorder::new("r1-e", 10, 2, true, 0);
        let body = br#"{"data":{"t":5}}"#;
        r.record(0, Some("r1-e3"), body, 1, 20);
        r.record(1, Some("r1-e3"), body, 1, 20);
        r.record(0, Some("r1-e3"), body, 2, 30);
        r.record(0, Some("r2-e3"), body, 1, 30);
        r.record(0, Some("r1-e10"), body, 1, 30);
        assert_eq!(r.unique(), 2);
        assert_eq!(r.duplicates.load(Ordering::Relaxed), 1);
        assert_eq!(r.foreign.load(Ordering::Relaxed), 2);
        assert_eq!(r.retried.load(Ordering::Relaxed), 1);
        assert_eq!(r.per_webhook(), vec![1, 1]);
        assert_eq!(r.latencies().len(), 2);
    }

    #[tokio::test]
    async fn the_sink_answers_200_and_records_the_event() {
        let sink = Sink::start(1).await.unwrap();
        let rec = Arc::new(Recorder::new("r1-e", 5, 1, true, 0));
        sink.set_recorder(rec.clone());
        crate::install_crypto_provider();
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let t = clock::now_us();
        let resp = client
            .post(sink.url(0, 0))
            .header("webhook-id", "r1-e4")
            .body(format!(r#"{{"data":{{"t":{t}}}}}"#))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(rec.unique(), 1);
        assert_eq!(rec.latencies().len(), 1);

        sink.set_mode(0, Mode::Down).await.unwrap();
        assert!(client.post(sink.url(0, 0)).send().await.is_err());
        sink.set_mode(0, Mode::Ok).await.unwrap();
        let resp = client
            .post(sink.url(0, 0))
            .header("webhook-id", "r1-e3")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(rec.unique(), 2);
    }
}

//! The receiving end of the fail-over benchmark: requests flow from the dispatcher (every
//! incarnation of it) into one hyper HTTP/1.1 keep-alive listener on `127.0.0.1`, which answers
//! them as the run's [`Behaviour`] says and writes every request — event sequence number,
//! `hookline-attempt`, whether it was answered 2xx, arrival time on the bench
//! [`clock`](hookline_bench::clock) — into the run's [`Log`], swapped in per run.
//!
//! Unlike the library's sink, which keeps bitsets for millions of deliveries, this keeps every
//! request (a run has about 12,000): fail-over, duplicates and gaps are read from the log
//! afterwards by [`crate::analysis`].
//!
//! **Decisions**: a flaky receiver fails a request when a hash of (run salt, event, how many
//! requests of that event came before it) falls below the failure percentage — pseudo-random,
//! independent per request, and the same for the same run number of every build, so before and
//! after see the same receiver. Ids not of the run are answered 200 and counted as foreign.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
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

use hookline_bench::clock;

use crate::analysis::Req;

/// How the receiver answers during a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Behaviour {
    /// At once; `500` for `fail_percent` % of requests (pseudo-random per request), else `200`.
    Flaky {
        /// Share of requests failed, 0–100.
        fail_percent: u32,
    },
    /// `200` after `latency`, so requests are in flight.
    Slow {
        /// How long each answer takes.
        latency: Duration,
    },
}

/// Every request of one run, for events `<prefix><seq>`, `seq < slots`.
pub struct Log {
    prefix: String,
    behaviour: Behaviour,
    salt: u64,
    /// Sequence numbers below this are measured; the rest are warm-up events.
    measured: usize,
    requests_of: Vec<AtomicU32>,
    ok_of: Vec<AtomicU32>,
    /// Measured events answered 2xx at least once.
    pub ok_unique: AtomicU64,
    /// Requests whose id is not of this run.
    pub foreign: AtomicU64,
    /// Arrival of the latest request of this run (µs on the bench clock).
    pub last_us: AtomicU64,
    reqs: Mutex<Vec<Req>>,
}

/// splitmix64: a fixed, well-spread hash.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Whether request number `nth` (from 0) of event `seq` fails, for a flaky receiver.
pub fn fails(salt: u64, seq: u32, nth: u32, fail_percent: u32) -> bool {
    mix(mix(salt ^ u64::from(seq)) ^ u64::from(nth)) % 100 < u64::from(fail_percent)
}

impl Log {
    /// A log for events `<prefix>0 … <prefix><slots - 1>`, of which the first `measured` count.
    pub fn new(
        prefix: &str,
        measured: usize,
        slots: usize,
        behaviour: Behaviour,
        salt: u64,
    ) -> Log {
        Log {
            prefix: prefix.to_owned(),
            behaviour,
            salt,
            measured,
            requests_of: (0..slots).map(|_| AtomicU32::new(0)).collect(),
            ok_of: (0..slots).map(|_| AtomicU32::new(0)).collect(),
            ok_unique: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
            last_us: AtomicU64::new(0),
            reqs: Mutex::new(Vec::with_capacity(measured * 2)),
        }
    }

    /// An inert log (before the first run).
    fn idle() -> Log {
        Log::new("-", 0, 0, Behaviour::Flaky { fail_percent: 0 }, 0)
    }

    /// Whether event `seq` has reached the receiver (answered or not).
    pub fn arrived(&self, seq: usize) -> bool {
        self.requests_of
            .get(seq)
            .is_some_and(|c| c.load(Ordering::Relaxed) > 0)
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Req> {
        let mut v = self.reqs.lock().expect("request log").clone();
        v.sort_by_key(|r| r.recv_us);
        v
    }

    /// Records a request and decides its answer: the status, and how long to wait first.
    fn answer(&self, id: Option<&str>, attempt: u32, recv_us: u64) -> (StatusCode, Duration) {
        let delay = match self.behaviour {
            Behaviour::Slow { latency } => latency,
            Behaviour::Flaky { .. } => Duration::ZERO,
        };
        let seq = id
            .and_then(|id| id.strip_prefix(self.prefix.as_str()))
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|s| *s < self.requests_of.len());
        let Some(seq) = seq else {
            self.foreign.fetch_add(1, Ordering::Relaxed);
            return (StatusCode::OK, delay);
        };
        let seq32 = u32::try_from(seq).unwrap_or(u32::MAX);
        let nth = self.requests_of[seq].fetch_add(1, Ordering::Relaxed);
        let ok = match self.behaviour {
            Behaviour::Flaky { fail_percent } => !fails(self.salt, seq32, nth, fail_percent),
            Behaviour::Slow { .. } => true,
        };
        if ok && self.ok_of[seq].fetch_add(1, Ordering::Relaxed) == 0 && seq < self.measured {
            self.ok_unique.fetch_add(1, Ordering::Relaxed);
        }
        self.last_us.fetch_max(recv_us, Ordering::Relaxed);
        self.reqs.lock().expect("request log").push(Req {
            seq: seq32,
            attempt,
            ok,
            recv_us,
        });
        let status = if ok {
            StatusCode::OK
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        (status, delay)
    }
}

/// The listener and the current run's log.
pub struct Receiver {
    addr: SocketAddr,
    log: Arc<RwLock<Arc<Log>>>,
}

impl Receiver {
    /// Binds `127.0.0.1:<free port>` and serves until the process ends.
    ///
    /// # Errors
    /// When the port cannot be bound.
    pub async fn start() -> anyhow::Result<Receiver> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let log = Arc::new(RwLock::new(Arc::new(Log::idle())));
        let shared = log.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let log = shared.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(req, log.clone()));
                    let _ = http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Receiver { addr, log })
    }

    /// `http://127.0.0.1:<port>/hooks`.
    pub fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    /// Makes `log` the log (and behaviour) of every following request.
    pub fn set_log(&self, log: Arc<Log>) {
        *self.log.write().expect("log") = log;
    }
}

async fn handle(
    req: Request<Incoming>,
    log: Arc<RwLock<Arc<Log>>>,
) -> Result<Response<Empty<Bytes>>, Infallible> {
    let recv_us = clock::now_us();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let id = header("webhook-id");
    let attempt = header("hookline-attempt")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let _ = req.into_body().collect().await;
    let log = log.read().expect("log").clone();
    let (status, delay) = log.answer(id.as_deref(), attempt, recv_us);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut resp = Response::new(Empty::new());
    *resp.status_mut() = status;
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flaky_receiver_fails_about_the_share_asked_and_the_same_requests_every_time() {
        let failed = (0..10_000u32).filter(|seq| fails(7, *seq, 0, 20)).count();
        assert!((1_800..2_200).contains(&failed), "{failed}");
        assert_eq!(fails(7, 42, 1, 20), fails(7, 42, 1, 20));
        // Later requests of a failed event are drawn again, not failed forever.
        let refailed = (0..10_000u32)
            .filter(|seq| fails(7, *seq, 0, 20) && fails(7, *seq, 1, 20))
            .count();
        assert!(refailed < 600, "{refailed}");
    }

    #[test]
    fn requests_are_logged_and_only_measured_events_count_as_delivered() {
        let log = Log::new("r1-", 2, 3, Behaviour::Flaky { fail_percent: 0 }, 1);
        assert_eq!(log.answer(Some("r1-1"), 1, 10).0, StatusCode::OK);
        log.answer(Some("r1-1"), 1, 20);
        log.answer(Some("r1-2"), 1, 5);
        log.answer(Some("other-1"), 1, 30);
        log.answer(None, 1, 30);
        assert_eq!(log.ok_unique.load(Ordering::Relaxed), 1);
        assert_eq!(log.foreign.load(Ordering::Relaxed), 2);
        assert!(log.arrived(2) && !log.arrived(0));
        let reqs = log.requests();
        assert_eq!(reqs.len(), 3);
        assert_eq!(reqs[0].seq, 2, "sorted by arrival");
    }
}

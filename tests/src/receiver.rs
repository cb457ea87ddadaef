//! A recording HTTP receiver for tests: a real hyper server on a loopback port whose answer is
//! programmable per path (status code, delay, `Retry-After`, body size, a deterministic share of
//! failures, a script for the first requests) and which records every request (method, path,
//! headers, body, arrival time, the status it was answered with) for the test to inspect.

use std::{
    collections::{HashMap, VecDeque},
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};
use tokio::{net::TcpListener, sync::Notify, task::JoinHandle};

/// How the receiver answers requests to one path.
#[derive(Debug, Clone)]
pub struct Behavior {
    /// Status code to answer with.
    pub status: u16,
    /// Wait this long before answering.
    pub delay: Duration,
    /// `Retry-After` header value, if any.
    pub retry_after: Option<String>,
    /// Size of the response body in bytes.
    pub body_size: usize,
    /// Which requests fail instead: they are answered `fail_status` at once (no delay, no
    /// `Retry-After`, empty body). Counted per path from when the behavior was programmed.
    pub fail: Option<FailPattern>,
    /// The status of a failed request (503 by default).
    pub fail_status: u16,
}

/// A deterministic choice of the requests to a path that fail.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FailPattern {
    /// The `n`th, `2n`th, `3n`th … request (`n` of 0 or 1 fails every request).
    Every(u32),
    /// Each request with probability `ratio`, drawn from a generator seeded with `seed`: the same
    /// sequence of answers on every run.
    Ratio {
        /// Share of requests that fail, in `0.0..=1.0`.
        ratio: f64,
        /// Seed of the generator.
        seed: u64,
    },
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior {
            status: 200,
            delay: Duration::ZERO,
            retry_after: None,
            body_size: 0,
            fail: None,
            fail_status: 503,
        }
    }
}

impl Behavior {
    /// Answer with `status`, at once, empty body.
    pub fn status(status: u16) -> Behavior {
        Behavior {
            status,
            ..Behavior::default()
        }
    }

    /// Answer 200 after `delay` (a slow receiver).
    pub fn delayed(delay: Duration) -> Behavior {
        Behavior {
            delay,
            ..Behavior::default()
        }
    }

    /// Answer 200, except `fail_status` (503) to every `n`th request.
    pub fn fail_every(n: u32) -> Behavior {
        Behavior {
            fail: Some(FailPattern::Every(n)),
            ..Behavior::default()
        }
    }

    /// Answer 200, except `fail_status` (503) to a seeded-random `ratio` of the requests.
    pub fn fail_ratio(ratio: f64, seed: u64) -> Behavior {
        Behavior {
            fail: Some(FailPattern::Ratio { ratio, seed }),
            ..Behavior::default()
        }
    }
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// HTTP method.
    pub method: String,
    /// Path (no query).
    pub path: String,
    /// Headers, names lowercased, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
    /// Wall-clock arrival time.
    pub at: SystemTime,
    /// The status it was (or, after the programmed delay, will be) answered with.
    pub status: u16,
}

impl Recorded {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON.
    ///
    /// # Errors
    /// When it is not JSON.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_slice(&self.body)?)
    }
}

/// The distinct `n` of requests whose `webhook-id` is `evt_<n>` (repeats, which at least once
/// allows, are skipped), checking that the events of each key `n % keys` first arrived in
/// increasing order.
///
/// # Errors
/// When a `webhook-id` is missing or not `evt_<n>`, or an event of a key overtook an earlier one.
pub fn first_arrivals_in_key_order(
    got: &[Recorded],
    keys: usize,
) -> anyhow::Result<std::collections::HashSet<usize>> {
    let mut seen = std::collections::HashSet::new();
    let mut last_per_key = HashMap::new();
    for r in got {
        let id = r.header("webhook-id").unwrap_or_default();
        let n: usize = id
            .strip_prefix("evt_")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("webhook-id {id:?} is not evt_<n>"))?;
        if !seen.insert(n) {
            continue;
        }
        if let Some(prev) = last_per_key.insert(n % keys, n) {
            anyhow::ensure!(
                prev < n,
                "key {}: evt_{n} arrived after evt_{prev}",
                n % keys
            );
        }
    }
    Ok(seen)
}

#[derive(Default)]
struct State {
    behaviors: HashMap<String, Behavior>,
    /// Per path: behaviors for the next requests, one each, before `behaviors` applies.
    scripts: HashMap<String, VecDeque<Behavior>>,
    /// Per path: requests answered by `behaviors` since it was programmed, and the generator of
    /// a [`FailPattern::Ratio`].
    counters: HashMap<String, (u64, Option<StdRng>)>,
    /// Per path: requests answered or abandoned (see [`Receiver::finished`]).
    finished: HashMap<String, usize>,
    requests: Vec<Recorded>,
}

impl State {
    /// The behavior for the next request to `path`, with its fail pattern already applied.
    fn next(&mut self, path: &str) -> Behavior {
        if let Some(b) = self.scripts.get_mut(path).and_then(VecDeque::pop_front) {
            return b;
        }
        let behavior = self.behaviors.get(path).cloned().unwrap_or_default();
        let Some(pattern) = behavior.fail else {
            return behavior;
        };
        let (count, rng) = self.counters.entry(path.to_owned()).or_default();
        *count += 1;
        let fails = match pattern {
            FailPattern::Every(n) => *count % u64::from(n.max(1)) == 0,
            FailPattern::Ratio { ratio, seed } => rng
                .get_or_insert_with(|| StdRng::seed_from_u64(seed))
                .random_bool(ratio.clamp(0.0, 1.0)),
        };
        if fails {
            Behavior::status(behavior.fail_status)
        } else {
            behavior
        }
    }
}

/// The running receiver; stops when dropped.
pub struct Receiver {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    arrived: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Receiver {
    /// Starts on `127.0.0.1:<free port>`; every path answers 200 until programmed otherwise.
    ///
    /// # Errors
    /// When no port can be bound.
    pub async fn start() -> anyhow::Result<Receiver> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let arrived = Arc::new(Notify::new());
        let (st, ar) = (state.clone(), arrived.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (st, ar) = (st.clone(), ar.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(req, st.clone(), ar.clone()));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Receiver {
            addr,
            state,
            arrived,
            task,
        })
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets how `path` answers from now on (and restarts the count of its fail pattern).
    pub fn program(&self, path: &str, behavior: Behavior) {
        let mut st = self.state.lock().expect("receiver state");
        st.counters.remove(path);
        st.scripts.remove(path);
        st.behaviors.insert(path.to_owned(), behavior);
    }

    /// The next requests to `path` are answered by `first`, one behavior each, in order; the
    /// ones after them by `then` (as [`Receiver::program`] sets it).
    pub fn program_script(&self, path: &str, first: Vec<Behavior>, then: Behavior) {
        let mut st = self.state.lock().expect("receiver state");
        st.counters.remove(path);
        st.behaviors.insert(path.to_owned(), then);
        st.scripts.insert(path.to_owned(), first.into());
    }

    /// How many requests to `path` are over: answered after their delay, or given up by the
    /// client while the receiver was still waiting to answer.
    pub fn finished(&self, path: &str) -> usize {
        self.state
            .lock()
            .expect("receiver state")
            .finished
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// Every request to `path` so far, in arrival order.
    pub fn requests(&self, path: &str) -> Vec<Recorded> {
        self.state
            .lock()
            .expect("receiver state")
            .requests
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Every request so far.
    pub fn all_requests(&self) -> Vec<Recorded> {
        self.state.lock().expect("receiver state").requests.clone()
    }

    /// Waits until `path` has received at least `n` requests, and returns them.
    ///
    /// # Errors
    /// When fewer than `n` arrived within `deadline`; says how many did.
    pub async fn wait_for(
        &self,
        path: &str,
        n: usize,
        deadline: Duration,
    ) -> anyhow::Result<Vec<Recorded>> {
        let end = tokio::time::Instant::now() + deadline;
        loop {
            let notified = self.arrived.notified();
            let got = self.requests(path);
            if got.len() >= n {
                return Ok(got);
            }
            if tokio::time::timeout_at(end, notified).await.is_err() {
                anyhow::bail!("{path}: {} of {n} requests within {deadline:?}", got.len());
            }
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Finished(Arc<Mutex<State>>, String);

impl Drop for Finished {
    fn drop(&mut self) {
        if let Ok(mut st) = self.0.lock() {
            *st.finished.entry(std::mem::take(&mut self.1)).or_default() += 1;
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
    arrived: Arc<Notify>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let at = SystemTime::now();
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let behavior = {
        let mut st = state.lock().expect("receiver state");
        let behavior = st.next(&path);
        st.requests.push(Recorded {
            method,
            path: path.clone(),
            headers,
            body,
            at,
            status: behavior.status,
        });
        behavior
    };
    arrived.notify_waiters();
    // Counts the request as finished when this future completes or is dropped.
    let _finished = Finished(state, path);
    if !behavior.delay.is_zero() {
        tokio::time::sleep(behavior.delay).await;
    }
    let mut resp = Response::builder().status(behavior.status);
    if let Some(ra) = &behavior.retry_after {
        resp = resp.header("retry-after", ra);
    }
    let body = Full::new(Bytes::from(vec![b'x'; behavior.body_size]));
    Ok(resp
        .body(body)
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn raw_post(addr: SocketAddr, path: &str, body: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\nx-test: yes\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn receiver_records_requests_and_answers_as_programmed() {
        let rx = Receiver::start().await.unwrap();
        rx.program(
            "/busy",
            Behavior {
                status: 429,
                retry_after: Some("7".into()),
                body_size: 3,
                ..Behavior::default()
            },
        );
        let busy = raw_post(rx.addr(), "/busy", "{\"a\":1}").await;
        assert!(busy.starts_with("HTTP/1.1 429"), "{busy}");
        assert!(
            busy.to_ascii_lowercase().contains("retry-after: 7"),
            "{busy}"
        );
        assert!(busy.ends_with("xxx"), "{busy}");
        let ok = raw_post(rx.addr(), "/ok", "hi").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");

        let got = rx
            .wait_for("/busy", 1, Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(got[0].method, "POST");
        assert_eq!(got[0].header("X-Test"), Some("yes"));
        assert_eq!(got[0].json().unwrap()["a"], 1);
        assert_eq!(rx.requests("/ok").len(), 1);
        assert_eq!(rx.all_requests().len(), 2);
    }

    #[tokio::test]
    async fn fail_patterns_and_scripts_choose_which_requests_fail() {
        let rx = Receiver::start().await.unwrap();
        rx.program("/every", Behavior::fail_every(3));
        rx.program_script(
            "/script",
            vec![Behavior::status(503), Behavior::status(429)],
            Behavior::status(204),
        );
        rx.program("/ratio", Behavior::fail_ratio(0.5, 7));
        for _ in 0..6 {
            raw_post(rx.addr(), "/every", "").await;
        }
        for _ in 0..3 {
            raw_post(rx.addr(), "/script", "").await;
        }
        for _ in 0..40 {
            raw_post(rx.addr(), "/ratio", "").await;
        }
        let statuses = |path: &str| {
            rx.requests(path)
                .iter()
                .map(|r| r.status)
                .collect::<Vec<_>>()
        };
        assert_eq!(statuses("/every"), [200, 200, 503, 200, 200, 503]);
        assert_eq!(statuses("/script"), [503, 429, 204]);
        let ratio = statuses("/ratio");
        let failed = ratio.iter().filter(|s| **s == 503).count();
        assert!((5..=35).contains(&failed), "{ratio:?}");
        assert_eq!(rx.finished("/every"), 6);

        // The same seed gives the same answers.
        let again = Receiver::start().await.unwrap();
        again.program("/ratio", Behavior::fail_ratio(0.5, 7));
        for _ in 0..40 {
            raw_post(again.addr(), "/ratio", "").await;
        }
        let again: Vec<u16> = again.requests("/ratio").iter().map(|r| r.status).collect();
        assert_eq!(ratio, again);
    }

    #[tokio::test]
    async fn wait_for_reports_how_many_arrived_when_too_few_do() {
        let rx = Receiver::start().await.unwrap();
        let err = rx
            .wait_for("/none", 1, Duration::from_millis(200))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("0 of 1"), "{err}");
    }
}

//! The ceiling to compare with: the same HTTP client library the dispatcher
//! uses (reqwest, configured like `hookline-dispatcher`'s: no proxy, no
//! redirects, keep-alive pool of 64 idle connections per host), the same
//! bodies (the Standard Webhooks body `{"type","timestamp","data"}` of the
//! same events), the same `webhook-*` headers except the signature, the same
//! concurrency and the same sink — and no Kafka, no signing, no bookkeeping.
//! Requests flow from [`run`] either as fast as `concurrency` workers go, or
//! open-loop at a fixed rate with at most `concurrency` in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Semaphore;

use crate::clock;
use crate::producer::{Shape, event};

/// What to send.
#[derive(Debug, Clone)]
pub struct Load {
    /// One URL per webhook.
    pub urls: Vec<String>,
    /// Every event to every URL, or each event to one URL, round-robin.
    pub fan_out: bool,
    /// The events.
    pub shape: Shape,
    /// Number of events.
    pub events: usize,
    /// Requests in flight at most.
    pub concurrency: usize,
    /// Events per second (open loop), or `None` for as fast as possible.
    pub rate: Option<f64>,
    /// Stop sending after this long.
    pub limit: Duration,
}

/// What a baseline run did.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Sent {
    /// Requests answered 2xx.
    pub ok: u64,
    /// Requests that failed or were answered otherwise.
    pub errors: u64,
    /// From the first request to the last answer.
    pub elapsed_s: f64,
    /// 2xx answers per second.
    pub rate: f64,
}

/// A client configured like the dispatcher's.
///
/// # Errors
/// When reqwest cannot build it.
pub fn client() -> anyhow::Result<reqwest::Client> {
    crate::install_crypto_provider();
    Ok(reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(64)
        .tcp_keepalive(Duration::from_secs(30))
        .build()?)
}

/// The body the dispatcher would send for event `seq`: the envelope without its `id`.
pub fn body(shape: &Shape, seq: usize, t_us: u64) -> Vec<u8> {
    let mut buf = Vec::with_capacity(shape.value_bytes);
    event(shape, seq, t_us, &mut buf);
    let id_field = format!(r#""id":"{}{seq}","#, shape.prefix);
    let mut out = Vec::with_capacity(buf.len());
    out.push(b'{');
    out.extend_from_slice(&buf[1 + id_field.len()..]);
    out
}

struct Counters {
    ok: AtomicU64,
    errors: AtomicU64,
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    shape: &Shape,
    seq: usize,
    t_us: u64,
    counters: &Counters,
) {
    let body = body(shape, seq, t_us);
    let now_s = jiff::Timestamp::now().as_second();
    let result = client
        .post(url)
        .header("content-type", "application/json")
        .header("user-agent", "hookline-bench-baseline")
        .header("webhook-id", format!("{}{seq}", shape.prefix))
        .header("webhook-timestamp", now_s.to_string())
        .header("hookline-attempt", "1")
        .body(body)
        .timeout(Duration::from_secs(30))
        .send()
        .await;
    match result {
        Ok(mut resp) if resp.status().is_success() => {
            while let Ok(Some(_)) = resp.chunk().await {}
            counters.ok.fetch_add(1, Ordering::Relaxed);
        }
        _ => {
            counters.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Sends `load` and waits for every answer.
///
/// # Errors
/// When the client cannot be built.
pub async fn run(load: Load) -> anyhow::Result<Sent> {
    let client = client()?;
    let load = Arc::new(load);
    let counters = Arc::new(Counters {
        ok: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let started = Instant::now();
    let deadline = started + load.limit;
    let webhooks = load.urls.len().max(1);
    let per_event = if load.fan_out { webhooks } else { 1 };
    let total = load.events * per_event;
    let mut tasks = tokio::task::JoinSet::new();
    match load.rate {
        None => {
            let next = Arc::new(AtomicUsize::new(0));
            for _ in 0..load.concurrency.max(1) {
                let (client, load, counters, next) =
                    (client.clone(), load.clone(), counters.clone(), next.clone());
                tasks.spawn(async move {
                    loop {
                        let j = next.fetch_add(1, Ordering::Relaxed);
                        if j >= total || Instant::now() > deadline {
                            break;
                        }
                        let (seq, w) = if load.fan_out {
                            (j / webhooks, j % webhooks)
                        } else {
                            (j, j % webhooks)
                        };
                        post(
                            &client,
                            &load.urls[w],
                            &load.shape,
                            seq,
                            clock::now_us(),
                            &counters,
                        )
                        .await;
                    }
                });
            }
        }
        Some(rate) => {
            let permits = Arc::new(Semaphore::new(load.concurrency.max(1)));
            let start_us = clock::now_us();
            for seq in 0..load.events {
                let due_us = start_us + (seq as f64 * 1e6 / rate) as u64;
                tokio::time::sleep_until(clock::at_us(due_us).into()).await;
                if Instant::now() > deadline {
                    break;
                }
                let targets = if load.fan_out {
                    0..webhooks
                } else {
                    seq % webhooks..seq % webhooks + 1
                };
                for w in targets {
                    let Ok(permit) = permits.clone().acquire_owned().await else {
                        break;
                    };
                    let (client, load, counters) = (client.clone(), load.clone(), counters.clone());
                    tasks.spawn(async move {
                        post(&client, &load.urls[w], &load.shape, seq, due_us, &counters).await;
                        drop(permit);
                    });
                }
                while tasks.try_join_next().is_some() {}
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    let elapsed_s = started.elapsed().as_secs_f64();
    let ok = counters.ok.load(Ordering::Relaxed);
    Ok(Sent {
        ok,
        errors: counters.errors.load(Ordering::Relaxed),
        elapsed_s,
        rate: ok as f64 / elapsed_s.max(1e-6),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_baseline_body_is_the_envelope_without_its_id() {
        let shape = Shape {
            prefix: "r1-e".into(),
            types: vec!["bench.a".into()],
            value_bytes: 512,
            keys: 1,
        };
        let b = body(&shape, 12, 99);
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert!(v.get("id").is_none());
        assert_eq!(v["type"], "bench.a");
        assert_eq!(v["data"]["t"], 99);
        assert_eq!(b.len(), 512 - r#""id":"r1-e12","#.len());
    }
}

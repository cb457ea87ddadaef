//! The tenant API over HTTP, with a real tenant token: the delivery log's queries as a closed
//! loop of single requests ([`log_queries`], the same kinds and arguments as the store-level
//! ones, so the difference is HTTP, authentication and JSON), and an open-loop mix of `Webhook`
//! reads and writes ([`crud`]) sent either to `hookline-api` or, as the baseline, straight to
//! the kube-apiserver with the same token. Open loop: request *i* is due at `start + i/rate`
//! and its latency counts from then, so a stall shows as latency (no coordinated omission).

use std::time::{Duration, Instant};

use hookline_api::routes::deliveries::encode_cursor;
use serde::Serialize;

use super::records::{Profile, Rng};
use super::store::{self, Query};
use crate::stats::{self, Latency};

/// A client for both the API (plain HTTP on loopback) and the kube-apiserver (TLS with the
/// environment's CA), with keep-alive.
///
/// # Errors
/// When the kubeconfig's CA cannot be read.
pub fn client(kubeconfig: &std::path::Path) -> anyhow::Result<reqwest::Client> {
    use base64::Engine as _;
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let mut b = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(256);
    for c in &kc.clusters {
        let Some(cluster) = &c.cluster else { continue };
        let pem = match (
            &cluster.certificate_authority_data,
            &cluster.certificate_authority,
        ) {
            (Some(data), _) => base64::engine::general_purpose::STANDARD.decode(data.trim())?,
            (None, Some(path)) => std::fs::read(path)?,
            (None, None) => continue,
        };
        b = b.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
    }
    Ok(b.build()?)
}

/// The API path of one store-level query.
pub fn path(tenant: &str, kind: Query, a: &store::Args) -> String {
    let t = format!("/api/v1/tenants/{tenant}");
    match kind {
        Query::Event => format!("{t}/deliveries/{}", a.event_id),
        Query::Stats24h | Query::Stats24hWebhook | Query::Stats30d => {
            let window = if kind == Query::Stats30d {
                "30d"
            } else {
                "24h"
            };
            let w = a
                .stats
                .0
                .as_ref()
                .map_or(String::new(), |w| format!("&webhook={w}"));
            format!("{t}/stats?window={window}{w}")
        }
        _ => {
            let mut p = format!("{t}/deliveries?limit={}", store::PAGE);
            if let Some(w) = &a.filter.webhook {
                p.push_str(&format!("&webhook={w}"));
            }
            if let Some(s) = a.filter.status {
                p.push_str(&format!("&status={}", s.as_str()));
            }
            if let Some(e) = &a.filter.event_type {
                p.push_str(&format!("&eventType={e}"));
            }
            if let Some(c) = a.cursor {
                p.push_str(&format!("&cursor={}", encode_cursor(c)));
            }
            p
        }
    }
}

/// Latencies of up to `count` `kind` requests to the API at `base` as `token` (at most
/// `limit`), and how many did not answer 200.
#[allow(clippy::too_many_arguments)]
pub async fn log_queries(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    profile: &Profile,
    kind: Query,
    ids: &[String],
    span_ms: (i64, i64),
    count: usize,
    limit: Duration,
    seed: u64,
) -> (Latency, usize) {
    let mut rng = Rng::new(seed);
    let now = jiff::Timestamp::now().as_millisecond();
    let started = Instant::now();
    let mut us = Vec::with_capacity(count);
    let mut failed = 0;
    while us.len() < count && started.elapsed() < limit {
        let a = store::args(kind, &mut rng, ids, profile, span_ms, now);
        let url = format!("{base}{}", path(&profile.tenant, kind, &a));
        let t = Instant::now();
        let ok = match http.get(&url).bearer_auth(token).send().await {
            Ok(r) => r.status().as_u16() == 200 && r.bytes().await.is_ok(),
            Err(_) => false,
        };
        us.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
        failed += usize::from(!ok);
    }
    (stats::latency(us), failed)
}

/// Where the CRUD mix goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// `hookline-api` at this base URL.
    Api(String),
    /// The kube-apiserver at this URL.
    Kube(String),
}

/// The three operations of the mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Op {
    /// Read one `Webhook` (60 %).
    Get,
    /// List the tenant's `Webhook`s (20 %).
    List,
    /// Merge-patch a label of one (20 %).
    Patch,
}

impl Op {
    fn draw(rng: &mut Rng) -> Op {
        match rng.below(10) {
            0 | 1 => Op::List,
            2 | 3 => Op::Patch,
            _ => Op::Get,
        }
    }
}

fn request(
    http: &reqwest::Client,
    target: &Target,
    token: &str,
    ns: &str,
    webhook: &str,
    op: Op,
    i: usize,
) -> reqwest::RequestBuilder {
    let (base, kube) = match target {
        Target::Api(b) => (format!("{b}/api/v1/tenants/{ns}/webhooks"), false),
        Target::Kube(s) => (
            format!("{s}/apis/hookline.dev/v1alpha1/namespaces/{ns}/webhooks"),
            true,
        ),
    };
    let r = match op {
        Op::List => http.get(&base),
        Op::Get => http.get(format!("{base}/{webhook}")),
        Op::Patch => {
            let labels = serde_json::json!({"hookline-bench/rev": i.to_string()});
            let (body, ct) = if kube {
                (
                    serde_json::json!({"metadata": {"labels": labels}}),
                    "application/merge-patch+json",
                )
            } else {
                (serde_json::json!({"labels": labels}), "application/json")
            };
            http.patch(format!("{base}/{webhook}"))
                .header("content-type", ct)
                .body(body.to_string())
        }
    };
    r.bearer_auth(token)
}

/// What an open-loop CRUD run measured.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Crud {
    /// Requests sent.
    pub sent: usize,
    /// Answered 2xx.
    pub ok: usize,
    /// Answers by status (and `error` for no answer).
    pub statuses: std::collections::BTreeMap<String, usize>,
    /// All requests, due time → answer read.
    pub latency: Latency,
    /// Per operation.
    pub by_op: std::collections::BTreeMap<String, Latency>,
    /// Sent ÷ time from the first due time to the last answer.
    pub rate: f64,
    /// How far behind its schedule a request was sent at worst, ms.
    pub max_send_lag_ms: f64,
}

/// Sends the mix open-loop at `rate` per second for `secs` to `target` as `token`, on the
/// `Webhook`s `webhooks` of `ns`.
#[allow(clippy::too_many_arguments)]
pub async fn crud(
    http: &reqwest::Client,
    target: &Target,
    token: &str,
    ns: &str,
    webhooks: &[String],
    rate: f64,
    secs: f64,
    seed: u64,
) -> Crud {
    let n = (rate * secs) as usize;
    let mut rng = Rng::new(seed);
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::with_capacity(n);
    let mut max_lag = Duration::ZERO;
    for i in 0..n {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due).await;
        max_lag = max_lag.max(tokio::time::Instant::now().saturating_duration_since(due));
        let op = Op::draw(&mut rng);
        let req = request(
            http,
            target,
            token,
            ns,
            &webhooks[rng.below(webhooks.len())],
            op,
            i,
        );
        tasks.push(tokio::spawn(async move {
            let status = match req.send().await {
                Ok(r) => {
                    let s = r.status().as_u16();
                    match r.bytes().await {
                        Ok(_) => s.to_string(),
                        Err(_) => "error".to_owned(),
                    }
                }
                Err(_) => "error".to_owned(),
            };
            (op, status, due, tokio::time::Instant::now())
        }));
    }
    let mut out = Crud {
        sent: n,
        max_send_lag_ms: max_lag.as_secs_f64() * 1000.0,
        ..Crud::default()
    };
    let mut all = Vec::with_capacity(n);
    let mut per: std::collections::BTreeMap<String, Vec<u32>> = Default::default();
    let mut last = start;
    for t in tasks {
        let Ok((op, status, due, done)) = t.await else {
            continue;
        };
        last = last.max(done);
        let us = u32::try_from(done.duration_since(due).as_micros()).unwrap_or(u32::MAX);
        if status.starts_with('2') {
            out.ok += 1;
        }
        *out.statuses.entry(status).or_insert(0) += 1;
        all.push(us);
        per.entry(format!("{op:?}")).or_default().push(us);
    }
    out.rate = n as f64 / last.duration_since(start).as_secs_f64().max(1e-3);
    out.latency = stats::latency(all);
    out.by_op = per
        .into_iter()
        .map(|(k, v)| (k, stats::latency(v)))
        .collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hookline_api::store::{Cursor, Filter, Status};

    #[test]
    fn query_paths_carry_every_filter_and_the_cursor() {
        let a = store::Args {
            event_id: "evt_1".into(),
            filter: Filter {
                webhook: Some("w0001".into()),
                status: Some(Status::DeadLettered),
                event_type: Some("order.paid".into()),
                ..Filter::default()
            },
            cursor: Some(Cursor {
                first_ms: 5,
                seq: 7,
            }),
            stats: (Some("w0002".into()), 0, 0, 0),
        };
        assert_eq!(
            path("t", Query::Event, &a),
            "/api/v1/tenants/t/deliveries/evt_1"
        );
        let p = path("t", Query::PageWebhookDeepCursor, &a);
        assert!(p.starts_with("/api/v1/tenants/t/deliveries?limit=100&webhook=w0001&status=dead_lettered&eventType=order.paid&cursor="), "{p}");
        assert_eq!(
            path("t", Query::Stats24hWebhook, &a),
            "/api/v1/tenants/t/stats?window=24h&webhook=w0002"
        );
    }
}

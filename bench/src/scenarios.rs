//! The scenarios of issue 7, each a list of [`Point`]s: a tenant namespace
//! with its `Webhook`s is made for a scenario, then every point alternates
//! baseline and Hookline runs (so slow drifts of a shared machine hit both),
//! and the runs are summarised as median / min / max. A [`Plan`] flows in,
//! [`run`] hands it to each scenario's module in turn, and the points flow out
//! to the report.
//!
//! | # | scenario | load | module |
//! | --- | --- | --- | --- |
//! | 1 | throughput | backlog drained by 1 and 10 webhooks (each event to one), 1 KiB and 5 KiB | [`throughput`] |
//! | 2 | latency | open loop at 100, 1,000, 5,000 events/s to one webhook | [`latency`] |
//! | 3 | fan-out | backlog, each event to all of 10 and of 100 webhooks | [`fan_out`] |
//! | 4 | isolation | 1 and 2 again with one more webhook whose receiver never answers | [`isolation`] |
//! | 5 | scale | 1,000 webhooks: controller time to Ready, dispatcher RSS and CPU | [`scale`] |
//! | 6 | recovery | receiver refuses while a backlog builds up, then comes back | [`recovery`] |
//! | 7 | delivery-log | `hookline-api`: store apply, ingest through Kafka, a 10M-attempt store's queries, `Webhook` CRUD | [`delivery_log`] |

pub mod delivery_log;
pub mod fan_out;
pub mod isolation;
pub mod latency;
pub mod recovery;
pub mod scale;
pub mod throughput;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use crate::cluster::{Env, Tenant, WebhookDef};
use crate::runner::{Bench, RunResult, Setup};
use crate::stats::{Spread, spread};

/// Listeners of the sink: `0..OK_PORTS` answer 200.
pub const OK_PORTS: usize = 100;
/// The listener that never answers.
pub const BLACKHOLE_PORT: usize = 100;
/// The listener that goes down and comes back (scenario 6).
pub const RECOVERY_PORT: usize = 101;
/// Listeners in all.
pub const PORTS: usize = 102;
/// The dispatcher's default `maxInFlight`: the baseline's concurrency per webhook.
pub const MAX_IN_FLIGHT: usize = 32;

/// Sizes and counts of a benchmark invocation.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// Runs per point.
    pub runs: usize,
    /// Scenarios to run.
    pub scenarios: Vec<u8>,
    /// Scenario 1: events of 1 KiB per backlog.
    pub backlog_1k: usize,
    /// Scenario 1: events of 5 KiB per backlog.
    pub backlog_5k: usize,
    /// Scenario 1: webhook counts.
    pub webhooks: Vec<usize>,
    /// Scenario 1: payload sizes.
    pub payloads: Vec<usize>,
    /// Scenario 3: deliveries per fan-out backlog.
    pub fanout_deliveries: usize,
    /// Scenario 3: fan-outs.
    pub fanouts: Vec<usize>,
    /// Scenario 2: rates.
    pub rates: Vec<f64>,
    /// Scenario 2: seconds per rate.
    pub rate_secs: f64,
    /// Scenario 5: webhooks.
    pub scale_webhooks: usize,
    /// Scenario 5: events/s.
    pub scale_rate: f64,
    /// Rate runs (scenarios 2, 4, 5): seconds of measured idleness before the load (CPU and
    /// RSS idle), after the warm-up events were delivered and one more second.
    pub idle_secs: f64,
    /// Scenario 6: backlog.
    pub recovery_events: usize,
    /// Bound on a backlog drain.
    pub drain_limit_s: u64,
    /// Bound on a recovery drain.
    pub recovery_limit_s: u64,
    /// Scenario 6: how long the receiver stays down at least.
    pub recovery_down_s: u64,
    /// `spec.delivery.maxInFlight` of the healthy webhooks (default: unset, i.e. 32).
    pub max_in_flight: Option<usize>,
    /// Scenario 7: attempts in the big store whose queries are measured.
    pub log_attempts: u64,
    /// Scenario 7: attempts per `apply` run into a fresh store.
    pub apply_attempts: u64,
    /// Scenario 7: attempt records per run through Kafka.
    pub kafka_attempts: u64,
    /// Scenario 7: queries per kind and run.
    pub log_queries: usize,
    /// Scenario 7: bound on filling the big store (seconds).
    pub fill_limit_s: u64,
    /// Scenario 7: bound per query kind and run (seconds).
    pub query_limit_s: u64,
    /// Scenario 7: requests/s of the `Webhook` CRUD mix.
    pub crud_rate: f64,
    /// Scenario 7: seconds of it per run.
    pub crud_secs: f64,
}

impl Plan {
    /// Everything, 3 runs per point (`make bench`).
    pub fn full() -> Plan {
        Plan {
            runs: 3,
            scenarios: vec![1, 2, 3, 4, 5, 6, 7],
            backlog_1k: 60_000,
            backlog_5k: 30_000,
            webhooks: vec![1, 10],
            payloads: vec![1024, 5120],
            fanout_deliveries: 60_000,
            fanouts: vec![10, 100],
            rates: vec![100.0, 1000.0, 5000.0],
            rate_secs: 20.0,
            scale_webhooks: 1000,
            scale_rate: 1000.0,
            idle_secs: 5.0,
            recovery_events: 100_000,
            drain_limit_s: 120,
            recovery_limit_s: 300,
            recovery_down_s: 20,
            max_in_flight: None,
            log_attempts: 10_000_000,
            apply_attempts: 1_000_000,
            kafka_attempts: 500_000,
            log_queries: 1000,
            fill_limit_s: 900,
            query_limit_s: 30,
            crud_rate: 200.0,
            crud_secs: 30.0,
        }
    }

    /// One run of a subset, smaller (`make bench QUICK=1`).
    pub fn quick() -> Plan {
        Plan {
            runs: 1,
            backlog_1k: 20_000,
            backlog_5k: 10_000,
            webhooks: vec![1, 10],
            payloads: vec![1024],
            fanout_deliveries: 20_000,
            fanouts: vec![10],
            rates: vec![1000.0],
            rate_secs: 10.0,
            recovery_events: 10_000,
            drain_limit_s: 60,
            recovery_limit_s: 120,
            recovery_down_s: 10,
            log_attempts: 1_000_000,
            apply_attempts: 200_000,
            kafka_attempts: 100_000,
            query_limit_s: 10,
            crud_secs: 10.0,
            ..Plan::full()
        }
    }

    /// Seconds of work: a few hundred events (the smoke test).
    pub fn smoke() -> Plan {
        Plan {
            runs: 1,
            scenarios: vec![1, 2],
            backlog_1k: 300,
            webhooks: vec![1],
            payloads: vec![1024],
            rates: vec![100.0],
            rate_secs: 2.0,
            drain_limit_s: 60,
            ..Plan::quick()
        }
    }
}

/// One measured configuration.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Point {
    /// `throughput`, `latency`, `fan-out`, `isolation`, `scale`, `recovery`.
    pub scenario: String,
    /// What varies, for a person.
    pub name: String,
    /// `rate` (deliveries/s headline) or `latency` (percentiles headline).
    pub kind: String,
    /// The parameters.
    pub params: serde_json::Value,
    /// Hookline's runs.
    pub hookline: Vec<RunResult>,
    /// The baseline's runs.
    pub baseline: Vec<RunResult>,
    /// Median / min / max of every figure.
    pub summary: BTreeMap<String, Spread>,
    /// Remarks.
    pub notes: Vec<String>,
}

impl Point {
    fn new(scenario: &str, name: String, kind: &str, params: serde_json::Value) -> Point {
        Point {
            scenario: scenario.into(),
            name,
            kind: kind.into(),
            params,
            ..Point::default()
        }
    }

    /// Computes [`Point::summary`] from the runs.
    pub fn summarise(&mut self) {
        let mut put = |k: &str, v: Vec<f64>| {
            if !v.is_empty() {
                self.summary.insert(k.to_owned(), spread(&v));
            }
        };
        let h = &self.hookline;
        let b = &self.baseline;
        let of = |runs: &[RunResult], f: &dyn Fn(&RunResult) -> Option<f64>| -> Vec<f64> {
            runs.iter().filter_map(f).collect()
        };
        put("rate", of(h, &|r| Some(r.rate)));
        put("baseline_rate", of(b, &|r| Some(r.rate)));
        put(
            if self.kind == "rate" {
                "ratio"
            } else {
                "load_ratio"
            },
            h.iter()
                .zip(b)
                .filter(|(_, b)| b.rate > 0.0)
                .map(|(h, b)| h.rate / b.rate)
                .collect(),
        );
        for (k, f) in [
            (
                "p50_ms",
                (|l: &crate::stats::Latency| l.p50_ms) as fn(&crate::stats::Latency) -> f64,
            ),
            ("p95_ms", |l| l.p95_ms),
            ("p99_ms", |l| l.p99_ms),
            ("max_ms", |l| l.max_ms),
        ] {
            put(k, of(h, &|r| r.latency.as_ref().map(f)));
            put(
                &format!("baseline_{k}"),
                of(b, &|r| r.latency.as_ref().map(f)),
            );
        }
        for role in ["dispatcher", "kafka", "bench", "api", "apiserver"] {
            put(
                &format!("{role}_cores"),
                of(h, &|r| {
                    r.cpu
                        .as_ref()
                        .filter(|c| c.procs.contains_key(role))
                        .map(|c| c.cores(role))
                }),
            );
            put(
                &format!("baseline_{role}_cores"),
                of(b, &|r| {
                    r.cpu
                        .as_ref()
                        .filter(|c| c.procs.contains_key(role))
                        .map(|c| c.cores(role))
                }),
            );
        }
        put(
            "machine_cores",
            of(h, &|r| r.cpu.as_ref().map(|c| c.machine_cores)),
        );
        put(
            "dispatcher_cpu_ms_per_1k",
            of(h, &|r| r.dispatcher_cpu_ms_per_1k),
        );
        put(
            "idle_dispatcher_cores",
            of(h, &|r| r.idle.as_ref().map(|c| c.cores("dispatcher"))),
        );
        put("rss_idle_mib", of(h, &|r| r.rss_idle_mib));
        put("rss_peak_mib", of(h, &|r| r.rss_peak_mib));
        put("ready_s", of(h, &|r| r.ready_s));
        put("drain_after_return_s", of(h, &|r| r.drain_after_return_s));
        put(
            "drain_rate",
            of(h, &|r| {
                r.drain_after_return_s
                    .map(|d| r.delivered as f64 / d.max(1e-3))
            }),
        );
        put("duplicates", of(h, &|r| Some(r.duplicates as f64)));
        put(
            "retried_arrivals",
            of(h, &|r| Some(r.retried_arrivals as f64)),
        );
        put(
            "postponed",
            of(h, &|r| {
                r.counters
                    .as_ref()
                    .map(|c| c.retries_scheduled.values().sum())
            }),
        );
    }
}

/// What the scenarios need.
pub struct Ctx<'a> {
    /// The machinery.
    pub bench: &'a Bench,
    /// Admin client.
    pub client: kube::Client,
    /// The environment.
    pub env: &'a Env,
    /// The plan.
    pub plan: &'a Plan,
    /// Scenario 7: the `hookline-api` binary and where its stores go.
    pub api: delivery_log::ApiSetup,
}

fn defs(
    ctx: &Ctx<'_>,
    n: usize,
    types: impl Fn(usize) -> Vec<String>,
    shared_secret: bool,
) -> Vec<WebhookDef> {
    (0..n)
        .map(|i| WebhookDef {
            name: format!("w{i:04}"),
            url: ctx.bench.sink.url(i % OK_PORTS, i),
            event_types: types(i),
            delivery: ctx.plan.max_in_flight.map(|m| json!({"maxInFlight": m})),
            shared_secret,
        })
        .collect()
}

async fn tenant(ctx: &Ctx<'_>, label: &str, defs: &[WebhookDef]) -> anyhow::Result<Tenant> {
    let t = Tenant::create(ctx.env, &ctx.client, label).await?;
    t.create_webhooks(defs, 8).await?;
    if t.wait_ready(Duration::from_secs(180), Instant::now())
        .await?
        .is_none()
    {
        eprintln!(
            "  (continuing: the benchmark's dispatcher does not need Ready, only the Webhooks and the Secret)"
        );
    }
    Ok(t)
}

fn say(p: &Point, r: &RunResult) {
    let lat = r.latency.as_ref().map_or(String::new(), |l| {
        format!(
            "  p50 {:.2} ms  p99 {:.2} ms  max {:.1} ms",
            l.p50_ms, l.p99_ms, l.max_ms
        )
    });
    eprintln!(
        "  {} {:<9} {} {:>9.0}/s  {}/{} delivered, {} dup{}{}",
        p.scenario,
        r.system,
        r.run,
        r.rate,
        r.delivered,
        r.expected,
        r.duplicates,
        lat,
        if r.notes.is_empty() {
            String::new()
        } else {
            format!("  [{}]", r.notes.join("; "))
        }
    );
}

async fn backlog_point(
    ctx: &Ctx<'_>,
    mut p: Point,
    s: &Setup,
    events: usize,
    baseline: bool,
) -> Point {
    let limit = Duration::from_secs(ctx.plan.drain_limit_s);
    for _ in 0..ctx.plan.runs {
        if baseline {
            match ctx.bench.baseline_backlog(s, events, limit).await {
                Ok(r) => {
                    say(&p, &r);
                    p.baseline.push(r);
                }
                Err(e) => p.notes.push(format!("baseline run failed: {e:#}")),
            }
        }
        match ctx.bench.hookline_backlog(s, events, limit).await {
            Ok(r) => {
                say(&p, &r);
                p.hookline.push(r);
            }
            Err(e) => p.notes.push(format!("hookline run failed: {e:#}")),
        }
    }
    p.summarise();
    p
}

async fn rate_point(
    ctx: &Ctx<'_>,
    mut p: Point,
    s: &Setup,
    rate: f64,
    secs: f64,
    baseline: bool,
) -> Point {
    for _ in 0..ctx.plan.runs {
        if baseline {
            match ctx.bench.baseline_rate(s, rate, secs).await {
                Ok(r) => {
                    say(&p, &r);
                    p.baseline.push(r);
                }
                Err(e) => p.notes.push(format!("baseline run failed: {e:#}")),
            }
        }
        match ctx
            .bench
            .hookline_rate(s, rate, secs, ctx.plan.idle_secs)
            .await
        {
            Ok(r) => {
                say(&p, &r);
                p.hookline.push(r);
            }
            Err(e) => p.notes.push(format!("hookline run failed: {e:#}")),
        }
    }
    p.summarise();
    p
}

fn setup(
    ctx: &Ctx<'_>,
    t: &Tenant,
    webhooks: usize,
    total: usize,
    fan_out: bool,
    types: Vec<String>,
    value_bytes: usize,
) -> Setup {
    let sink = &ctx.bench.sink;
    Setup {
        ns: t.name().to_owned(),
        webhooks: total,
        per_event: if fan_out { webhooks } else { 1 },
        types,
        value_bytes,
        urls: (0..webhooks).map(|i| sink.url(i % OK_PORTS, i)).collect(),
        fan_out,
        concurrency: webhooks * ctx.plan.max_in_flight.unwrap_or(MAX_IN_FLIGHT),
    }
}

fn kib(bytes: usize) -> String {
    format!("{} KiB", bytes / 1024)
}

/// Runs the plan's scenarios in order; a failing scenario is noted and the rest still run.
pub async fn run(ctx: &Ctx<'_>) -> Vec<Point> {
    let mut out = Vec::new();
    for &sc in &ctx.plan.scenarios {
        let result = match sc {
            1 => throughput::run(ctx, &mut out, false).await,
            2 => latency::run(ctx, &mut out, false).await,
            3 => fan_out::run(ctx, &mut out).await,
            4 => isolation::run(ctx, &mut out).await,
            5 => scale::run(ctx, &mut out).await,
            6 => recovery::run(ctx, &mut out).await,
            7 => delivery_log::run(ctx, &mut out).await,
            _ => Ok(()),
        };
        isolation::compare(&mut out);
        if let Err(e) = result {
            eprintln!("scenario {sc} failed: {e:#}");
            out.push(Point {
                scenario: format!("scenario {sc}"),
                name: "failed".into(),
                notes: vec![format!("{e:#}")],
                ..Point::default()
            });
        }
    }
    out
}

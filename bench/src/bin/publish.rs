//! `publish`: what one release `hookline-api` accepts over HTTP (issue 13), against a raw
//! librdkafka producer with the API's own producer settings doing the same writes in the same
//! run, and what publishing over HTTP adds to end-to-end latency; also the dispatcher's cost of
//! duplicate suppression (an A/B of `--dedup-topic`).
//!
//! Flow: the environment (read, never started) → two tenants: one only to publish into (its
//! events topic, nothing reads it), one with a `Webhook` for a release dispatcher of this
//! benchmark's own ([`delivery`]) → a release `hookline-api` started through the test harness →
//! the loads of [`load`] (closed loop: single events and batches; open loop at a fixed rate) →
//! the sink → medians over runs → `bench/results/runs/publish-<time>.{json,txt}`.
//!
//! Run: `cargo build --release -p hookline-api -p hookline-dispatcher -p hookline-bench &&
//! $CARGO_TARGET_DIR/release/publish [--quick]`.

#[path = "publish/delivery.rs"]
mod delivery;
#[path = "publish/load.rs"]
mod load;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use hookline_bench::cluster::{self, Env};
use hookline_bench::procstat::{CpuSplit, Snapshot, Watched};
use hookline_bench::sink::Sink;
use hookline_bench::stats::{Spread, spread};
use hookline_core::naming;
use hookline_tests::api::{ApiOptions, OwnApi, tenant_token};
use hookline_tests::{LogDump, cache_dir, repo_root};
use rdkafka::producer::FutureProducer;
use serde::Serialize;

use delivery::{Ctx, Drain, EndToEnd};
use load::{Conns, Done, Http, Kafka};

#[derive(Parser, Debug, Clone, Serialize)]
#[command(about = "Publishing over HTTP (hookline-api) against a raw producer; dedup A/B")]
struct Cli {
    /// A short run: one run per point, small sizes.
    #[arg(long)]
    quick: bool,
    /// Runs per point (medians are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Size of each event (the record value), bytes.
    #[arg(long, default_value_t = 1024)]
    bytes: usize,
    /// Keep-alive connections of the single-event closed loop.
    #[arg(long, value_delimiter = ',', default_value = "8,32,64")]
    concurrency: Vec<usize>,
    /// Connections of the batch closed loop.
    #[arg(long, value_delimiter = ',', default_value = "2,4,8")]
    batch_concurrency: Vec<usize>,
    /// Events per batch.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Length of each closed-loop run, seconds.
    #[arg(long, default_value_t = 8.0)]
    secs: f64,
    /// Open-loop rate (requests of one event per second).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Length of each open-loop run, seconds.
    #[arg(long, default_value_t = 20.0)]
    open_secs: f64,
    /// Backlog of each dedup A/B drain.
    #[arg(long, default_value_t = 60_000)]
    drain_events: usize,
    /// The `hookline-api` binary (default: the release build next to this one).
    #[arg(long)]
    api_bin: Option<PathBuf>,
    /// The `hookline-dispatcher` binary (default: the release build next to this one).
    #[arg(long)]
    dispatcher_bin: Option<PathBuf>,
    /// Results directory.
    #[arg(long)]
    out: Option<PathBuf>,
}

impl Cli {
    fn sized(mut self) -> Cli {
        if self.quick {
            self.runs = 1;
            self.concurrency = vec![32];
            self.batch_concurrency = vec![4];
            self.secs = 3.0;
            self.open_secs = 5.0;
            self.drain_events = 10_000;
        }
        self
    }
}

/// One closed- or open-loop run of one system.
#[derive(Debug, Clone, Serialize)]
struct Measured {
    /// `api` or `kafka` (the raw producer).
    system: String,
    done: Done,
    cpu: CpuSplit,
}

/// Runs of both systems at one point.
#[derive(Debug, Clone, Serialize)]
struct Point {
    /// `single`, `batch` or `open`.
    kind: String,
    /// Connections (closed loop) or requests per second (open loop).
    level: f64,
    /// Events per request.
    per_request: usize,
    runs: Vec<Measured>,
}

#[derive(Debug, Serialize)]
struct Report {
    started: String,
    git: String,
    cli: Cli,
    cpus: usize,
    loadavg_before: String,
    loadavg_after: String,
    api_bin: String,
    dispatcher_bin: String,
    points: Vec<Point>,
    end_to_end: Vec<EndToEnd>,
    drains: Vec<Drain>,
    notes: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse().sized();
    hookline_bench::install_crypto_provider();
    hookline_bench::clock::origin();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-rt")
        .enable_all()
        .build()?;
    rt.block_on(run(cli))
}

fn release_bin(flag: Option<&PathBuf>, name: &str) -> anyhow::Result<PathBuf> {
    let bin = flag.cloned().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join(name)))
            .filter(|p| p.exists())
            .unwrap_or_else(|| cache_dir().join("target/release").join(name))
    });
    anyhow::ensure!(
        bin.exists(),
        "{} not found: cargo build --release -p {name}",
        bin.display()
    );
    Ok(bin)
}

/// The producer the API uses (`hookline_core::kafka::producer` plus `Publisher::new`'s
/// `message.timeout.ms` and `linger.ms`).
fn api_like_producer(env: &Env, timeout: Duration) -> anyhow::Result<FutureProducer> {
    let mut config = rdkafka::ClientConfig::new();
    let base = hookline_core::kafka::base(&env.kafka_bootstrap, std::iter::empty());
    for (k, v) in
        hookline_core::kafka::producer(&base, hookline_core::envelope::DEFAULT_MAX_RECORD_BYTES)
    {
        config.set(k, v);
    }
    config.set("message.timeout.ms", timeout.as_millis().to_string());
    config.set("linger.ms", "2");
    Ok(config.create()?)
}

/// Runs `load` on `sender` with the CPU of `watched` measured around it.
async fn measured(system: &str, watched: &Watched, load: impl Future<Output = Done>) -> Measured {
    let a = Snapshot::take(watched);
    let done = load.await;
    let cpu = CpuSplit::between(&a, &Snapshot::take(watched));
    eprintln!(
        "    {system}: {:.0} events/s, p50 {:.2} ms, p99 {:.2} ms, rejected {:?}, machine {:.2} cores",
        done.events_per_s,
        done.latency.p50_ms,
        done.latency.p99_ms,
        done.rejected,
        cpu.machine_cores
    );
    Measured {
        system: system.to_owned(),
        done,
        cpu,
    }
}

struct Senders {
    conns: Arc<Conns>,
    path: String,
    auth: String,
    producer: FutureProducer,
    topic: String,
    bytes: usize,
}

impl Senders {
    fn http(&self, prefix: &str) -> Arc<Http> {
        Arc::new(Http {
            conns: self.conns.clone(),
            path: self.path.clone(),
            auth: self.auth.clone(),
            prefix: prefix.to_owned(),
            bytes: self.bytes,
        })
    }

    fn kafka(&self, prefix: &str) -> Arc<Kafka> {
        Arc::new(Kafka {
            producer: self.producer.clone(),
            topic: self.topic.clone(),
            prefix: prefix.to_owned(),
            bytes: self.bytes,
            timeout: Duration::from_secs(5),
        })
    }
}

/// Most events one closed-loop run sends (it is bounded by time first).
const MAX: usize = 50_000_000;

/// Closed-loop runs at `concurrency` with `per` events per request, alternating the systems.
async fn closed_point(
    s: &Senders,
    watched: &Watched,
    cli: &Cli,
    kind: &str,
    concurrency: usize,
    per: usize,
) -> Point {
    eprintln!("  {kind}, {concurrency} connections, {per} per request");
    let limit = Duration::from_secs_f64(cli.secs);
    let mut runs = Vec::new();
    for r in 0..cli.runs {
        let tag = format!("{kind}{concurrency}r{r}-");
        let api = async || {
            let load = load::closed(s.http(&format!("a{tag}")), concurrency, per, limit, MAX);
            measured("api", watched, load).await
        };
        let raw = async || {
            let load = load::closed(s.kafka(&format!("k{tag}")), concurrency, per, limit, MAX);
            measured("kafka", watched, load).await
        };
        if r.is_multiple_of(2) {
            runs.push(api().await);
            runs.push(raw().await);
        } else {
            runs.push(raw().await);
            runs.push(api().await);
        }
    }
    Point {
        kind: kind.to_owned(),
        level: concurrency as f64,
        per_request: per,
        runs,
    }
}

/// Open-loop runs at `cli.rate` for `cli.open_secs`, alternating the systems.
async fn open_point(s: &Senders, watched: &Watched, cli: &Cli) -> Point {
    eprintln!("  open loop, {} requests/s", cli.rate);
    let n = (cli.rate * cli.open_secs) as usize;
    let rate = cli.rate;
    let mut runs = Vec::new();
    for r in 0..cli.runs {
        let api = async || {
            let load = load::open(s.http(&format!("aopen{r}-")), 0, n, rate, 2_000);
            measured("api", watched, load).await
        };
        let raw = async || {
            let load = load::open(s.kafka(&format!("kopen{r}-")), 0, n, rate, 2_000);
            measured("kafka", watched, load).await
        };
        if r.is_multiple_of(2) {
            runs.push(api().await);
            runs.push(raw().await);
        } else {
            runs.push(raw().await);
            runs.push(api().await);
        }
    }
    Point {
        kind: "open".into(),
        level: cli.rate,
        per_request: 1,
        runs,
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let started = jiff::Timestamp::now();
    let stamp = started.strftime("%Y%m%dT%H%M%SZ").to_string();
    let loadavg_before = hookline_bench::report::loadavg();
    let api_bin = release_bin(cli.api_bin.as_ref(), "hookline-api")?;
    let dispatcher_bin = release_bin(cli.dispatcher_bin.as_ref(), "hookline-dispatcher")?;
    let env = Env::read()?;
    let client = env.client().await?;
    cluster::ensure_controller(&env, &client).await?;
    let logs = cache_dir()
        .join("bench/logs")
        .join(format!("publish-{stamp}"));
    std::fs::create_dir_all(&logs)?;
    eprintln!(
        "publish: api {}, dispatcher {}, logs in {}",
        api_bin.display(),
        dispatcher_bin.display(),
        logs.display()
    );
    let sink = Sink::start(1).await?;

    // Tenant A: only published into. Tenant B: a Webhook for the bench's own dispatcher.
    let ta = cluster::Tenant::create(&env, &client, "pub").await?;
    let tb = cluster::Tenant::create(&env, &client, "pube2e").await?;
    let (na, nb) = (ta.name().to_owned(), tb.name().to_owned());
    let (topics_a, topics_b) = (naming::topics(&na), naming::topics(&nb));
    delivery::create_topics(&env, std::slice::from_ref(&topics_a.events), &[], 6).await?;
    let all_b: Vec<String> = topics_b.all().into_iter().map(str::to_owned).collect();
    delivery::create_topics(&env, &all_b, std::slice::from_ref(&topics_b.dedup), 6).await?;
    delivery::create_webhook(&tb, &sink.url(0, 0), "bench-publish").await?;
    let token_a = tenant_token(&client, &na, "publisher", Some("hookline-publisher")).await?;
    let token_b = tenant_token(&client, &nb, "publisher", Some("hookline-publisher")).await?;

    let mut dump = LogDump::new();
    let api = OwnApi::start_built(
        &env,
        &client,
        &mut dump,
        &["--publish-rate=100000000", "--auth-cache=10s"],
        ApiOptions {
            binary: Some(api_bin.clone()),
            log_level: Some("info,kube=warn,rdkafka=warn".into()),
        },
    )
    .await?;
    let api_pid = api.pid().context("hookline-api is not running")?;
    let mut watched = Watched {
        pids: vec![
            ("bench".to_owned(), std::process::id()),
            ("api".to_owned(), api_pid),
        ],
    };
    if let Some(k) = cluster::kafka_pid() {
        watched.pids.push(("kafka".into(), k));
    }
    let http = Conns::new(&api.base)?;
    let producer = api_like_producer(&env, Duration::from_secs(5))?;
    let senders_a = Senders {
        conns: http.clone(),
        path: format!("/api/v1/tenants/{na}/events"),
        auth: format!("Bearer {token_a}"),
        producer: producer.clone(),
        topic: topics_a.events.clone(),
        bytes: cli.bytes,
    };
    let senders_b = Senders {
        path: format!("/api/v1/tenants/{nb}/events"),
        auth: format!("Bearer {token_b}"),
        topic: topics_b.events.clone(),
        ..Senders {
            conns: http.clone(),
            path: String::new(),
            auth: String::new(),
            producer: producer.clone(),
            topic: String::new(),
            bytes: cli.bytes,
        }
    };
    let mut notes = Vec::new();
    // The benchmark runs its own release hookline-api; the chart's debug one would only read the
    // attempts topics of the end-to-end runs into its delivery log, at up to half a core.
    let chart_api = cluster::scale_chart_api(&client, 0).await;
    if let Some(was) = chart_api {
        notes.push(format!(
            "the chart's hookline-api scaled from {was} to 0 replicas during the benchmark"
        ));
    }

    eprintln!("warm-up (3 s of each system, not reported)");
    let warm = Duration::from_secs(3);
    load::closed(senders_a.http("warm-"), 16, 1, warm, usize::MAX).await;
    load::closed(senders_a.kafka("warmk-"), 16, 1, warm, usize::MAX).await;

    let mut points = Vec::new();
    eprintln!("goal 1: single events, closed loop");
    for &c in &cli.concurrency {
        points.push(closed_point(&senders_a, &watched, &cli, "single", c, 1).await);
    }
    eprintln!("goal 2: batches of {}, closed loop", cli.batch);
    for &c in &cli.batch_concurrency {
        points.push(closed_point(&senders_a, &watched, &cli, "batch", c, cli.batch).await);
    }
    eprintln!("goal 3: open loop");
    points.push(open_point(&senders_a, &watched, &cli).await);

    eprintln!("goal 4: end to end (release dispatcher with the tenant's dedup topic)");
    let ctx = Ctx {
        env: &env,
        ns: &nb,
        sink: &sink,
        bin: &dispatcher_bin,
        logs: &logs,
        watched: &watched,
    };
    let group = format!("hlb-publish.{nb}");
    let (d, ready_s) = ctx
        .dispatcher(
            &delivery::tenant_topics(&nb, &group),
            Some(&topics_b.dedup),
            "e2e",
        )
        .await?;
    eprintln!("  dispatcher ready in {ready_s:.1} s");
    let n = (cli.rate * cli.open_secs) as usize;
    let w = delivery::end_to_end(
        &ctx,
        &d,
        "warm",
        senders_b.http("w2e-"),
        "w2e-",
        500.0,
        1000,
    )
    .await;
    if w.delivered < w.expected {
        notes.push(format!(
            "end-to-end warm-up: {} of {} delivered within 30 s",
            w.delivered, w.expected
        ));
    }
    let mut e2e = Vec::new();
    for r in 0..cli.runs {
        let (pa, pk) = (format!("e2ea{r}-"), format!("e2ek{r}-"));
        let api_run = async || {
            delivery::end_to_end(&ctx, &d, "api", senders_b.http(&pa), &pa, cli.rate, n).await
        };
        let raw_run = async || {
            delivery::end_to_end(&ctx, &d, "kafka", senders_b.kafka(&pk), &pk, cli.rate, n).await
        };
        let pair = if r.is_multiple_of(2) {
            [api_run().await, raw_run().await]
        } else {
            [raw_run().await, api_run().await]
        };
        for x in pair {
            eprintln!(
                "    {}: {} of {} delivered, send p99 {:.2} ms, e2e p50 {:.2} ms p99 {:.2} ms max {:.1} ms",
                x.system,
                x.delivered,
                x.expected,
                x.sent.latency.p99_ms,
                x.e2e.p50_ms,
                x.e2e.p99_ms,
                x.e2e.max_ms
            );
            e2e.push(x);
        }
    }
    d.stop(Duration::from_secs(30)).await;

    eprintln!(
        "duplicate suppression: A/B of --dedup-topic, backlogs of {}",
        cli.drain_events
    );
    let mut drains = Vec::new();
    let bulk = {
        let mut config = rdkafka::ClientConfig::new();
        config
            .set("bootstrap.servers", &env.kafka_bootstrap)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "500000");
        config.create::<FutureProducer>()?
    };
    let tag = &hookline_tests::random_suffix()[..4];
    for r in 0..cli.runs {
        let order = if r.is_multiple_of(2) {
            [false, true]
        } else {
            [true, false]
        };
        for dedup in order {
            let run = format!("d{tag}{r}{}", if dedup { "on" } else { "off" });
            let x = delivery::drain(&ctx, &bulk, &run, cli.drain_events, cli.bytes, dedup).await?;
            eprintln!(
                "    dedup {}: {:.0}/s, {:.1} CPU-ms per 1,000, ready in {:.1} s, {} of {}",
                if dedup { "on " } else { "off" },
                x.rate,
                x.cpu_ms_per_1k,
                x.ready_s,
                x.delivered,
                x.events
            );
            drains.push(x);
        }
    }

    let report = Report {
        started: started.to_string(),
        git: hookline_bench::report::git_describe(),
        cpus: hookline_bench::procstat::cpus(),
        loadavg_before,
        loadavg_after: hookline_bench::report::loadavg(),
        api_bin: api_bin.display().to_string(),
        dispatcher_bin: dispatcher_bin.display().to_string(),
        cli: cli.clone(),
        points,
        end_to_end: e2e,
        drains,
        notes,
    };
    let out = cli
        .out
        .clone()
        .unwrap_or_else(|| repo_root().join("bench/results/runs"));
    std::fs::create_dir_all(&out)?;
    let text = table(&report);
    let (json_path, txt_path) = (
        out.join(format!("publish-{stamp}.json")),
        out.join(format!("publish-{stamp}.txt")),
    );
    std::fs::write(&json_path, serde_json::to_vec_pretty(&report)?)?;
    std::fs::write(&txt_path, &text)?;
    println!("{text}");
    eprintln!("wrote {} and {}", json_path.display(), txt_path.display());
    drop(api);
    if let Some(was) = chart_api {
        cluster::scale_chart_api(&client, was).await;
    }
    ta.delete().await;
    tb.delete().await;
    Ok(())
}

/// Cores used by processes this benchmark does not watch (other benchmarks, builds, the
/// environment's API server): the machine's busy cores less the watched ones.
fn others(cpu: &CpuSplit) -> f64 {
    let watched: f64 = cpu.procs.values().map(|p| p.cores).sum();
    (cpu.machine_cores - watched).max(0.0)
}

fn sp(xs: impl Iterator<Item = f64>) -> Spread {
    spread(&xs.collect::<Vec<_>>())
}

fn fmt_rate(s: &Spread) -> String {
    format!(
        "{} [{}–{}]",
        thousands(s.median),
        thousands(s.min),
        thousands(s.max)
    )
}

fn thousands(x: f64) -> String {
    let n = x.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    if n < 0 { format!("-{out}") } else { out }
}

fn ms(s: &Spread) -> String {
    format!("{:.2} [{:.2}–{:.2}]", s.median, s.min, s.max)
}

/// The text report: per point, medians [min–max] of both systems and their ratio.
fn table(r: &Report) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "publish — {} (git {}), {} CPUs, load average before {} / after {}",
        r.started, r.git, r.cpus, r.loadavg_before, r.loadavg_after
    );
    let _ = writeln!(
        t,
        "events of {} B; median [min–max] of {} run(s); api = hookline-api (release), kafka = raw producer with the API's settings\n",
        r.cli.bytes, r.cli.runs
    );
    for p in &r.points {
        let of = |sys: &'static str| p.runs.iter().filter(move |m| m.system == sys);
        let label = match p.kind.as_str() {
            "open" => format!("open loop, {} requests/s of 1 event", p.level),
            k => format!(
                "{k}, {} connections, {} per request",
                p.level, p.per_request
            ),
        };
        let _ = writeln!(t, "{label}");
        for sys in ["api", "kafka"] {
            let rate = sp(of(sys).map(|m| m.done.events_per_s));
            let p50 = sp(of(sys).map(|m| m.done.latency.p50_ms));
            let p99 = sp(of(sys).map(|m| m.done.latency.p99_ms));
            let max = sp(of(sys).map(|m| m.done.latency.max_ms));
            let core = |role: &str| sp(of(sys).map(|m| m.cpu.cores(role))).median;
            let machine = sp(of(sys).map(|m| m.cpu.machine_cores)).median;
            let others = sp(of(sys).map(|m| others(&m.cpu))).median;
            let rejected: u64 = of(sys).flat_map(|m| m.done.rejected.values()).sum();
            let _ = writeln!(
                t,
                "  {sys:5} {} events/s; latency p50 {} ms, p99 {} ms, max {:.1} ms; cores api {:.2} kafka {:.2} bench {:.2}, others {others:.2} (machine {:.2}){}",
                fmt_rate(&rate),
                ms(&p50),
                ms(&p99),
                max.median,
                core("api"),
                core("kafka"),
                core("bench"),
                machine,
                if rejected > 0 {
                    format!("; {rejected} requests not accepted")
                } else {
                    String::new()
                }
            );
        }
        let ratios: Vec<f64> = of("api")
            .zip(of("kafka"))
            .map(|(a, k)| a.done.events_per_s / k.done.events_per_s.max(1e-9))
            .collect();
        if p.kind != "open" {
            let s = spread(&ratios);
            let _ = writeln!(
                t,
                "  ratio api/kafka {:.2} [{:.2}–{:.2}]",
                s.median, s.min, s.max
            );
        }
    }
    let _ = writeln!(
        t,
        "\nend to end at {} events/s (due time → first arrival at the receiver; release dispatcher with --dedup-topic)",
        r.cli.rate
    );
    for sys in ["api", "kafka"] {
        let of = || r.end_to_end.iter().filter(|e| e.system == sys);
        let p50 = sp(of().map(|e| e.e2e.p50_ms));
        let p99 = sp(of().map(|e| e.e2e.p99_ms));
        let max = sp(of().map(|e| e.e2e.max_ms));
        let send99 = sp(of().map(|e| e.sent.latency.p99_ms));
        let lost: u64 = of().map(|e| e.expected - e.delivered.min(e.expected)).sum();
        let dups: u64 = of().map(|e| e.duplicates).sum();
        let dcores = sp(of().map(|e| e.cpu.cores("dispatcher"))).median;
        let acores = sp(of().map(|e| e.cpu.cores("api"))).median;
        let ocores = sp(of().map(|e| others(&e.cpu))).median;
        let _ = writeln!(
            t,
            "  {sys:5} p50 {} ms, p99 {} ms, max {:.1} ms; send p99 {} ms; cores dispatcher {dcores:.2} api {acores:.2}, others {ocores:.2}; {lost} missing, {dups} duplicates",
            ms(&p50),
            ms(&p99),
            max.median,
            ms(&send99)
        );
    }
    let _ = writeln!(
        t,
        "\nduplicate suppression: backlogs of {} drained by a release dispatcher, alternating",
        r.cli.drain_events
    );
    for dedup in [false, true] {
        let of = || r.drains.iter().filter(|d| d.dedup == dedup);
        let rate = sp(of().map(|d| d.rate));
        let cpu = sp(of().map(|d| d.cpu_ms_per_1k));
        let ready = sp(of().map(|d| d.ready_s));
        let cores = sp(of().map(|d| d.cpu.cores("dispatcher"))).median;
        let ocores = sp(of().map(|d| others(&d.cpu))).median;
        let _ = writeln!(
            t,
            "  {} {} deliveries/s; {:.1} [{:.1}–{:.1}] dispatcher CPU-ms per 1,000 ({cores:.2} cores; others {ocores:.2}); ready in {:.1} s",
            if dedup {
                "--dedup-topic   "
            } else {
                "no --dedup-topic"
            },
            fmt_rate(&rate),
            cpu.median,
            cpu.min,
            cpu.max,
            ready.median
        );
    }
    let pairs: Vec<f64> = r
        .drains
        .chunks(2)
        .filter_map(|c| {
            let on = c.iter().find(|d| d.dedup)?;
            let off = c.iter().find(|d| !d.dedup)?;
            Some(on.rate / off.rate.max(1e-9))
        })
        .collect();
    let s = spread(&pairs);
    let _ = writeln!(
        t,
        "  rate with / without, per pair: {:.2} [{:.2}–{:.2}]",
        s.median, s.min, s.max
    );
    for n in &r.notes {
        let _ = writeln!(t, "note: {n}");
    }
    t
}

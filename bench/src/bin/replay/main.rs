//! `replay`: how fast the controller's replay runner moves a `Webhook`'s dead letters back into
//! delivery (issue 15; goal ≥ 10,000 events/s from the dead-letter topic).
//!
//! Flow: the environment (read, never started) → a tenant whose `Webhook` `bench` is labelled
//! for another controller instance (the chart's controller leaves it and its replays alone), its
//! topics made here as the controller makes them → a dead-letter topic filled by a raw producer
//! with `N` dead letters of `bench` and `N/10` of another `Webhook` (not measured) →
//! - **queueing**: [`hookline_controller::replay::inject`] at an unbounded rate, a fresh replay
//!   uid per run (so each starts from scratch), writing to a scratch retry topic; records queued
//!   per second = `matched` ÷ wall time of `inject`. Baseline in the same run, alternating: a
//!   raw librdkafka consumer + producer (the same read settings, `acks=all`, idempotent, no
//!   transactions, no filtering) copying the same dead-letter range into another scratch topic.
//! - **end to end**: a real `WebhookReplay` object (so the dispatcher does not drop its
//!   deliveries as cancelled), `inject` into the tenant's first retry tier, and a release
//!   dispatcher of the benchmark's own ([`delivery`]) reading the tenant's topics and delivering
//!   to the bench sink; time from the start of `inject` to the sink's `N`-th first arrival.
//!
//! → medians over runs → `bench/results/runs/replay-<time>.{json,txt}`.
//!
//! Run: `cargo build --release -p hookline-dispatcher -p hookline-bench &&
//! $CARGO_TARGET_DIR/release/replay [--quick]`.

#[path = "../publish/delivery.rs"]
#[allow(dead_code)]
mod delivery;
#[path = "../publish/load.rs"]
#[allow(dead_code)]
mod load;
mod queueing;

use queueing::{base, config, end_to_end, fill, queue_inject, queue_raw};

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use hookline_bench::cluster::{self, Env};
use hookline_bench::procstat::{CpuSplit, Watched};
use hookline_bench::sink::Sink;
use hookline_bench::stats::{Spread, spread};
use hookline_controller::replay::ranges;
use hookline_core::naming;
use hookline_crds::WebhookReplay;
use hookline_tests::{cache_dir, repo_root};
use kube::api::Api;
use serde::Serialize;

use delivery::Ctx;

#[derive(Parser, Debug, Clone, Serialize)]
#[command(
    about = "Replay throughput: dead letters re-queued by the controller's runner, and delivered"
)]
struct Cli {
    /// A short run: N = 20,000, one run of each.
    #[arg(long)]
    quick: bool,
    /// Dead letters of the replayed `Webhook` (N); N/10 of another one are added.
    #[arg(long, default_value_t = 200_000)]
    events: usize,
    /// Size of each event (the dead letter's value), bytes.
    #[arg(long, default_value_t = 1024)]
    bytes: usize,
    /// Distinct keys the events are spread over.
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    /// Queueing runs (each of `inject` and of the raw copy; medians are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// End-to-end runs (through a release dispatcher to the sink).
    #[arg(long, default_value_t = 1)]
    e2e_runs: usize,
    /// Longest any one run may take, seconds (then it is stopped and reported incomplete).
    #[arg(long, default_value_t = 300)]
    limit_s: u64,
    /// Extra librdkafka settings for `inject`'s transactional writer, `key=value` (as the
    /// controller's `HOOKLINE_KAFKA_*` environment would set them), e.g. `retry.backoff.ms=10`.
    #[arg(long = "writer-set", value_name = "KEY=VALUE")]
    writer_set: Vec<String>,
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
            self.events = 20_000;
            self.runs = 1;
            self.e2e_runs = 1;
        }
        self
    }
}

/// One queueing run: `inject` or the raw copy.
#[derive(Debug, Clone, Serialize)]
struct Queued {
    /// `inject` or `raw-copy`.
    system: String,
    /// Source records read.
    scanned: i64,
    /// Records written (`inject`: matched; raw copy: every record copied).
    written: i64,
    wall_s: f64,
    /// `written / wall_s`.
    rate: f64,
    error: Option<String>,
    cpu: CpuSplit,
}

/// One end-to-end run.
#[derive(Debug, Clone, Serialize)]
struct EndToEnd {
    expected: u64,
    delivered: u64,
    duplicates: u64,
    /// Arrivals whose id is not one of the replayed `Webhook`'s (the other `Webhook`'s).
    foreign: u64,
    /// `inject` start → its return (everything queued and committed).
    queue_s: f64,
    /// `inject` start → the last first arrival.
    e2e_s: f64,
    /// `expected / e2e_s`.
    rate: f64,
    cpu: CpuSplit,
    counters: Option<hookline_bench::dispatcher::Counters>,
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct Report {
    started: String,
    git: String,
    cli: Cli,
    cpus: usize,
    loadavg_before: String,
    loadavg_after: String,
    dispatcher_bin: String,
    /// Records in the dead-letter topic (N + N/10) and how fast the raw producer filled it.
    dlq_records: usize,
    fill_rate: f64,
    queueing: Vec<Queued>,
    end_to_end: Vec<EndToEnd>,
    notes: Vec<String>,
}

/// The replayed `Webhook` (made by [`delivery::create_webhook`]) and the other one.
const WEBHOOK: &str = "bench";
const OTHER: &str = "other";
/// Event ids of the replayed `Webhook`'s dead letters are `<PREFIX><seq>`; the other's `o-<seq>`.
const PREFIX: &str = "r-";

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

async fn run(cli: Cli) -> anyhow::Result<()> {
    let started = jiff::Timestamp::now();
    let stamp = started.strftime("%Y%m%dT%H%M%SZ").to_string();
    let loadavg_before = hookline_bench::report::loadavg();
    eprintln!("replay: load average before {loadavg_before}");
    let dispatcher_bin = cli.dispatcher_bin.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join("hookline-dispatcher")))
            .filter(|p| p.exists())
            .unwrap_or_else(|| cache_dir().join("target/release/hookline-dispatcher"))
    });
    let env = Env::read()?;
    let client = env.client().await?;
    cluster::ensure_controller(&env, &client).await?;
    let logs = cache_dir()
        .join("bench/logs")
        .join(format!("replay-{stamp}"));
    std::fs::create_dir_all(&logs)?;
    let sink = Sink::start(1).await?;

    let tenant = cluster::Tenant::create(&env, &client, "replay").await?;
    let ns = tenant.name().to_owned();
    let topics = naming::topics(&ns);
    let all: Vec<String> = topics.all().into_iter().map(str::to_owned).collect();
    let scratch = [format!("hlb.{ns}.q.retry"), format!("hlb.{ns}.q.raw")];
    let mut create = all.clone();
    create.extend(scratch.iter().cloned());
    delivery::create_topics(&env, &create, std::slice::from_ref(&topics.dedup), 6).await?;
    delivery::create_webhook(&tenant, &sink.url(0, 0), "bench-replay").await?;
    let mut notes = Vec::new();
    let result = measure(
        &cli,
        &env,
        &client,
        &tenant,
        &sink,
        &dispatcher_bin,
        &logs,
        &mut notes,
    )
    .await;
    let (dlq_records, fill_rate, queueing, e2e) = match result {
        Ok(x) => x,
        Err(e) => {
            tenant.delete().await;
            return Err(e);
        }
    };
    let report = Report {
        started: started.to_string(),
        git: hookline_bench::report::git_describe(),
        cpus: hookline_bench::procstat::cpus(),
        loadavg_before,
        loadavg_after: hookline_bench::report::loadavg(),
        dispatcher_bin: dispatcher_bin.display().to_string(),
        cli: cli.clone(),
        dlq_records,
        fill_rate,
        queueing,
        end_to_end: e2e,
        notes,
    };
    let out = cli
        .out
        .clone()
        .unwrap_or_else(|| repo_root().join("bench/results/runs"));
    std::fs::create_dir_all(&out)?;
    let text = table(&report);
    let (json_path, txt_path) = (
        out.join(format!("replay-{stamp}.json")),
        out.join(format!("replay-{stamp}.txt")),
    );
    std::fs::write(&json_path, serde_json::to_vec_pretty(&report)?)?;
    std::fs::write(&txt_path, &text)?;
    println!("{text}");
    eprintln!("wrote {} and {}", json_path.display(), txt_path.display());
    tenant.delete().await;
    Ok(())
}

type Measured = (usize, f64, Vec<Queued>, Vec<EndToEnd>);

#[allow(clippy::too_many_arguments)]
async fn measure(
    cli: &Cli,
    env: &Env,
    client: &kube::Client,
    tenant: &cluster::Tenant,
    sink: &Sink,
    dispatcher_bin: &std::path::Path,
    logs: &std::path::Path,
    notes: &mut Vec<String>,
) -> anyhow::Result<Measured> {
    let ns = tenant.name().to_owned();
    let topics = naming::topics(&ns);
    let (q_retry, q_raw) = (format!("hlb.{ns}.q.retry"), format!("hlb.{ns}.q.raw"));
    eprintln!(
        "filling {} with {} + {} dead letters",
        topics.dead_letter,
        cli.events,
        cli.events / 10
    );
    let (dlq_records, fill_rate) = fill(env, &topics.dead_letter, &topics.events, cli).await?;
    eprintln!("  {dlq_records} records at {fill_rate:.0}/s");
    let ranges = {
        let c = config(hookline_core::kafka::replay_reader(
            &base(env),
            "hlb-replay-ranges",
        ));
        let dlq = topics.dead_letter.clone();
        tokio::task::spawn_blocking(move || ranges(&c, &dlq, None))
            .await?
            .map_err(anyhow::Error::msg)?
    };
    let in_ranges: i64 = ranges.iter().map(|r| r.end - r.start).sum();
    anyhow::ensure!(
        usize::try_from(in_ranges)? == dlq_records,
        "the ranges hold {in_ranges} records, {dlq_records} were written"
    );
    let mut watched = Watched {
        pids: vec![("bench".to_owned(), std::process::id())],
    };
    if let Some(k) = cluster::kafka_pid() {
        watched.pids.push(("kafka".into(), k));
    }

    eprintln!(
        "queueing: inject (rate 1e9) and the raw copy, alternating, {} run(s)",
        cli.runs
    );
    let mut queueing = Vec::new();
    for r in 0..cli.runs {
        let inj = async || {
            queue_inject(
                env,
                &watched,
                &topics.dead_letter,
                &ranges,
                &q_retry,
                cli,
                r,
            )
            .await
        };
        let raw =
            async || queue_raw(env, &watched, &topics.dead_letter, &ranges, &q_raw, cli).await;
        let pair = if r.is_multiple_of(2) {
            [inj().await, raw().await]
        } else {
            [raw().await, inj().await]
        };
        for q in pair {
            eprintln!(
                "    {}: {} written ({} scanned) in {:.2} s = {:.0}/s, bench {:.2} kafka {:.2} cores, machine {:.2}{}",
                q.system,
                q.written,
                q.scanned,
                q.wall_s,
                q.rate,
                q.cpu.cores("bench"),
                q.cpu.cores("kafka"),
                q.cpu.machine_cores,
                q.error
                    .as_deref()
                    .map(|e| format!("; error: {e}"))
                    .unwrap_or_default()
            );
            if q.system == "inject" && q.written != i64::try_from(cli.events)? {
                notes.push(format!("inject matched {} of {}", q.written, cli.events));
            }
            queueing.push(q);
        }
    }

    let mut e2e = Vec::new();
    if cli.e2e_runs > 0 {
        if !dispatcher_bin.exists() {
            notes.push(format!(
                "no end-to-end runs: {} not built",
                dispatcher_bin.display()
            ));
            return Ok((dlq_records, fill_rate, queueing, e2e));
        }
        eprintln!(
            "end to end: release dispatcher {}",
            dispatcher_bin.display()
        );
        let ctx = Ctx {
            env,
            ns: &ns,
            sink,
            bin: dispatcher_bin,
            logs,
            watched: &watched,
        };
        let group = format!("hlb-replay.{ns}");
        let (d, ready_s) = ctx
            .dispatcher(
                &delivery::tenant_topics(&ns, &group),
                Some(&topics.dedup),
                "e2e",
            )
            .await?;
        eprintln!("  dispatcher ready in {ready_s:.1} s");
        // The chart's own hookline-api (a debug build) reads every tenant's attempts topic into
        // its delivery log: 200,000 replayed deliveries cost it about half a core, which this
        // measurement of the dispatcher should not pay. Scaled to 0 for the runs, then back.
        let api_scale = cluster::scale_chart_api(client, 0).await;
        if let Some(was) = api_scale {
            notes.push(format!(
                "the chart's hookline-api scaled from {was} to 0 replicas during the end-to-end runs"
            ));
        }
        let replays = Api::<WebhookReplay>::namespaced(client.clone(), &ns);
        let first_tier = topics
            .retry
            .first()
            .map(|(_, t)| t.clone())
            .ok_or_else(|| anyhow::anyhow!("no retry tiers"))?;
        for r in 0..cli.e2e_runs {
            match end_to_end(
                &ctx,
                &d,
                &replays,
                &topics.dead_letter,
                &ranges,
                &first_tier,
                cli,
                r,
            )
            .await
            {
                Ok(x) => {
                    eprintln!(
                        "    {} of {} delivered; queued in {:.2} s, delivered in {:.2} s = {:.0}/s; dispatcher {:.2} cores{}",
                        x.delivered,
                        x.expected,
                        x.queue_s,
                        x.e2e_s,
                        x.rate,
                        x.cpu.cores("dispatcher"),
                        x.error
                            .as_deref()
                            .map(|e| format!("; {e}"))
                            .unwrap_or_default()
                    );
                    e2e.push(x);
                }
                Err(e) => notes.push(format!("end-to-end run {r}: {e}")),
            }
        }
        if let Some(was) = api_scale {
            cluster::scale_chart_api(client, was).await;
        }
        d.stop(Duration::from_secs(30)).await;
    }
    Ok((dlq_records, fill_rate, queueing, e2e))
}

fn sp(xs: impl Iterator<Item = f64>) -> Spread {
    spread(&xs.collect::<Vec<_>>())
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

fn fmt_rate(s: &Spread) -> String {
    format!(
        "{}/s [{}–{}]",
        thousands(s.median),
        thousands(s.min),
        thousands(s.max)
    )
}

/// The text report: medians [min–max] per system, the ratio, the end-to-end runs.
fn table(r: &Report) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "replay — {} (git {}), {} CPUs, load average before {} / after {}",
        r.started, r.git, r.cpus, r.loadavg_before, r.loadavg_after
    );
    let _ = writeln!(
        t,
        "dead-letter topic: {} records ({} of the replayed Webhook + {} of another), {} B events over {} keys, 6 partitions; filled at {}/s (not measured)\n",
        r.dlq_records,
        r.cli.events,
        r.cli.events / 10,
        r.cli.bytes,
        r.cli.keys,
        thousands(r.fill_rate)
    );
    let _ = writeln!(t, "queueing, median [min–max] of {} run(s):", r.cli.runs);
    for sys in ["inject", "raw-copy"] {
        let of = || r.queueing.iter().filter(move |q| q.system == sys);
        let rate = sp(of().map(|q| q.rate));
        let wall = sp(of().map(|q| q.wall_s));
        let bench = sp(of().map(|q| q.cpu.cores("bench"))).median;
        let kafka = sp(of().map(|q| q.cpu.cores("kafka"))).median;
        let machine = sp(of().map(|q| q.cpu.machine_cores)).median;
        let errors: Vec<&str> = of().filter_map(|q| q.error.as_deref()).collect();
        let _ = writeln!(
            t,
            "  {sys:8} {} ({:.2} s); cores bench {bench:.2} kafka {kafka:.2} (machine {machine:.2}){}",
            fmt_rate(&rate),
            wall.median,
            if errors.is_empty() {
                String::new()
            } else {
                format!("; errors: {}", errors.join("; "))
            }
        );
    }
    let ratios: Vec<f64> = r
        .queueing
        .chunks(2)
        .filter_map(|c| {
            let i = c.iter().find(|q| q.system == "inject")?;
            let b = c.iter().find(|q| q.system == "raw-copy")?;
            Some(i.rate / b.rate.max(1e-9))
        })
        .collect();
    let s = spread(&ratios);
    let _ = writeln!(
        t,
        "  ratio inject/raw-copy, per pair: {:.2} [{:.2}–{:.2}] (inject writes N, the raw copy N + N/10)",
        s.median, s.min, s.max
    );
    let _ = writeln!(
        t,
        "\nend to end (inject start → the N-th first arrival at the sink; release dispatcher with --dedup-topic):"
    );
    for e in &r.end_to_end {
        let _ = writeln!(
            t,
            "  {} of {} delivered ({} duplicates, {} foreign): queued in {:.2} s, delivered in {:.2} s = {}/s; cores dispatcher {:.2} kafka {:.2} bench {:.2} (machine {:.2}){}",
            e.delivered,
            e.expected,
            e.duplicates,
            e.foreign,
            e.queue_s,
            e.e2e_s,
            thousands(e.rate),
            e.cpu.cores("dispatcher"),
            e.cpu.cores("kafka"),
            e.cpu.cores("bench"),
            e.cpu.machine_cores,
            e.error
                .as_deref()
                .map(|x| format!("; {x}"))
                .unwrap_or_default()
        );
    }
    for n in &r.notes {
        let _ = writeln!(t, "note: {n}");
    }
    t
}

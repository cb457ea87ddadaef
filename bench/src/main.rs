//! `hookline-bench`: runs the benchmark scenarios against the local
//! environment (`make env-up`) and writes `bench/results/runs/<time>.{json,txt}`
//! (git-ignored; the release's figures are committed as `bench/results/v<version>.*`).
//! `make bench` builds the release binaries and runs it; see `BENCHMARKS.md`.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use hookline_bench::cluster::{self, Env};
use hookline_bench::report::{self, Machine, Report};
use hookline_bench::runner::Bench;
use hookline_bench::scenarios::{self, Ctx, PORTS, Plan};
use hookline_bench::sink::{Mode, Sink};
use hookline_tests::{cache_dir, repo_root};

/// Benchmarks Hookline's delivery path against a raw-client baseline.
#[derive(Parser, Debug)]
#[command(name = "hookline-bench", version)]
struct Cli {
    /// One run of a smaller subset (minutes instead of half an hour).
    #[arg(long)]
    quick: bool,
    /// A few hundred events through scenarios 1 and 2: proves the harness works.
    #[arg(long, conflicts_with = "quick")]
    smoke: bool,
    /// Runs per point (default 3; 1 with --quick or --smoke).
    #[arg(long)]
    runs: Option<usize>,
    /// Scenarios to run, e.g. `1,2` (default: those of the plan).
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<u8>,
    /// Override the 1 KiB backlog size of scenario 1.
    #[arg(long)]
    events: Option<usize>,
    /// Override the rates of scenario 2 (events/s).
    #[arg(long, value_delimiter = ',')]
    rates: Vec<f64>,
    /// Override the webhook counts of scenario 1 (and 4).
    #[arg(long, value_delimiter = ',')]
    webhooks: Vec<usize>,
    /// Override the payload sizes of scenario 1, in bytes.
    #[arg(long, value_delimiter = ',')]
    payloads: Vec<usize>,
    /// `spec.delivery.maxInFlight` of the healthy webhooks (and the baseline's concurrency per webhook).
    #[arg(long)]
    max_in_flight: Option<usize>,
    /// The dispatcher binary (default: next to this one, else the release build).
    #[arg(long)]
    dispatcher_bin: Option<PathBuf>,
    /// Partitions of each run topic (the controller's default is 6).
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Extra dispatcher environment, `KEY=VALUE` (e.g. `HOOKLINE_KAFKA_FETCH_WAIT_MAX_MS=10`).
    #[arg(long = "dispatcher-env")]
    dispatcher_env: Vec<String>,
    /// Record a `perf` profile (cpu-clock, DWARF call graphs) of the dispatcher in every
    /// Hookline run into this directory; use a build with debug line tables for symbols.
    #[arg(long)]
    perf: Option<PathBuf>,
    /// Where results go (default: `bench/results/runs` of this checkout, git-ignored).
    #[arg(long)]
    out: Option<PathBuf>,
}

fn plan(cli: &Cli) -> Plan {
    let mut plan = if cli.smoke {
        Plan::smoke()
    } else if cli.quick {
        Plan::quick()
    } else {
        Plan::full()
    };
    if let Some(r) = cli.runs {
        plan.runs = r.max(1);
    }
    if !cli.scenarios.is_empty() {
        plan.scenarios.clone_from(&cli.scenarios);
    }
    if let Some(e) = cli.events {
        plan.backlog_1k = e;
    }
    if !cli.rates.is_empty() {
        plan.rates.clone_from(&cli.rates);
    }
    if !cli.webhooks.is_empty() {
        plan.webhooks.clone_from(&cli.webhooks);
    }
    if cli.max_in_flight.is_some() {
        plan.max_in_flight = cli.max_in_flight;
    }
    if !cli.payloads.is_empty() {
        plan.payloads.clone_from(&cli.payloads);
    }
    plan
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
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
    let plan = plan(&cli);
    let repo = repo_root();
    let env = Env::read()?;
    let client = env.client().await?;
    cluster::ensure_controller(&env, &client).await?;
    let bin = cli
        .dispatcher_bin
        .clone()
        .unwrap_or_else(hookline_bench::dispatcher::default_bin);
    anyhow::ensure!(
        bin.exists(),
        "{} not found: cargo build --release -p hookline-dispatcher",
        bin.display()
    );
    let dispatcher_env: Vec<(String, String)> = cli
        .dispatcher_env
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .context("--dispatcher-env wants KEY=VALUE")
        })
        .collect::<anyhow::Result<_>>()?;
    let logs = cache_dir().join("bench/logs").join(&stamp);
    eprintln!(
        "hookline-bench: dispatcher {}, logs in {}",
        bin.display(),
        logs.display()
    );
    let machine = Machine::read();
    let sink = Sink::start(PORTS).await?;
    sink.set_mode(scenarios::BLACKHOLE_PORT, Mode::Blackhole)
        .await?;
    let mut bench = Bench::new(
        env.clone(),
        sink,
        bin.clone(),
        logs,
        cli.partitions,
        dispatcher_env.clone(),
    )?;
    bench.perf.clone_from(&cli.perf);
    let ctx = Ctx {
        bench: &bench,
        client,
        env: &env,
        plan: &plan,
    };
    let points = scenarios::run(&ctx).await;
    let git = std::process::Command::new("git")
        .arg("-C")
        .arg(&repo)
        .args(["describe", "--always", "--dirty"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let report = Report {
        started: started.to_string(),
        finished: jiff::Timestamp::now().to_string(),
        command: report::home_relative(&std::env::args().collect::<Vec<_>>().join(" ")),
        machine,
        dispatcher_bin: report::home_relative(&bin.display().to_string()),
        git,
        dispatcher_env,
        partitions: cli.partitions,
        plan,
        points,
    };
    let out = cli
        .out
        .clone()
        .unwrap_or_else(|| repo.join(report::RUNS_DIR));
    let (json, text) = report::write(&report, &out, &stamp)?;
    println!("{}", report::table(&report));
    eprintln!("wrote {} and {}", json.display(), text.display());
    let failed = report
        .points
        .iter()
        .any(|p| p.hookline.is_empty() && p.name != "skipped");
    anyhow::ensure!(
        !failed,
        "some points have no Hookline run; see the notes above"
    );
    Ok(())
}

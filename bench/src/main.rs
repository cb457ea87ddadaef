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
use hookline_bench::scenarios::delivery_log::ApiSetup;
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
    /// Scenarios to run by number or name, e.g. `1,2` or `delivery-log` (default: those of
    /// the plan): 1 throughput, 2 latency, 3 fan-out, 4 isolation, 5 scale, 6 recovery,
    /// 7 delivery-log.
    #[arg(long, alias = "scenario", value_delimiter = ',', value_parser = scenario_number)]
    scenarios: Vec<u8>,
    /// Override the 1 KiB backlog size of scenario 1.
    #[arg(long)]
    events: Option<usize>,
    /// Override the backlog size of scenario 1 for payloads above 1 KiB (e.g. 100000 with
    /// `--payloads 65536` and `--dispatcher-env HOOKLINE_MEMORY_LIMIT=256Mi`: the memory bound).
    #[arg(long)]
    large_events: Option<usize>,
    /// Seconds of measured idleness before each rate run's load (default 5): the idle CPU and
    /// RSS of scenarios 2, 4 and 5.
    #[arg(long)]
    idle_secs: Option<f64>,
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
    /// Scenario 7: the `hookline-api` binary (default: next to this one, else the release build).
    #[arg(long)]
    api_bin: Option<PathBuf>,
    /// Scenario 7: where store files go (default: `~/.cache/hookline/bench/delivery-log`).
    #[arg(long)]
    store_dir: Option<PathBuf>,
    /// Scenario 7: keep the big store file afterwards (it is deleted by default).
    #[arg(long)]
    keep_store: bool,
    /// Scenario 7: query the big store file a run with --keep-store left instead of filling one
    /// (in process only: its tenant's namespace is gone); for before/after figures of a store
    /// change on the same data.
    #[arg(long)]
    reuse_store: bool,
    /// Scenario 7: attempts in the big store (default 10,000,000; 1,000,000 with --quick; 0
    /// skips the store's queries and the CRUD mix).
    #[arg(long)]
    log_attempts: Option<u64>,
    /// Scenario 7: attempts per fresh-store `apply` run (0 skips that part).
    #[arg(long)]
    apply_attempts: Option<u64>,
    /// Scenario 7: attempt records per run through Kafka (0 skips that part).
    #[arg(long)]
    kafka_attempts: Option<u64>,
    /// Scenario 7: queries per kind and run (default 1,000).
    #[arg(long)]
    log_queries: Option<usize>,
    /// Scenario 7: requests/s and seconds per run of the `Webhook` CRUD mix, `RATE,SECS`
    /// (default 200,30; 200,10 with --quick).
    #[arg(long, value_delimiter = ',')]
    crud: Vec<f64>,
}

/// A scenario's number from its number or name.
fn scenario_number(s: &str) -> Result<u8, String> {
    const NAMES: [&str; 7] = [
        "throughput",
        "latency",
        "fan-out",
        "isolation",
        "scale",
        "recovery",
        "delivery-log",
    ];
    s.parse::<u8>()
        .ok()
        .filter(|n| (1..=7).contains(n))
        .or_else(|| {
            NAMES
                .iter()
                .position(|n| *n == s)
                .and_then(|i| u8::try_from(i + 1).ok())
        })
        .ok_or_else(|| format!("{s:?}: a scenario is 1 to 7 or one of {}", NAMES.join(", ")))
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
    if let Some(s) = cli.idle_secs {
        plan.idle_secs = s.max(1.0);
    }
    if let Some(e) = cli.large_events {
        plan.backlog_5k = e;
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
    if let Some(n) = cli.log_attempts {
        plan.log_attempts = n;
    }
    if let Some(n) = cli.apply_attempts {
        plan.apply_attempts = n;
    }
    if let Some(n) = cli.kafka_attempts {
        plan.kafka_attempts = n;
    }
    if let Some(n) = cli.log_queries {
        plan.log_queries = n.max(1);
    }
    if let [rate, secs] = cli.crud[..] {
        (plan.crud_rate, plan.crud_secs) = (rate.max(1.0), secs.max(1.0));
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
    let api_bin = cli.api_bin.clone().unwrap_or_else(|| {
        hookline_bench::dispatcher::default_bin().with_file_name("hookline-api")
    });
    let ctx = Ctx {
        bench: &bench,
        client,
        env: &env,
        plan: &plan,
        api: ApiSetup {
            bin: api_bin.clone(),
            store_dir: cli
                .store_dir
                .clone()
                .unwrap_or_else(|| cache_dir().join("bench/delivery-log")),
            keep_store: cli.keep_store || cli.reuse_store,
            reuse_store: cli.reuse_store,
        },
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
        api_bin: report::home_relative(&api_bin.display().to_string()),
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

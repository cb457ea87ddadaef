//! `failover`: how a dispatcher's consumer group recovers from a crash and from a rebalance
//! without one (issue 16, item 1; goals: every partition consumed again ≤ 10 s after a kill,
//! duplicates ≤ 1 % of events, none from adding and removing a replica).
//!
//! Flow: the environment (read, never started; the CRDs installed if missing, no controller
//! needed) → a tenant whose one `Webhook` (`failover.*` →
//! the benchmark's [`receiver`], the shared signing Secret, retries capped at 5 s apart) is
//! labelled for another controller instance, so the chart's controller runs no dispatcher for
//! it → per run, fresh topics and group and a release dispatcher of the benchmark's own,
//! started as a Pod's container would be (`POD_NAME` set) → [`scenario`] `kill` (SIGKILL twice,
//! restarted at once with the same `POD_NAME`, receiver failing 20 % of requests) and `scale`
//! (a second replica added, then stopped with SIGTERM; receiver answering in 20 ms) →
//! [`analysis`] of every request the receiver saw → medians over runs →
//! `bench/results/runs/failover[-<label>]-<time>.{json,txt}`.
//!
//! Run: `cargo build --release -p hookline-dispatcher -p hookline-bench &&
//! $CARGO_TARGET_DIR/release/failover [--quick] [--dispatcher-bin PATH --label NAME]`.

mod analysis;
mod receiver;
mod scenario;

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Parser;
use hookline_bench::cluster::{self, Env, SIGNING_SECRET};
use hookline_bench::procstat::Watched;
use hookline_bench::report::{self, Machine};
use hookline_bench::stats::{Spread, spread};
use hookline_crds::Webhook;
use hookline_tests::{cache_dir, repo_root};
use kube::api::PostParams;
use serde::Serialize;
use serde_json::json;

use receiver::Receiver;
use scenario::{Ctx, Run, Scenario};

#[derive(Parser, Debug, Clone, Serialize)]
#[command(about = "Fail-over: a dispatcher killed and restarted, and a replica added and removed")]
pub struct Cli {
    /// One run of each scenario.
    #[arg(long)]
    quick: bool,
    /// Runs of each scenario (medians are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Scenarios to run.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Scenario::Kill, Scenario::Scale])]
    scenarios: Vec<Scenario>,
    /// A name for this build in the results (file name and table), e.g. `before`.
    #[arg(long, default_value = "")]
    label: String,
    /// The `hookline-dispatcher` binary (default: the release build next to this one).
    #[arg(long)]
    dispatcher_bin: Option<PathBuf>,
    /// Events per run.
    #[arg(long, default_value_t = 10_000)]
    pub events: usize,
    /// Events per second (open loop).
    #[arg(long, default_value_t = 1_000.0)]
    pub rate: f64,
    /// Distinct ordering keys. With 100, each key gets 10 events/s, more than it can take when
    /// a fifth of its requests fail and each failure holds the key for a 1 s retry: the backlog
    /// grows for the whole run and the first event after a kill waits behind it, measuring
    /// the backlog instead of the fail-over. 1,000 keys (1 event/s each) stay within it.
    #[arg(long, default_value_t = 1_000)]
    pub keys: usize,
    /// Size of each event, bytes.
    #[arg(long, default_value_t = 1024)]
    pub bytes: usize,
    /// Partitions of every run topic (the controller's default is 6).
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
    /// Kill: seconds into production of each SIGKILL.
    #[arg(long, value_delimiter = ',', default_values_t = [3.0, 6.0])]
    pub kill_at: Vec<f64>,
    /// Kill: the share of requests the receiver fails with 500, percent.
    #[arg(long, default_value_t = 20)]
    pub fail_percent: u32,
    /// Scale: how long the receiver takes to answer, ms.
    #[arg(long, default_value_t = 20)]
    pub latency_ms: u64,
    /// Scale: seconds into production when the second replica starts.
    #[arg(long, default_value_t = 3.0)]
    pub scale_up_at: f64,
    /// Scale: seconds into production when it gets SIGTERM.
    #[arg(long, default_value_t = 7.0)]
    pub scale_down_at: f64,
    /// Longest wait after production for every event to be answered 2xx, s.
    #[arg(long, default_value_t = 120)]
    pub drain_s: u64,
    /// Then, seconds without any request before the run ends (late duplicates count).
    #[arg(long, default_value_t = 10)]
    pub quiet_s: u64,
    /// Results directory (default: `bench/results/runs`, git-ignored).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Report {
    started: String,
    finished: String,
    label: String,
    git: String,
    command: String,
    machine: Machine,
    loadavg_end: String,
    dispatcher_bin: String,
    cli: Cli,
    runs: Vec<Run>,
    errors: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    if cli.quick {
        cli.runs = 1;
    }
    anyhow::ensure!(
        cli.runs > 0 && cli.events > 0 && cli.rate > 0.0,
        "nothing to run"
    );
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
    let machine = Machine::read();
    eprintln!("failover: load average before {}", machine.loadavg_start);
    let bin = cli
        .dispatcher_bin
        .clone()
        .unwrap_or_else(hookline_bench::dispatcher::default_bin);
    anyhow::ensure!(bin.exists(), "{} not built", bin.display());
    let env = Env::read()?;
    let client = env.client().await?;
    ensure_crds(&client).await?;
    let label: String = cli
        .label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let stem = if label.is_empty() {
        format!("failover-{stamp}")
    } else {
        format!("failover-{label}-{stamp}")
    };
    let logs = cache_dir().join("bench/logs").join(&stem);
    std::fs::create_dir_all(&logs)?;
    let receiver = Receiver::start().await?;
    let tenant = cluster::Tenant::create(&env, &client, "failover").await?;
    let webhook: Webhook = serde_json::from_value(json!({
        "apiVersion": "hookline.dev/v1alpha1", "kind": "Webhook",
        "metadata": {"name": "failover", "labels": {"hookline.dev/instance": "bench-failover"}},
        "spec": {
            "url": receiver.url(), "eventTypes": ["failover.*"],
            "secretRef": {"name": SIGNING_SECRET},
            "delivery": {"retry": {"maxDelay": "5s"}},
        },
    }))?;
    tenant
        .inner
        .api
        .create(&PostParams::default(), &webhook)
        .await?;
    let mut watched = Watched {
        pids: vec![("bench".to_owned(), std::process::id())],
    };
    if let Some(k) = cluster::kafka_pid() {
        watched.pids.push(("kafka".into(), k));
    }
    let ctx = Ctx {
        env: &env,
        ns: tenant.name(),
        receiver: &receiver,
        bin: &bin,
        logs: &logs,
        cli: &cli,
        watched: &watched,
    };
    let (mut runs, mut errors) = (Vec::new(), Vec::new());
    for r in 1..=cli.runs {
        for s in &cli.scenarios {
            eprintln!("{} run {r} of {}", s.name(), cli.runs);
            match scenario::run(&ctx, *s, r).await {
                Ok(x) => {
                    eprintln!("  {}", run_line(&x));
                    runs.push(x);
                }
                Err(e) => {
                    eprintln!("  failed: {e:#}");
                    errors.push(format!("{} run {r}: {e:#}", s.name()));
                }
            }
        }
    }
    tenant.delete().await;
    let report = Report {
        started: started.to_string(),
        finished: jiff::Timestamp::now().to_string(),
        label: cli.label.clone(),
        git: report::git_describe(),
        command: report::home_relative(&std::env::args().collect::<Vec<_>>().join(" ")),
        machine,
        loadavg_end: report::loadavg(),
        dispatcher_bin: report::home_relative(&bin.display().to_string()),
        cli: cli.clone(),
        runs,
        errors,
    };
    let out = cli
        .out
        .clone()
        .unwrap_or_else(|| repo_root().join(report::RUNS_DIR));
    std::fs::create_dir_all(&out)?;
    let text = table(&report);
    let (json_path, txt_path) = (
        out.join(format!("{stem}.json")),
        out.join(format!("{stem}.txt")),
    );
    std::fs::write(&json_path, serde_json::to_vec_pretty(&report)?)?;
    std::fs::write(&txt_path, &text)?;
    println!("{text}");
    eprintln!("wrote {} and {}", json_path.display(), txt_path.display());
    anyhow::ensure!(
        report.errors.is_empty(),
        "{} run(s) failed",
        report.errors.len()
    );
    Ok(())
}

/// Installs the CRDs (as the tests do) when the cluster has none: the benchmark's dispatchers
/// are processes of its own and need no controller, only `Webhook`s to read.
async fn ensure_crds(client: &kube::Client) -> anyhow::Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds = kube::Api::<CustomResourceDefinition>::all(client.clone());
    if crds.get_opt("webhooks.hookline.dev").await?.is_none() {
        eprintln!("no Hookline CRDs: installing them");
        hookline_tests::crd::install(client).await?;
    }
    Ok(())
}

fn secs(s: Option<f64>) -> String {
    s.map_or_else(|| "never".to_owned(), |s| format!("{s:.1} s"))
}

/// One run in one line (progress and the per-run part of the table).
fn run_line(r: &Run) -> String {
    let mut s = format!("{} run {} ({}):", r.scenario.name(), r.run, r.id);
    for k in &r.kills {
        let per: Vec<String> = k
            .failover_s
            .iter()
            .map(|f| f.map_or_else(|| "-".to_owned(), |f| format!("{f:.1}")))
            .collect();
        let _ = write!(
            s,
            " kill at {:.1} s → fail-over {} (per partition {}; {} of {} within 10 s);",
            k.at_s,
            secs(k.max_s),
            per.join("/"),
            k.within_10s,
            k.failover_s.len()
        );
    }
    if let Some((up, down)) = r.scale_s {
        let _ = write!(
            s,
            " second replica {up:.1} s → SIGTERM {down:.1} s (ready in {});",
            secs(r.second_ready_s)
        );
    }
    let _ = write!(
        s,
        " {} duplicates ({:.2} %, {} of them attempt 1, {} events) of {} events; lost {}; \
         max gap {:.2} s; latency p99 {:.0} ms max {:.0} ms; {} requests, {} answered 500; \
         drained {} after production; machine {:.2} cores, load {}",
        r.duplicates.extra,
        r.duplicate_ratio * 100.0,
        r.duplicates.extra_attempt1,
        r.duplicates.ids,
        r.sent.acked,
        r.lost,
        r.max_gap(),
        r.latency.p99_ms,
        r.latency.max_ms,
        r.requests,
        r.failed_answers,
        secs(r.drained_s),
        r.cpu.machine_cores,
        r.loadavg_before
    );
    for n in &r.notes {
        let _ = write!(s, "; note: {n}");
    }
    s
}

fn fmt(s: &Spread, unit: &str, prec: usize) -> String {
    if s.runs.is_empty() {
        "-".into()
    } else if s.runs.len() == 1 {
        format!("{:.prec$}{unit}", s.median)
    } else {
        format!(
            "{:.prec$}{unit} [{:.prec$}–{:.prec$}]",
            s.median, s.min, s.max
        )
    }
}

/// The text report: per scenario, median [min–max] over runs; then every run.
fn table(r: &Report) -> String {
    let c = &r.cli;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "failover{} — {} (git {}) — {} × {}, load average {} before / {} after",
        if r.label.is_empty() {
            String::new()
        } else {
            format!(" [{}]", r.label)
        },
        r.started,
        r.git,
        r.machine.cpus,
        r.machine.model,
        r.machine.loadavg_start,
        r.loadavg_end
    );
    let _ = writeln!(t, "dispatcher: {}", r.dispatcher_bin);
    let _ = writeln!(
        t,
        "{} events of {} B over {} keys at {}/s, {} partitions; kill: receiver fails {} % \
         (500), SIGKILL at {:?} s, restarted at once with the same POD_NAME; scale: receiver \
         answers in {} ms, second replica at {} s, SIGTERM at {} s\n",
        c.events,
        c.bytes,
        c.keys,
        c.rate,
        c.partitions,
        c.fail_percent,
        c.kill_at,
        c.latency_ms,
        c.scale_up_at,
        c.scale_down_at
    );
    let _ = writeln!(
        t,
        "{:<6} {:<5} {:<24} {:<24} {:<20} {:<8} {:<24} {:<14}",
        "",
        "runs",
        "fail-over (max)",
        "duplicates % of events",
        "of them attempt 1",
        "lost",
        "max gap per partition",
        "machine cores"
    );
    for s in &c.scenarios {
        let runs: Vec<&Run> = r.runs.iter().filter(|x| x.scenario == *s).collect();
        let sp = |f: &dyn Fn(&Run) -> f64| spread(&runs.iter().map(|x| f(x)).collect::<Vec<_>>());
        let never = runs
            .iter()
            .filter(|x| !x.kills.is_empty() && x.failover_max_s.is_none())
            .count();
        let failover = if *s == Scenario::Kill {
            let f = fmt(&sp(&|x| x.failover_max_s.unwrap_or(f64::NAN)), " s", 1);
            if never > 0 {
                format!("{f} ({never} never)")
            } else {
                f
            }
        } else {
            "-".into()
        };
        let _ = writeln!(
            t,
            "{:<6} {:<5} {:<24} {:<24} {:<20} {:<8} {:<24} {:<14}",
            s.name(),
            runs.len(),
            failover,
            fmt(&sp(&|x| x.duplicate_ratio * 100.0), " %", 2),
            fmt(&sp(&|x| x.duplicates.extra_attempt1 as f64), "", 0),
            fmt(&sp(&|x| x.lost as f64), "", 0),
            fmt(&sp(&Run::max_gap), " s", 2),
            fmt(&sp(&|x| x.cpu.machine_cores), "", 2),
        );
    }
    let _ = writeln!(t);
    for x in &r.runs {
        let _ = writeln!(t, "{}", run_line(x));
    }
    for e in &r.errors {
        let _ = writeln!(t, "error: {e}");
    }
    t
}

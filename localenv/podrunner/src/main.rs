//! `hookline-podrunner`: a stand-in for a kubelet on a machine without containers. It
//! registers a Node, binds the Pods whose images and volumes it can run to that Node, and
//! runs each container as a local process with the Pod's command, args, env, `emptyDir`
//! volumes, ServiceAccount identity and memory limit ([`memory`]), reporting status,
//! readiness and restarts back to the apiserver — so the real Deployment and ReplicaSet
//! controllers can be tested. See the README for the flags.

mod backoff;
mod container;
mod env;
mod error;
mod expand;
mod identity;
mod image;
mod ipalloc;
mod memory;
mod node;
mod pod;
mod probe;
mod process;
mod runner;
mod status;
mod volumes;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::Parser;
use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::{
    backoff::BackoffPolicy, identity::ClusterInfo, image::ImageRule, ipalloc::IpAllocator,
    node::NodeFacts, probe::Prober, runner::Ctx,
};

/// Field manager of every server-side apply the runner makes.
pub const FIELD_MANAGER: &str = "hookline.dev/podrunner";

/// Runs the Pods of a local Kubernetes control plane as local processes.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Kubeconfig with admin rights (node registration, binding, pod status, token requests).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// Name of the Node to register.
    #[arg(long, default_value = "hookline-local")]
    node_name: String,
    /// Directory for per-pod logs, pid files, tokens and kubeconfigs.
    #[arg(long)]
    state_dir: PathBuf,
    /// `PREFIX=BINDIR`: images starting with PREFIX run the basename of command[0] (or the
    /// image name when there is no command) from BINDIR. Repeatable.
    #[arg(long = "image-map", value_parser = ImageRule::parse_mapped)]
    image_map: Vec<ImageRule>,
    /// `PREFIX`: images starting with PREFIX run command[0] from the host PATH. Repeatable.
    #[arg(long = "host-image")]
    host_image: Vec<String>,
    /// First two octets of the loopback range pod IPs come from (`127.N`).
    #[arg(long, default_value = "127.1")]
    pod_ip_base: String,
    /// Pods the Node reports as capacity.
    #[arg(long, default_value_t = 110)]
    max_pods: u32,
    /// Seconds between Node status heartbeats and Lease renewals.
    #[arg(long, default_value_t = 10)]
    heartbeat_seconds: u64,
    /// Lifetime of the ServiceAccount tokens requested for pods (renewed at 80 %).
    #[arg(long, default_value_t = 3600)]
    token_expiration_seconds: i64,
    /// Delay of the second restart of a crashing container (the first is immediate).
    #[arg(long, default_value_t = 10)]
    restart_backoff_initial_seconds: u64,
    /// Upper bound of the restart delay.
    #[arg(long, default_value_t = 300)]
    restart_backoff_max_seconds: u64,
    /// On the runner's own SIGTERM/SIGINT: at most this long (or the pod's
    /// terminationGracePeriodSeconds, if shorter) between SIGTERM and SIGKILL.
    #[arg(long, default_value_t = 10)]
    shutdown_grace_seconds: u64,
}

async fn register_node(
    client: &Client,
    facts: &NodeFacts,
    ready_since: jiff::Timestamp,
) -> anyhow::Result<String> {
    let mut attempt = 0;
    loop {
        match node::register(client, facts, ready_since).await {
            Ok(uid) => return Ok(uid),
            Err(e) if attempt < 30 => {
                tracing::warn!(error = %e, attempt, "cannot register node yet; retrying");
                attempt += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e).context("registering the node"),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let args = Args::parse();
    let mut rules = args.image_map.clone();
    rules.extend(
        args.host_image
            .iter()
            .map(|p| ImageRule::Host { prefix: p.clone() }),
    );
    if rules.is_empty() {
        bail!("give at least one --image-map or --host-image");
    }
    let ips = IpAllocator::new(&args.pod_ip_base).map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("creating {}", args.state_dir.display()))?;
    let state_dir = std::fs::canonicalize(&args.state_dir)?;

    let kubeconfig = Kubeconfig::read_from(&args.kubeconfig)
        .with_context(|| format!("reading {}", args.kubeconfig.display()))?;
    let cluster = ClusterInfo::from_kubeconfig(&kubeconfig)?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    let client = Client::try_from(config)?;

    let killed = process::kill_leftovers(&state_dir).await;
    if killed > 0 {
        tracing::info!(killed, "stopped processes left from a previous run");
    }

    // After the leftover processes: the cgroups of a previous run are emptied and removed.
    let memory = memory::Enforcer::detect(&state_dir).await;

    let facts = NodeFacts::gather(&args.node_name, args.max_pods);
    let ready_since = status::now();
    let uid = register_node(&client, &facts, ready_since).await?;
    tracing::info!(node = %args.node_name, "node registered and Ready");

    let shutdown = CancellationToken::new();
    let heartbeats = tokio::spawn(node::run_heartbeats(
        client.clone(),
        facts,
        ready_since,
        uid,
        Duration::from_secs(args.heartbeat_seconds.max(1)),
        shutdown.clone(),
    ));
    let ctx = Arc::new(Ctx {
        client,
        node_name: args.node_name.clone(),
        state_dir,
        rules,
        cluster,
        ips: Mutex::new(ips),
        prober: Prober::new()?,
        backoff: BackoffPolicy {
            initial: Duration::from_secs(args.restart_backoff_initial_seconds),
            max: Duration::from_secs(args.restart_backoff_max_seconds),
        },
        host_ip: "127.0.0.1".into(),
        token_seconds: args.token_expiration_seconds,
        host_path: std::env::var("PATH").unwrap_or_else(|_| {
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
        }),
        shutdown_grace: Duration::from_secs(args.shutdown_grace_seconds),
        memory,
    });
    let mut runner = tokio::spawn(runner::Runner::new(ctx.clone()).run(shutdown.clone()));

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
        r = &mut runner => {
            shutdown.cancel();
            r?;
            bail!("pod watch ended unexpectedly");
        }
    }
    shutdown.cancel();
    runner.await?;
    ctx.memory.release();
    heartbeats.await?;
    tracing::info!("all pod processes stopped; bye");
    Ok(())
}

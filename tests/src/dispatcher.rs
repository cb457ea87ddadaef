//! A `hookline-dispatcher` of a test's own, outside the controller: the very
//! binary the pod runner runs, on topics the test made (the controller's
//! dispatcher for the namespace never sees them), with flags the controller
//! would not set (a small `--max-pending`, a narrower allow-list). Killed when
//! dropped; its log is added to the test's [`LogDump`].

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context as _;

use hookline_core::args::{DispatcherArgs, RetryTier};

use crate::{Env, LogDump, cache_dir, kafka};

/// The debug build of the workspace binary `name` (what the pod runner runs).
pub fn debug_binary(name: &str) -> PathBuf {
    let target =
        std::env::var("CARGO_TARGET_DIR").map_or_else(|_| cache_dir().join("target"), Into::into);
    target.join("debug").join(name)
}

/// The debug build of `hookline-dispatcher` (what the pod runner runs).
pub fn binary() -> PathBuf {
    debug_binary("hookline-dispatcher")
}

/// A process of a test's own, started from `binary` with the admin kubeconfig and `args`,
/// logging `RUST_LOG=log_level` to `log` (stdout) and `log.err` (stderr), both added to `dump`.
/// The caller kills it (see [`Dispatcher`]'s `Drop`).
///
/// # Errors
/// When the binary is missing (with the cargo command that builds it), the log files cannot be
/// created, or the process cannot start.
pub fn spawn(
    env: &Env,
    binary: &Path,
    args: &[String],
    log_level: &str,
    vars: &[(&str, &str)],
    log: &Path,
    dump: &mut LogDump,
) -> anyhow::Result<Child> {
    anyhow::ensure!(
        binary.exists(),
        "{} is missing: cargo build -p {}",
        binary.display(),
        binary.file_name().unwrap_or_default().to_string_lossy()
    );
    dump.extra.push(log.to_path_buf());
    let err = log.with_extension("err");
    dump.extra.push(err.clone());
    Command::new(binary)
        .env("KUBECONFIG", &env.kubeconfig)
        .env("RUST_LOG", log_level)
        .envs(vars.iter().copied())
        .args(args)
        .stdout(Stdio::from(std::fs::File::create(log)?))
        .stderr(Stdio::from(std::fs::File::create(err)?))
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))
}

/// The topics of a test's own dispatcher.
pub struct OwnTopics {
    /// Events.
    pub events: String,
    /// Dead letters.
    pub dead_letter: String,
    /// Delivery attempts.
    pub attempts: String,
    /// The one retry tier (`1s`).
    pub retry: String,
}

impl OwnTopics {
    /// Creates `hl-test-<prefix>-{events,dlq,attempts,retry}-<random>`, each with `partitions`
    /// partitions, as the controller does (a retry goes to its event's partition index, which
    /// keeps per-key order through the retry path).
    ///
    /// # Errors
    /// When the broker refuses.
    pub async fn create(env: &Env, prefix: &str, partitions: i32) -> anyhow::Result<OwnTopics> {
        let mut names = Vec::with_capacity(4);
        for kind in ["events", "dlq", "attempts", "retry"] {
            names.push(kafka::create_topic(env, &format!("{prefix}-{kind}"), partitions).await?);
        }
        let [events, dead_letter, attempts, retry] =
            <[String; 4]>::try_from(names).map_err(|_| anyhow::anyhow!("four topics"))?;
        Ok(OwnTopics {
            events,
            dead_letter,
            attempts,
            retry,
        })
    }
}

/// A running dispatcher; killed on drop.
pub struct Dispatcher {
    child: Child,
    /// Where its /metrics, /healthz and /readyz answer (`127.0.0.1:<port>`).
    pub listen: String,
}

impl OwnTopics {
    /// The dispatcher's settings for these topics (one 1 s retry tier, the events topic's name
    /// as consumer group, no dedup), `--allow-http`, listening on `listen`.
    pub fn args(&self, namespace: &str, env: &Env, listen: &str) -> DispatcherArgs {
        let mut args = DispatcherArgs::for_tenant(namespace, &env.kafka_bootstrap);
        args.events_topic.clone_from(&self.events);
        args.dead_letter_topic.clone_from(&self.dead_letter);
        args.attempts_topic.clone_from(&self.attempts);
        args.consumer_group.clone_from(&self.events);
        // No dedup topic of its own: duplicates are delivered (as before dedup existed).
        args.dedup_topic = None;
        args.retry_topics = vec![RetryTier {
            delay: std::time::Duration::from_secs(1),
            topic: self.retry.clone(),
        }];
        args.listen = listen.to_owned();
        args.address.allow_http = true;
        args
    }
}

impl Dispatcher {
    /// Starts the dispatcher of `namespace` on `topics` with `--allow-http` and the `extra`
    /// flags, logging at `info` to `<namespace>-dispatcher.log` in the temp dir (added to `dump`).
    ///
    /// # Errors
    /// When the log files cannot be created or the binary cannot start.
    pub fn start(
        env: &Env,
        namespace: &str,
        topics: &OwnTopics,
        extra: &[&str],
        dump: &mut LogDump,
    ) -> anyhow::Result<Dispatcher> {
        let listen = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .to_string();
        let log = std::env::temp_dir().join(format!("{namespace}-dispatcher.log"));
        let mut args = topics.args(namespace, env, &listen).to_args();
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let child = spawn(env, &binary(), &args, "info", &[], &log, dump)?;
        Ok(Dispatcher { child, listen })
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

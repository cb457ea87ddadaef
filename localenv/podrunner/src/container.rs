//! One container's life as a host process. A [`ContainerTask`] makes its volume directories
//! (a mount the runner cannot make leaves it waiting in `ContainerCreating`), resolves the
//! environment (ConfigMaps and Secrets fetched, `CreateContainerConfigError` and a retry when
//! one is missing), expands the command line and rewrites mount paths in it and in the env
//! ([`crate::volumes`]), starts the process, runs its startup, readiness and liveness probes,
//! and restarts it per `restartPolicy` with kubelet-like backoff. Every change of its
//! [`ContainerRecord`] goes to the pod task, which writes the Pod status. A stop request (with
//! a grace period) ends the process with SIGTERM, then SIGKILL. A container with a memory limit
//! runs under a [`memory::Guard`]; killed for its limit, it terminates with `OOMKilled`.

use std::{path::PathBuf, process::ExitStatus, sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::{Container, Probe};
use nix::sys::signal::Signal;
use tokio::{
    process::Child,
    sync::{mpsc, watch},
    task::JoinSet,
    time::Instant,
};

use crate::{
    backoff::Backoff,
    env::{self, Downward},
    expand::expand_with,
    image::{self, ImageRule},
    memory::{self, Guard, Limit},
    pod::PodView,
    probe::{self, ProbeSpec, Prober, Tracker},
    process,
    runner::Ctx,
    status::{ContainerRecord, State, now},
    volumes::{self, Mount},
};

/// How long to wait before retrying a container whose config could not be resolved.
const CONFIG_RETRY: Duration = Duration::from_secs(10);

/// The pod's `restartPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Restart whenever the process exits.
    Always,
    /// Restart when it exits non-zero.
    OnFailure,
    /// Never restart.
    Never,
}

impl RestartPolicy {
    /// From the spec value (`Always` when absent or unknown).
    pub fn parse(value: Option<&str>) -> Self {
        match value {
            Some("OnFailure") => Self::OnFailure,
            Some("Never") => Self::Never,
            _ => Self::Always,
        }
    }

    /// Whether a process that exited with `exit_code` is started again.
    pub fn restarts(self, exit_code: i32) -> bool {
        match self {
            Self::Always => true,
            Self::OnFailure => exit_code != 0,
            Self::Never => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProbeKind {
    Startup,
    Readiness,
    Liveness,
}

/// Why a supervised process ended.
enum Ended {
    Exited,
    Stopped,
    ProbeKilled(String),
}

/// The task running one container of a pod.
pub struct ContainerTask {
    /// Runner-wide context.
    pub ctx: Arc<Ctx>,
    /// The pod this container belongs to.
    pub view: Arc<PodView>,
    /// Index of the container in the pod spec.
    pub index: usize,
    /// The container spec.
    pub spec: Container,
    /// The current record (initially `ContainerCreating`).
    pub record: ContainerRecord,
    /// The container's directory-backed volume mounts ([`volumes::plan`]), or why the runner
    /// cannot make them.
    pub mounts: Result<Vec<Mount>, String>,
    /// Where record changes go.
    pub updates: mpsc::UnboundedSender<(usize, ContainerRecord)>,
    /// `Some(grace)` once the container must stop.
    pub stop: watch::Receiver<Option<Duration>>,
}

impl ContainerTask {
    fn send(&self) {
        // The pod task outlives its containers; a closed channel means it is gone anyway.
        let _ = self.updates.send((self.index, self.record.clone()));
    }

    fn stopping(&self) -> Option<Duration> {
        *self.stop.borrow()
    }

    /// Sleeps for `d`; returns true when a stop was requested meanwhile.
    async fn sleep_or_stop(&mut self, d: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(d) => false,
            _ = stop_grace(&mut self.stop) => true,
        }
    }

    async fn grace_on_stop(&mut self) -> Duration {
        stop_grace(&mut self.stop).await
    }

    fn file(&self, ext: &str) -> PathBuf {
        self.view.dir.join(format!("{}.{ext}", self.spec.name))
    }

    /// The directory-backed mounts (none when they could not be made: then the container
    /// never starts).
    fn mounts(&self) -> &[Mount] {
        self.mounts.as_deref().unwrap_or_default()
    }

    /// The container's environment as the Pod spec gives it (mount paths not yet rewritten),
    /// or the message of a `CreateContainerConfigError`.
    async fn environment(&self) -> Result<Vec<(String, String)>, String> {
        let ns = self
            .view
            .pod
            .metadata
            .namespace
            .as_deref()
            .unwrap_or("default");
        let sources = env::fetch_sources(&self.ctx.client, ns, &self.spec)
            .await
            .map_err(|e| format!("cannot read env sources: {e}"))?;
        let downward = Downward {
            pod_ip: self.view.pod_ip.to_string(),
            host_ip: self.ctx.host_ip.clone(),
        };
        env::resolve(
            &self.view.pod,
            &self.spec,
            &self.view.base_env,
            &sources,
            &downward,
        )
    }

    /// Runs the container until it is stopped or finishes for good.
    pub async fn run(mut self) {
        let image = self.spec.image.clone().unwrap_or_default();
        let Some(rule) = image::rule_for(&image, &self.ctx.rules).cloned() else {
            let msg = format!(
                "the pod runner cannot run image {image:?} (no --image-map or --host-image prefix matches)"
            );
            self.record.state = State::waiting("ErrImagePull", msg);
            self.send();
            self.grace_on_stop().await;
            return;
        };
        let made = match &self.mounts {
            Ok(mounts) => volumes::create(mounts).map_err(|e| e.to_string()),
            Err(msg) => Err(msg.clone()),
        };
        if let Err(msg) = made {
            // Volumes never change in a Pod's life: no retry, as for an unknown image.
            tracing::warn!(pod = %self.view.key, container = %self.spec.name, %msg, "cannot make volume mounts");
            self.record.state = State::waiting("ContainerCreating", msg);
            self.send();
            self.grace_on_stop().await;
            return;
        }
        let limit = memory::container_limit(&self.spec).unwrap_or_else(|msg| {
            tracing::warn!(pod = %self.view.key, container = %self.spec.name, %msg, "running without a memory limit");
            None
        });
        let mut backoff = Backoff::new(self.ctx.backoff);
        let mut first = true;
        while self.stopping().is_none() {
            let env = match self.environment().await {
                Ok(env) => env,
                Err(msg) => {
                    tracing::warn!(pod = %self.view.key, container = %self.spec.name, %msg, "container config error");
                    self.record.state = State::waiting("CreateContainerConfigError", msg);
                    self.send();
                    if self.sleep_or_stop(CONFIG_RETRY).await {
                        break;
                    }
                    continue;
                }
            };
            if !first {
                self.record.restart_count += 1;
            }
            first = false;
            let started_at = now();
            let started = Instant::now();
            // `$(VAR)` in command and args expands to the spec's values; the process gets
            // them with mount paths rewritten.
            let process_env = volumes::rewrite_env(env.clone(), &self.view.base_env, self.mounts());
            let (status, ended) = match self.start(
                &image,
                &rule,
                &env,
                &process_env,
                limit.as_ref(),
            ) {
                Err(msg) => {
                    let state = State::Terminated {
                        exit_code: 128,
                        signal: None,
                        reason: "StartError".into(),
                        message: Some(msg),
                        started_at: None,
                        finished_at: now(),
                        pid: None,
                    };
                    (state, Ended::Exited)
                }
                Ok((mut child, guard)) => {
                    let pid = child.id().unwrap_or_default();
                    let (result, ended) = self
                        .supervise(&mut child, pid, &process_env, &rule, started)
                        .await;
                    process::signal_group(pid, Signal::SIGKILL);
                    process::remove_pid(&self.file("pid"));
                    let oom = match guard {
                        Some(guard) => guard.finish().await,
                        None => false,
                    };
                    let (exit_code, signal) = match result {
                        Ok(s) => process::exit_info(s),
                        Err(_) => (-1, None),
                    };
                    if let (true, Some(limit)) = (oom, &limit) {
                        tracing::warn!(pod = %self.view.key, container = %self.spec.name, limit = %limit.quantity, limit_bytes = limit.bytes, pid, exit_code, "container OOM-killed");
                    }
                    // As the kubelet: the reason says OOMKilled, the exit code is the process's
                    // own (137 when killed; v1 kills the cgroup's biggest process, maybe a child).
                    let (reason, message) = match &ended {
                        _ if oom => (memory::REASON_OOM_KILLED, None),
                        Ended::ProbeKilled(m) => ("Error", Some(m.clone())),
                        _ if exit_code == 0 => ("Completed", None),
                        _ => ("Error", None),
                    };
                    let state = State::Terminated {
                        exit_code,
                        signal,
                        reason: reason.into(),
                        message,
                        started_at: Some(started_at),
                        finished_at: now(),
                        pid: Some(pid),
                    };
                    tracing::info!(pod = %self.view.key, container = %self.spec.name, pid, exit_code, "process ended");
                    (state, ended)
                }
            };
            let exit_code = match &status {
                State::Terminated { exit_code, .. } => *exit_code,
                _ => 0,
            };
            self.record.ready = false;
            self.record.started = false;
            self.record.pid = None;
            self.record.state = status;
            let restart = !matches!(ended, Ended::Stopped)
                && self.stopping().is_none()
                && self.view.restart_policy.restarts(exit_code);
            self.record.will_restart = restart;
            if !restart {
                self.send();
                return;
            }
            let delay = backoff.next_delay(started.elapsed());
            self.record.last_state = Some(self.record.state.clone());
            if !delay.is_zero() {
                let msg = format!(
                    "back-off {}s restarting failed container={} pod={}",
                    delay.as_secs(),
                    self.spec.name,
                    self.view.key
                );
                self.record.state = State::waiting("CrashLoopBackOff", msg);
                self.send();
                if self.sleep_or_stop(delay).await {
                    // Stopped while backing off: report the last termination as final.
                    if let Some(last) = self.record.last_state.take() {
                        self.record.state = last;
                    }
                    self.record.will_restart = false;
                    self.send();
                    return;
                }
            }
        }
        self.record.will_restart = false;
        self.send();
    }

    /// Expands the command line against `env`, rewrites mount paths in it and starts the
    /// process with `process_env`, held to `limit` when there is one; `Err` is a `StartError`
    /// message.
    fn start(
        &mut self,
        image: &str,
        rule: &ImageRule,
        env: &[(String, String)],
        process_env: &[(String, String)],
        limit: Option<&Limit>,
    ) -> Result<(Child, Option<Guard>), String> {
        let expand_all = |v: &Option<Vec<String>>| {
            v.iter()
                .flatten()
                .map(|s| expand_with(s, env))
                .collect::<Vec<_>>()
        };
        let command = expand_all(&self.spec.command);
        let args = expand_all(&self.spec.args);
        // Expanded first, rewritten once: a `$(VAR)` brings the container path along.
        let rewrite_all = |v: Vec<String>| -> Vec<String> {
            v.iter()
                .map(|s| volumes::rewrite(s, self.mounts()))
                .collect()
        };
        let (command, args) = (rewrite_all(command), rewrite_all(args));
        let inv = image::invocation(image, &command, &args, rule)?;
        let marker = format!(
            "----- hookline-podrunner {} starting container {} (restart {}): {} {}",
            now(),
            self.spec.name,
            self.record.restart_count,
            inv.program.display(),
            inv.args.join(" ")
        );
        // `workingDir` names a directory of the image; it is used only when the host has it.
        let workdir = match self.spec.working_dir.as_deref().map(std::path::Path::new) {
            Some(dir) if dir.is_absolute() && dir.is_dir() => dir.to_path_buf(),
            _ => self.view.home.clone(),
        };
        let child = process::spawn(&inv, process_env, &workdir, &self.file("log"), &marker)
            .map_err(|e| e.to_string())?;
        let pid = child.id().unwrap_or_default();
        // First thing after the spawn: what the process touches before it joins its cgroup
        // stays charged to the runner's (see `memory`; a few MB at most).
        let guard = limit.map(|limit| {
            let uid = self.view.pod.metadata.uid.as_deref().unwrap_or_default();
            let name = format!("{uid}-{}-{}", self.spec.name, self.record.restart_count);
            self.ctx.memory.attach(&name, pid, limit)
        });
        if let Err(e) = process::write_pid(&self.file("pid"), pid) {
            tracing::warn!(error = %e, "cannot write pid file");
        }
        tracing::info!(pod = %self.view.key, container = %self.spec.name, pid, program = %inv.program.display(), "process started");
        Ok((child, guard))
    }

    fn probe(&self, probe: Option<&Probe>, rule: &ImageRule) -> Option<ProbeSpec> {
        let probe = probe?;
        let pod_ip = self.view.pod_ip.to_string();
        let mut check = probe::check_for(probe, &self.spec, &pod_ip, rule, |p| p.is_file());
        if let probe::Check::Exec(inv) = &mut check {
            for arg in &mut inv.args {
                *arg = volumes::rewrite(arg, self.mounts());
            }
        }
        Some(probe::probe_spec(probe, check))
    }

    fn probe_grace(&self, probe: Option<&Probe>) -> Duration {
        probe
            .and_then(|p| p.termination_grace_period_seconds)
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.view.grace, Duration::from_secs)
    }

    /// Watches a running process: its exit, a stop request, and its probes.
    async fn supervise(
        &mut self,
        child: &mut Child,
        pid: u32,
        env: &[(String, String)],
        rule: &ImageRule,
        started: Instant,
    ) -> (std::io::Result<ExitStatus>, Ended) {
        let startup = self.probe(self.spec.startup_probe.as_ref(), rule);
        let readiness = self.probe(self.spec.readiness_probe.as_ref(), rule);
        let liveness = self.probe(self.spec.liveness_probe.as_ref(), rule);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut probes = JoinSet::new();
        let (prober, dir, env) = (
            self.ctx.prober.clone(),
            self.view.dir.clone(),
            Arc::new(env.to_vec()),
        );
        let spawn_probe = |probes: &mut JoinSet<()>, kind: ProbeKind, spec: &ProbeSpec| {
            let task = probe_loop(
                kind,
                spec.clone(),
                prober.clone(),
                env.clone(),
                dir.clone(),
                tx.clone(),
                started,
            );
            probes.spawn(task);
        };
        let mut startup_tracker = startup.as_ref().map(|s| Tracker::new(s, false));
        let mut readiness_tracker = readiness.as_ref().map(|s| Tracker::new(s, false));
        let mut liveness_tracker = liveness.as_ref().map(|s| Tracker::new(s, true));
        let after_startup = |record: &mut ContainerRecord, probes: &mut JoinSet<()>| {
            record.started = true;
            record.ready = readiness.is_none();
            if let Some(spec) = &readiness {
                spawn_probe(probes, ProbeKind::Readiness, spec);
            }
            if let Some(spec) = &liveness {
                spawn_probe(probes, ProbeKind::Liveness, spec);
            }
        };
        self.record.state = State::Running { started_at: now() };
        self.record.pid = Some(pid);
        self.record.will_restart = true;
        match &startup {
            Some(spec) => spawn_probe(&mut probes, ProbeKind::Startup, spec),
            None => after_startup(&mut self.record, &mut probes),
        }
        self.send();
        let mut stop = self.stop.clone();
        loop {
            tokio::select! {
                status = child.wait() => return (status, Ended::Exited),
                grace = stop_grace(&mut stop) => {
                    return (process::stop(child, pid, grace).await, Ended::Stopped);
                }
                Some((kind, result)) = rx.recv() => {
                    let ok = result.is_ok();
                    if let Err(why) = &result {
                        tracing::debug!(pod = %self.view.key, container = %self.spec.name, ?kind, %why, "probe failed");
                    }
                    match kind {
                        ProbeKind::Startup => {
                            let Some(t) = startup_tracker.as_mut() else { continue };
                            if t.record(ok) == Some(true) {
                                probes.abort_all();
                                after_startup(&mut self.record, &mut probes);
                                self.send();
                            } else if !t.verdict && t.failures() >= t.failure_threshold() {
                                let msg = format!("Container {} failed startup probe, will be restarted", self.spec.name);
                                let grace = self.probe_grace(self.spec.startup_probe.as_ref());
                                return (process::stop(child, pid, grace).await, Ended::ProbeKilled(msg));
                            }
                        }
                        ProbeKind::Readiness => {
                            if let Some(ready) = readiness_tracker.as_mut().and_then(|t| t.record(ok)) {
                                tracing::info!(pod = %self.view.key, container = %self.spec.name, ready, "readiness changed");
                                self.record.ready = ready;
                                self.send();
                            }
                        }
                        ProbeKind::Liveness => {
                            if liveness_tracker.as_mut().and_then(|t| t.record(ok)) == Some(false) {
                                let msg = format!("Container {} failed liveness probe, will be restarted", self.spec.name);
                                tracing::info!(pod = %self.view.key, container = %self.spec.name, "liveness probe failed, restarting");
                                let grace = self.probe_grace(self.spec.liveness_probe.as_ref());
                                return (process::stop(child, pid, grace).await, Ended::ProbeKilled(msg));
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Waits for a stop request and returns its grace period (zero when the pod task is gone).
async fn stop_grace(stop: &mut watch::Receiver<Option<Duration>>) -> Duration {
    match stop.wait_for(Option::is_some).await {
        Ok(v) => v.unwrap_or_default(),
        Err(_) => Duration::ZERO,
    }
}

/// Runs one probe every period (after the initial delay, counted from the container's
/// start) and reports each result.
async fn probe_loop(
    kind: ProbeKind,
    spec: ProbeSpec,
    prober: Prober,
    env: Arc<Vec<(String, String)>>,
    dir: PathBuf,
    tx: mpsc::UnboundedSender<(ProbeKind, Result<(), String>)>,
    started: Instant,
) {
    tokio::time::sleep_until(started + spec.initial_delay).await;
    loop {
        let result = probe::run_once(&spec, &prober, &env, &dir).await;
        if tx.send((kind, result)).is_err() {
            return;
        }
        tokio::time::sleep(spec.period).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn always_restarts_even_after_success() {
        assert!(RestartPolicy::parse(None).restarts(0));
        assert!(RestartPolicy::parse(Some("Always")).restarts(1));
    }

    #[test]
    fn on_failure_restarts_only_nonzero_exits() {
        let p = RestartPolicy::parse(Some("OnFailure"));
        assert!(p.restarts(137));
        assert!(!p.restarts(0));
    }

    #[test]
    fn never_does_not_restart() {
        assert!(!RestartPolicy::parse(Some("Never")).restarts(1));
    }
}

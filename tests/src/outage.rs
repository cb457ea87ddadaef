//! Outages of one part of the running local environment, for the restart tests: a component
//! (Kafka, kube-apiserver, etcd, …) is stopped and started again on the same ports and data by
//! `localenv/component.sh`, and an [`Outage`] guard makes sure it comes back even when the test
//! fails half way. Stopping a shared component disturbs every test that runs at that moment, so
//! a test takes [`exclusive`] first; tests of other binaries never overlap (cargo runs binaries
//! one after the other). Pods are checked afterwards through the restart counts the pod runner
//! reports ([`restarts`]).

use std::{collections::BTreeMap, time::Duration};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, api::ListParams};
use tokio::sync::{Mutex, MutexGuard};

use crate::{repo_root, run_dir};

static EXCLUSIVE: Mutex<()> = Mutex::const_new(());

/// Held by the test that disrupts the environment, so no other test of its process runs then.
pub async fn exclusive() -> MutexGuard<'static, ()> {
    EXCLUSIVE.lock().await
}

/// Runs `localenv/component.sh ACTION NAMES…` on this environment (`$HOOKLINE_RUN_DIR`).
///
/// # Errors
/// When the script fails; carries its output.
pub async fn component(action: &str, names: &[&str]) -> anyhow::Result<()> {
    let script = repo_root().join("localenv/component.sh");
    let out = tokio::process::Command::new(&script)
        .env("HOOKLINE_RUN_DIR", run_dir())
        .arg(action)
        .args(names)
        .output()
        .await
        .with_context(|| format!("running {}", script.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "localenv/component.sh {action} {} failed:\n{}{}",
        names.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Components that are down until [`Outage::end`] starts them again (in the reverse order of
/// stopping) — or until the guard is dropped, which starts them from a blocking call, so that a
/// failed test leaves the environment whole for the next.
pub struct Outage {
    names: Vec<String>,
    /// What brings them back: `start`, or `thaw` after a freeze.
    undo: &'static str,
    started: tokio::time::Instant,
    over: bool,
}

impl Outage {
    /// Stops `names` in this order with SIGTERM (a clean shutdown).
    ///
    /// # Errors
    /// When one cannot be stopped (those stopped before it come back when the guard drops).
    pub async fn stop(names: &[&str]) -> anyhow::Result<Outage> {
        Self::begin("stop", "start", names).await
    }

    /// Kills `names` in this order with SIGKILL.
    ///
    /// # Errors
    /// As [`Outage::stop`].
    pub async fn kill(names: &[&str]) -> anyhow::Result<Outage> {
        Self::begin("kill", "start", names).await
    }

    /// Freezes `names` in this order with SIGSTOP: the processes stay and their connections
    /// hang, as with a server that stopped answering; [`Outage::end`] thaws them.
    ///
    /// # Errors
    /// As [`Outage::stop`].
    pub async fn freeze(names: &[&str]) -> anyhow::Result<Outage> {
        Self::begin("freeze", "thaw", names).await
    }

    async fn begin(action: &str, undo: &'static str, names: &[&str]) -> anyhow::Result<Outage> {
        let mut outage = Outage {
            names: Vec::new(),
            undo,
            started: tokio::time::Instant::now(),
            over: false,
        };
        for name in names {
            outage.names.push((*name).to_owned());
            component(action, &[name]).await?;
        }
        outage.started = tokio::time::Instant::now();
        Ok(outage)
    }

    /// How long the components have been down.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Starts (or thaws) the components again, last stopped first, each waited for until
    /// healthy; how long they were down in all.
    ///
    /// # Errors
    /// When one does not come back.
    pub async fn end(mut self) -> anyhow::Result<Duration> {
        self.over = true;
        let reversed: Vec<&str> = self.names.iter().rev().map(String::as_str).collect();
        component(self.undo, &reversed).await?;
        Ok(self.started.elapsed())
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        if self.over || self.names.is_empty() {
            return;
        }
        eprintln!(
            "the test ended during an outage of {}; bringing them back ({})",
            self.names.join(", "),
            self.undo
        );
        let out = std::process::Command::new(repo_root().join("localenv/component.sh"))
            .env("HOOKLINE_RUN_DIR", run_dir())
            .arg(self.undo)
            .args(self.names.iter().rev())
            .output();
        if let Ok(o) = out
            && !o.status.success()
        {
            eprintln!(
                "localenv/component.sh {} failed:\n{}",
                self.undo,
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
}

/// Restart counts of every container of the Pods in `namespace` matching `selector`, by
/// `pod/container`, as the pod runner reports them in the Pod status.
///
/// # Errors
/// When the Pods cannot be listed.
pub async fn restarts(
    client: &Client,
    namespace: &str,
    selector: &str,
) -> anyhow::Result<BTreeMap<String, i32>> {
    let pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(selector))
        .await?;
    Ok(pods
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .flat_map(|p| {
            let pod = p.metadata.name.clone().unwrap_or_default();
            p.status
                .iter()
                .flat_map(|s| s.container_statuses.iter().flatten())
                .map(move |c| (format!("{pod}/{}", c.name), c.restart_count))
        })
        .collect())
}

/// Whether every component of the local environment runs and answers
/// (`localenv/status.sh --quiet`).
///
/// # Errors
/// When the script cannot be run.
pub async fn environment_healthy() -> anyhow::Result<bool> {
    Ok(
        tokio::process::Command::new(repo_root().join("localenv/status.sh"))
            .env("HOOKLINE_RUN_DIR", run_dir())
            .arg("--quiet")
            .output()
            .await?
            .status
            .success(),
    )
}

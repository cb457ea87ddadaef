//! Installs Hookline into the local environment the way a platform team would: `helm upgrade
//! --install` of `charts/hookline` (the CRDs are applied from the current Rust types first,
//! since Helm never upgrades a chart's CRDs). The pod runner starts the controller's Pod from
//! the locally built binary (image `ghcr.io/hookline/...` maps to `$CARGO_TARGET_DIR/debug`),
//! so the controller runs with exactly the chart's RBAC, and the dispatcher Deployments it
//! makes run the same way.
//!
//! Test settings: `allowHttp` and `allowCidrs: [127.0.0.0/8]`, because every receiver in a
//! test listens on loopback; leader election on, so a second install never gives two active
//! controllers; tenant topics replicated once, or, in an environment with three brokers,
//! three times with `min.insync.replicas=2`.

use std::{process::Command, sync::Mutex, time::Duration};

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::Deployment;
use kube::{Api, Client};

use crate::{Env, crd, repo_root, wait};

/// The operator namespace used by the tests.
pub const OPERATOR_NAMESPACE: &str = "hookline-system";

/// The signing-key rotation overlap the tests install with.
pub const ROTATION_OVERLAP: Duration = Duration::from_secs(20);

static INSTALLED: Mutex<bool> = Mutex::new(false);

/// Installs the CRDs and the chart with the test settings (helm once per test process) and
/// waits until the controller is available.
///
/// # Errors
/// When helm fails or the controller does not become available within 2 minutes.
pub async fn controller(env: &Env, client: &Client) -> anyhow::Result<()> {
    crd::install(client).await?;
    {
        let mut done = INSTALLED.lock().expect("install lock");
        if !*done {
            helm_install(env, &[])?;
            *done = true;
        }
    }
    wait::until(
        Duration::from_secs(120),
        "hookline-controller available",
        || async {
            let d = Api::<Deployment>::namespaced(client.clone(), OPERATOR_NAMESPACE)
                .get("hookline-controller")
                .await?;
            let s = d.status.unwrap_or_default();
            Ok(
                (s.available_replicas.unwrap_or(0) >= 1 && s.updated_replicas.unwrap_or(0) >= 1)
                    .then_some(()),
            )
        },
    )
    .await
}

/// The `--set` values every test install uses.
pub fn test_values(env: &Env) -> Vec<String> {
    let mut values: Vec<String> = [
        // `--set` splits at commas: a list of brokers needs them escaped.
        format!(
            "kafka.bootstrapServers={}",
            env.kafka_bootstrap.replace(',', "\\,")
        ),
        "image.tag=dev".into(),
        "delivery.allowHttp=true".into(),
        "delivery.allowCidrs={127.0.0.0/8}".into(),
        "kafka.topics.partitions=3".into(),
        // Short, so the rotation test sees the previous key expire.
        format!("signing.rotationOverlap={}s", ROTATION_OVERLAP.as_secs()),
    ]
    .into();
    if crate::cluster::brokers(env) >= 3 {
        values.push("kafka.topics.replicationFactor=3".into());
        values.push("kafka.topics.minInsyncReplicas=2".into());
    } else {
        values.push("kafka.topics.replicationFactor=1".into());
    }
    values
}

/// Runs helm with the admin kubeconfig; returns stdout.
///
/// # Errors
/// When helm exits non-zero; carries its output.
pub fn helm(env: &Env, args: &[String]) -> anyhow::Result<String> {
    let helm = env
        .vars
        .get("HOOKLINE_HELM")
        .context("env.sh does not set HOOKLINE_HELM")?;
    let out = Command::new(helm)
        .env("KUBECONFIG", &env.kubeconfig)
        .args(args)
        .output()
        .context("running helm")?;
    anyhow::ensure!(
        out.status.success(),
        "helm {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `helm upgrade --install hookline charts/hookline` into the operator namespace with the test
/// values plus `extra` `--set` values.
///
/// # Errors
/// When helm fails.
pub fn helm_install(env: &Env, extra: &[&str]) -> anyhow::Result<()> {
    let mut args: Vec<String> = ["upgrade", "--install", "hookline"]
        .map(String::from)
        .into();
    args.push(repo_root().join("charts/hookline").display().to_string());
    args.extend(
        [
            "--namespace",
            OPERATOR_NAMESPACE,
            "--create-namespace",
            "--skip-crds",
        ]
        .map(String::from),
    );
    for v in test_values(env)
        .iter()
        .map(String::as_str)
        .chain(extra.iter().copied())
    {
        args.push("--set".into());
        args.push(v.to_owned());
    }
    helm(env, &args).map(|_| ())
}

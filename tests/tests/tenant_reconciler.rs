//! The tenant reconciler against the real environment: a platform settings change reaches every
//! tenant's dispatcher Deployment within seconds of a controller starting with it; a tenant's
//! objects go when its last `Webhook` goes, and also when it went while no controller ran; a
//! deleted Role is put back; a `Webhook` still carrying the finalizer of older controllers can
//! be deleted.
//!
//! Each test runs `hookline-controller` processes of its own ([`OwnController`]), with its own
//! operator namespace and its own instance (`--instance`, and the label `hookline.dev/instance`
//! on its `Webhook`s), so that it can stop and restart them with other settings without
//! disturbing the shared controller, which leaves those `Webhook`s alone. They run with
//! `--dispatcher-replicas=0`: these tests are about the objects the controller writes, so no
//! dispatcher process is started for them.

use std::{
    process::Child,
    time::{Duration, Instant},
};

use hookline_core::naming;
use hookline_crds::Webhook;
use hookline_tests::{
    Env, LogDump, TestNamespace, crd, dispatcher, install, random_suffix, repo_root, wait,
};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::ServiceAccount,
    rbac::v1::{Role, RoleBinding},
};
use kube::{
    Api, Client,
    api::{DeleteParams, PostParams},
};
use serde_json::json;

/// The allow-list of the shared test installation.
const WIDE: &str = "127.0.0.0/8";

/// A `hookline-controller` of the test's own, with the admin kubeconfig; killed on drop.
struct OwnController {
    child: Child,
}

impl OwnController {
    /// Starts a controller for `instance` with operator namespace `op` and `--allow-cidr=cidrs`,
    /// logging to the temp dir (added to `dump`).
    fn start(
        env: &Env,
        op: &str,
        instance: &str,
        cidrs: &str,
        dump: &mut LogDump,
    ) -> anyhow::Result<OwnController> {
        Self::start_with(env, op, instance, cidrs, &[], dump)
    }

    /// [`OwnController::start`] with `extra` flags.
    fn start_with(
        env: &Env,
        op: &str,
        instance: &str,
        cidrs: &str,
        extra: &[String],
        dump: &mut LogDump,
    ) -> anyhow::Result<OwnController> {
        let listen = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .to_string();
        let log = std::env::temp_dir().join(format!("{op}-controller-{}.log", random_suffix()));
        let mut args: Vec<String> = vec![
            format!("--operator-namespace={op}"),
            format!("--instance={instance}"),
            format!("--pod-name={instance}"),
            format!("--kafka-bootstrap={}", env.kafka_bootstrap),
            format!("--allow-cidr={cidrs}"),
            format!("--listen={listen}"),
            "--allow-http".into(),
            "--dispatcher-image=ghcr.io/hookline/hookline:dev".into(),
            "--dispatcher-replicas=0".into(),
            "--topic-partitions=3".into(),
            "--topic-replication=1".into(),
        ];
        args.extend_from_slice(extra);
        let binary = dispatcher::debug_binary("hookline-controller");
        let child = dispatcher::spawn(env, &binary, &args, "info,kube=warn", &[], &log, dump)?;
        Ok(OwnController { child })
    }
}

impl Drop for OwnController {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The environment, an admin client, and an operator namespace and instance name of the test's own.
async fn setup(prefix: &str) -> (Env, Client, TestNamespace, String) {
    let env = Env::get().unwrap();
    let client = env.client().await.unwrap();
    crd::install(&client).await.unwrap();
    let op = TestNamespace::create(&env, &client, &format!("{prefix}-op"))
        .await
        .unwrap();
    let instance = format!("{prefix}-{}", random_suffix());
    (env, client, op, instance)
}

/// Creates Webhook `name` of `instance` in `ns`, with `finalizers` set from the start.
async fn create_webhook(
    client: &Client,
    ns: &str,
    name: &str,
    instance: &str,
    finalizers: &[&str],
) {
    let wh: Webhook = serde_json::from_value(json!({
        "apiVersion": "hookline.dev/v1alpha1", "kind": "Webhook",
        "metadata": {"name": name, "labels": {"hookline.dev/instance": instance}, "finalizers": finalizers},
        "spec": {"url": "http://127.0.0.1:9/hook", "eventTypes": ["transaction.*"]}
    }))
    .unwrap();
    Api::<Webhook>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &wh)
        .await
        .unwrap();
}

fn args(d: &Deployment) -> Vec<String> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers.first()?.args.clone())
        .unwrap_or_default()
}

/// Waits until the dispatcher Deployment of every tenant in `tenants` has `--allow-cidr=cidrs`.
async fn wait_allow_list(
    client: &Client,
    op: &str,
    tenants: &[&str],
    cidrs: &str,
    within: Duration,
) {
    let want = format!("--allow-cidr={cidrs}");
    let deployments = Api::<Deployment>::namespaced(client.clone(), op);
    wait::until(within, &format!("every dispatcher with {want}"), || async {
        let mut behind = Vec::new();
        for t in tenants {
            let d = deployments.get_opt(&naming::dispatcher(t)).await?;
            if !d.as_ref().is_some_and(|d| args(d).contains(&want)) {
                behind.push(t.to_string());
            }
        }
        anyhow::ensure!(behind.is_empty(), "not yet: {behind:?}");
        Ok(Some(()))
    })
    .await
    .unwrap();
}

/// Which of the tenant's four objects exist: (ServiceAccount, Deployment, Role, RoleBinding).
async fn objects(client: &Client, op: &str, tenant: &str) -> anyhow::Result<[bool; 4]> {
    let n = naming::dispatcher(tenant);
    Ok([
        Api::<ServiceAccount>::namespaced(client.clone(), op)
            .get_opt(&n)
            .await?
            .is_some(),
        Api::<Deployment>::namespaced(client.clone(), op)
            .get_opt(&n)
            .await?
            .is_some(),
        Api::<Role>::namespaced(client.clone(), tenant)
            .get_opt(&n)
            .await?
            .is_some(),
        Api::<RoleBinding>::namespaced(client.clone(), tenant)
            .get_opt(&n)
            .await?
            .is_some(),
    ])
}

async fn wait_objects(client: &Client, op: &str, tenant: &str, want: bool, within: Duration) {
    let what = format!(
        "{tenant}'s objects {}",
        if want { "present" } else { "gone" }
    );
    wait::until(within, &what, || async {
        let have = objects(client, op, tenant).await?;
        anyhow::ensure!(
            have == [want; 4],
            "(sa, deployment, role, binding) = {have:?}"
        );
        Ok(Some(()))
    })
    .await
    .unwrap();
}

fn role_secrets(role: &Role) -> Vec<String> {
    role.rules
        .iter()
        .flatten()
        .filter_map(|r| r.resource_names.clone())
        .flatten()
        .collect()
}

#[tokio::test]
async fn a_platform_settings_change_reaches_every_tenant_within_seconds_of_the_controller_start() {
    let mut dump = LogDump::new();
    let (env, client, op, instance) = setup("tr-settings").await;
    let mut tenants = Vec::new();
    for i in 0..3 {
        let ns = TestNamespace::create(&env, &client, &format!("tr-settings-{i}"))
            .await
            .unwrap();
        // Two Webhooks in one of them: still one Deployment, one round.
        for name in ["a", "b"].iter().take(if i == 0 { 2 } else { 1 }) {
            create_webhook(&client, &ns.name, name, &instance, &[]).await;
        }
        tenants.push(ns);
    }
    let names: Vec<&str> = tenants.iter().map(|t| t.name.as_str()).collect();

    let before = OwnController::start(&env, &op.name, &instance, WIDE, &mut dump).unwrap();
    wait_allow_list(&client, &op.name, &names, WIDE, Duration::from_secs(60)).await;
    drop(before);

    // The platform narrows the allow-list: a new controller starts with it.
    let narrow = "127.0.0.1/32";
    let started = Instant::now();
    let _after = OwnController::start(&env, &op.name, &instance, narrow, &mut dump).unwrap();
    wait_allow_list(&client, &op.name, &names, narrow, Duration::from_secs(20)).await;
    eprintln!(
        "{} tenants' dispatchers had the new allow-list {:?} after the controller started",
        names.len(),
        started.elapsed()
    );
    for t in &names {
        let d = Api::<Deployment>::namespaced(client.clone(), &op.name)
            .get(&naming::dispatcher(t))
            .await
            .unwrap();
        assert!(
            !args(&d).contains(&format!("--allow-cidr={WIDE}")),
            "{t}: {:?}",
            args(&d)
        );
    }
}

/// The dispatcher flags `helm template` renders into the controller's args for `values`.
fn rendered_dispatcher_flags(env: &Env, values: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["template", "hookline"].map(String::from).into();
    args.push(repo_root().join("charts/hookline").display().to_string());
    for v in ["kafka.bootstrapServers=127.0.0.1:9"].iter().chain(values) {
        args.push("--set".into());
        args.push((*v).into());
    }
    let rendered = install::helm(env, &args).unwrap();
    // The controller's args are rendered one per line, as `- --flag=value` or, when quoted,
    // `- "--flag=value"` with JSON escapes.
    let flags: Vec<String> = rendered
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .map(|a| {
            if a.starts_with('"') {
                serde_json::from_str::<String>(a).unwrap_or_default()
            } else {
                a.to_owned()
            }
        })
        .filter(|a| {
            a.starts_with("--dispatcher-pod=")
                || a.starts_with("--dispatcher-image-pull-policy=")
                || a.starts_with("--dispatcher-log-level=")
        })
        .collect();
    assert_eq!(flags.len(), 3, "{flags:?}");
    flags
}

#[tokio::test]
async fn dispatcher_pods_get_the_platforms_pod_settings_from_the_chart_values() {
    let mut dump = LogDump::new();
    let (env, client, op, instance) = setup("tr-pod").await;
    let flags = rendered_dispatcher_flags(
        &env,
        &[
            "imagePullSecrets[0].name=regcred",
            "image.pullPolicy=Always",
            "dispatcher.logLevel=debug",
            "dispatcher.nodeSelector.pool=hooks",
            "dispatcher.tolerations[0].key=dedicated",
            "dispatcher.tolerations[0].operator=Exists",
            "dispatcher.tolerations[0].effect=NoSchedule",
            "dispatcher.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].weight=1",
            "dispatcher.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].preference.matchExpressions[0].key=zone",
            "dispatcher.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].preference.matchExpressions[0].operator=Exists",
            "dispatcher.priorityClassName=system-cluster-critical",
        ],
    );
    let tenant = TestNamespace::create(&env, &client, "tr-pod-t")
        .await
        .unwrap();
    create_webhook(&client, &tenant.name, "a", &instance, &[]).await;
    let _controller =
        OwnController::start_with(&env, &op.name, &instance, WIDE, &flags, &mut dump).unwrap();
    let deployments = Api::<Deployment>::namespaced(client.clone(), &op.name);
    let name = naming::dispatcher(&tenant.name);
    let d = wait::until(
        Duration::from_secs(60),
        "the dispatcher Deployment",
        || async { Ok(deployments.get_opt(&name).await?) },
    )
    .await
    .unwrap();
    let pod = d.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.image_pull_secrets.unwrap()[0].name, "regcred");
    assert_eq!(pod.node_selector.unwrap()["pool"], "hooks");
    assert_eq!(
        pod.tolerations.unwrap()[0].key.as_deref(),
        Some("dedicated")
    );
    let affinity = pod.affinity.unwrap().node_affinity.unwrap();
    assert_eq!(
        affinity
            .preferred_during_scheduling_ignored_during_execution
            .unwrap()[0]
            .weight,
        1
    );
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-cluster-critical")
    );
    let c = &pod.containers[0];
    assert_eq!(c.image_pull_policy.as_deref(), Some("Always"));
    let log = c.env.iter().flatten().find(|e| e.name == "RUST_LOG");
    assert_eq!(log.and_then(|e| e.value.as_deref()), Some("debug"));
}

#[tokio::test]
async fn the_last_webhook_going_removes_the_tenants_objects() {
    let mut dump = LogDump::new();
    let (env, client, op, instance) = setup("tr-last").await;
    let tenant = TestNamespace::create(&env, &client, "tr-last")
        .await
        .unwrap();
    let t = tenant.name.as_str();
    let _controller = OwnController::start(&env, &op.name, &instance, WIDE, &mut dump).unwrap();
    for name in ["one", "two"] {
        create_webhook(&client, t, name, &instance, &[]).await;
    }
    wait_objects(&client, &op.name, t, true, Duration::from_secs(60)).await;
    let roles = Api::<Role>::namespaced(client.clone(), t);
    let n = naming::dispatcher(t);
    wait::until(
        Duration::from_secs(30),
        "both signing Secrets granted",
        || async {
            let r = roles.get(&n).await?;
            Ok((role_secrets(&r) == ["one-signing", "two-signing"]).then_some(()))
        },
    )
    .await
    .unwrap();

    // No finalizer: a deleted Webhook is gone at once, and the tenant reconciler catches up.
    let api = Api::<Webhook>::namespaced(client.clone(), t);
    let one = api.get("one").await.unwrap();
    assert!(one.metadata.finalizers.unwrap_or_default().is_empty());
    api.delete("one", &DeleteParams::default()).await.unwrap();
    wait::until(
        Duration::from_secs(30),
        "the Role grants two-signing only",
        || async {
            let r = roles.get(&n).await?;
            Ok((role_secrets(&r) == ["two-signing"]).then_some(()))
        },
    )
    .await
    .unwrap();
    assert_eq!(objects(&client, &op.name, t).await.unwrap(), [true; 4]);

    api.delete("two", &DeleteParams::default()).await.unwrap();
    wait_objects(&client, &op.name, t, false, Duration::from_secs(30)).await;
}

#[tokio::test]
async fn a_tenant_left_without_webhooks_while_no_controller_ran_is_swept_at_start() {
    let mut dump = LogDump::new();
    let (env, client, op, instance) = setup("tr-sweep").await;
    let gone = TestNamespace::create(&env, &client, "tr-sweep-gone")
        .await
        .unwrap();
    let kept = TestNamespace::create(&env, &client, "tr-sweep-kept")
        .await
        .unwrap();
    for ns in [&gone, &kept] {
        create_webhook(&client, &ns.name, "w", &instance, &[]).await;
    }
    let first = OwnController::start(&env, &op.name, &instance, WIDE, &mut dump).unwrap();
    for ns in [&gone, &kept] {
        wait_objects(&client, &op.name, &ns.name, true, Duration::from_secs(60)).await;
    }
    drop(first);

    Api::<Webhook>::namespaced(client.clone(), &gone.name)
        .delete("w", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(
        objects(&client, &op.name, &gone.name).await.unwrap(),
        [true; 4],
        "no controller runs: the orphan's objects are still there"
    );
    let _second = OwnController::start(&env, &op.name, &instance, WIDE, &mut dump).unwrap();
    wait_objects(
        &client,
        &op.name,
        &gone.name,
        false,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        objects(&client, &op.name, &kept.name).await.unwrap(),
        [true; 4],
        "a tenant with a Webhook keeps its objects"
    );
}

#[tokio::test]
async fn a_deleted_role_is_put_back() {
    let mut dump = LogDump::new();
    let (env, client, op, instance) = setup("tr-role").await;
    let tenant = TestNamespace::create(&env, &client, "tr-role")
        .await
        .unwrap();
    let t = tenant.name.as_str();
    let _controller = OwnController::start(&env, &op.name, &instance, WIDE, &mut dump).unwrap();
    create_webhook(&client, t, "w", &instance, &[]).await;
    wait_objects(&client, &op.name, t, true, Duration::from_secs(60)).await;

    let roles = Api::<Role>::namespaced(client.clone(), t);
    let n = naming::dispatcher(t);
    let old = roles.get(&n).await.unwrap();
    roles.delete(&n, &DeleteParams::default()).await.unwrap();
    let started = Instant::now();
    let new = wait::until(Duration::from_secs(20), "the Role recreated", || async {
        let r = roles.get_opt(&n).await?;
        Ok(r.filter(|r| r.metadata.uid != old.metadata.uid))
    })
    .await
    .unwrap();
    eprintln!("Role recreated {:?} after its deletion", started.elapsed());
    assert_eq!(role_secrets(&new), ["w-signing"]);
    assert_eq!(new.rules, old.rules);
}

#[tokio::test]
async fn a_webhook_with_the_finalizer_of_older_controllers_can_be_deleted() {
    let mut dump = LogDump::new();
    let (env, client, op, instance) = setup("tr-legacy").await;
    let tenant = TestNamespace::create(&env, &client, "tr-legacy")
        .await
        .unwrap();
    let t = tenant.name.as_str();
    // As a controller before the tenant reconciler left it.
    create_webhook(&client, t, "old", &instance, &["hookline.dev/cleanup"]).await;
    let _controller = OwnController::start(&env, &op.name, &instance, WIDE, &mut dump).unwrap();
    wait_objects(&client, &op.name, t, true, Duration::from_secs(60)).await;

    let api = Api::<Webhook>::namespaced(client.clone(), t);
    api.delete("old", &DeleteParams::default()).await.unwrap();
    wait::until(Duration::from_secs(30), "the Webhook gone", || async {
        Ok(api.get_opt("old").await?.is_none().then_some(()))
    })
    .await
    .unwrap();
    wait_objects(&client, &op.name, t, false, Duration::from_secs(30)).await;
}

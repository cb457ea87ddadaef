//! The Helm chart: it lints, it renders to objects the real API server accepts (server-side
//! dry run) with default values and with every optional part on, a typo in values fails with a
//! message naming it, and the chart's CRD copy is what `crdgen` generates (see `crd.rs`). Its
//! RBAC, read from the rendered objects: the tenant API's own identity may only create
//! TokenReviews, and the tenant roles grant the delivery log (and edit a Secret `get`). With
//! the chart installed, namespace editors and viewers get exactly their share of `Webhook`s and
//! deliveries (the API's ServiceAccount, live, is in `rbac.rs`).

use std::time::Duration;

use hookline_tests::{Env, LogDump, install, repo_root, wait};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde::Deserialize as _;
use serde_json::json;

fn chart() -> String {
    repo_root().join("charts/hookline").display().to_string()
}

/// The rendered chart's objects (YAML documents as JSON; empty documents left out).
fn objects(rendered: &str) -> Vec<serde_json::Value> {
    serde_yaml::Deserializer::from_str(rendered)
        .map(|doc| serde_json::to_value(serde_yaml::Value::deserialize(doc).unwrap()).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// The rendered object of `kind` named `name`.
fn object<'a>(objects: &'a [serde_json::Value], kind: &str, name: &str) -> &'a serde_json::Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendered chart"))
}

fn template(env: &Env, extra: &[&str]) -> anyhow::Result<String> {
    let mut args: Vec<String> = ["template", "hookline"].map(String::from).into();
    args.push(chart());
    args.extend(["--namespace", install::OPERATOR_NAMESPACE].map(String::from));
    for v in install::test_values(env)
        .iter()
        .map(String::as_str)
        .chain(extra.iter().copied())
    {
        args.push("--set".into());
        args.push(v.into());
    }
    install::helm(env, &args)
}

/// The Prometheus Operator's CRDs are not on this machine; schema-less stand-ins with the same
/// group, kinds and scope let the API server accept (and so dry-run) the chart's monitoring
/// objects. They check that the objects are well-formed Kubernetes objects of those kinds, not
/// the operator's own schema.
async fn monitoring_stand_ins(client: &kube::Client) {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    for (kind, plural) in [
        ("ServiceMonitor", "servicemonitors"),
        ("PodMonitor", "podmonitors"),
        ("PrometheusRule", "prometheusrules"),
    ] {
        let name = format!("{plural}.monitoring.coreos.com");
        let crd: CustomResourceDefinition = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "group": "monitoring.coreos.com", "scope": "Namespaced",
                "names": {"kind": kind, "plural": plural, "singular": kind.to_lowercase()},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]
            }
        }))
        .unwrap();
        api.patch(
            &name,
            &PatchParams::apply("hookline.dev/tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap();
        wait::until(
            Duration::from_secs(30),
            &format!("{name} established"),
            || async {
                let c = api.get(&name).await?;
                let ok = c
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                Ok(ok.then_some(()))
            },
        )
        .await
        .unwrap();
    }
}

#[test]
fn chart_lints_cleanly() {
    let env = Env::get().unwrap();
    let out = install::helm(
        &env,
        &[
            "lint".into(),
            chart(),
            "--strict".into(),
            "--set".into(),
            "kafka.bootstrapServers=k:9092".into(),
        ],
    )
    .unwrap();
    assert!(out.contains("0 chart(s) failed"), "{out}");
}

#[tokio::test]
async fn rendered_chart_is_accepted_by_the_api_server_with_defaults_and_with_every_option_on() {
    let _dump = LogDump::new();
    let env = Env::get().unwrap();
    let client = env.client().await.unwrap();
    hookline_tests::crd::install(&client).await.unwrap();
    monitoring_stand_ins(&client).await;
    env.kubectl(&["create", "namespace", install::OPERATOR_NAMESPACE])
        .ok();

    let all_on = [
        "metrics.serviceMonitor.enabled=true",
        "metrics.prometheusRule.enabled=true",
        "metrics.grafanaDashboard.enabled=true",
        "networkPolicy.enabled=true",
        "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.team=monitoring",
        "controller.replicas=2",
        "kafka.existingSecret=kafka-credentials",
        "imagePullSecrets[0].name=regcred",
        "dispatcher.nodeSelector.pool=hooks",
        "dispatcher.tolerations[0].operator=Exists",
        "dispatcher.priorityClassName=platform-high",
        "dispatcher.logLevel=debug",
        "api.replicas=2",
        "api.persistence.existingClaim=api-store",
        "api.ingress.enabled=true",
        "api.ingress.className=nginx",
        "api.ingress.host=hooks-api.example.com",
        "api.ingress.tls[0].secretName=hooks-api-tls",
        "api.ingress.tls[0].hosts[0]=hooks-api.example.com",
        "networkPolicy.apiFrom[0].namespaceSelector.matchLabels.team=edge",
    ];
    for (what, extra) in [("defaults", &[][..]), ("every option on", &all_on[..])] {
        let rendered = template(&env, extra).unwrap();
        let (ok, out, err) = env
            .kubectl_stdin(&["apply", "--dry-run=server", "-f", "-"], &rendered)
            .unwrap();
        assert!(
            ok,
            "{what}: the API server refused the rendered chart:\n{err}\n{out}"
        );
        let all_on = what == "every option on";
        assert_eq!(
            rendered.matches("team: monitoring").count(),
            if all_on { 3 } else { 0 },
            "{what}: the three NetworkPolicies (controller, dispatchers, API) admit scrapes from networkPolicy.metricsFrom only"
        );
        assert_eq!(
            rendered.matches("team: edge").count(),
            usize::from(all_on),
            "{what}: the API port admits networkPolicy.apiFrom"
        );
        let kinds = out.lines().count();
        assert!(kinds >= 14, "{what}: only {kinds} objects:\n{out}");
        for kind in [
            "deployment.apps/hookline-api",
            "service/hookline-api",
            "serviceaccount/hookline-api",
            "clusterrole.rbac.authorization.k8s.io/hookline-api",
            "clusterrolebinding.rbac.authorization.k8s.io/hookline-api",
            "clusterrole.rbac.authorization.k8s.io/hookline-tenant-edit",
            "clusterrole.rbac.authorization.k8s.io/hookline-tenant-view",
        ] {
            assert!(out.contains(kind), "{what}: no {kind} in\n{out}");
        }
        if all_on {
            for kind in [
                "servicemonitor.monitoring.coreos.com/hookline-controller",
                "servicemonitor.monitoring.coreos.com/hookline-api",
                "podmonitor",
                "prometheusrule",
                "configmap/hookline-dashboard",
                "networkpolicy.networking.k8s.io/hookline-api",
                "poddisruptionbudget.policy/hookline-api",
                "ingress.networking.k8s.io/hookline-api",
            ] {
                assert!(out.contains(kind), "{what}: no {kind} in\n{out}");
            }
        }
    }
}

#[test]
fn a_typo_in_values_fails_with_a_message_naming_it() {
    let env = Env::get().unwrap();
    let err = template(&env, &["delivery.allowHTTP=true"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("allowHTTP"), "{err}");
    let err = install::helm(&env, &["template".into(), "x".into(), chart()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("kafka.bootstrapServers is required"), "{err}");
}

#[test]
fn the_api_service_account_may_only_review_tokens() {
    let env = Env::get().unwrap();
    let all = objects(&template(&env, &[]).unwrap());
    assert_eq!(
        object(&all, "ClusterRole", "hookline-api")["rules"],
        json!([{"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}]),
        "the API acts with its callers' tokens; its own identity only asks who they are"
    );
    let is_api_sa =
        |s: &serde_json::Value| s["kind"] == "ServiceAccount" && s["name"] == "hookline-api";
    let bindings: Vec<&serde_json::Value> = all
        .iter()
        .filter(|o| o["kind"] == "RoleBinding" || o["kind"] == "ClusterRoleBinding")
        .filter(|o| {
            o["subjects"]
                .as_array()
                .into_iter()
                .flatten()
                .any(is_api_sa)
        })
        .collect();
    assert_eq!(bindings.len(), 1, "one binding for the API: {bindings:?}");
    assert_eq!(
        bindings[0]["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "hookline-api"})
    );
    let pod = &object(&all, "Deployment", "hookline-api")["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "hookline-api");
}

#[test]
fn tenant_roles_grant_the_delivery_log_and_editors_a_secret_get_only() {
    let env = Env::get().unwrap();
    let all = objects(&template(&env, &[]).unwrap());
    let rules = |name: &str| object(&all, "ClusterRole", name)["rules"].clone();
    let deliveries = json!({"apiGroups": ["hookline.dev"], "resources": ["deliveries"], "verbs": ["get", "list"]});
    let view = rules("hookline-tenant-view");
    assert!(view.as_array().unwrap().contains(&deliveries), "{view}");
    assert!(
        !view.to_string().contains("secrets"),
        "viewers read no Secret: {view}"
    );
    let edit = rules("hookline-tenant-edit");
    assert!(edit.as_array().unwrap().contains(&deliveries), "{edit}");
    assert!(
        edit.as_array()
            .unwrap()
            .contains(&json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]})),
        "{edit}"
    );
    let labels = |name: &str| object(&all, "ClusterRole", name)["metadata"]["labels"].clone();
    assert_eq!(
        labels("hookline-tenant-view")["rbac.authorization.k8s.io/aggregate-to-view"],
        "true"
    );
    assert_eq!(
        labels("hookline-tenant-edit")["rbac.authorization.k8s.io/aggregate-to-edit"],
        "true"
    );
    assert_eq!(
        labels("hookline-tenant-edit")["rbac.authorization.k8s.io/aggregate-to-admin"],
        "true"
    );
    assert!(
        labels("hookline-tenant-edit")["rbac.authorization.k8s.io/aggregate-to-view"].is_null(),
        "the Secret get never reaches view"
    );
}

#[test]
fn one_api_replica_gets_no_disruption_budget_that_would_block_drains() {
    let env = Env::get().unwrap();
    let pdbs = |extra: &[&str]| -> Vec<serde_json::Value> {
        objects(&template(&env, extra).unwrap())
            .into_iter()
            .filter(|o| o["kind"] == "PodDisruptionBudget")
            .collect()
    };
    assert!(pdbs(&[]).is_empty(), "one replica: no budget");
    let two = pdbs(&["api.replicas=2"]);
    assert_eq!(two.len(), 1);
    assert_eq!(two[0]["spec"]["minAvailable"], 1);
    let err = template(
        &env,
        &["api.replicas=2", "api.podDisruptionBudget.minAvailable=2"],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("must be below api.replicas"), "{err}");
}

#[test]
fn the_api_store_is_an_empty_dir_unless_a_claim_is_named() {
    let env = Env::get().unwrap();
    let store = |extra: &[&str]| -> (serde_json::Value, serde_json::Value) {
        let all = objects(&template(&env, extra).unwrap());
        let spec = &object(&all, "Deployment", "hookline-api")["spec"];
        (
            spec["template"]["spec"]["volumes"][0].clone(),
            spec["strategy"].clone(),
        )
    };
    let (volume, strategy) = store(&[]);
    assert_eq!(
        volume,
        json!({"name": "store", "emptyDir": {"sizeLimit": "2Gi"}})
    );
    assert!(strategy.is_null(), "rolling updates without a claim");
    let (volume, strategy) = store(&["api.persistence.existingClaim=x"]);
    assert_eq!(
        volume,
        json!({"name": "store", "persistentVolumeClaim": {"claimName": "x"}})
    );
    assert_eq!(
        strategy,
        json!({"type": "Recreate"}),
        "one file, one writer"
    );
}

#[test]
fn retention_in_days_reaches_the_api_as_hours() {
    let env = Env::get().unwrap();
    let args = |extra: &[&str]| -> Vec<serde_json::Value> {
        let all = objects(&template(&env, extra).unwrap());
        let pod = &object(&all, "Deployment", "hookline-api")["spec"]["template"]["spec"];
        pod["containers"][0]["args"].as_array().unwrap().clone()
    };
    assert!(
        args(&[]).contains(&json!("--retention=720h")),
        "the default 30d"
    );
    assert!(args(&["api.retention=36h30m"]).contains(&json!("--retention=36h30m")));
    let err = template(&env, &["api.retention=30days"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("retention"), "{err}");
}

#[test]
fn min_insync_replicas_reaches_the_controller_only_when_set_and_never_above_the_replication() {
    let env = Env::get().unwrap();
    let args = |extra: &[&str]| -> Vec<serde_json::Value> {
        let all = objects(&template(&env, extra).unwrap());
        let pod = &object(&all, "Deployment", "hookline-controller")["spec"]["template"]["spec"];
        pod["containers"][0]["args"].as_array().unwrap().clone()
    };
    let flag = |args: &[serde_json::Value]| {
        args.iter()
            .filter_map(|a| a.as_str()?.strip_prefix("--topic-min-insync-replicas="))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    // Unset: the controller's own default (2, capped at the replication factor).
    assert!(
        flag(&args(&["kafka.topics.minInsyncReplicas=null"])).is_empty(),
        "no flag by default"
    );
    let set = [
        "kafka.topics.replicationFactor=3",
        "kafka.topics.minInsyncReplicas=2",
    ];
    assert_eq!(flag(&args(&set)), ["2"]);
    let err = template(
        &env,
        &[
            "kafka.topics.replicationFactor=2",
            "kafka.topics.minInsyncReplicas=3",
        ],
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("minInsyncReplicas (3) must not exceed kafka.topics.replicationFactor (2)"),
        "{err}"
    );
    let err = template(&env, &["kafka.topics.minInsyncReplicas=0"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("minInsyncReplicas"), "{err}");
}

#[tokio::test]
async fn namespace_editors_manage_webhooks_there_viewers_only_read_and_nobody_else_touches_them() {
    use hookline_crds::Webhook;
    use k8s_openapi::api::rbac::v1::RoleBinding;
    let _dump = LogDump::new();
    let env = Env::get().unwrap();
    let client = env.client().await.unwrap();
    install::controller(&env, &client).await.unwrap();
    let mine = hookline_tests::TestNamespace::create(&env, &client, "tenant-a")
        .await
        .unwrap();
    let theirs = hookline_tests::TestNamespace::create(&env, &client, "tenant-b")
        .await
        .unwrap();
    // The built-in roles a platform hands out: `edit` and `view`, bound in one namespace.
    for (who, role) in [("editor", "edit"), ("viewer", "view")] {
        let rb: RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": who},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": who, "namespace": mine.name}]
        }))
        .unwrap();
        Api::<RoleBinding>::namespaced(client.clone(), &mine.name)
            .create(&Default::default(), &rb)
            .await
            .unwrap();
    }
    for who in ["editor", "viewer"] {
        let sa: k8s_openapi::api::core::v1::ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": who}})).unwrap();
        Api::namespaced(client.clone(), &mine.name)
            .create(&Default::default(), &sa)
            .await
            .unwrap();
    }
    let editor = env.client_as(&client, &mine.name, "editor").await.unwrap();
    let viewer = env.client_as(&client, &mine.name, "viewer").await.unwrap();
    let wh = |name: &str| -> Webhook {
        serde_json::from_value(json!({"apiVersion": "hookline.dev/v1alpha1", "kind": "Webhook", "metadata": {"name": name},
            "spec": {"url": "https://hooks.example.com/x", "eventTypes": ["a.b"]}}))
        .unwrap()
    };
    let forbidden = |e: kube::Error| matches!(e, kube::Error::Api(s) if s.code == 403);

    // The aggregation controller folds hookline-tenant-edit into `edit` shortly after install.
    wait::until(
        Duration::from_secs(60),
        "editor may create Webhooks in its namespace",
        || async {
            Ok(Api::<Webhook>::namespaced(editor.clone(), &mine.name)
                .create(&Default::default(), &wh("by-editor"))
                .await
                .ok()
                .map(|_| ()))
        },
    )
    .await
    .unwrap();
    let listed = Api::<Webhook>::namespaced(viewer.clone(), &mine.name)
        .list(&Default::default())
        .await
        .unwrap();
    assert_eq!(
        listed.items.len(),
        1,
        "the viewer reads the namespace's Webhooks"
    );
    let err = Api::<Webhook>::namespaced(viewer.clone(), &mine.name)
        .create(&Default::default(), &wh("by-viewer"))
        .await
        .unwrap_err();
    assert!(forbidden(err), "a viewer may not create Webhooks");
    let err = Api::<Webhook>::namespaced(editor.clone(), &theirs.name)
        .create(&Default::default(), &wh("elsewhere"))
        .await
        .unwrap_err();
    assert!(
        forbidden(err),
        "an editor of one namespace may not create Webhooks in another"
    );
    let err = Api::<Webhook>::namespaced(editor.clone(), &theirs.name)
        .list(&Default::default())
        .await
        .unwrap_err();
    assert!(forbidden(err), "nor read them");

    // The delivery log and signing Secrets, as the tenant API asks: a SelfSubjectAccessReview
    // made with the caller's own token.
    wait::until(
        Duration::from_secs(60),
        "viewer may list deliveries in its namespace",
        || async {
            Ok(
                may(&viewer, &mine.name, "hookline.dev", "deliveries", "list")
                    .await?
                    .then_some(()),
            )
        },
    )
    .await
    .unwrap();
    for (who, client, group, resource, verb, ns, allowed) in [
        (
            "viewer",
            &viewer,
            "hookline.dev",
            "deliveries",
            "get",
            &mine.name,
            true,
        ),
        ("viewer", &viewer, "", "secrets", "get", &mine.name, false),
        (
            "viewer",
            &viewer,
            "hookline.dev",
            "deliveries",
            "list",
            &theirs.name,
            false,
        ),
        (
            "editor",
            &editor,
            "hookline.dev",
            "deliveries",
            "list",
            &mine.name,
            true,
        ),
        ("editor", &editor, "", "secrets", "get", &mine.name, true),
        ("editor", &editor, "", "secrets", "get", &theirs.name, false),
        (
            "editor",
            &editor,
            "hookline.dev",
            "deliveries",
            "list",
            &theirs.name,
            false,
        ),
    ] {
        assert_eq!(
            may(client, ns, group, resource, verb).await.unwrap(),
            allowed,
            "{who}: {verb} {resource} in {ns}"
        );
    }
}

/// Whether the client's own identity may `verb` `resource` in `namespace`
/// (SelfSubjectAccessReview).
async fn may(
    client: &kube::Client,
    namespace: &str,
    group: &str,
    resource: &str,
    verb: &str,
) -> anyhow::Result<bool> {
    use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
    let review: SelfSubjectAccessReview = serde_json::from_value(json!({
        "spec": {"resourceAttributes": {"namespace": namespace, "group": group, "resource": resource, "verb": verb}}
    }))?;
    let answer = Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&Default::default(), &review)
        .await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

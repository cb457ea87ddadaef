//! The Helm chart: it lints, it renders to objects the real API server accepts (server-side
//! dry run) with default values and with every optional part on, a typo in values fails with a
//! message naming it, and the chart's CRD copy is what `crdgen` generates (see `crd.rs`).

use std::time::Duration;

use hookline_tests::{Env, LogDump, install, repo_root, wait};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::json;

fn chart() -> String {
    repo_root().join("charts/hookline").display().to_string()
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
        assert_eq!(
            rendered.matches("team: monitoring").count(),
            if what == "every option on" { 2 } else { 0 },
            "{what}: both NetworkPolicies admit scrapes from networkPolicy.metricsFrom only"
        );
        let kinds = out.lines().count();
        assert!(kinds >= 9, "{what}: only {kinds} objects:\n{out}");
        if what == "every option on" {
            for kind in [
                "servicemonitor",
                "podmonitor",
                "prometheusrule",
                "configmap/hookline-dashboard",
                "networkpolicy",
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

    // The aggregation controller folds hookline-edit into `edit` shortly after install.
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
    let err = Api::<Webhook>::namespaced(viewer, &mine.name)
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
    let err = Api::<Webhook>::namespaced(editor, &theirs.name)
        .list(&Default::default())
        .await
        .unwrap_err();
    assert!(forbidden(err), "nor read them");
}

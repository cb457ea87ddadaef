//! Installs `hookline-controller` into the local environment the way a platform team would:
//! the operator namespace, a ServiceAccount with least-privilege RBAC, and a Deployment whose
//! Pod the pod runner starts from the locally built binary (image `ghcr.io/hookline/...` maps
//! to `$CARGO_TARGET_DIR/debug`). The controller therefore runs with exactly the permissions
//! granted here, and the dispatcher Deployments it makes run the same way.
//!
//! Test settings: `--allow-http` and `--allow-cidr=127.0.0.0/8`, because every receiver in a
//! test listens on loopback. Leader election is on, so test binaries that install it again
//! never get two active controllers.

use std::time::Duration;

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Namespace, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use serde_json::json;

use crate::{Env, crd, wait};

/// The operator namespace used by the tests.
pub const OPERATOR_NAMESPACE: &str = "hookline-system";
const MANAGER: &str = "hookline.dev/tests";

/// The controller's ClusterRole: what it reads and writes in every tenant namespace.
pub fn controller_cluster_role() -> serde_json::Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "hookline-controller"},
        "rules": [
            {"apiGroups": ["hookline.dev"], "resources": ["webhooks"], "verbs": ["get", "list", "watch", "patch", "update"]},
            {"apiGroups": ["hookline.dev"], "resources": ["webhooks/status"], "verbs": ["get", "patch", "update"]},
            {"apiGroups": ["hookline.dev"], "resources": ["webhooks/finalizers"], "verbs": ["update"]},
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch", "create", "patch", "update"]},
            {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["get", "create", "patch", "delete"]},
            {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"], "verbs": ["get", "create", "patch", "delete"]},
            {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]}
        ]
    })
}

/// Installs the CRDs and the controller (idempotent) and waits until the controller is available.
///
/// # Errors
/// When an object is refused or the controller does not become available within 2 minutes.
pub async fn controller(env: &Env, client: &Client) -> anyhow::Result<()> {
    crd::install(client).await?;
    let pp = PatchParams::apply(MANAGER).force();
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": OPERATOR_NAMESPACE}}))?;
    Api::<Namespace>::all(client.clone())
        .patch(OPERATOR_NAMESPACE, &pp, &Patch::Apply(&ns))
        .await?;
    let sa: ServiceAccount = serde_json::from_value(
        json!({"metadata": {"name": "hookline-controller", "namespace": OPERATOR_NAMESPACE}}),
    )?;
    Api::<ServiceAccount>::namespaced(client.clone(), OPERATOR_NAMESPACE)
        .patch("hookline-controller", &pp, &Patch::Apply(&sa))
        .await?;
    let role: ClusterRole = serde_json::from_value(controller_cluster_role())?;
    Api::<ClusterRole>::all(client.clone())
        .patch("hookline-controller", &pp, &Patch::Apply(&role))
        .await?;
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "hookline-controller"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "hookline-controller"},
        "subjects": [{"kind": "ServiceAccount", "name": "hookline-controller", "namespace": OPERATOR_NAMESPACE}]
    }))?;
    Api::<ClusterRoleBinding>::all(client.clone())
        .patch("hookline-controller", &pp, &Patch::Apply(&binding))
        .await?;

    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "hookline-controller", "namespace": OPERATOR_NAMESPACE, "labels": {"app.kubernetes.io/name": "hookline-controller"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": "hookline-controller"}},
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": "hookline-controller"}},
                "spec": {
                    "serviceAccountName": "hookline-controller",
                    "terminationGracePeriodSeconds": 10,
                    "containers": [{
                        "name": "controller",
                        "image": "ghcr.io/hookline/hookline:dev",
                        "command": ["/usr/local/bin/hookline-controller"],
                        "args": [
                            "--operator-namespace", OPERATOR_NAMESPACE,
                            "--kafka-bootstrap", env.kafka_bootstrap,
                            "--dispatcher-image", "ghcr.io/hookline/hookline:dev",
                            "--allow-http",
                            "--allow-cidr", "127.0.0.0/8",
                            "--topic-partitions", "3",
                            "--leader-elect",
                            "--listen", "$(POD_IP):8080"
                        ],
                        "env": [
                            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                            {"name": "RUST_LOG", "value": "info,hookline_controller=debug"}
                        ],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 2}
                    }]
                }
            }
        }
    }))?;
    Api::<Deployment>::namespaced(client.clone(), OPERATOR_NAMESPACE)
        .patch("hookline-controller", &pp, &Patch::Apply(&deployment))
        .await?;
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

//! Leader election between two controller replicas: exactly one holds the Lease and
//! reconciles; when its Pod is killed, the other takes the Lease over and reconciles.
//! In a test binary of its own, because it disturbs the controller other tests rely on.

use std::time::Duration;

use hookline_core::conditions::types;
use hookline_crds::Webhook;
use hookline_tests::{Env, LogDump, TestNamespace, http_get, install, wait};
use k8s_openapi::api::{apps::v1::Deployment, coordination::v1::Lease, core::v1::Pod};
use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use serde_json::json;

const OP: &str = install::OPERATOR_NAMESPACE;

fn leader_gauge(metrics: &str) -> Option<i64> {
    metrics
        .lines()
        .find(|l| l.starts_with("hookline_controller_leader "))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

fn reconciles(metrics: &str) -> i64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("hookline_controller_reconciles_total{"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .sum::<f64>() as i64
}

/// Waits up to 90 s until the controller has reconciled `Webhook` `name` (it has a
/// `SecretReady` condition, whatever its status).
async fn reconciled(api: &Api<Webhook>, name: &str, what: &str) {
    wait::until(Duration::from_secs(90), what, || async {
        let w = api.get(name).await?;
        Ok(w.status
            .and_then(|s| {
                s.conditions
                    .into_iter()
                    .find(|c| c.type_ == types::SECRET_READY)
            })
            .map(|_| ()))
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn one_of_two_controllers_leads_and_the_other_takes_over_when_it_is_killed() {
    let _dump = LogDump::new();
    let env = Env::get().unwrap();
    let client = env.client().await.unwrap();
    install::controller(&env, &client).await.unwrap();
    install::helm_install(&env, &["controller.replicas=2"]).unwrap();
    let pods = Api::<Pod>::namespaced(client.clone(), OP);
    let ready_pods = || {
        hookline_tests::pods::ready_pods(&client, OP, "app.kubernetes.io/name=hookline-controller")
    };
    let two = wait::until(
        Duration::from_secs(120),
        "2 Ready controller pods",
        || async {
            let r = ready_pods().await?;
            Ok((r.len() == 2).then_some(r))
        },
    )
    .await
    .unwrap();

    // Exactly one holds the Lease; its /metrics says so, and only it reconciles.
    let leases = Api::<Lease>::namespaced(client.clone(), OP);
    let holder = wait::until(
        Duration::from_secs(60),
        "a Lease holder among the pods",
        || async {
            let l = leases.get("hookline-controller").await?;
            let h = l.spec.and_then(|s| s.holder_identity).unwrap_or_default();
            Ok(two.iter().any(|(n, _)| *n == h).then_some(h))
        },
    )
    .await
    .unwrap();
    let tenant = TestNamespace::create(&env, &client, "leader")
        .await
        .unwrap();
    let api = Api::<Webhook>::namespaced(client.clone(), &tenant.name);
    let wh = |name: &str| -> Webhook {
        serde_json::from_value(json!({"apiVersion": "hookline.dev/v1alpha1", "kind": "Webhook", "metadata": {"name": name},
            "spec": {"url": "http://127.0.0.1:9/x", "eventTypes": ["a.b"]}}))
        .unwrap()
    };
    api.create(&PostParams::default(), &wh("before"))
        .await
        .unwrap();
    reconciled(&api, "before", "before reconciled").await;
    for (name, ip) in &two {
        let m = http_get(&format!("{ip}:8080"), "/metrics").unwrap();
        if *name == holder {
            assert_eq!(leader_gauge(&m), Some(1), "{name} holds the Lease");
            assert!(reconciles(&m) > 0, "the leader reconciles");
        } else {
            assert_eq!(leader_gauge(&m), Some(0), "{name} stands by");
            assert_eq!(reconciles(&m), 0, "the standby never reconciles");
        }
    }

    // Kill the leader's Pod: the other replica takes the Lease and reconciles new Webhooks.
    pods.delete(
        &holder,
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        },
    )
    .await
    .unwrap();
    let new_holder = wait::until(Duration::from_secs(90), "the Lease handed over", || async {
        let l = leases.get("hookline-controller").await?;
        let h = l.spec.and_then(|s| s.holder_identity).unwrap_or_default();
        Ok((!h.is_empty() && h != holder).then_some(h))
    })
    .await
    .unwrap();
    assert_ne!(new_holder, holder);
    api.create(&PostParams::default(), &wh("after"))
        .await
        .unwrap();
    reconciled(&api, "after", "after reconciled by the new leader").await;

    // Back to one replica for whatever runs next.
    install::helm_install(&env, &[]).unwrap();
    wait::until(Duration::from_secs(90), "1 controller replica", || async {
        let d = Api::<Deployment>::namespaced(client.clone(), OP)
            .get("hookline-controller")
            .await?;
        let s = d.status.unwrap_or_default();
        Ok((s.replicas == Some(1) && s.available_replicas == Some(1)).then_some(()))
    })
    .await
    .unwrap();
}

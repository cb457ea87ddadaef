//! `hookline-controller` against the real environment, installed as a Deployment that the pod
//! runner runs under its own ServiceAccount: a Webhook gets its signing Secret, its tenant's
//! dispatcher (Deployment, ServiceAccount, Role, RoleBinding) and Kafka topics, and honest
//! conditions; invalid specs get a reason and create nothing; rotation keeps the previous key;
//! the last Webhook's deletion removes the dispatcher; the dispatcher's RBAC stops at its tenant.

use std::time::Duration;

use hookline_core::{conditions::types, naming};
use hookline_crds::Webhook;
use hookline_tests::{Env, LogDump, TestNamespace, install, wait};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Event, Secret, ServiceAccount},
    rbac::v1::Role,
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use rdkafka::{
    ClientConfig,
    consumer::{BaseConsumer, Consumer},
};
use serde_json::json;

const OP: &str = install::OPERATOR_NAMESPACE;

async fn setup(prefix: &str) -> (Env, Client, TestNamespace) {
    let env = Env::get().unwrap();
    let client = env.client().await.unwrap();
    install::controller(&env, &client).await.unwrap();
    let ns = TestNamespace::create(&env, &client, prefix).await.unwrap();
    (env, client, ns)
}

fn webhook(name: &str, url: &str, extra: serde_json::Value) -> Webhook {
    let mut spec = json!({"url": url, "eventTypes": ["transaction.*"]});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    serde_json::from_value(json!({"apiVersion": "hookline.dev/v1alpha1", "kind": "Webhook", "metadata": {"name": name}, "spec": spec})).unwrap()
}

fn condition(wh: &Webhook, type_: &str) -> Option<(String, String, String)> {
    let c = wh
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn wait_condition(
    api: &Api<Webhook>,
    name: &str,
    type_: &str,
    status: &str,
    within: Duration,
) -> Webhook {
    wait::until(within, &format!("{name} {type_}={status}"), || async {
        let wh = api.get(name).await?;
        Ok(condition(&wh, type_)
            .filter(|(s, _, _)| s == status)
            .map(|_| wh))
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn webhook_gets_secret_dispatcher_rbac_topics_and_becomes_ready() {
    let _dump = LogDump::new();
    let (env, client, ns) = setup("ctl-ready").await;
    let api = Api::<Webhook>::namespaced(client.clone(), &ns.name);
    api.create(
        &PostParams::default(),
        &webhook("fraud", "http://127.0.0.1:9/hook", json!({})),
    )
    .await
    .unwrap();

    let wh = wait_condition(
        &api,
        "fraud",
        types::READY,
        "True",
        Duration::from_secs(120),
    )
    .await;
    let status = wh.status.clone().unwrap();
    assert_eq!(status.observed_generation, wh.metadata.generation);
    for t in [types::SECRET_READY, types::DISPATCHER_READY] {
        assert_eq!(condition(&wh, t).unwrap().0, "True", "{t}");
    }
    assert!(
        wh.metadata.finalizers.unwrap_or_default().is_empty(),
        "no finalizer: the tenant reconciler removes a tenant's objects when its last Webhook goes"
    );

    // The signing Secret: owned by the Webhook, a 32-byte whsec_ key; the status names it, never the key.
    let secret = Api::<Secret>::namespaced(client.clone(), &ns.name)
        .get("fraud-signing")
        .await
        .unwrap();
    assert_eq!(secret.metadata.owner_references.unwrap()[0].name, "fraud");
    let key = String::from_utf8(secret.data.unwrap()["secret"].0.clone()).unwrap();
    assert!(hookline_core::signing::Secret::parse(&key).is_ok());
    let s = status.secret.unwrap();
    assert_eq!((s.name.as_str(), s.generation), ("fraud-signing", 1));
    let status_json = serde_json::to_string(&wh.status).unwrap();
    assert!(
        !status_json.contains(&key[6..]),
        "the key leaked into the status"
    );

    // The tenant's dispatcher in the operator namespace, its RBAC in the tenant namespace only.
    let name = naming::dispatcher(&ns.name);
    let d = Api::<Deployment>::namespaced(client.clone(), OP)
        .get(&name)
        .await
        .unwrap();
    assert!(d.status.unwrap().available_replicas.unwrap_or(0) >= 1);
    Api::<ServiceAccount>::namespaced(client.clone(), OP)
        .get(&name)
        .await
        .unwrap();
    let role = Api::<Role>::namespaced(client.clone(), &ns.name)
        .get(&name)
        .await
        .unwrap();
    let names: Vec<String> = role
        .rules
        .unwrap()
        .iter()
        .filter_map(|r| r.resource_names.clone())
        .flatten()
        .collect();
    assert_eq!(names, vec!["fraud-signing".to_string()]);

    // The tenant's topics exist (the broker creates none by itself).
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env.kafka_bootstrap)
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap();
    for topic in naming::topics(&ns.name).all() {
        let t = md.topics().iter().find(|t| t.name() == topic);
        assert!(
            t.is_some_and(|t| t.partitions().len() == 3),
            "topic {topic} missing or not 3 partitions"
        );
    }

    // kubectl get shows it Ready.
    let table = env.kubectl(&["get", "webhooks", "-n", &ns.name]).unwrap();
    assert!(
        table.lines().nth(1).unwrap().split_whitespace().nth(1) == Some("True"),
        "{table}"
    );
}

#[tokio::test]
async fn invalid_webhook_gets_an_actionable_reason_and_nothing_is_created() {
    let _dump = LogDump::new();
    let (_env, client, ns) = setup("ctl-invalid").await;
    let api = Api::<Webhook>::namespaced(client.clone(), &ns.name);
    // 10.0.0.0/8 is not allow-listed in the test platform; no traffic is ever sent there.
    api.create(
        &PostParams::default(),
        &webhook("private", "http://10.1.2.3/hook", json!({})),
    )
    .await
    .unwrap();
    let wh = wait_condition(
        &api,
        "private",
        types::READY,
        "False",
        Duration::from_secs(60),
    )
    .await;
    let (_, reason, message) = condition(&wh, types::READY).unwrap();
    assert_eq!(reason, "AddressNotAllowed");
    assert!(
        message.contains("10.1.2.3") && message.contains("allow-list"),
        "{message}"
    );

    assert!(
        Api::<Secret>::namespaced(client.clone(), &ns.name)
            .get_opt("private-signing")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        Api::<Deployment>::namespaced(client.clone(), OP)
            .get_opt(&naming::dispatcher(&ns.name))
            .await
            .unwrap()
            .is_none()
    );

    // A Warning Event explains it to `kubectl describe`.
    let events = wait::until(
        Duration::from_secs(30),
        "an AddressNotAllowed Event",
        || async {
            let evs = Api::<Event>::namespaced(client.clone(), &ns.name)
                .list(&ListParams::default())
                .await?;
            Ok(evs
                .items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("AddressNotAllowed")))
        },
    )
    .await
    .unwrap();
    assert_eq!(events.type_.as_deref(), Some("Warning"));

    // Fixing the spec makes it Ready, and the fix is what gets reconciled.
    api.patch(
        "private",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"url": "http://127.0.0.1:9/hook"}})),
    )
    .await
    .unwrap();
    let wh = wait_condition(
        &api,
        "private",
        types::READY,
        "True",
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(wh.status.unwrap().observed_generation, Some(2));
}

#[tokio::test]
async fn referenced_secret_is_checked_and_a_missing_one_is_named() {
    let _dump = LogDump::new();
    let (_env, client, ns) = setup("ctl-ref").await;
    let api = Api::<Webhook>::namespaced(client.clone(), &ns.name);
    api.create(
        &PostParams::default(),
        &webhook(
            "mine",
            "http://127.0.0.1:9/hook",
            json!({"secretRef": {"name": "my-key"}}),
        ),
    )
    .await
    .unwrap();
    let wh = wait_condition(
        &api,
        "mine",
        types::SECRET_READY,
        "False",
        Duration::from_secs(60),
    )
    .await;
    let (_, reason, message) = condition(&wh, types::SECRET_READY).unwrap();
    assert_eq!(reason, "SecretNotFound");
    assert!(message.contains("my-key"), "{message}");

    // A key of the wrong size is refused with its own reason, and the message never shows it.
    let short = "whsec_c2hvcnQta2V5";
    let bad: Secret = serde_json::from_value(
        json!({"metadata": {"name": "my-key"}, "stringData": {"secret": short}}),
    )
    .unwrap();
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns.name);
    secrets.create(&PostParams::default(), &bad).await.unwrap();
    let wh = wait::until(Duration::from_secs(60), "SecretInvalid", || async {
        let wh = api.get("mine").await?;
        Ok(condition(&wh, types::SECRET_READY)
            .filter(|c| c.1 == "SecretInvalid")
            .map(|_| wh))
    })
    .await
    .unwrap();
    let (_, _, message) = condition(&wh, types::SECRET_READY).unwrap();
    assert!(
        message.contains("24 to 64") && !message.contains("c2hvcnQta2V5"),
        "{message}"
    );
    secrets
        .delete("my-key", &DeleteParams::default())
        .await
        .unwrap();

    let key = hookline_core::signing::Secret::generate().expose_whsec();
    let secret: Secret = serde_json::from_value(
        json!({"metadata": {"name": "my-key"}, "stringData": {"secret": key}}),
    )
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    // The Secret watch brings the Webhook back without waiting for a periodic resync.
    wait_condition(&api, "mine", types::READY, "True", Duration::from_secs(90)).await;
    assert!(
        Api::<Secret>::namespaced(client, &ns.name)
            .get_opt("mine-signing")
            .await
            .unwrap()
            .is_none(),
        "no key generated when one is referenced"
    );
}

#[tokio::test]
async fn rotation_makes_a_new_key_and_keeps_the_previous_one_valid() {
    let _dump = LogDump::new();
    let (_env, client, ns) = setup("ctl-rotate").await;
    let api = Api::<Webhook>::namespaced(client.clone(), &ns.name);
    api.create(
        &PostParams::default(),
        &webhook("rot", "http://127.0.0.1:9/hook", json!({})),
    )
    .await
    .unwrap();
    wait_condition(
        &api,
        "rot",
        types::SECRET_READY,
        "True",
        Duration::from_secs(60),
    )
    .await;
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns.name);
    let first = secrets.get("rot-signing").await.unwrap().data.unwrap()["secret"].clone();

    api.patch(
        "rot",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"metadata": {"annotations": {"hookline.dev/rotate-secret": "2026-11-23"}}}),
        ),
    )
    .await
    .unwrap();
    let wh = wait::until(
        Duration::from_secs(60),
        "secret generation 2 in status",
        || async {
            let wh = api.get("rot").await?;
            Ok(wh
                .status
                .as_ref()
                .and_then(|s| s.secret.as_ref())
                .is_some_and(|s| s.generation == 2)
                .then_some(wh))
        },
    )
    .await
    .unwrap();
    let s = wh.status.unwrap().secret.unwrap();
    assert!(s.previous_valid_until.is_some());
    let data = secrets.get("rot-signing").await.unwrap().data.unwrap();
    assert_eq!(
        data["previous"], first,
        "the previous key is kept for the overlap"
    );
    assert_ne!(data["secret"], first, "a new current key");
    let second = data["secret"].clone();

    // After the overlap only the new key is left, without any further change to the Webhook.
    let deadline = install::ROTATION_OVERLAP + Duration::from_secs(40);
    wait::until(
        deadline,
        "previous key dropped after the overlap",
        || async {
            let data = secrets.get("rot-signing").await?.data.unwrap_or_default();
            Ok((!data.contains_key("previous")).then_some(()))
        },
    )
    .await
    .unwrap();
    let data = secrets.get("rot-signing").await.unwrap().data.unwrap();
    assert_eq!(
        data["secret"], second,
        "the current key is unchanged when the previous one expires"
    );
    let wh = wait::until(
        Duration::from_secs(30),
        "status without previousValidUntil",
        || async {
            let wh = api.get("rot").await?;
            let s = wh.status.as_ref().and_then(|s| s.secret.clone());
            Ok(
                s.filter(|s| s.previous_valid_until.is_none() && s.generation == 2)
                    .map(|_| wh),
            )
        },
    )
    .await
    .unwrap();
    assert_eq!(condition(&wh, types::SECRET_READY).unwrap().0, "True");
}

#[tokio::test]
async fn dispatcher_identity_reads_its_tenant_only_and_only_its_signing_secrets() {
    let _dump = LogDump::new();
    let (env, client, ns) = setup("ctl-rbac").await;
    let other = TestNamespace::create(&env, &client, "ctl-rbac-other")
        .await
        .unwrap();
    let unrelated: Secret = serde_json::from_value(
        json!({"metadata": {"name": "db-password"}, "stringData": {"p": "x"}}),
    )
    .unwrap();
    for tenant in [&ns.name, &other.name] {
        let api = Api::<Webhook>::namespaced(client.clone(), tenant);
        api.create(
            &PostParams::default(),
            &webhook("w", "http://127.0.0.1:9/hook", json!({})),
        )
        .await
        .unwrap();
        Api::<Secret>::namespaced(client.clone(), tenant)
            .create(&PostParams::default(), &unrelated)
            .await
            .unwrap();
    }
    for tenant in [&ns.name, &other.name] {
        let n = naming::dispatcher(tenant);
        wait::until(
            Duration::from_secs(60),
            "dispatcher RBAC in place",
            || async {
                let role = Api::<Role>::namespaced(client.clone(), tenant)
                    .get_opt(&n)
                    .await?;
                let sa = Api::<ServiceAccount>::namespaced(client.clone(), OP)
                    .get_opt(&n)
                    .await?;
                Ok((role.is_some() && sa.is_some()).then_some(()))
            },
        )
        .await
        .unwrap();
    }
    let forbidden =
        |r: Result<Secret, kube::Error>| matches!(r, Err(kube::Error::Api(s)) if s.code == 403);

    // Each direction: a tenant's dispatcher reads its own Webhooks and signing Secret, and
    // nothing else: not an unrelated Secret of its tenant, nothing of the other tenant.
    for (mine, theirs) in [(&ns.name, &other.name), (&other.name, &ns.name)] {
        let disp = env
            .client_as(&client, OP, &naming::dispatcher(mine))
            .await
            .unwrap();
        // The RoleBinding lands just after the Role; wait until the grant is in effect.
        wait::until(
            Duration::from_secs(30),
            "dispatcher can list its Webhooks",
            || async {
                Ok(Api::<Webhook>::namespaced(disp.clone(), mine)
                    .list(&ListParams::default())
                    .await
                    .ok()
                    .map(|_| ()))
            },
        )
        .await
        .unwrap();
        assert!(
            Api::<Webhook>::namespaced(disp.clone(), mine)
                .list(&ListParams::default())
                .await
                .is_ok()
        );
        assert!(
            Api::<Secret>::namespaced(disp.clone(), mine)
                .get("w-signing")
                .await
                .is_ok(),
            "{mine}: own signing Secret"
        );
        assert!(
            forbidden(
                Api::<Secret>::namespaced(disp.clone(), mine)
                    .get("db-password")
                    .await
            ),
            "{mine}: unrelated Secret of its tenant"
        );
        assert!(
            forbidden(
                Api::<Secret>::namespaced(disp.clone(), theirs)
                    .get("w-signing")
                    .await
            ),
            "{mine}: signing Secret of {theirs}"
        );
        assert!(
            forbidden(
                Api::<Secret>::namespaced(disp.clone(), theirs)
                    .get("db-password")
                    .await
            ),
            "{mine}: Secret of {theirs}"
        );
        // RBAC is decided before existence: 403 even for a name that does not exist there.
        assert!(
            forbidden(
                Api::<Secret>::namespaced(disp.clone(), OP)
                    .get("db-password")
                    .await
            ),
            "{mine}: operator namespace"
        );
        let others = Api::<Webhook>::namespaced(disp, theirs)
            .list(&ListParams::default())
            .await;
        assert!(
            matches!(others, Err(kube::Error::Api(s)) if s.code == 403),
            "{mine}: Webhooks of {theirs}"
        );
    }
}

#[tokio::test]
async fn deleting_the_last_webhook_removes_the_dispatcher_and_its_rbac() {
    let _dump = LogDump::new();
    let (_env, client, ns) = setup("ctl-delete").await;
    let api = Api::<Webhook>::namespaced(client.clone(), &ns.name);
    for n in ["one", "two"] {
        api.create(
            &PostParams::default(),
            &webhook(n, "http://127.0.0.1:9/hook", json!({})),
        )
        .await
        .unwrap();
    }
    wait_condition(&api, "two", types::READY, "True", Duration::from_secs(120)).await;
    let name = naming::dispatcher(&ns.name);
    let deployments = Api::<Deployment>::namespaced(client.clone(), OP);

    api.delete("one", &DeleteParams::default()).await.unwrap();
    wait::until(Duration::from_secs(30), "one gone", || async {
        Ok(api.get_opt("one").await?.is_none().then_some(()))
    })
    .await
    .unwrap();
    assert!(
        deployments.get_opt(&name).await.unwrap().is_some(),
        "another Webhook still needs the dispatcher"
    );
    // The tenant reconciler follows the deletion (no finalizer holds the Webhook back).
    let roles = Api::<Role>::namespaced(client.clone(), &ns.name);
    wait::until(
        Duration::from_secs(30),
        "the deleted Webhook's Secret no longer readable",
        || async {
            let names: Vec<String> = roles
                .get(&name)
                .await?
                .rules
                .unwrap_or_default()
                .iter()
                .filter_map(|r| r.resource_names.clone())
                .flatten()
                .collect();
            Ok((names == ["two-signing"]).then_some(()))
        },
    )
    .await
    .unwrap();

    api.delete("two", &DeleteParams::default()).await.unwrap();
    wait::until(
        Duration::from_secs(60),
        "dispatcher and RBAC removed",
        || async {
            let gone = deployments.get_opt(&name).await?.is_none()
                && Api::<ServiceAccount>::namespaced(client.clone(), OP)
                    .get_opt(&name)
                    .await?
                    .is_none()
                && Api::<Role>::namespaced(client.clone(), &ns.name)
                    .get_opt(&name)
                    .await?
                    .is_none();
            Ok(gone.then_some(()))
        },
    )
    .await
    .unwrap();
}

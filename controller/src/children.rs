//! The objects a tenant's dispatcher needs, built from the platform settings and the tenant's
//! `Webhook`s — pure functions, applied by the reconciler with server-side apply:
//!
//! - in the operator namespace: a ServiceAccount and a Deployment `hookline-dispatcher-<tenant>`
//!   (the tenant can neither alter it nor read the platform's Kafka credentials);
//! - in the tenant namespace only: a Role (read its `Webhook`s, patch their status, read exactly
//!   the signing Secrets its `Webhook`s use, create Events) and a RoleBinding granting it to
//!   that ServiceAccount. Nothing anywhere else.
//!
//! [`crate::tenant_plan`] decides whether they are applied or removed. Every object carries
//! [`labels`] and the operator namespace it belongs to ([`owned_labels`]), so the tenant
//! reconciler finds its own objects by label, and two installations (or a test's own
//! controller) never take each other's objects for orphans.

use std::collections::BTreeMap;

use hookline_core::args::DispatcherArgs;
use hookline_core::naming;
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment},
        core::v1::{
            Capabilities, Container, ContainerPort, EnvFromSource, EnvVar, EnvVarSource,
            HTTPGetAction, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec,
            Probe, SeccompProfile, SecretEnvSource, SecurityContext, ServiceAccount,
        },
        rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject},
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};

use crate::settings::Settings;

/// Label naming the tenant a child belongs to; orphans are found by it.
pub const LABEL_TENANT: &str = "hookline.dev/tenant";
/// Label naming the component.
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
/// Label naming who manages it.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Value of [`LABEL_MANAGED_BY`] on every child.
pub const MANAGED_BY: &str = "hookline-controller";
/// Label naming the operator namespace (the installation) a child belongs to.
pub const LABEL_OPERATOR_NAMESPACE: &str = "hookline.dev/operator-namespace";
/// Port of the dispatcher's /metrics, /healthz, /readyz.
pub const METRICS_PORT: i32 = 9090;

/// Labels on every child of `tenant` and on its dispatcher's Pods.
pub fn labels(tenant: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_owned(), "hookline-dispatcher".to_owned()),
        (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
        (LABEL_TENANT.to_owned(), tenant.to_owned()),
    ])
}

/// Labels on the children themselves: [`labels`] and the operator namespace. (Not on the Pods:
/// a new Pod label would restart every dispatcher when the controller is upgraded.)
pub fn owned_labels(settings: &Settings, tenant: &str) -> BTreeMap<String, String> {
    let mut l = labels(tenant);
    l.insert(
        LABEL_OPERATOR_NAMESPACE.to_owned(),
        settings.operator_namespace.clone(),
    );
    l
}

/// Label selector of this installation's children in the tenant namespaces.
pub fn owned_selector(settings: &Settings) -> String {
    format!(
        "{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_OPERATOR_NAMESPACE}={}",
        settings.operator_namespace
    )
}

/// Label selector of the children in the operator namespace (the namespace says whose they
/// are; objects made before [`LABEL_OPERATOR_NAMESPACE`] existed match too).
pub fn operator_namespace_selector() -> String {
    format!("{LABEL_MANAGED_BY}={MANAGED_BY}")
}

fn meta(settings: &Settings, name: &str, namespace: &str, tenant: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        labels: Some(owned_labels(settings, tenant)),
        ..ObjectMeta::default()
    }
}

/// The dispatcher's ServiceAccount, in the operator namespace.
pub fn service_account(settings: &Settings, tenant: &str) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(
            settings,
            &naming::dispatcher(tenant),
            &settings.operator_namespace,
            tenant,
        ),
        ..ServiceAccount::default()
    }
}

fn rule(
    groups: &[&str],
    resources: &[&str],
    verbs: &[&str],
    names: Option<Vec<String>>,
) -> PolicyRule {
    let strings = |xs: &[&str]| xs.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    PolicyRule {
        api_groups: Some(strings(groups)),
        resources: Some(strings(resources)),
        verbs: strings(verbs),
        resource_names: names,
        ..PolicyRule::default()
    }
}

/// The dispatcher's Role in the tenant namespace. `secret_names` are the signing Secrets of the
/// tenant's `Webhook`s: the dispatcher may read those and no other Secret.
pub fn role(settings: &Settings, tenant: &str, secret_names: &[String]) -> Role {
    let mut names = secret_names.to_vec();
    names.sort();
    names.dedup();
    let mut rules = vec![
        rule(
            &["hookline.dev"],
            &["webhooks"],
            &["get", "list", "watch"],
            None,
        ),
        rule(
            &["hookline.dev"],
            &["webhooks/status"],
            &["get", "patch", "update"],
            None,
        ),
        // Which replays exist: a deleted one's deliveries are dropped.
        rule(
            &["hookline.dev"],
            &["webhookreplays"],
            &["get", "list", "watch"],
            None,
        ),
        rule(
            &["", "events.k8s.io"],
            &["events"],
            &["create", "patch"],
            None,
        ),
    ];
    if !names.is_empty() {
        rules.push(rule(
            &[""],
            &["secrets"],
            &["get", "list", "watch"],
            Some(names),
        ));
    }
    Role {
        metadata: meta(settings, &naming::dispatcher(tenant), tenant, tenant),
        rules: Some(rules),
    }
}

/// Binds the Role to the dispatcher's ServiceAccount (which lives in the operator namespace).
pub fn role_binding(settings: &Settings, tenant: &str) -> RoleBinding {
    let name = naming::dispatcher(tenant);
    RoleBinding {
        metadata: meta(settings, &name, tenant, tenant),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name,
            namespace: Some(settings.operator_namespace.clone()),
            ..Subject::default()
        }]),
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_owned(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// The dispatcher's settings for `tenant`: its topics and consumer group, and the platform's
/// address rules and retry defaults. Written into the Deployment with
/// [`DispatcherArgs::to_args`], parsed back by the dispatcher with the same type.
pub fn dispatcher_args(settings: &Settings, tenant: &str) -> DispatcherArgs {
    let mut args = DispatcherArgs::for_tenant(tenant, &settings.kafka_bootstrap);
    args.listen = format!("$(POD_IP):{METRICS_PORT}");
    args.address.clone_from(&settings.address);
    args.default_max_attempts = settings.default_max_attempts;
    args.default_initial_delay = settings.default_initial_delay;
    args.default_max_delay = settings.default_max_delay;
    args.dedup_window = settings.dedup_window;
    args
}

/// The dispatcher Deployment of `tenant`, in the operator namespace.
///
/// It binds its HTTP port to the Pod IP (`status.podIP` through the downward API), so several
/// replicas can share a host in the local environment, and everything it needs arrives as
/// arguments: no ConfigMap to drift.
pub fn deployment(settings: &Settings, tenant: &str) -> Deployment {
    let name = naming::dispatcher(tenant);
    let args = dispatcher_args(settings, tenant).to_args();
    let pod = &settings.dispatcher_pod;
    let probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("metrics".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(3),
        ..Probe::default()
    };
    let container = Container {
        name: "dispatcher".into(),
        image: Some(settings.dispatcher_image.clone()),
        image_pull_policy: Some(settings.dispatcher_image_pull_policy.clone()),
        command: Some(vec!["/usr/local/bin/hookline-dispatcher".into()]),
        args: Some(args),
        env: Some(vec![
            field_env("POD_IP", "status.podIP"),
            field_env("POD_NAME", "metadata.name"),
            EnvVar {
                name: "RUST_LOG".into(),
                value: Some(settings.dispatcher_log_level.clone()),
                ..EnvVar::default()
            },
        ]),
        env_from: settings.kafka_secret.as_ref().map(|s| {
            vec![EnvFromSource {
                secret_ref: Some(SecretEnvSource {
                    name: s.clone(),
                    optional: Some(true),
                }),
                ..EnvFromSource::default()
            }]
        }),
        ports: Some(vec![ContainerPort {
            name: Some("metrics".into()),
            container_port: METRICS_PORT,
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(probe("/readyz", 5)),
        liveness_probe: Some(Probe {
            initial_delay_seconds: Some(10),
            ..probe("/healthz", 10)
        }),
        resources: Some(settings.dispatcher_resources.clone()),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    let selector = BTreeMap::from([
        (LABEL_NAME.to_owned(), "hookline-dispatcher".to_owned()),
        (LABEL_TENANT.to_owned(), tenant.to_owned()),
    ]);
    Deployment {
        metadata: meta(settings, &name, &settings.operator_namespace, tenant),
        spec: Some(DeploymentSpec {
            replicas: Some(settings.dispatcher_replicas),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(tenant)),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(name.clone()),
                    termination_grace_period_seconds: Some(30),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(65532),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    containers: vec![container],
                    image_pull_secrets: Some(pod.image_pull_secrets.clone())
                        .filter(|s| !s.is_empty()),
                    node_selector: Some(pod.node_selector.clone()).filter(|s| !s.is_empty()),
                    tolerations: Some(pod.tolerations.clone()).filter(|s| !s.is_empty()),
                    affinity: pod.affinity.clone(),
                    priority_class_name: pod.priority_class_name.clone().filter(|s| !s.is_empty()),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn dispatcher_pods_carry_the_platforms_scheduling_pull_and_log_settings() {
        let settings = Settings::parse_from([
            "hookline-controller",
            "--kafka-bootstrap=k:9092",
            r#"--dispatcher-pod={"imagePullSecrets":[{"name":"regcred"}],"nodeSelector":{"pool":"hooks"},"tolerations":[{"key":"dedicated","operator":"Equal","value":"hooks","effect":"NoSchedule"}],"affinity":{"podAntiAffinity":{}},"priorityClassName":"platform-high"}"#,
            "--dispatcher-image-pull-policy=Always",
            "--dispatcher-log-level=debug",
        ]);
        let spec = deployment(&settings, "acme")
            .spec
            .unwrap()
            .template
            .spec
            .unwrap();
        assert_eq!(spec.image_pull_secrets.unwrap()[0].name, "regcred");
        assert_eq!(spec.node_selector.unwrap()["pool"], "hooks");
        assert_eq!(
            spec.tolerations.unwrap()[0].key.as_deref(),
            Some("dedicated")
        );
        assert!(spec.affinity.unwrap().pod_anti_affinity.is_some());
        assert_eq!(spec.priority_class_name.as_deref(), Some("platform-high"));
        let c = &spec.containers[0];
        assert_eq!(c.image_pull_policy.as_deref(), Some("Always"));
        let log = c
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == "RUST_LOG");
        assert_eq!(log.unwrap().value.as_deref(), Some("debug"));

        let plain = deployment(&Settings::for_tests(), "acme")
            .spec
            .unwrap()
            .template
            .spec
            .unwrap();
        assert!(plain.node_selector.is_none() && plain.tolerations.is_none());
        assert!(plain.image_pull_secrets.is_none() && plain.priority_class_name.is_none());
        assert!(
            Settings::try_parse_from([
                "x",
                "--kafka-bootstrap=k",
                r#"--dispatcher-pod={"nodeSelectr":{}}"#
            ])
            .unwrap_err()
            .to_string()
            .contains("nodeSelectr")
        );
    }

    #[test]
    fn the_dispatcher_parses_the_args_the_controller_writes_back_to_the_same_settings() {
        let mut settings = Settings::for_tests();
        settings.address.allow_http = true;
        settings.address.allow_cidrs =
            vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        settings.default_max_attempts = Some(7);
        settings.default_max_delay = Some(std::time::Duration::from_secs(3600));
        let d = deployment(&settings, "acme");
        let container = &d.spec.unwrap().template.spec.unwrap().containers[0];
        let mut argv = vec!["hookline-dispatcher".to_owned()];
        argv.extend(container.args.clone().unwrap());
        // The dispatcher's own parser, as it runs in the Pod (Kubernetes expands $(POD_IP)).
        let parsed = DispatcherArgs::try_parse_from(&argv).unwrap();
        assert_eq!(parsed, dispatcher_args(&settings, "acme"));
        assert_eq!(parsed.listen, format!("$(POD_IP):{METRICS_PORT}"));
        assert_eq!(parsed.tiers().len(), naming::RETRY_TIERS.len());
        assert!(parsed.default_retry().is_ok());
    }

    #[test]
    fn role_grants_only_the_named_secrets_in_the_tenant_namespace() {
        let r = role(
            &Settings::for_tests(),
            "acme",
            &["b-signing".into(), "a-signing".into(), "a-signing".into()],
        );
        assert_eq!(r.metadata.namespace.as_deref(), Some("acme"));
        let rules = r.rules.unwrap();
        let secrets = rules
            .iter()
            .find(|r| {
                r.resources
                    .as_ref()
                    .unwrap()
                    .contains(&"secrets".to_string())
            })
            .unwrap();
        assert_eq!(
            secrets.resource_names.as_ref().unwrap(),
            &vec!["a-signing".to_string(), "b-signing".to_string()]
        );
        assert!(
            secrets
                .verbs
                .iter()
                .all(|v| ["get", "list", "watch"].contains(&v.as_str()))
        );
        assert!(rules.iter().all(|r| !r.verbs.contains(&"*".to_string())));
    }

    #[test]
    fn role_binding_names_the_service_account_in_the_operator_namespace() {
        let b = role_binding(&Settings::for_tests(), "acme");
        let s = &b.subjects.unwrap()[0];
        assert_eq!(s.namespace.as_deref(), Some("hookline-system"));
        assert_eq!(s.name, "hookline-dispatcher-acme");
        assert_eq!(b.role_ref.name, "hookline-dispatcher-acme");
    }

    #[test]
    fn deployment_runs_the_dispatcher_for_one_tenant_with_its_topics() {
        let mut settings = Settings::for_tests();
        settings.dispatcher_replicas = 3;
        settings.address.allow_cidrs = vec!["127.0.0.0/8".parse().unwrap()];
        settings.default_max_attempts = Some(5);
        settings.default_max_delay = Some(std::time::Duration::from_secs(3600));
        let d = deployment(&settings, "acme");
        assert_eq!(d.metadata.namespace.as_deref(), Some("hookline-system"));
        let spec = d.spec.unwrap();
        assert_eq!(spec.replicas, Some(3));
        let pod = spec.template.spec.unwrap();
        assert_eq!(
            pod.service_account_name.as_deref(),
            Some("hookline-dispatcher-acme")
        );
        let args = pod.containers[0].args.clone().unwrap();
        for want in [
            "--tenant-namespace=acme",
            "--events-topic=hookline.acme.events",
            "--dead-letter-topic=hookline.acme.dlq",
            "--retry-topic=1s=hookline.acme.retry.1s",
            "--allow-cidr=127.0.0.0/8",
            "--listen=$(POD_IP):9090",
            "--default-max-attempts=5",
            "--default-max-delay=1h",
        ] {
            assert!(
                args.contains(&want.to_string()),
                "missing {want} in {args:?}"
            );
        }
        let res = pod.containers[0].resources.clone().unwrap();
        assert_eq!(
            res.limits.unwrap()["memory"].0,
            "256Mi",
            "the default resources apply"
        );
        let sc = pod.containers[0].security_context.clone().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
    }
}

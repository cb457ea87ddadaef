//! The objects a tenant's dispatcher needs, built from the platform settings and the tenant's
//! `Webhook`s — pure functions, applied by the reconciler with server-side apply:
//!
//! - in the operator namespace: a ServiceAccount and a Deployment `hookline-dispatcher-<tenant>`
//!   (the tenant can neither alter it nor read the platform's Kafka credentials);
//! - in the tenant namespace only: a Role (read its `Webhook`s, patch their status, read exactly
//!   the signing Secrets its `Webhook`s use, create Events) and a RoleBinding granting it to
//!   that ServiceAccount. Nothing anywhere else.

use std::collections::BTreeMap;

use hookline_crds::naming;
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
/// Port of the dispatcher's /metrics, /healthz, /readyz.
pub const METRICS_PORT: i32 = 9090;

/// Labels on every child of `tenant`.
pub fn labels(tenant: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_owned(), "hookline-dispatcher".to_owned()),
        (
            LABEL_MANAGED_BY.to_owned(),
            "hookline-controller".to_owned(),
        ),
        (LABEL_TENANT.to_owned(), tenant.to_owned()),
    ])
}

fn meta(name: &str, namespace: &str, tenant: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        labels: Some(labels(tenant)),
        ..ObjectMeta::default()
    }
}

/// The dispatcher's ServiceAccount, in the operator namespace.
pub fn service_account(settings: &Settings, tenant: &str) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(
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
    let _ = settings;
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
        metadata: meta(&naming::dispatcher(tenant), tenant, tenant),
        rules: Some(rules),
    }
}

/// Binds the Role to the dispatcher's ServiceAccount (which lives in the operator namespace).
pub fn role_binding(settings: &Settings, tenant: &str) -> RoleBinding {
    let name = naming::dispatcher(tenant);
    RoleBinding {
        metadata: meta(&name, tenant, tenant),
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

/// The dispatcher Deployment of `tenant`, in the operator namespace.
///
/// It binds its HTTP port to the Pod IP (`status.podIP` through the downward API), so several
/// replicas can share a host in the local environment, and everything it needs arrives as
/// arguments: no ConfigMap to drift.
pub fn deployment(settings: &Settings, tenant: &str) -> Deployment {
    let name = naming::dispatcher(tenant);
    let topics = naming::topics(tenant);
    let mut args = vec![
        format!("--tenant-namespace={tenant}"),
        format!("--kafka-bootstrap={}", settings.kafka_bootstrap),
        format!("--events-topic={}", topics.events),
        format!("--dead-letter-topic={}", topics.dead_letter),
        format!("--attempts-topic={}", topics.attempts),
        format!("--consumer-group=hookline-dispatcher.{tenant}"),
        format!("--listen=$(POD_IP):{METRICS_PORT}"),
    ];
    args.extend(
        topics
            .retry
            .iter()
            .map(|(d, t)| format!("--retry-topic={}={t}", hookline_crds::duration::format(*d))),
    );
    if settings.allow_http {
        args.push("--allow-http".into());
    }
    if let Some(n) = settings.default_max_attempts {
        args.push(format!("--default-max-attempts={n}"));
    }
    if let Some(d) = settings.default_initial_delay {
        args.push(format!(
            "--default-initial-delay={}",
            hookline_crds::duration::format(d)
        ));
    }
    if let Some(d) = settings.default_max_delay {
        args.push(format!(
            "--default-max-delay={}",
            hookline_crds::duration::format(d)
        ));
    }
    if !settings.allow_cidrs.is_empty() {
        let cidrs: Vec<String> = settings
            .allow_cidrs
            .iter()
            .map(ToString::to_string)
            .collect();
        args.push(format!("--allow-cidr={}", cidrs.join(",")));
    }
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
        command: Some(vec!["/usr/local/bin/hookline-dispatcher".into()]),
        args: Some(args),
        env: Some(vec![
            field_env("POD_IP", "status.podIP"),
            field_env("POD_NAME", "metadata.name"),
            EnvVar {
                name: "RUST_LOG".into(),
                value: Some("info".into()),
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
        metadata: meta(&name, &settings.operator_namespace, tenant),
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
        settings.allow_cidrs = vec!["127.0.0.0/8".parse().unwrap()];
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

//! The plan of one tenant, pure: its `Webhook`s and the platform settings in; out, either the
//! four objects to apply (built by [`crate::children`]) or, for an orphan — a tenant with no
//! `Webhook` left that keeps a dispatcher — the objects to delete, in order. The tenant
//! reconciler ([`crate::tenant`]) carries it out.

use hookline_core::args::AddressRules;
use hookline_core::naming;
use hookline_crds::Webhook;
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::ServiceAccount,
    rbac::v1::{Role, RoleBinding},
};

use crate::{
    children::{deployment, role, role_binding, service_account},
    settings::Settings,
    validate,
};

/// The four objects of a tenant, in the order they are applied: the identity and its grant
/// before the Deployment that runs under them.
#[derive(Debug, Clone, PartialEq)]
pub struct Children {
    /// In the operator namespace.
    pub service_account: ServiceAccount,
    /// In the tenant namespace.
    pub role: Role,
    /// In the tenant namespace.
    pub role_binding: RoleBinding,
    /// In the operator namespace.
    pub deployment: Deployment,
}

/// Kinds of the objects a tenant owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `rbac.authorization.k8s.io/v1` RoleBinding, in the tenant namespace.
    RoleBinding,
    /// `rbac.authorization.k8s.io/v1` Role, in the tenant namespace.
    Role,
    /// `v1` ServiceAccount, in the operator namespace.
    ServiceAccount,
    /// `apps/v1` Deployment, in the operator namespace.
    Deployment,
}

/// One object to delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doomed {
    /// Its kind.
    pub kind: Kind,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// What the tenant reconciler does with one tenant.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// The tenant has `Webhook`s: apply its objects.
    Apply(Box<Children>),
    /// No `Webhook` of the tenant is left (or every one is being deleted): the tenant is an
    /// orphan and these objects go, in this order. The Deployment goes last: it is the object
    /// a later sweep finds the tenant by, should a deletion before it fail. The tenant's Kafka
    /// topics are kept (see `topics`).
    Remove(Vec<Doomed>),
}

/// Signing Secrets the tenant's live `Webhook`s use: the dispatcher may read exactly these.
pub fn secret_names<'a>(webhooks: impl IntoIterator<Item = &'a Webhook>) -> Vec<String> {
    webhooks
        .into_iter()
        .filter(|w| w.metadata.deletion_timestamp.is_none())
        .map(|w| {
            w.spec.secret_ref.as_ref().map_or_else(
                || naming::signing_secret(w.metadata.name.as_deref().unwrap_or_default()),
                |r| r.name.clone(),
            )
        })
        .collect()
}

/// Whether `wh` keeps its tenant's dispatcher: it is not being deleted and its spec is valid
/// (an invalid `Webhook` creates nothing).
pub fn keeps_dispatcher(wh: &Webhook, rules: &AddressRules) -> bool {
    wh.metadata.deletion_timestamp.is_none() && validate::validate(&wh.spec, rules).is_ok()
}

/// Plans `tenant` from the `Webhook`s in its namespace (those of other namespaces are
/// ignored, so the caller may pass them all). The tenant keeps its objects while one of them
/// [keeps the dispatcher](keeps_dispatcher); the Role grants the signing Secrets of all that
/// are not being deleted.
pub fn plan<'a>(
    settings: &Settings,
    tenant: &str,
    webhooks: impl IntoIterator<Item = &'a Webhook>,
) -> Plan {
    let live: Vec<&Webhook> = webhooks
        .into_iter()
        .filter(|w| w.metadata.namespace.as_deref() == Some(tenant))
        .filter(|w| w.metadata.deletion_timestamp.is_none())
        .collect();
    let rules = &settings.address;
    if !live.iter().any(|w| keeps_dispatcher(w, rules)) {
        let name = naming::dispatcher(tenant);
        let op = &settings.operator_namespace;
        return Plan::Remove(
            [
                (Kind::RoleBinding, tenant),
                (Kind::Role, tenant),
                (Kind::ServiceAccount, op.as_str()),
                (Kind::Deployment, op.as_str()),
            ]
            .into_iter()
            .map(|(kind, ns)| Doomed {
                kind,
                namespace: ns.to_owned(),
                name: name.clone(),
            })
            .collect(),
        );
    }
    Plan::Apply(Box::new(Children {
        service_account: service_account(settings, tenant),
        role: role(settings, tenant, &secret_names(live)),
        role_binding: role_binding(settings, tenant),
        deployment: deployment(settings, tenant),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::children::{
        LABEL_MANAGED_BY, LABEL_OPERATOR_NAMESPACE, LABEL_TENANT, MANAGED_BY, labels,
        owned_selector,
    };

    use crate::fixtures::webhook;

    fn applied(plan: Plan) -> Children {
        match plan {
            Plan::Apply(c) => *c,
            Plan::Remove(d) => panic!("expected Apply, got Remove {d:?}"),
        }
    }

    fn role_secrets(c: &Children) -> Vec<String> {
        c.role
            .rules
            .iter()
            .flatten()
            .filter_map(|r| r.resource_names.clone())
            .flatten()
            .collect()
    }

    #[test]
    fn a_tenant_with_webhooks_gets_its_four_objects_and_a_role_for_their_secrets() {
        let s = Settings::for_tests();
        let hooks = [
            webhook("acme", "a", None, false),
            webhook("acme", "b", Some("own-key"), false),
            webhook("acme", "c", None, true),
            webhook("globex", "g", None, false),
        ];
        let c = applied(plan(&s, "acme", &hooks));
        assert_eq!(c.service_account, service_account(&s, "acme"));
        assert_eq!(c.role_binding, role_binding(&s, "acme"));
        assert_eq!(c.deployment, deployment(&s, "acme"));
        assert_eq!(
            role_secrets(&c),
            ["a-signing", "own-key"],
            "neither a Webhook being deleted nor another tenant's Webhook is granted"
        );
    }

    #[test]
    fn a_tenant_whose_webhooks_are_gone_or_going_is_removed_deployment_last() {
        let s = Settings::for_tests();
        let hooks = [
            webhook("acme", "a", None, true),
            webhook("globex", "g", None, false),
        ];
        let Plan::Remove(doomed) = plan(&s, "acme", &hooks) else {
            panic!("acme has no live Webhook");
        };
        let got: Vec<(Kind, &str, &str)> = doomed
            .iter()
            .map(|d| (d.kind, d.namespace.as_str(), d.name.as_str()))
            .collect();
        let n = "hookline-dispatcher-acme";
        assert_eq!(
            got,
            [
                (Kind::RoleBinding, "acme", n),
                (Kind::Role, "acme", n),
                (Kind::ServiceAccount, "hookline-system", n),
                (Kind::Deployment, "hookline-system", n),
            ]
        );
        assert!(matches!(plan(&s, "initech", &hooks), Plan::Remove(_)));
    }

    #[test]
    fn a_tenant_whose_only_webhook_is_invalid_gets_no_dispatcher() {
        let s = Settings::for_tests();
        let mut invalid = webhook("acme", "private", None, false);
        invalid.spec.url = "https://10.1.2.3/hook".into();
        assert!(matches!(plan(&s, "acme", [&invalid]), Plan::Remove(_)));
        let valid = webhook("acme", "a", None, false);
        let c = applied(plan(&s, "acme", [&invalid, &valid]));
        assert_eq!(role_secrets(&c), ["a-signing", "private-signing"]);
    }

    #[test]
    fn a_changed_platform_setting_changes_the_planned_deployment_of_every_tenant() {
        let mut s = Settings::for_tests();
        s.address.allow_cidrs = vec!["127.0.0.0/8".parse().unwrap()];
        let hooks = [
            webhook("acme", "a", None, false),
            webhook("globex", "g", None, false),
        ];
        let before: Vec<Children> = ["acme", "globex"]
            .map(|t| applied(plan(&s, t, &hooks)))
            .into();
        s.address.allow_cidrs = vec!["127.0.0.1/32".parse().unwrap()];
        for (t, old) in ["acme", "globex"].into_iter().zip(before) {
            let new = applied(plan(&s, t, &hooks));
            let args = new
                .deployment
                .spec
                .clone()
                .unwrap()
                .template
                .spec
                .unwrap()
                .containers[0]
                .args
                .clone()
                .unwrap();
            assert!(
                args.contains(&"--allow-cidr=127.0.0.1/32".to_string()),
                "{t}: {args:?}"
            );
            assert_ne!(new.deployment, old.deployment);
            assert_eq!((new.role, new.role_binding), (old.role, old.role_binding));
        }
    }

    #[test]
    fn children_carry_their_operator_namespace_and_the_pods_keep_their_labels() {
        let s = Settings::for_tests();
        let c = applied(plan(&s, "acme", &[webhook("acme", "a", None, false)]));
        for labels in [
            &c.service_account.metadata.labels,
            &c.role.metadata.labels,
            &c.role_binding.metadata.labels,
            &c.deployment.metadata.labels,
        ] {
            let labels = labels.as_ref().unwrap();
            assert_eq!(labels[LABEL_OPERATOR_NAMESPACE], "hookline-system");
            assert_eq!(labels[LABEL_TENANT], "acme");
            assert_eq!(labels[LABEL_MANAGED_BY], MANAGED_BY);
        }
        let pod = c.deployment.spec.unwrap().template.metadata.unwrap();
        assert_eq!(
            pod.labels.unwrap(),
            labels("acme"),
            "a new Pod label would restart every dispatcher on upgrade"
        );
        assert_eq!(
            owned_selector(&s),
            "app.kubernetes.io/managed-by=hookline-controller,hookline.dev/operator-namespace=hookline-system"
        );
    }
}

//! The reconcile of one tenant (a namespace with `Webhook`s, or with objects left over): the
//! tenant's `Webhook`s from the store → [`tenant_plan::plan`] (pure) → apply the ServiceAccount,
//! Role, RoleBinding and dispatcher Deployment by server-side apply (field manager
//! `hookline.dev/controller`) and ensure the Kafka topics; or, for an orphan, delete those
//! objects (Event `DispatcherRemoved` on the Deployment, in the operator namespace).
//!
//! Its keys come from [`crate::tenant_index`] through the tenant controller in [`crate::run`]:
//! every tenant once at start (so a platform settings change reaches every dispatcher within
//! seconds of a new controller starting), then each tenant whose `Webhook`s or objects change.
//!
//! # Guarantees
//! - One reconcile per tenant at a time (the kube `Controller` never runs a key twice at
//!   once), so no lock is needed: N `Webhook`s of a tenant cost one round, not N.
//! - A live tenant's objects are re-applied every five minutes even without a change seen.
//!
//! # Caveats
//! - Kafka topics are never deleted with a tenant (see [`crate::topics`]).

use std::{sync::Arc, time::Duration};

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Namespace, ObjectReference, ServiceAccount},
    rbac::v1::{Role, RoleBinding},
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
    runtime::{controller::Action, events::EventType},
};
use serde::{Serialize, de::DeserializeOwned};
use tracing::info;

use crate::{
    context::{Context, MANAGER},
    error::{Error, Result},
    metrics::TENANT,
    tenant_plan::{self, Children, Doomed, Kind, Plan},
};

/// How often a live tenant is re-applied when nothing was seen to change.
pub const RESYNC: Duration = Duration::from_secs(300);

/// Reconciles one tenant (entry point for the kube `Controller`). The `Namespace` carries only
/// the tenant's name: it comes from the tenant index, not from the API server.
///
/// # Errors
/// Transient API or Kafka failures; the caller requeues with backoff.
pub async fn reconcile(tenant: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action> {
    let timer = ctx
        .metrics
        .duration
        .with_label_values(&[TENANT])
        .start_timer();
    let name = tenant.name_any();
    let webhooks = ctx
        .webhooks
        .state_filter(|w| w.metadata.namespace.as_deref() == Some(name.as_str()));
    let plan = tenant_plan::plan(&ctx.settings, &name, webhooks.iter().map(AsRef::as_ref));
    let result = match plan {
        Plan::Apply(children) => apply(&ctx, &name, *children).await,
        Plan::Remove(doomed) => remove(&ctx, &name, &doomed).await,
    };
    timer.observe_duration();
    if result.is_ok() {
        ctx.forget_failures(&key(&name));
    }
    result
}

/// Requeue policy on errors: back off per tenant, count the failure.
pub fn error_policy(tenant: Arc<Namespace>, err: &Error, ctx: Arc<Context>) -> Action {
    Action::requeue(ctx.failed(TENANT, key(&tenant.name_any()), err))
}

fn key(tenant: &str) -> String {
    format!("tenant:{tenant}")
}

async fn apply(ctx: &Context, tenant: &str, children: Children) -> Result<Action> {
    let op = &ctx.settings.operator_namespace;
    let name = hookline_core::naming::dispatcher(tenant);
    ssa::<ServiceAccount>(ctx, op, &name, &children.service_account).await?;
    ssa::<Role>(ctx, tenant, &name, &children.role).await?;
    ssa::<RoleBinding>(ctx, tenant, &name, &children.role_binding).await?;
    ssa::<Deployment>(ctx, op, &name, &children.deployment).await?;
    // A failure is also kept for the Webhooks' DispatcherReady condition.
    ctx.topics.ensure(tenant).await?;
    ctx.metrics
        .reconciles
        .with_label_values(&[TENANT, "applied"])
        .inc();
    Ok(Action::requeue(RESYNC))
}

async fn ssa<K>(ctx: &Context, ns: &str, name: &str, obj: &K) -> Result<()>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    Api::<K>::namespaced(ctx.client.clone(), ns)
        .patch(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(obj),
        )
        .await?;
    Ok(())
}

async fn remove(ctx: &Context, tenant: &str, doomed: &[Doomed]) -> Result<Action> {
    let mut removed = Vec::new();
    for d in doomed {
        let client = ctx.client.clone();
        let ns = d.namespace.as_str();
        let gone = match d.kind {
            Kind::RoleBinding => delete(Api::<RoleBinding>::namespaced(client, ns), &d.name).await,
            Kind::Role => delete(Api::<Role>::namespaced(client, ns), &d.name).await,
            Kind::ServiceAccount => {
                delete(Api::<ServiceAccount>::namespaced(client, ns), &d.name).await
            }
            Kind::Deployment => delete(Api::<Deployment>::namespaced(client, ns), &d.name).await,
        }?;
        if gone {
            removed.push(format!("{:?} {ns}/{}", d.kind, d.name));
        }
    }
    ctx.topics.forget(tenant);
    if !removed.is_empty() {
        let removed = removed.join(", ");
        info!(
            tenant,
            removed,
            "tenant has no Webhook left; its dispatcher is removed (Kafka topics are kept)"
        );
        let op = &ctx.settings.operator_namespace;
        let regarding = ObjectReference {
            api_version: Some("apps/v1".into()),
            kind: Some("Deployment".into()),
            name: Some(hookline_core::naming::dispatcher(tenant)),
            namespace: Some(op.clone()),
            ..ObjectReference::default()
        };
        ctx.event(
            &regarding,
            EventType::Normal,
            "DispatcherRemoved",
            format!("no Webhook left in {tenant}: removed {removed}; Kafka topics are kept"),
        )
        .await;
    }
    ctx.metrics
        .reconciles
        .with_label_values(&[TENANT, "removed"])
        .inc();
    Ok(Action::await_change())
}

/// Deletes one object; whether it was there.
async fn delete<K>(api: Api<K>, name: &str) -> Result<bool>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

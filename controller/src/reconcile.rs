//! The reconcile pipeline of one `Webhook`: fetch what it references → validate (pure) → plan
//! and apply its signing Secret → build and apply its tenant's dispatcher objects → ensure the
//! tenant's Kafka topics → read the dispatcher's availability → compute conditions → patch the
//! status (server-side apply, field manager `hookline.dev/controller`) → Events on transitions.
//!
//! A finalizer (`hookline.dev/cleanup`) removes the tenant's dispatcher Deployment and its RBAC
//! when the tenant's last `Webhook` goes: a Deployment in the operator namespace cannot carry an
//! owner reference to an object in another namespace.

use std::{collections::HashMap, sync::Arc, time::Duration};

use hookline_crds::{
    SecretStatus, Webhook,
    conditions::{reasons, types},
    naming,
};
use jiff::Timestamp;
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Secret, ServiceAccount},
    rbac::v1::{Role, RoleBinding},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
    runtime::{
        controller::Action,
        events::{Event, EventType, Recorder},
        finalizer::{Event as Finalizer, finalizer},
        reflector::Store,
    },
};
use serde_json::json;
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::{
    children,
    conditions::{self, Verdict},
    error::{Error, Result},
    metrics::Metrics,
    secret,
    settings::Settings,
    topics::TopicManager,
    validate::{self, UrlRules},
};

/// Field manager of everything the controller writes.
pub const MANAGER: &str = "hookline.dev/controller";
/// Finalizer on every `Webhook`.
pub const FINALIZER: &str = "hookline.dev/cleanup";

/// What every reconcile shares.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Platform settings.
    pub settings: Settings,
    /// Publishes Kubernetes Events.
    pub recorder: Recorder,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Kafka topics.
    pub topics: Arc<TopicManager>,
    /// Every `Webhook` (the controller's reflector).
    pub store: Store<Webhook>,
    /// One lock per tenant: tenant-wide objects are computed and applied under it, from the
    /// store, so concurrent reconciles of two `Webhook`s cannot undo each other's Role.
    pub tenant_locks: std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Consecutive failed reconciles per `namespace/name`, for the error backoff.
    pub failures: std::sync::Mutex<HashMap<String, u32>>,
}

impl Context {
    fn tenant_lock(&self, tenant: &str) -> Arc<Mutex<()>> {
        self.tenant_locks
            .lock()
            .expect("tenant locks")
            .entry(tenant.to_owned())
            .or_default()
            .clone()
    }

    fn rules(&self) -> UrlRules {
        UrlRules {
            allow_http: self.settings.allow_http,
            allow_cidrs: self.settings.allow_cidrs.clone(),
        }
    }

    async fn event(&self, wh: &Webhook, type_: EventType, reason: &str, note: String) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &wh.object_ref(&())).await {
            warn!(error = %e, "cannot publish Event");
        }
    }
}

/// Reconciles one `Webhook` (entry point for the kube `Controller`).
///
/// # Errors
/// Transient API or Kafka failures; the caller requeues with backoff.
pub async fn reconcile(wh: Arc<Webhook>, ctx: Arc<Context>) -> Result<Action> {
    let timer = ctx.metrics.duration.start_timer();
    let ns = wh
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let api = Api::<Webhook>::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, wh, |event| async {
        match event {
            Finalizer::Apply(wh) => apply(&wh, &ctx).await,
            Finalizer::Cleanup(wh) => cleanup(&wh, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    });
    timer.observe_duration();
    result
}

/// Requeue policy on errors: back off, count the failure.
pub fn error_policy(wh: Arc<Webhook>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .failures
        .with_label_values(&[err.category()])
        .inc();
    ctx.metrics.reconciles.with_label_values(&["error"]).inc();
    let key = format!("{}/{}", wh.namespace().unwrap_or_default(), wh.name_any());
    let failures = {
        let mut map = ctx.failures.lock().expect("failure counts");
        let n = map.entry(key).or_insert(0);
        *n += 1;
        *n
    };
    let delay = backoff(failures);
    warn!(error = %err, category = err.category(), failures, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Delay before the `failures`-th retry of a failing reconcile: 1 s doubling, at most 5 min.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(9)).min(Duration::from_secs(300))
}

async fn apply(wh: &Webhook, ctx: &Context) -> Result<Action> {
    let ns = wh
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = wh.name_any();
    let now = Timestamp::now();
    let existing = wh.status.clone().unwrap_or_default().conditions;

    // Validate (pure). An invalid spec creates nothing and waits for a change.
    if let Err(invalid) = validate::validate(&wh.spec, &ctx.rules()) {
        let v = Verdict::no(types::READY, invalid.reason, invalid.message.clone());
        if !conditions::flipped(&existing, std::slice::from_ref(&v)).is_empty() {
            ctx.event(
                wh,
                EventType::Warning,
                invalid.reason,
                invalid.message.clone(),
            )
            .await;
        }
        patch_status(
            ctx,
            wh,
            &conditions::settle(&existing, &[v], wh.metadata.generation, now),
            None,
        )
        .await?;
        ctx.metrics.reconciles.with_label_values(&["invalid"]).inc();
        return Ok(Action::await_change());
    }

    // Signing secret.
    let secrets = Api::<Secret>::namespaced(ctx.client.clone(), &ns);
    let mut revisit: Option<Timestamp> = None;
    let (secret_verdict, secret_status) = match &wh.spec.secret_ref {
        Some(r) => match secrets.get_opt(&r.name).await? {
            None => (
                Verdict::no(
                    types::SECRET_READY,
                    reasons::SECRET_NOT_FOUND,
                    format!(
                        "Secret {} not found in namespace {ns}; create it with the key under data key \"secret\"",
                        r.name
                    ),
                ),
                None,
            ),
            Some(s) => match secret::check_referenced(&s) {
                Ok(()) => (
                    Verdict::yes(
                        types::SECRET_READY,
                        reasons::SECRET_AVAILABLE,
                        format!("using Secret {}", r.name),
                    ),
                    None,
                ),
                Err(msg) => (
                    Verdict::no(types::SECRET_READY, reasons::SECRET_INVALID, msg),
                    None,
                ),
            },
        },
        None => {
            let secret_name = naming::signing_secret(&name);
            let current = secrets.get_opt(&secret_name).await?;
            let plan = secret::plan_generated(
                wh,
                current.as_ref(),
                now,
                ctx.settings.rotation_overlap,
                secret::generate_key,
            );
            if let Some(s) = &plan.apply {
                secrets
                    .patch(
                        &secret_name,
                        &PatchParams::apply(MANAGER).force(),
                        &Patch::Apply(s),
                    )
                    .await?;
            }
            if let Some((reason, msg)) = &plan.event {
                ctx.event(wh, EventType::Normal, reason, msg.clone()).await;
            }
            revisit = plan.revisit_at;
            (
                Verdict::yes(
                    types::SECRET_READY,
                    reasons::SECRET_AVAILABLE,
                    format!(
                        "signing Secret {secret_name}, key generation {}",
                        plan.status.generation
                    ),
                ),
                Some(plan.status),
            )
        }
    };

    // Tenant-wide objects and topics.
    let dispatcher_verdict = match apply_tenant(ctx, &ns).await {
        Ok(()) => match ctx.topics.ensure(&ns).await {
            Ok(()) => dispatcher_availability(ctx, &ns).await?,
            Err(e) => {
                ctx.topics.forget(&ns);
                Verdict::no(
                    types::DISPATCHER_READY,
                    reasons::TOPICS_FAILED,
                    format!("cannot create the Kafka topics of {ns}: {e}"),
                )
            }
        },
        Err(e) => return Err(e),
    };

    let ready = conditions::ready(None, &secret_verdict, &dispatcher_verdict);
    let verdicts = [ready, secret_verdict, dispatcher_verdict];
    for v in conditions::flipped(&existing, &verdicts) {
        // A dispatcher that is still starting for a new Webhook is not a warning; one that
        // was available and is no longer is.
        let first_time = !existing.iter().any(|c| c.type_ == v.type_);
        let starting = first_time && v.reason == reasons::DISPATCHER_UNAVAILABLE;
        let worth_telling = v.type_ == types::READY || !v.ok;
        if starting || !worth_telling {
            continue;
        }
        let kind = if v.ok {
            EventType::Normal
        } else {
            EventType::Warning
        };
        ctx.event(wh, kind, v.reason, v.message.clone()).await;
    }
    let settled = conditions::settle(&existing, &verdicts, wh.metadata.generation, now);
    patch_status(ctx, wh, &settled, secret_status).await?;
    ctx.metrics.reconciles.with_label_values(&["ok"]).inc();
    ctx.failures
        .lock()
        .expect("failure counts")
        .remove(&format!("{ns}/{name}"));

    let all_ok = verdicts.iter().all(|v| v.ok);
    let mut next = if all_ok {
        Duration::from_secs(300)
    } else {
        Duration::from_secs(5)
    };
    if let Some(at) = revisit {
        let until =
            Duration::try_from(at.duration_since(now)).unwrap_or_default() + Duration::from_secs(1);
        next = next.min(until);
    }
    Ok(Action::requeue(next))
}

/// Secret names of the tenant's live `Webhook`s, from the store.
fn tenant_secret_names(ctx: &Context, tenant: &str, except: Option<&str>) -> Vec<String> {
    ctx.store
        .state()
        .iter()
        .filter(|w| {
            w.namespace().as_deref() == Some(tenant) && w.metadata.deletion_timestamp.is_none()
        })
        .filter(|w| Some(w.name_any().as_str()) != except)
        .map(|w| {
            w.spec
                .secret_ref
                .as_ref()
                .map_or_else(|| naming::signing_secret(&w.name_any()), |r| r.name.clone())
        })
        .collect()
}

async fn apply_tenant(ctx: &Context, tenant: &str) -> Result<()> {
    let lock = ctx.tenant_lock(tenant);
    let _held = lock.lock().await;
    let s = &ctx.settings;
    let pp = PatchParams::apply(MANAGER).force();
    let name = naming::dispatcher(tenant);
    let secret_names = tenant_secret_names(ctx, tenant, None);
    Api::<ServiceAccount>::namespaced(ctx.client.clone(), &s.operator_namespace)
        .patch(
            &name,
            &pp,
            &Patch::Apply(children::service_account(s, tenant)),
        )
        .await?;
    Api::<Role>::namespaced(ctx.client.clone(), tenant)
        .patch(
            &name,
            &pp,
            &Patch::Apply(children::role(s, tenant, &secret_names)),
        )
        .await?;
    Api::<RoleBinding>::namespaced(ctx.client.clone(), tenant)
        .patch(&name, &pp, &Patch::Apply(children::role_binding(s, tenant)))
        .await?;
    Api::<Deployment>::namespaced(ctx.client.clone(), &s.operator_namespace)
        .patch(&name, &pp, &Patch::Apply(children::deployment(s, tenant)))
        .await?;
    Ok(())
}

async fn dispatcher_availability(ctx: &Context, tenant: &str) -> Result<Verdict> {
    let name = naming::dispatcher(tenant);
    let d = Api::<Deployment>::namespaced(ctx.client.clone(), &ctx.settings.operator_namespace)
        .get_opt(&name)
        .await?;
    let Some(d) = d else {
        return Ok(Verdict::no(
            types::DISPATCHER_READY,
            reasons::DISPATCHER_UNAVAILABLE,
            format!("Deployment {name} not found"),
        ));
    };
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let status = d.status.unwrap_or_default();
    let available = status.available_replicas.unwrap_or(0);
    let available_cond = status
        .conditions
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Available" && c.status == "True");
    let op = &ctx.settings.operator_namespace;
    Ok(if available >= 1 && available_cond {
        Verdict::yes(
            types::DISPATCHER_READY,
            reasons::DISPATCHER_AVAILABLE,
            format!("{available} of {want} dispatcher replicas available ({op}/{name})"),
        )
    } else {
        Verdict::no(
            types::DISPATCHER_READY,
            reasons::DISPATCHER_UNAVAILABLE,
            format!(
                "{available} of {want} dispatcher replicas available; see kubectl -n {op} describe deployment {name}"
            ),
        )
    })
}

async fn patch_status(
    ctx: &Context,
    wh: &Webhook,
    conds: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    secret: Option<SecretStatus>,
) -> Result<()> {
    let ns = wh
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let mut status = json!({ "observedGeneration": wh.metadata.generation, "conditions": conds });
    if let Some(s) = secret {
        status["secret"] = serde_json::to_value(s).unwrap_or_default();
    }
    let patch =
        json!({ "apiVersion": "hookline.dev/v1alpha1", "kind": "Webhook", "status": status });
    let api = Api::<Webhook>::namespaced(ctx.client.clone(), &ns);
    let (name, pp, patch) = (
        wh.name_any(),
        PatchParams::apply(MANAGER).force(),
        Patch::Apply(&patch),
    );
    tokio::time::timeout(
        Duration::from_secs(10),
        api.patch_status(&name, &pp, &patch),
    )
    .await
    .map_err(|_| Error::Timeout("status patch"))??;
    Ok(())
}

async fn cleanup(wh: &Webhook, ctx: &Context) -> Result<Action> {
    let tenant = wh
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let lock = ctx.tenant_lock(&tenant);
    let _held = lock.lock().await;
    // The API, not the store, decides whether this was the last one: deleting a dispatcher
    // that still has work would stop deliveries.
    let others = Api::<Webhook>::namespaced(ctx.client.clone(), &tenant)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|w| w.metadata.deletion_timestamp.is_none() && w.name_any() != wh.name_any())
        .count();
    let name = naming::dispatcher(&tenant);
    let s = &ctx.settings;
    if others > 0 {
        let names = tenant_secret_names(ctx, &tenant, Some(&wh.name_any()));
        Api::<Role>::namespaced(ctx.client.clone(), &tenant)
            .patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(children::role(s, &tenant, &names)),
            )
            .await?;
        return Ok(Action::await_change());
    }
    let dp = DeleteParams::background();
    ignore_missing(
        Api::<Deployment>::namespaced(ctx.client.clone(), &s.operator_namespace)
            .delete(&name, &dp)
            .await,
    )?;
    ignore_missing(
        Api::<ServiceAccount>::namespaced(ctx.client.clone(), &s.operator_namespace)
            .delete(&name, &dp)
            .await,
    )?;
    ignore_missing(
        Api::<RoleBinding>::namespaced(ctx.client.clone(), &tenant)
            .delete(&name, &dp)
            .await,
    )?;
    ignore_missing(
        Api::<Role>::namespaced(ctx.client.clone(), &tenant)
            .delete(&name, &dp)
            .await,
    )?;
    info!(
        tenant,
        "last Webhook of the tenant deleted; dispatcher removed (Kafka topics are kept)"
    );
    ctx.event(
        wh,
        EventType::Normal,
        "DispatcherRemoved",
        format!(
            "last Webhook of {tenant} deleted: removed {}/{name}; Kafka topics are kept",
            s.operator_namespace
        ),
    )
    .await;
    Ok(Action::await_change())
}

fn ignore_missing<T>(r: std::result::Result<T, kube::Error>) -> Result<()> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_reconciles_back_off_exponentially_up_to_five_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(16));
        assert_eq!(backoff(9), Duration::from_secs(256));
        assert_eq!(backoff(10), Duration::from_secs(300));
        assert_eq!(backoff(1000), Duration::from_secs(300));
    }
}

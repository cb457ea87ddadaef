//! The reconcile of one `Webhook`, as three named steps: [`validate`](crate::validate) the spec
//! (pure; an invalid one is refused with a reason and creates nothing) → [`signing_secret`]
//! (generate, rotate or check it) → [`conditions`] (`SecretReady`, `DispatcherReady` read from
//! the tenant's Deployment status and topic creation, `Ready`; status patched by server-side
//! apply, field manager `hookline.dev/controller`; Events on transitions).
//!
//! Tenant-wide objects (the dispatcher Deployment, its RBAC, the Kafka topics) are the tenant
//! reconciler's ([`crate::tenant`]); this one only reads the Deployment.
//!
//! # Decisions
//! - No finalizer. The signing Secret is owned by its `Webhook` (garbage collection deletes
//!   it), and the tenant reconciler removes a tenant's objects when its last `Webhook` goes,
//!   from the watch event or, if the controller was down, from the sweep at start. Controllers
//!   before the tenant reconciler put [`LEGACY_FINALIZER`] on every `Webhook`; it is removed
//!   on the next reconcile, so those `Webhook`s stay deletable.

use std::{sync::Arc, time::Duration};

use hookline_core::{
    conditions::{self, Verdict, reasons, types},
    naming,
};
use hookline_crds::{SecretStatus, Webhook};
use jiff::Timestamp;
use k8s_openapi::{
    api::{apps::v1::Deployment, core::v1::Secret},
    apimachinery::pkg::apis::meta::v1::Condition,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{controller::Action, events::EventType},
};
use serde_json::json;

use crate::{
    context::{Context, MANAGER},
    error::{Error, Result},
    metrics::WEBHOOK,
    secret,
    validate::{self, Invalid},
};

/// The finalizer controllers before the tenant reconciler put on every `Webhook`.
pub const LEGACY_FINALIZER: &str = "hookline.dev/cleanup";

/// Reconciles one `Webhook` (entry point for the kube `Controller`).
///
/// # Errors
/// Transient API failures; the caller requeues with backoff.
pub async fn reconcile(wh: Arc<Webhook>, ctx: Arc<Context>) -> Result<Action> {
    let timer = ctx
        .metrics
        .duration
        .with_label_values(&[WEBHOOK])
        .start_timer();
    let result = run(&wh, &ctx).await;
    timer.observe_duration();
    if result.is_ok() {
        ctx.forget_failures(&key(&wh));
    }
    result
}

/// Requeue policy on errors: back off per `Webhook`, count the failure.
pub fn error_policy(wh: Arc<Webhook>, err: &Error, ctx: Arc<Context>) -> Action {
    Action::requeue(ctx.failed(WEBHOOK, key(&wh), err))
}

/// The key of `wh`'s failure count.
pub fn key(wh: &Webhook) -> String {
    format!(
        "webhook:{}/{}",
        wh.namespace().unwrap_or_default(),
        wh.name_any()
    )
}

async fn run(wh: &Webhook, ctx: &Context) -> Result<Action> {
    release_legacy_finalizer(wh, ctx).await?;
    if wh.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let now = Timestamp::now();
    if let Err(invalid) = validate::validate(&wh.spec, &ctx.settings.address) {
        return refuse(wh, ctx, invalid, now).await;
    }
    let secret = signing_secret(wh, ctx, now).await?;
    conditions(wh, ctx, secret, now).await
}

/// Removes [`LEGACY_FINALIZER`], guarded by the `resourceVersion` it was read at.
async fn release_legacy_finalizer(wh: &Webhook, ctx: &Context) -> Result<()> {
    let finalizers = wh.finalizers();
    if !finalizers.iter().any(|f| f == LEGACY_FINALIZER) {
        return Ok(());
    }
    let kept: Vec<&String> = finalizers
        .iter()
        .filter(|f| *f != LEGACY_FINALIZER)
        .collect();
    let patch = json!({"metadata": {"resourceVersion": wh.resource_version(), "finalizers": kept}});
    let ns = wh
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    Api::<Webhook>::namespaced(ctx.client.clone(), &ns)
        .patch(
            &wh.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    Ok(())
}

/// An invalid spec: `Ready=False` with the reason, a Warning Event when it flips, and nothing
/// created; waits for a change of the spec.
async fn refuse(wh: &Webhook, ctx: &Context, invalid: Invalid, now: Timestamp) -> Result<Action> {
    let existing = wh.status.clone().unwrap_or_default().conditions;
    let v = Verdict::no(types::READY, invalid.reason, invalid.message.clone());
    if !conditions::flipped(&existing, std::slice::from_ref(&v)).is_empty() {
        let regarding = wh.object_ref(&());
        ctx.event(
            &regarding,
            EventType::Warning,
            invalid.reason,
            invalid.message,
        )
        .await;
    }
    let settled = conditions::settle(&existing, &[v], wh.metadata.generation, now);
    patch_status(ctx, wh, &settled, None).await?;
    ctx.metrics
        .reconciles
        .with_label_values(&[WEBHOOK, "invalid"])
        .inc();
    Ok(Action::await_change())
}

/// The outcome of the signing-secret step.
struct SigningSecret {
    verdict: Verdict,
    status: Option<SecretStatus>,
    /// When to come back (the end of a rotation overlap).
    revisit: Option<Timestamp>,
}

/// Checks a referenced Secret, or plans and applies the generated one.
async fn signing_secret(wh: &Webhook, ctx: &Context, now: Timestamp) -> Result<SigningSecret> {
    let ns = wh
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let secrets = Api::<Secret>::namespaced(ctx.client.clone(), &ns);
    if let Some(r) = &wh.spec.secret_ref {
        let verdict = match secrets.get_opt(&r.name).await? {
            None => Verdict::no(
                types::SECRET_READY,
                reasons::SECRET_NOT_FOUND,
                format!(
                    "Secret {} not found in namespace {ns}; create it with the key under data key \"secret\"",
                    r.name
                ),
            ),
            Some(s) => match secret::check_referenced(&s) {
                Ok(()) => Verdict::yes(
                    types::SECRET_READY,
                    reasons::SECRET_AVAILABLE,
                    format!("using Secret {}", r.name),
                ),
                Err(msg) => Verdict::no(types::SECRET_READY, reasons::SECRET_INVALID, msg),
            },
        };
        return Ok(SigningSecret {
            verdict,
            status: None,
            revisit: None,
        });
    }
    let name = naming::signing_secret(&wh.name_any());
    let current = secrets.get_opt(&name).await?;
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
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(s),
            )
            .await?;
    }
    if let Some((reason, msg)) = &plan.event {
        ctx.event(&wh.object_ref(&()), EventType::Normal, reason, msg.clone())
            .await;
    }
    Ok(SigningSecret {
        verdict: Verdict::yes(
            types::SECRET_READY,
            reasons::SECRET_AVAILABLE,
            format!(
                "signing Secret {name}, key generation {}",
                plan.status.generation
            ),
        ),
        status: Some(plan.status),
        revisit: plan.revisit_at,
    })
}

/// Settles and patches the conditions, publishes Events for those that flipped, and says when
/// to look again: soon while something is not ready, at the end of a rotation overlap, else
/// in five minutes.
async fn conditions(
    wh: &Webhook,
    ctx: &Context,
    secret: SigningSecret,
    now: Timestamp,
) -> Result<Action> {
    let ns = wh
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let existing = wh.status.clone().unwrap_or_default().conditions;
    let dispatcher = match ctx.topics.failure(&ns) {
        Some(e) => Verdict::no(
            types::DISPATCHER_READY,
            reasons::TOPICS_FAILED,
            format!("cannot create the Kafka topics of {ns}: {e}"),
        ),
        None => dispatcher_availability(ctx, &ns).await?,
    };
    let ready = conditions::ready(None, &secret.verdict, &dispatcher);
    let verdicts = [ready, secret.verdict, dispatcher];
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
        ctx.event(&wh.object_ref(&()), kind, v.reason, v.message.clone())
            .await;
    }
    let settled = conditions::settle(&existing, &verdicts, wh.metadata.generation, now);
    patch_status(ctx, wh, &settled, secret.status).await?;
    ctx.metrics
        .reconciles
        .with_label_values(&[WEBHOOK, "ok"])
        .inc();

    let mut next = if verdicts.iter().all(|v| v.ok) {
        Duration::from_secs(300)
    } else {
        Duration::from_secs(5)
    };
    if let Some(at) = secret.revisit {
        let until =
            Duration::try_from(at.duration_since(now)).unwrap_or_default() + Duration::from_secs(1);
        next = next.min(until);
    }
    Ok(Action::requeue(next))
}

/// `DispatcherReady` from the tenant's Deployment status (read, never applied here).
async fn dispatcher_availability(ctx: &Context, tenant: &str) -> Result<Verdict> {
    let name = naming::dispatcher(tenant);
    let op = &ctx.settings.operator_namespace;
    let d = Api::<Deployment>::namespaced(ctx.client.clone(), op)
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
    conds: &[Condition],
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
        json!({ "apiVersion": hookline_core::API_VERSION, "kind": "Webhook", "status": status });
    let api = Api::<Webhook>::namespaced(ctx.client.clone(), &ns);
    let (name, pp, patch) = (
        wh.name_any(),
        PatchParams::apply(MANAGER).force(),
        Patch::Apply(&patch),
    );
    let patched = tokio::time::timeout(
        Duration::from_secs(10),
        api.patch_status(&name, &pp, &patch),
    )
    .await
    .map_err(|_| Error::Timeout("status patch"))?;
    match patched {
        // Deleted while being reconciled (no finalizer holds it): nothing left to report on.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        other => other.map(|_| ()).map_err(Error::from),
    }
}

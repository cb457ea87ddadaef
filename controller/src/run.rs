//! Wires the two reconcilers to their watches and runs them until shutdown. `main` calls
//! [`run`] only once this replica leads, so a standby replica watches and reconciles nothing.
//!
//! - `Webhook`s (those of this instance, by label) → a reflector (the store both reconcilers
//!   read) → the `Webhook` controller, on spec, annotation and finalizer changes, on a change
//!   of its tenant's dispatcher Deployment, and on a change of its signing Secret.
//! - The same reflected `Webhook` events, and label-selected metadata watches of the children
//!   (Deployments and ServiceAccounts in the operator namespace, Roles and RoleBindings in
//!   every namespace) → the [`TenantIndex`] → a store of tenants (`Namespace` objects that carry
//!   only a name) and their triggers → the tenant controller. Once the index is ready it
//!   announces every tenant: each is re-applied once at start, and orphans are swept.
//! - `WebhookReplay`s (all of them; a replay whose `Webhook` another instance owns is left to
//!   it) → the replay controller, which starts one runner per replay ([`replay`]).
//! - Every 10 s: `Webhook`s by readiness and tenants by state into the metrics.
//!
//! # Decisions
//! - The tenant key is a `Namespace` from the index, not from a watch of Namespaces: the
//!   controller needs no RBAC on Namespaces, and a tenant stays a key while objects of it are
//!   left, which is what lets its reconcile remove them.
//! - The tenant controller runs at most [`TENANT_CONCURRENCY`] reconciles at once: at start,
//!   every tenant is due at the same moment.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{
    StreamExt,
    channel::mpsc::{self, UnboundedSender},
    stream::{self, BoxStream},
};
use hookline_crds::Webhook;
use k8s_openapi::{
    NamespaceResourceScope,
    api::{
        apps::v1::Deployment,
        core::v1::{Namespace, Secret, ServiceAccount},
        rbac::v1::{Role, RoleBinding},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        Config, Controller, Predicate, WatchStreamExt, controller,
        controller::Action,
        events::{Recorder, Reporter},
        predicates, reflector,
        reflector::{ObjectRef, store::Writer},
        utils::Backoff,
        watcher::{self, watcher},
    },
};
use serde::de::DeserializeOwned;
use tracing::{debug, info, warn};

use crate::{
    children::{self, LABEL_TENANT},
    context::Context,
    error::Error,
    metrics::Metrics,
    replay,
    settings::Settings,
    tenant,
    tenant_index::{Change, Observation, Seen, Source, TenantIndex, observe},
    tenant_plan::{self, Kind},
    topics::TopicManager,
    webhook,
};

/// Tenant reconciles at once. At start every tenant is due together; 16 keeps that burst at
/// 64 server-side applies in flight (not measured against a large cluster yet: the local
/// environment re-applies 3 tenants in under a second).
pub const TENANT_CONCURRENCY: u16 = 16;

/// Runs both controllers until a shutdown signal.
pub async fn run(client: Client, settings: Settings, metrics: Metrics, topics: Arc<TopicManager>) {
    let (webhooks, webhook_writer) = reflector::store::<Webhook>();
    let reporter = Reporter {
        controller: "hookline-controller".into(),
        instance: Some(settings.pod_name.clone()),
    };
    let recorder = Recorder::new(client.clone(), reporter);
    let ctx = Arc::new(Context::new(
        client, settings, recorder, metrics, topics, webhooks,
    ));
    let (observed, webhook_observations) = mpsc::unbounded::<Observation>();
    let (tenants, tenant_writer) = reflector::store::<Namespace>();
    let (trigger, triggers) = mpsc::unbounded::<Namespace>();

    let webhooks = webhook_controller(&ctx, webhook_writer, observed)
        .for_each(|r| async move { log_stream_error("webhook", r) });
    let tenants = Controller::for_stream(triggers.map(Ok), tenants)
        .with_config(Config::default().concurrency(TENANT_CONCURRENCY))
        .shutdown_on_signal()
        .run(tenant::reconcile, tenant::error_policy, ctx.clone())
        .for_each(|r| async move { log_stream_error("tenant", r) });
    let observations = stream::select(
        webhook_observations,
        child_observations(&ctx.settings, &ctx.client),
    );
    let replays = Controller::new(
        Api::<hookline_crds::WebhookReplay>::all(ctx.client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .shutdown_on_signal()
    .run(
        replay::reconcile,
        replay::error_policy,
        Arc::new(replay::ReplayContext::new(ctx.clone())),
    )
    .for_each(|r| async move { log_stream_error("replay", r) });
    tokio::select! {
        _ = futures::future::join3(webhooks, tenants, replays) => info!("controllers stopped"),
        () = index(&ctx, observations, tenant_writer, trigger) => warn!("tenant index stopped"),
        () = gauges(&ctx) => {}
    }
}

/// Logs what a controller stream reports, except the expected: a failed reconcile (its error
/// policy logs it, with the category) and a queued key whose object is gone meanwhile.
fn log_stream_error<T>(controller: &str, r: Result<T, controller::Error<Error, watcher::Error>>) {
    match r {
        Ok(_) => {}
        Err(controller::Error::ReconcilerFailed(..) | controller::Error::ObjectNotFound(_)) => {
            debug!(controller, "reconcile skipped or failed");
        }
        Err(e) => warn!(controller, error = %e, "controller stream"),
    }
}

fn webhook_controller(
    ctx: &Arc<Context>,
    writer: Writer<Webhook>,
    observed: UnboundedSender<Observation>,
) -> impl futures::Stream<
    Item = Result<(ObjectRef<Webhook>, Action), controller::Error<Error, watcher::Error>>,
> {
    let s = &ctx.settings;
    let client = &ctx.client;
    let store = ctx.webhooks.clone();
    let api = Api::<Webhook>::all(client.clone());
    let config = watcher::Config::default()
        .any_semantic()
        .labels(&s.webhook_selector());
    // Reconcile on what the controller acts on — spec (generation, which also moves on
    // deletion), annotations (rotation) and finalizers — not on the dispatcher's status
    // writes, which come every few seconds per busy Webhook. Periodic requeues still run.
    let forget = ctx.clone();
    let rules = s.address.clone();
    let trigger = watcher(api, config)
        .default_backoff()
        .reflect(writer)
        .inspect(move |event| {
            if let Ok(event) = event {
                if let watcher::Event::Delete(w) = event {
                    forget.forget_failures(&webhook::key(w));
                }
                let o = observe(
                    Source::Webhook,
                    event,
                    |w| &w.metadata,
                    |w| Seen::webhook(w, &rules),
                );
                if let Some(o) = o {
                    // The index outlives the controller; a closed channel means shutdown.
                    let _ = observed.unbounded_send(o);
                }
            }
        })
        .applied_objects()
        .predicate_filter(
            predicates::generation
                .combine(predicates::annotations)
                .combine(predicates::finalizers),
            Default::default(),
        );
    let by_tenant = {
        let store = store.clone();
        move |d: Deployment| {
            let Some(tenant) = d.labels().get(LABEL_TENANT).cloned() else {
                return Vec::new();
            };
            store
                .state()
                .iter()
                .filter(|w| w.namespace().as_deref() == Some(tenant.as_str()))
                .map(|w| ObjectRef::from_obj(w.as_ref()))
                .collect::<Vec<_>>()
        }
    };
    let referencing = move |s: PartialObjectMeta<Secret>| {
        let (Some(ns), name) = (s.namespace(), s.name_any()) else {
            return Vec::new();
        };
        store
            .state()
            .iter()
            .filter(|w| w.namespace().as_deref() == Some(ns.as_str()))
            .filter(|w| tenant_plan::secret_names([w.as_ref()]).contains(&name))
            .map(|w| ObjectRef::from_obj(w.as_ref()))
            .collect::<Vec<_>>()
    };
    let secret_events = watcher(
        Api::<PartialObjectMeta<Secret>>::all(client.clone()),
        watcher::Config::default(),
    )
    .touched_objects();
    Controller::for_stream(trigger, ctx.webhooks.clone())
        .watches(
            Api::<Deployment>::namespaced(client.clone(), &s.operator_namespace),
            watcher::Config::default().labels(&children::operator_namespace_selector()),
            by_tenant,
        )
        .watches_stream(secret_events, referencing)
        .shutdown_on_signal()
        .run(webhook::reconcile, webhook::error_policy, ctx.clone())
}

/// Observations of the tenants' children, from label-selected metadata watches.
fn child_observations(settings: &Settings, client: &Client) -> BoxStream<'static, Observation> {
    let op = &settings.operator_namespace;
    let in_operator_ns =
        watcher::Config::default().labels(&children::operator_namespace_selector());
    let everywhere = watcher::Config::default().labels(&children::owned_selector(settings));
    stream::select_all([
        child::<Deployment>(
            Api::namespaced(client.clone(), op),
            in_operator_ns.clone(),
            Kind::Deployment,
        ),
        child::<ServiceAccount>(
            Api::namespaced(client.clone(), op),
            in_operator_ns,
            Kind::ServiceAccount,
        ),
        child::<Role>(Api::all(client.clone()), everywhere.clone(), Kind::Role),
        child::<RoleBinding>(Api::all(client.clone()), everywhere, Kind::RoleBinding),
    ])
    .boxed()
}

fn child<K>(
    api: Api<PartialObjectMeta<K>>,
    config: watcher::Config,
    kind: Kind,
) -> BoxStream<'static, Observation>
where
    K: kube::Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    fn meta<K>(m: &PartialObjectMeta<K>) -> &ObjectMeta {
        &m.metadata
    }
    watcher(api, config)
        .backoff(Patient::default())
        .filter_map(move |r| {
            std::future::ready(match r {
                Ok(event) => observe(Source::Child(kind), &event, meta, |m| {
                    Seen::child(&m.metadata)
                }),
                Err(e) => {
                    warn!(
                        kind = ?kind,
                        error = %e,
                        "cannot watch the tenants' children of this kind (the controller needs \
                         list and watch on them); until it can, a deleted one is put back at the \
                         tenant's periodic reconcile"
                    );
                    None
                }
            })
        })
        .boxed()
}

/// Backoff of the children's watches: 1 s doubling up to 5 min, back to 1 s only after 5 min
/// without an error. (The watcher's own `default_backoff` is reset by any event, and a watch
/// yields `Init` before a list that fails: a forbidden watch would be retried every second.)
#[derive(Debug, Default)]
struct Patient {
    failures: u32,
    last: Option<Instant>,
}

impl Patient {
    const MAX: Duration = Duration::from_secs(300);

    fn next_at(&mut self, now: Instant) -> Duration {
        if self.last.is_some_and(|t| now.duration_since(t) > Self::MAX) {
            self.failures = 0;
        }
        self.last = Some(now);
        self.failures = self.failures.saturating_add(1);
        Duration::from_secs(1u64 << (self.failures - 1).min(9)).min(Self::MAX)
    }
}

impl Iterator for Patient {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(self.next_at(Instant::now()))
    }
}

impl Backoff for Patient {
    fn reset(&mut self) {}
}

/// Feeds the tenant index, keeps the tenant store, and triggers tenant reconciles.
async fn index(
    ctx: &Context,
    mut observations: impl futures::Stream<Item = Observation> + Unpin,
    mut writer: Writer<Namespace>,
    trigger: UnboundedSender<Namespace>,
) {
    let tenant = |name: &str| Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    let mut index = TenantIndex::default();
    let mut announced = false;
    while let Some(o) = observations.next().await {
        let changes = index.observe(o);
        if !announced {
            if !index.ready() {
                continue;
            }
            writer.apply_watcher_event(&watcher::Event::Init);
            for t in index.tenants() {
                writer.apply_watcher_event(&watcher::Event::InitApply(tenant(t)));
            }
            writer.apply_watcher_event(&watcher::Event::InitDone);
            let (all, orphans) = (index.tenants().count(), index.orphans().count());
            info!(
                tenants = all,
                orphans, "tenants listed; reconciling every one of them once"
            );
            for t in index.tenants() {
                let _ = trigger.unbounded_send(tenant(t));
            }
            count_tenants(ctx, &index);
            announced = true;
            continue;
        }
        if changes.is_empty() {
            continue;
        }
        for c in changes {
            match c {
                Change::Touched(t) => {
                    let ns = tenant(&t);
                    writer.apply_watcher_event(&watcher::Event::Apply(ns.clone()));
                    let _ = trigger.unbounded_send(ns);
                }
                Change::Gone(t) => writer.apply_watcher_event(&watcher::Event::Delete(tenant(&t))),
            }
        }
        count_tenants(ctx, &index);
    }
}

fn count_tenants(ctx: &Context, index: &TenantIndex) {
    let orphans = index.orphans().count();
    let live = index.tenants().count() - orphans;
    for (state, n) in [("live", live), ("orphan", orphans)] {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        ctx.metrics.tenants.with_label_values(&[state]).set(n);
    }
}

/// `Webhook`s by readiness, from the store, every 10 s.
async fn gauges(ctx: &Context) {
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let state = ctx.webhooks.state();
        let (t, f, u) = crate::metrics::readiness(state.iter().map(|w| w.as_ref()));
        for (label, n) in [("true", t), ("false", f), ("unknown", u)] {
            ctx.metrics.webhooks.with_label_values(&[label]).set(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_child_watch_backs_off_to_five_minutes_and_recovers_only_after_a_quiet_spell() {
        let t0 = Instant::now();
        let mut b = Patient::default();
        let delays: Vec<u64> = (0..11)
            .map(|i| b.next_at(t0 + Duration::from_secs(i)).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        b.reset();
        assert_eq!(
            b.next_at(t0 + Duration::from_secs(20)).as_secs(),
            300,
            "an event between two failures is no recovery"
        );
        assert_eq!(b.next_at(t0 + Duration::from_secs(400)).as_secs(), 1);
    }
}

//! Which tenants the tenant reconciler looks after, derived from what the watches see. A tenant
//! is a namespace that has a `Webhook` this controller serves, or that still has objects of this
//! installation (found by the `hookline.dev/tenant` label): an orphan, whose reconcile removes
//! them. Observations of the watched objects flow in (`Webhook`s from the `Webhook`
//! controller's reflector, the tenants' children from label-selected watches); the tenants they
//! touch flow out, for the tenant controller's store and queue.
//!
//! A tenant is touched only when something its reconcile acts on changed: a `Webhook`
//! appearing, going, starting its deletion, becoming valid or invalid, or changing its signing
//! Secret; a child changing
//! its spec (its `generation`, or its `resourceVersion` for kinds without one), losing its
//! label or vanishing. The dispatchers' status writes to `Webhook`s (every few seconds per busy
//! `Webhook`) and Deployment status changes touch nothing. Pure: no clock, no I/O.
//!
//! # Guarantees
//! - Before both the `Webhook`s and the dispatcher Deployments have been listed once,
//!   [`TenantIndex::ready`] is false: the caller announces no tenant, so none is judged an
//!   orphan from half a picture.
//! - A relist that no longer shows an object counts it as deleted (an event missed while a
//!   watch was down is not missed for good).
//!
//! # Decisions
//! - Only the `Webhook` and Deployment lists gate readiness. The other children's watches need
//!   RBAC an older chart does not grant; without them a deleted Role is recreated at the next
//!   periodic reconcile instead of at once, and orphans are still found by their Deployment.

use std::collections::{BTreeMap, HashMap, HashSet};

use hookline_core::args::AddressRules;
use hookline_crds::Webhook;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher;

use crate::{
    children::LABEL_TENANT,
    tenant_plan::{self, Kind},
};

/// Where an observation comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// The `Webhook`s this controller serves.
    Webhook,
    /// Children of one kind, by label.
    Child(Kind),
}

/// One watched object.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    /// Its source.
    pub source: Source,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// What the index keeps of an object: the part the tenant reconciler acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The tenant it belongs to.
    pub tenant: String,
    /// A `Webhook` that keeps its tenant's dispatcher (not being deleted, valid).
    pub live_webhook: bool,
    /// Changes when the object changes in a way that matters to the tenant.
    pub fingerprint: String,
}

impl Seen {
    /// A `Webhook`: its namespace is its tenant; whether it [keeps the
    /// dispatcher](tenant_plan::keeps_dispatcher) and its signing Secret matter.
    pub fn webhook(wh: &Webhook, rules: &AddressRules) -> Option<Seen> {
        let live = tenant_plan::keeps_dispatcher(wh, rules);
        let secret = tenant_plan::secret_names([wh]).pop().unwrap_or_default();
        Some(Seen {
            tenant: wh.metadata.namespace.clone()?,
            live_webhook: live,
            fingerprint: format!("live={live} secret={secret}"),
        })
    }

    /// A child: its tenant label names the tenant (none: not a child); its spec matters.
    pub fn child(meta: &ObjectMeta) -> Option<Seen> {
        let tenant = meta.labels.as_ref()?.get(LABEL_TENANT)?.clone();
        let fingerprint = match meta.generation {
            Some(g) => format!("generation={g}"),
            None => format!("version={}", meta.resource_version.as_deref().unwrap_or("")),
        };
        Some(Seen {
            tenant,
            live_webhook: false,
            fingerprint,
        })
    }
}

/// One thing a watch reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// A (re)list of `Source` begins.
    Init(Source),
    /// An object of the list in progress.
    Listed(Key, Seen),
    /// An object was created or changed.
    Applied(Key, Seen),
    /// An object was deleted (or left the label selector).
    Deleted(Key),
    /// The list of `Source` is complete.
    InitDone(Source),
}

/// The observation a watch event makes, given how to see one object (`None`: not a tenant's).
pub fn observe<K>(
    source: Source,
    event: &watcher::Event<K>,
    meta: impl Fn(&K) -> &ObjectMeta,
    seen: impl Fn(&K) -> Option<Seen>,
) -> Option<Observation> {
    let key = |obj: &K| Key {
        source,
        namespace: meta(obj).namespace.clone().unwrap_or_default(),
        name: meta(obj).name.clone().unwrap_or_default(),
    };
    Some(match event {
        watcher::Event::Init => Observation::Init(source),
        watcher::Event::InitDone => Observation::InitDone(source),
        watcher::Event::InitApply(obj) => Observation::Listed(key(obj), seen(obj)?),
        watcher::Event::Apply(obj) => match seen(obj) {
            Some(s) => Observation::Applied(key(obj), s),
            None => Observation::Deleted(key(obj)),
        },
        watcher::Event::Delete(obj) => Observation::Deleted(key(obj)),
    })
}

/// What an observation means for a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The tenant exists and something it depends on changed: reconcile it.
    Touched(String),
    /// Nothing of the tenant is left: forget it.
    Gone(String),
}

#[derive(Debug, Default, Clone, Copy)]
struct Count {
    objects: usize,
    live_webhooks: usize,
}

/// The tenants, from the observations so far.
#[derive(Debug, Default)]
pub struct TenantIndex {
    objects: HashMap<Key, Seen>,
    tenants: BTreeMap<String, Count>,
    relisting: HashMap<Source, HashSet<Key>>,
    listed: HashSet<Source>,
}

impl TenantIndex {
    /// Takes in one observation; the tenants it touches.
    pub fn observe(&mut self, o: Observation) -> Vec<Change> {
        match o {
            Observation::Init(source) => {
                self.relisting.insert(source, HashSet::new());
                Vec::new()
            }
            Observation::Listed(key, seen) => {
                if let Some(keys) = self.relisting.get_mut(&key.source) {
                    keys.insert(key.clone());
                }
                self.put(key, seen)
            }
            Observation::Applied(key, seen) => self.put(key, seen),
            Observation::Deleted(key) => self.remove(&key),
            Observation::InitDone(source) => {
                self.listed.insert(source);
                let kept = self.relisting.remove(&source).unwrap_or_default();
                let vanished: Vec<Key> = self
                    .objects
                    .keys()
                    .filter(|k| k.source == source && !kept.contains(k))
                    .cloned()
                    .collect();
                vanished.iter().flat_map(|k| self.remove(k)).collect()
            }
        }
    }

    /// Whether the `Webhook`s and the dispatcher Deployments have been listed.
    pub fn ready(&self) -> bool {
        self.listed.contains(&Source::Webhook)
            && self.listed.contains(&Source::Child(Kind::Deployment))
    }

    /// Every tenant, in name order.
    pub fn tenants(&self) -> impl Iterator<Item = &str> {
        self.tenants.keys().map(String::as_str)
    }

    /// The tenants with objects and no live `Webhook`: what the tenant reconciler will remove.
    pub fn orphans(&self) -> impl Iterator<Item = &str> {
        self.tenants
            .iter()
            .filter(|(_, c)| c.live_webhooks == 0)
            .map(|(t, _)| t.as_str())
    }

    fn put(&mut self, key: Key, seen: Seen) -> Vec<Change> {
        let old = self.objects.insert(key, seen.clone());
        if old.as_ref() == Some(&seen) {
            return Vec::new();
        }
        let mut changes = Vec::new();
        if let Some(old) = old {
            self.count(&old, false);
            if old.tenant != seen.tenant {
                changes.push(self.change(&old.tenant));
            }
        }
        self.count(&seen, true);
        changes.push(self.change(&seen.tenant));
        changes
    }

    fn remove(&mut self, key: &Key) -> Vec<Change> {
        match self.objects.remove(key) {
            Some(old) => {
                self.count(&old, false);
                vec![self.change(&old.tenant)]
            }
            None => Vec::new(),
        }
    }

    fn count(&mut self, seen: &Seen, add: bool) {
        let c = self.tenants.entry(seen.tenant.clone()).or_default();
        let live = usize::from(seen.live_webhook);
        if add {
            c.objects += 1;
            c.live_webhooks += live;
        } else {
            c.objects = c.objects.saturating_sub(1);
            c.live_webhooks = c.live_webhooks.saturating_sub(live);
            if c.objects == 0 {
                self.tenants.remove(&seen.tenant);
            }
        }
    }

    fn change(&self, tenant: &str) -> Change {
        if self.tenants.contains_key(tenant) {
            Change::Touched(tenant.to_owned())
        } else {
            Change::Gone(tenant.to_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::Deployment;

    const DEPLOYMENT: Source = Source::Child(Kind::Deployment);

    fn key(source: Source, ns: &str, name: &str) -> Key {
        Key {
            source,
            namespace: ns.into(),
            name: name.into(),
        }
    }

    use crate::fixtures::webhook;

    fn seen(w: &Webhook) -> Seen {
        Seen::webhook(w, &AddressRules::default()).unwrap()
    }

    fn wh(ns: &str, name: &str, secret: Option<&str>, deleting: bool) -> Observation {
        let w = webhook(ns, name, secret, deleting);
        Observation::Applied(key(Source::Webhook, ns, name), seen(&w))
    }

    fn child(source: Source, tenant: &str, generation: i64) -> (Key, Seen) {
        let meta: ObjectMeta = serde_json::from_value(serde_json::json!({
            "name": format!("hookline-dispatcher-{tenant}"), "namespace": "hookline-system",
            "generation": generation, "labels": {"hookline.dev/tenant": tenant}
        }))
        .unwrap();
        (
            key(
                source,
                "hookline-system",
                &format!("hookline-dispatcher-{tenant}"),
            ),
            Seen::child(&meta).unwrap(),
        )
    }

    /// An index that has listed nothing but two empty lists.
    fn listed() -> TenantIndex {
        let mut i = TenantIndex::default();
        for s in [Source::Webhook, DEPLOYMENT] {
            i.observe(Observation::Init(s));
            i.observe(Observation::InitDone(s));
        }
        i
    }

    fn touched(t: &str) -> Vec<Change> {
        vec![Change::Touched(t.into())]
    }

    #[test]
    fn the_index_is_ready_only_once_webhooks_and_deployments_are_listed() {
        let mut i = TenantIndex::default();
        i.observe(Observation::Init(Source::Webhook));
        i.observe(Observation::InitDone(Source::Webhook));
        assert!(!i.ready(), "Deployments not listed yet");
        i.observe(Observation::Init(DEPLOYMENT));
        assert!(!i.ready());
        i.observe(Observation::InitDone(DEPLOYMENT));
        assert!(i.ready());
    }

    #[test]
    fn a_new_webhook_touches_its_tenant_and_a_status_write_touches_nothing() {
        let mut i = listed();
        assert_eq!(i.observe(wh("acme", "a", None, false)), touched("acme"));
        // The same projection again: a status write, an annotation, a URL change.
        assert_eq!(i.observe(wh("acme", "a", None, false)), vec![]);
        assert_eq!(i.tenants().collect::<Vec<_>>(), ["acme"]);
    }

    #[test]
    fn a_changed_signing_secret_or_a_started_deletion_touches_the_tenant() {
        let mut i = listed();
        i.observe(wh("acme", "a", None, false));
        assert_eq!(
            i.observe(wh("acme", "a", Some("mine"), false)),
            touched("acme")
        );
        assert_eq!(
            i.observe(wh("acme", "a", Some("mine"), true)),
            touched("acme")
        );
    }

    #[test]
    fn a_webhook_becoming_valid_touches_its_tenant_and_makes_it_live() {
        let mut i = listed();
        let mut w = webhook("acme", "a", None, false);
        w.spec.url = "https://10.1.2.3/".into();
        let k = key(Source::Webhook, "acme", "a");
        assert_eq!(
            i.observe(Observation::Applied(k.clone(), seen(&w))),
            touched("acme")
        );
        assert_eq!(
            i.orphans().collect::<Vec<_>>(),
            ["acme"],
            "no valid Webhook"
        );
        w.spec.url = "https://h.example/".into();
        assert_eq!(
            i.observe(Observation::Applied(k, seen(&w))),
            touched("acme")
        );
        assert_eq!(i.orphans().count(), 0);
    }

    #[test]
    fn a_deployment_status_change_touches_nothing_and_a_spec_change_does() {
        let mut i = listed();
        let (k, s) = child(DEPLOYMENT, "acme", 1);
        i.observe(Observation::Applied(k.clone(), s.clone()));
        assert_eq!(i.observe(Observation::Applied(k.clone(), s)), vec![]);
        let (_, edited) = child(DEPLOYMENT, "acme", 2);
        assert_eq!(i.observe(Observation::Applied(k, edited)), touched("acme"));
    }

    #[test]
    fn objects_of_a_namespace_with_no_webhook_left_are_orphans() {
        let mut i = listed();
        i.observe(wh("acme", "a", None, false));
        i.observe(wh("globex", "g", None, false));
        for t in ["acme", "globex", "initech"] {
            let (k, s) = child(DEPLOYMENT, t, 1);
            i.observe(Observation::Applied(k, s));
        }
        // initech never had a Webhook here (deleted while the controller was down).
        assert_eq!(i.orphans().collect::<Vec<_>>(), ["initech"]);
        // acme's last Webhook starts its deletion: acme is an orphan from now on.
        i.observe(wh("acme", "a", None, true));
        assert_eq!(i.orphans().collect::<Vec<_>>(), ["acme", "initech"]);
        assert_eq!(
            i.tenants().collect::<Vec<_>>(),
            ["acme", "globex", "initech"],
            "orphans stay tenants until their objects are gone"
        );
    }

    #[test]
    fn deleting_the_last_webhook_keeps_the_tenant_until_its_objects_are_gone() {
        let mut i = listed();
        i.observe(wh("acme", "a", None, false));
        let (k, s) = child(DEPLOYMENT, "acme", 1);
        i.observe(Observation::Applied(k.clone(), s));
        let gone_webhook = Observation::Deleted(key(Source::Webhook, "acme", "a"));
        assert_eq!(i.observe(gone_webhook), touched("acme"));
        assert_eq!(
            i.observe(Observation::Deleted(k)),
            vec![Change::Gone("acme".into())]
        );
        assert_eq!(i.tenants().count(), 0);
    }

    #[test]
    fn a_child_that_loses_its_tenant_label_counts_as_deleted() {
        let mut i = listed();
        i.observe(wh("acme", "a", None, false));
        let (k, s) = child(Source::Child(Kind::Role), "acme", 1);
        i.observe(Observation::Applied(k.clone(), s));
        let unlabelled = Deployment {
            metadata: ObjectMeta {
                name: Some(k.name.clone()),
                namespace: Some(k.namespace.clone()),
                ..ObjectMeta::default()
            },
            ..Deployment::default()
        };
        let o = observe(
            k.source,
            &watcher::Event::Apply(unlabelled),
            |d| &d.metadata,
            |d| Seen::child(&d.metadata),
        )
        .unwrap();
        assert_eq!(o, Observation::Deleted(k));
        assert_eq!(i.observe(o), touched("acme"), "so that it is put back");
    }

    #[test]
    fn a_relist_that_misses_an_object_counts_it_as_deleted_and_repeats_nothing_else() {
        let mut i = listed();
        i.observe(wh("acme", "a", None, false));
        i.observe(wh("globex", "g", None, false));
        // The watch was down while globex's Webhook went; the relist shows only acme's.
        i.observe(Observation::Init(Source::Webhook));
        let w = webhook("acme", "a", None, false);
        let again = Observation::Listed(key(Source::Webhook, "acme", "a"), seen(&w));
        assert_eq!(i.observe(again), vec![], "an unchanged object is no news");
        assert_eq!(
            i.observe(Observation::InitDone(Source::Webhook)),
            vec![Change::Gone("globex".into())]
        );
        assert_eq!(i.tenants().collect::<Vec<_>>(), ["acme"]);
    }
}

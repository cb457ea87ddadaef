//! The tenant's `Webhook`s as the pipeline sees them. A reflector on the tenant
//! namespace feeds [`Registry::sync`], which keeps one long-lived [`Endpoint`]
//! per `Webhook`: a [`Spec`] snapshot (its [`Settings`], in-flight limit and pause, rebuilt
//! and swapped whole on every change) and its [`Runtime`] state under one lock — signing keys
//! (filled in by [`crate::tenant::keys`]), rate limiter, circuit breaker, status counters, the
//! 410 Gone switch — which must outlive a spec change. The pipeline asks
//! [`Registry::snapshot`] which endpoints an event goes to and [`Endpoint::hold`] whether
//! they can take it now; both read one consistent snapshot.
//!
//! Decisions:
//! - A `Webhook` disabled after 410 Gone stays disabled while
//!   `status.disabled.generation` equals `metadata.generation` and the
//!   `hookline.dev/enable` annotation keeps the value it had when it was
//!   disabled (after a dispatcher restart: the value seen at start).
//! - A test send (`hookline.dev/test: <nonce>`) is started once per nonce not
//!   yet answered in `status.lastTest.nonce`.
//! - A spec's [`Settings`] fall back to the retry schedule the registry was made
//!   with (the platform's defaults) for fields they leave out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use hookline_core::circuit::{CircuitBreaker, CircuitConfig, CircuitState, Rejected};
use hookline_core::conditions::reasons;
use hookline_core::drain::DrainMeter;
use hookline_core::naming;
use hookline_core::ratelimit::{RateLimiter, default_burst};
use hookline_core::retry::RetryPolicy;
use hookline_core::secret::SigningKeys;
use hookline_core::signing::Secret;
use hookline_core::status::{Availability, Hold};
use hookline_crds::{Webhook, annotations};
use jiff::Timestamp;
use kube::ResourceExt;
use tokio::sync::Semaphore;

use crate::error::SpecError;
use crate::tenant::settings::{DEFAULT_MAX_IN_FLIGHT, Settings};
use crate::tenant::stats::Stats;

/// Why and since when an endpoint is disabled (410 Gone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disabled {
    /// Since when.
    pub since: Timestamp,
    /// Why (`Gone`).
    pub reason: String,
    /// The generation that was disabled.
    pub generation: i64,
    /// The `hookline.dev/enable` annotation when it was disabled.
    pub enable_token: Option<String>,
}

fn enable_token(wh: &Webhook) -> Option<String> {
    wh.annotations().get(annotations::ENABLE).cloned()
}

/// What one generation of a `Webhook` makes of its endpoint, replaced whole on every change,
/// so a reader always sees one consistent generation.
pub struct Spec {
    /// The object as last seen.
    pub object: Arc<Webhook>,
    /// Its settings, or why they cannot be used.
    pub settings: Result<Arc<Settings>, SpecError>,
    /// The in-flight limit (a new one when `maxInFlight` changes).
    pub semaphore: Arc<Semaphore>,
    /// Since when it is paused, as this dispatcher saw it.
    pub paused_since: Option<Instant>,
}

/// What happens to an endpoint at run time, under one lock.
pub struct Runtime {
    /// The signing keys, once read.
    pub keys: Option<SigningKeys>,
    /// The `Webhook` says its keys changed (rotated, or another Secret) since they were read.
    keys_stale: bool,
    limiter: Option<RateLimiter>,
    breaker: CircuitBreaker,
    disabled: Option<Disabled>,
    test_started: Option<String>,
    /// What the status writer reports.
    pub stats: Stats,
    drain: DrainMeter,
}

/// One `Webhook` as the pipeline sees it: a [`Spec`] snapshot and its [`Runtime`] state.
pub struct Endpoint {
    /// The `Webhook`'s name.
    pub name: Arc<str>,
    uid: String,
    spec: RwLock<Arc<Spec>>,
    runtime: Mutex<Runtime>,
    /// Deliveries of this endpoint held in memory (running, waiting, parked).
    pub in_memory: AtomicUsize,
}

impl Endpoint {
    fn new(wh: Arc<Webhook>, defaults: &RetryPolicy) -> Endpoint {
        let settings = Settings::from_webhook(&wh, defaults).map(Arc::new);
        let max = settings
            .as_ref()
            .map_or(DEFAULT_MAX_IN_FLIGHT, |s| s.max_in_flight);
        let rate = settings.as_ref().ok().and_then(|s| s.rate_per_second);
        let status = wh.status.clone().unwrap_or_default();
        let disabled = status
            .disabled
            .as_ref()
            .filter(|d| d.generation.is_some() && d.generation == wh.metadata.generation)
            .map(|d| Disabled {
                since: d.since.0,
                reason: d.reason.clone(),
                generation: d.generation.unwrap_or_default(),
                enable_token: enable_token(&wh),
            });
        let stats = Stats::from_status(&status, status.disabled.is_some() && disabled.is_none());
        let paused_since = wh.spec.paused.then(Instant::now);
        Endpoint {
            name: Arc::from(wh.name_any()),
            uid: wh.uid().unwrap_or_default(),
            spec: RwLock::new(Arc::new(Spec {
                object: wh,
                settings,
                semaphore: Arc::new(Semaphore::new(max)),
                paused_since,
            })),
            runtime: Mutex::new(Runtime {
                keys: None,
                keys_stale: false,
                limiter: rate.and_then(new_limiter),
                breaker: CircuitBreaker::new(CircuitConfig::default()),
                disabled,
                test_started: None,
                stats,
                drain: DrainMeter::new(Instant::now()),
            }),
            in_memory: AtomicUsize::new(0),
        }
    }

    fn runtime(&self) -> MutexGuard<'_, Runtime> {
        self.runtime.lock().expect("endpoint runtime lock")
    }

    /// Takes a newer version of the object. Returns whether the signing
    /// Secret must be read again: another name, or a new key generation
    /// reported by the controller in `status.secret` (a rotation).
    fn update(&self, wh: Arc<Webhook>, defaults: &RetryPolicy) -> bool {
        let old = self.spec();
        let old_secret = self.secret_name();
        let secret_status = |w: &Webhook| w.status.as_ref().and_then(|s| s.secret.clone());
        let rotated = secret_status(&old.object) != secret_status(&wh);
        let settings = Settings::from_webhook(&wh, defaults).map(Arc::new);
        let old_settings = old.settings.as_ref().ok();
        let mut semaphore = old.semaphore.clone();
        let mut runtime = self.runtime();
        if let Ok(new) = &settings {
            if old_settings.map(|o| o.max_in_flight) != Some(new.max_in_flight) {
                semaphore = Arc::new(Semaphore::new(new.max_in_flight));
            }
            if old_settings.map(|o| o.rate_per_second) != Some(new.rate_per_second) {
                runtime.limiter = new.rate_per_second.and_then(new_limiter);
            }
        }
        let enabled_again = runtime.disabled.as_ref().is_some_and(|d| {
            Some(d.generation) != wh.metadata.generation || d.enable_token != enable_token(&wh)
        });
        if enabled_again {
            tracing::info!(webhook = %self.name, "re-enabled (spec or enable annotation changed)");
            runtime.disabled = None;
            runtime.stats.mark();
        }
        let paused_since = match (wh.spec.paused, old.paused_since) {
            (true, None) => Some(Instant::now()),
            (true, since) => since,
            (false, _) => None,
        };
        *self.spec.write().expect("endpoint spec lock") = Arc::new(Spec {
            object: wh,
            settings,
            semaphore,
            paused_since,
        });
        let reload = rotated || self.secret_name() != old_secret;
        runtime.keys_stale |= reload;
        drop(runtime);
        reload
    }

    /// Pretends the pause began at `at` (tests of the park delay).
    #[cfg(test)]
    fn pause_started(&self, at: Option<Instant>) {
        let mut spec = self.spec.write().expect("endpoint spec lock");
        *spec = Arc::new(Spec {
            object: spec.object.clone(),
            settings: spec.settings.clone(),
            semaphore: spec.semaphore.clone(),
            paused_since: at,
        });
    }

    /// The spec-derived state of the latest generation.
    pub fn spec(&self) -> Arc<Spec> {
        self.spec.read().expect("endpoint spec lock").clone()
    }

    /// The latest object.
    pub fn object(&self) -> Arc<Webhook> {
        self.spec().object.clone()
    }

    /// The settings of the latest generation, or why they cannot be used.
    pub fn settings(&self) -> Result<Arc<Settings>, SpecError> {
        self.spec().settings.clone()
    }

    /// The signing Secret's name.
    pub fn secret_name(&self) -> String {
        let spec = self.spec();
        match &spec.settings {
            Ok(s) => s.secret_name.clone(),
            Err(_) => spec
                .object
                .spec
                .secret_ref
                .as_ref()
                .map_or_else(|| naming::signing_secret(&self.name), |r| r.name.clone()),
        }
    }

    /// Whether signing keys are loaded.
    pub fn has_keys(&self) -> bool {
        self.runtime().keys.is_some()
    }

    /// Replaces the signing keys.
    pub fn set_keys(&self, keys: Option<SigningKeys>) {
        self.runtime().keys = keys;
    }

    /// Whether the signing Secret must be read before the next full refresh: no keys yet, or
    /// the `Webhook` said they changed. Clears the latter (a change that comes during the read
    /// sets it again); [`Endpoint::keys_read_failed`] sets it back.
    pub fn take_keys_wanted(&self) -> bool {
        let mut runtime = self.runtime();
        let stale = std::mem::take(&mut runtime.keys_stale);
        stale || runtime.keys.is_none()
    }

    /// The read [`Endpoint::take_keys_wanted`] asked for failed: it is wanted again.
    pub fn keys_read_failed(&self) {
        self.runtime().keys_stale = true;
    }

    /// The keys to sign with at `now`; empty when none are loaded.
    pub fn keys_at(&self, now: Timestamp) -> Vec<Secret> {
        self.runtime()
            .keys
            .as_ref()
            .map(|k| k.at(now))
            .unwrap_or_default()
    }

    fn availability_of(spec: &Spec, runtime: &Runtime) -> Availability {
        match &spec.settings {
            Err(_) => Availability::Invalid,
            Ok(_) if runtime.disabled.is_some() => Availability::Disabled,
            Ok(s) if s.paused => Availability::Paused,
            Ok(_) if runtime.keys.is_none() => Availability::NoKeys,
            Ok(_) => Availability::Ready,
        }
    }

    /// Whether it can take a delivery now, from one consistent snapshot.
    pub fn availability(&self) -> Availability {
        let spec = self.spec();
        Self::availability_of(&spec, &self.runtime())
    }

    /// What to do with a delivery now ([`hookline_core::status::hold`]), from one consistent
    /// snapshot; `longest` is the longest retry tier.
    pub fn hold(&self, longest: Duration) -> Hold {
        let spec = self.spec();
        let availability = Self::availability_of(&spec, &self.runtime());
        let paused_for = spec.paused_since.map_or(Duration::ZERO, |at| at.elapsed());
        hookline_core::status::hold(availability, paused_for, longest)
    }

    /// The in-flight limit.
    pub fn semaphore(&self) -> Arc<Semaphore> {
        self.spec().semaphore.clone()
    }

    /// Takes a rate-limit token, or says how long to wait for one.
    ///
    /// # Errors
    /// The wait, when no token is available.
    pub fn take_token(&self, now: Instant) -> Result<(), Duration> {
        match self.runtime().limiter.as_mut() {
            Some(limiter) => limiter.try_acquire(now),
            None => Ok(()),
        }
    }

    /// Asks the circuit breaker for an attempt.
    ///
    /// # Errors
    /// When the circuit is open or its probes are out.
    pub fn circuit_acquire(&self, now: Instant) -> Result<(), Rejected> {
        self.runtime().breaker.try_acquire(now)
    }

    /// Whether `held` jobs would wait longer in memory than `postpone` at the
    /// rate this endpoint's attempts finish (see [`DrainMeter`]).
    pub fn drains_slower_than(&self, held: usize, postpone: Duration, now: Instant) -> bool {
        self.runtime().drain.slower_than(held, postpone, now)
    }

    /// Notes that an attempt finished with `success` (for the circuit breaker: whether it
    /// counts as healthy); returns the circuit state after it.
    pub fn attempt_finished(&self, now: Instant, success: bool) -> CircuitState {
        let mut runtime = self.runtime();
        runtime.drain.record(now);
        runtime.breaker.record(now, success);
        runtime.breaker.state()
    }

    /// The circuit state.
    pub fn circuit_state(&self) -> CircuitState {
        self.runtime().breaker.state()
    }

    /// Whether deliveries are disabled (410 Gone).
    pub fn is_disabled(&self) -> bool {
        self.runtime().disabled.is_some()
    }

    /// The disabled state, for the status.
    pub fn disabled(&self) -> Option<Disabled> {
        self.runtime().disabled.clone()
    }

    /// Works on the status counters.
    pub fn stats<R>(&self, f: impl FnOnce(&mut Stats) -> R) -> R {
        f(&mut self.runtime().stats)
    }

    /// Disables deliveries after 410 Gone. Returns false when already disabled.
    pub fn disable(&self, now: Timestamp) -> bool {
        let wh = self.object();
        let mut runtime = self.runtime();
        if runtime.disabled.is_some() {
            return false;
        }
        runtime.disabled = Some(Disabled {
            since: now,
            reason: reasons::GONE.to_owned(),
            generation: wh.metadata.generation.unwrap_or_default(),
            enable_token: enable_token(&wh),
        });
        runtime.stats.mark();
        true
    }

    /// The test nonce to send now, if the annotation asks for one not yet
    /// answered nor started.
    fn take_test(&self) -> Option<String> {
        let wh = self.object();
        let nonce = wh.annotations().get(annotations::TEST)?.clone();
        let answered = wh
            .status
            .as_ref()
            .and_then(|s| s.last_test.as_ref())
            .map(|t| t.nonce.as_str());
        let mut runtime = self.runtime();
        if nonce.is_empty()
            || answered == Some(nonce.as_str())
            || runtime.test_started.as_deref() == Some(nonce.as_str())
        {
            return None;
        }
        runtime.test_started = Some(nonce.clone());
        Some(nonce)
    }
}

fn new_limiter(per_second: f64) -> Option<RateLimiter> {
    RateLimiter::new(per_second, default_burst(per_second), Instant::now()).ok()
}

/// What [`Registry::sync`] changed.
#[derive(Default)]
pub struct SyncReport {
    /// Endpoints whose signing Secret must be (re)read now.
    pub secrets_to_load: usize,
    /// Test sends to start: (endpoint, nonce).
    pub tests: Vec<(Arc<Endpoint>, String)>,
    /// Names of endpoints removed.
    pub removed: Vec<Arc<str>>,
}

/// Every `Webhook` of the tenant, by name.
pub struct Registry {
    endpoints: RwLock<HashMap<Arc<str>, Arc<Endpoint>>>,
    /// The retry policy `Webhook`s fall back to for fields they leave out (the platform's).
    defaults: RetryPolicy,
}

impl Registry {
    /// An empty registry whose `Webhook`s fall back to `defaults` for retry fields they
    /// leave out.
    pub fn new(defaults: RetryPolicy) -> Self {
        Self {
            endpoints: RwLock::default(),
            defaults,
        }
    }

    /// Every endpoint.
    pub fn snapshot(&self) -> Vec<Arc<Endpoint>> {
        self.endpoints
            .read()
            .expect("registry lock")
            .values()
            .cloned()
            .collect()
    }

    /// One endpoint by name.
    pub fn get(&self, name: &str) -> Option<Arc<Endpoint>> {
        self.endpoints
            .read()
            .expect("registry lock")
            .get(name)
            .cloned()
    }

    /// Brings the endpoints in line with the `Webhook`s listed (the reflector's
    /// whole store). A `Webhook` deleted and re-created under the same name
    /// gets a new endpoint.
    pub fn sync(&self, webhooks: &[Arc<Webhook>]) -> SyncReport {
        let mut report = SyncReport::default();
        let mut endpoints = self.endpoints.write().expect("registry lock");
        let mut seen = Vec::with_capacity(webhooks.len());
        for wh in webhooks
            .iter()
            .filter(|w| w.metadata.deletion_timestamp.is_none())
        {
            let name: Arc<str> = Arc::from(wh.name_any());
            seen.push(name.clone());
            let uid = wh.uid().unwrap_or_default();
            let endpoint = match endpoints.get(&name) {
                Some(e) if e.uid == uid => {
                    let changed_version = e.object().resource_version() != wh.resource_version();
                    if changed_version && e.update(wh.clone(), &self.defaults) {
                        report.secrets_to_load += 1;
                    }
                    e.clone()
                }
                _ => {
                    let e = Arc::new(Endpoint::new(wh.clone(), &self.defaults));
                    endpoints.insert(name.clone(), e.clone());
                    report.secrets_to_load += 1;
                    e
                }
            };
            if let Some(nonce) = endpoint.take_test() {
                report.tests.push((endpoint, nonce));
            }
        }
        endpoints.retain(|name, _| {
            let keep = seen.contains(name);
            if !keep {
                report.removed.push(name.clone());
            }
            keep
        });
        report
    }

    /// How many endpoints there are.
    pub fn len(&self) -> usize {
        self.endpoints.read().expect("registry lock").len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Deliveries held in memory, over all endpoints.
    pub fn in_memory(&self) -> usize {
        self.snapshot()
            .iter()
            .map(|e| e.in_memory.load(AtomicOrdering::Relaxed))
            .sum()
    }
}

#[cfg(test)]
#[path = "endpoints_tests.rs"]
mod tests;

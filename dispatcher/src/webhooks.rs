//! The tenant's `Webhook`s as the pipeline sees them. A reflector on the tenant
//! namespace feeds [`Registry::sync`], which keeps one long-lived [`Endpoint`]
//! per `Webhook`: its [`Settings`] (rebuilt from the spec on every change),
//! its signing keys (filled in by [`crate::secrets`]), and the state that must
//! outlive a spec change — in-flight limit, rate limiter, circuit breaker,
//! status counters, the 410 Gone switch. The pipeline asks
//! [`Registry::snapshot`] which endpoints an event goes to and
//! [`Endpoint::availability`] whether they can take it now.
//!
//! Decisions:
//! - A `Webhook` disabled after 410 Gone stays disabled while
//!   `status.disabled.generation` equals `metadata.generation` and the
//!   `hookline.dev/enable` annotation keeps the value it had when it was
//!   disabled (after a dispatcher restart: the value seen at start).
//! - A test send (`hookline.dev/test: <nonce>`) is started once per nonce not
//!   yet answered in `status.lastTest.nonce`.
//! - Defaults: timeout 30 s, `PerKey`, 32 in flight, no rate limit, and the
//!   retry schedule of [`crate::retry::RetryPolicy::default`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hookline_crds::{Backoff as CrdBackoff, Ordering, Webhook, annotations, naming};
use jiff::Timestamp;
use kube::ResourceExt;
use reqwest::header::{HeaderName, HeaderValue};
use tokio::sync::Semaphore;
use url::Url;

use crate::circuit::{CircuitBreaker, CircuitConfig, CircuitState, Rejected};
use crate::drain::DrainMeter;
use crate::matching::Matcher;
use crate::ratelimit::{RateLimiter, default_burst};
use crate::retry::{Backoff, RetryPolicy};
use crate::secrets::SigningKeys;
use crate::signing::Secret;
use crate::status::Stats;

/// Default time allowed for one attempt.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default attempts in flight per `Webhook`.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 32;
/// Shortest time a delivery to a paused `Webhook` is parked.
pub const MIN_PARK: Duration = Duration::from_secs(10);

/// A `Webhook`'s delivery settings, from one generation of its spec.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where to POST.
    pub url: Url,
    /// Which event types it takes.
    pub matcher: Matcher,
    /// Its retry schedule.
    pub policy: RetryPolicy,
    /// Time allowed for one attempt.
    pub timeout: Duration,
    /// `ordering: PerKey`.
    pub per_key: bool,
    /// Attempts in flight at once.
    pub max_in_flight: usize,
    /// Attempts per second, if limited.
    pub rate_per_second: Option<f64>,
    /// Static headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// `spec.paused`.
    pub paused: bool,
    /// The signing Secret's name.
    pub secret_name: String,
}

fn duration(field: &str, value: Option<&String>, default: Duration) -> Result<Duration, String> {
    value.map_or(Ok(default), |v| {
        crate::duration::parse(v).map_err(|e| format!("{field}: {e}"))
    })
}

static DEFAULT_RETRY: std::sync::OnceLock<RetryPolicy> = std::sync::OnceLock::new();

/// Sets, once at start-up, the retry policy Webhooks fall back to for fields they leave out
/// (the platform's defaults); without it, [`RetryPolicy::default`] applies.
pub fn set_default_retry(policy: RetryPolicy) {
    let _ = DEFAULT_RETRY.set(policy);
}

impl Settings {
    /// Reads a `Webhook`'s spec.
    ///
    /// # Errors
    /// A message for what the API server's schema should have refused: a URL
    /// that does not parse, a bad pattern, duration or header, a retry policy
    /// that does not validate.
    pub fn from_webhook(wh: &Webhook) -> Result<Settings, String> {
        let spec = &wh.spec;
        let url = Url::parse(&spec.url).map_err(|e| format!("url: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err("url must be http(s) with a host".to_owned());
        }
        let matcher = Matcher::new(&spec.event_types).map_err(|e| e.to_string())?;
        let delivery = spec.delivery.clone().unwrap_or_default();
        let retry = delivery.retry.clone().unwrap_or_default();
        let defaults = DEFAULT_RETRY.get().cloned().unwrap_or_default();
        let policy = RetryPolicy {
            max_attempts: retry
                .max_attempts
                .map_or(Ok(defaults.max_attempts), u32::try_from)
                .map_err(|_| "retry.maxAttempts must be positive".to_owned())?,
            initial_delay: duration(
                "retry.initialDelay",
                retry.initial_delay.as_ref(),
                defaults.initial_delay,
            )?,
            max_delay: duration(
                "retry.maxDelay",
                retry.max_delay.as_ref(),
                defaults.max_delay,
            )?,
            backoff: match retry.backoff {
                None | Some(CrdBackoff::Exponential) => Backoff::Exponential,
                Some(CrdBackoff::Linear) => Backoff::Linear,
                Some(CrdBackoff::Constant) => Backoff::Constant,
            },
            ..defaults
        };
        policy.validate().map_err(|e| format!("retry: {e}"))?;
        let timeout = duration("timeout", delivery.timeout.as_ref(), DEFAULT_TIMEOUT)?;
        let max_in_flight = delivery
            .max_in_flight
            .map_or(Ok(DEFAULT_MAX_IN_FLIGHT), usize::try_from)
            .ok()
            .filter(|n| *n > 0)
            .ok_or("maxInFlight must be positive")?;
        let rate_per_second = match &delivery.rate_limit {
            Some(r) if r.per_second > 0 => Some(f64::from(r.per_second)),
            Some(_) => return Err("rateLimit.perSecond must be positive".to_owned()),
            None => None,
        };
        let headers = spec
            .headers
            .iter()
            .map(|(k, v)| {
                let name = HeaderName::from_bytes(k.as_bytes())
                    .map_err(|_| format!("header name {k:?}"))?;
                let value =
                    HeaderValue::from_str(v).map_err(|_| format!("value of header {k:?}"))?;
                Ok((name, value))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Settings {
            url,
            matcher,
            policy,
            timeout,
            per_key: delivery.ordering.unwrap_or(Ordering::PerKey) == Ordering::PerKey,
            max_in_flight,
            rate_per_second,
            headers,
            paused: spec.paused,
            secret_name: spec.secret_ref.as_ref().map_or_else(
                || naming::signing_secret(&wh.name_any()),
                |r| r.name.clone(),
            ),
        })
    }
}

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

/// Whether an endpoint can take a delivery now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    /// Yes.
    Ready,
    /// `spec.paused`: keep deliveries for later.
    Paused,
    /// No signing keys yet: keep deliveries for later.
    NoKeys,
    /// Disabled after 410 Gone: deliveries stop.
    Disabled,
    /// The spec cannot be used: deliveries stop.
    Invalid,
}

fn enable_token(wh: &Webhook) -> Option<String> {
    wh.annotations().get(annotations::ENABLE).cloned()
}

/// One `Webhook` as the pipeline sees it.
pub struct Endpoint {
    /// The `Webhook`'s name.
    pub name: Arc<str>,
    uid: String,
    object: RwLock<Arc<Webhook>>,
    settings: RwLock<Result<Arc<Settings>, String>>,
    keys: RwLock<Option<SigningKeys>>,
    semaphore: RwLock<Arc<Semaphore>>,
    limiter: Mutex<Option<RateLimiter>>,
    breaker: Mutex<CircuitBreaker>,
    disabled: Mutex<Option<Disabled>>,
    paused_since: Mutex<Option<Instant>>,
    test_started: Mutex<Option<String>>,
    /// Deliveries of this endpoint held in memory (running, waiting, parked).
    pub in_memory: AtomicUsize,
    /// What the status writer reports.
    pub stats: Mutex<Stats>,
    /// How fast its attempts finish.
    drain: Mutex<DrainMeter>,
}

impl Endpoint {
    fn new(wh: Arc<Webhook>) -> Endpoint {
        let settings = Settings::from_webhook(&wh).map(Arc::new);
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
            object: RwLock::new(wh),
            settings: RwLock::new(settings),
            keys: RwLock::new(None),
            semaphore: RwLock::new(Arc::new(Semaphore::new(max))),
            limiter: Mutex::new(rate.and_then(new_limiter)),
            breaker: Mutex::new(CircuitBreaker::new(CircuitConfig::default())),
            paused_since: Mutex::new(paused_since),
            disabled: Mutex::new(disabled),
            test_started: Mutex::new(None),
            in_memory: AtomicUsize::new(0),
            stats: Mutex::new(stats),
            drain: Mutex::new(DrainMeter::new(Instant::now())),
        }
    }

    /// Takes a newer version of the object. Returns whether the signing
    /// Secret must be read again: another name, or a new key generation
    /// reported by the controller in `status.secret` (a rotation).
    fn update(&self, wh: Arc<Webhook>) -> bool {
        let old_secret = self.secret_name();
        let secret_status = |w: &Webhook| w.status.as_ref().and_then(|s| s.secret.clone());
        let rotated = secret_status(&self.object()) != secret_status(&wh);
        let settings = Settings::from_webhook(&wh).map(Arc::new);
        if let Ok(new) = &settings {
            let old = self.settings().ok();
            if old.as_ref().map(|o| o.max_in_flight) != Some(new.max_in_flight) {
                *self.semaphore.write().expect("semaphore lock") =
                    Arc::new(Semaphore::new(new.max_in_flight));
            }
            if old.as_ref().map(|o| o.rate_per_second) != Some(new.rate_per_second) {
                *self.limiter.lock().expect("limiter lock") =
                    new.rate_per_second.and_then(new_limiter);
            }
        }
        {
            let mut disabled = self.disabled.lock().expect("disabled lock");
            let enabled_again = disabled.as_ref().is_some_and(|d| {
                Some(d.generation) != wh.metadata.generation || d.enable_token != enable_token(&wh)
            });
            if enabled_again {
                tracing::info!(webhook = %self.name, "re-enabled (spec or enable annotation changed)");
                *disabled = None;
                self.stats.lock().expect("stats lock").mark();
            }
        }
        {
            let mut since = self.paused_since.lock().expect("paused lock");
            match (wh.spec.paused, since.is_some()) {
                (true, false) => *since = Some(Instant::now()),
                (false, true) => *since = None,
                _ => {}
            }
        }
        *self.settings.write().expect("settings lock") = settings;
        *self.object.write().expect("object lock") = wh;
        rotated || self.secret_name() != old_secret
    }

    /// The latest object.
    pub fn object(&self) -> Arc<Webhook> {
        self.object.read().expect("object lock").clone()
    }

    /// The settings of the latest generation, or why they cannot be used.
    pub fn settings(&self) -> Result<Arc<Settings>, String> {
        self.settings.read().expect("settings lock").clone()
    }

    /// The signing Secret's name.
    pub fn secret_name(&self) -> String {
        match self.settings() {
            Ok(s) => s.secret_name.clone(),
            Err(_) => {
                let wh = self.object();
                wh.spec
                    .secret_ref
                    .as_ref()
                    .map_or_else(|| naming::signing_secret(&self.name), |r| r.name.clone())
            }
        }
    }

    /// Whether signing keys are loaded.
    pub fn has_keys(&self) -> bool {
        self.keys.read().expect("keys lock").is_some()
    }

    /// Replaces the signing keys.
    pub fn set_keys(&self, keys: Option<SigningKeys>) {
        *self.keys.write().expect("keys lock") = keys;
    }

    /// The keys to sign with at `now`; empty when none are loaded.
    pub fn keys_at(&self, now: Timestamp) -> Vec<Secret> {
        self.keys
            .read()
            .expect("keys lock")
            .as_ref()
            .map(|k| k.at(now))
            .unwrap_or_default()
    }

    /// Whether it can take a delivery now.
    pub fn availability(&self) -> Availability {
        match self.settings() {
            Err(_) => Availability::Invalid,
            Ok(_) if self.is_disabled() => Availability::Disabled,
            Ok(s) if s.paused => Availability::Paused,
            Ok(_) if !self.has_keys() => Availability::NoKeys,
            Ok(_) => Availability::Ready,
        }
    }

    /// How long to park a delivery while paused: as long as it has been
    /// paused so far (since this dispatcher saw it paused), within
    /// [`MIN_PARK`] and `longest`.
    pub fn park_delay(&self, longest: Duration) -> Duration {
        let paused_for = self
            .paused_since
            .lock()
            .expect("paused lock")
            .map_or(Duration::ZERO, |at| at.elapsed());
        paused_for.clamp(MIN_PARK, longest.max(MIN_PARK))
    }

    /// The in-flight limit.
    pub fn semaphore(&self) -> Arc<Semaphore> {
        self.semaphore.read().expect("semaphore lock").clone()
    }

    /// Takes a rate-limit token, or says how long to wait for one.
    ///
    /// # Errors
    /// The wait, when no token is available.
    pub fn take_token(&self, now: Instant) -> Result<(), Duration> {
        match self.limiter.lock().expect("limiter lock").as_mut() {
            Some(limiter) => limiter.try_acquire(now),
            None => Ok(()),
        }
    }

    /// Asks the circuit breaker for an attempt.
    ///
    /// # Errors
    /// When the circuit is open or its probes are out.
    pub fn circuit_acquire(&self, now: Instant) -> Result<(), Rejected> {
        self.breaker.lock().expect("breaker lock").try_acquire(now)
    }

    /// Notes that an attempt finished, whatever its outcome.
    pub fn attempt_finished(&self, now: Instant) {
        self.drain.lock().expect("drain lock").record(now);
    }

    /// Whether `held` jobs would wait longer in memory than `postpone` at the
    /// rate this endpoint's attempts finish (see [`DrainMeter`]).
    pub fn drains_slower_than(&self, held: usize, postpone: Duration, now: Instant) -> bool {
        self.drain
            .lock()
            .expect("drain lock")
            .slower_than(held, postpone, now)
    }

    /// Reports an attempt's result to the breaker; returns the state after it.
    pub fn circuit_record(&self, now: Instant, success: bool) -> CircuitState {
        let mut breaker = self.breaker.lock().expect("breaker lock");
        breaker.record(now, success);
        breaker.state()
    }

    /// The circuit state.
    pub fn circuit_state(&self) -> CircuitState {
        self.breaker.lock().expect("breaker lock").state()
    }

    /// Whether deliveries are disabled (410 Gone).
    pub fn is_disabled(&self) -> bool {
        self.disabled.lock().expect("disabled lock").is_some()
    }

    /// The disabled state, for the status.
    pub fn disabled(&self) -> Option<Disabled> {
        self.disabled.lock().expect("disabled lock").clone()
    }

    /// Disables deliveries after 410 Gone. Returns false when already disabled.
    pub fn disable(&self, now: Timestamp) -> bool {
        let wh = self.object();
        let mut disabled = self.disabled.lock().expect("disabled lock");
        if disabled.is_some() {
            return false;
        }
        *disabled = Some(Disabled {
            since: now,
            reason: hookline_crds::conditions::reasons::GONE.to_owned(),
            generation: wh.metadata.generation.unwrap_or_default(),
            enable_token: enable_token(&wh),
        });
        self.stats.lock().expect("stats lock").mark();
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
        let mut started = self.test_started.lock().expect("test lock");
        if nonce.is_empty()
            || answered == Some(nonce.as_str())
            || started.as_deref() == Some(nonce.as_str())
        {
            return None;
        }
        *started = Some(nonce.clone());
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
#[derive(Default)]
pub struct Registry {
    endpoints: RwLock<HashMap<Arc<str>, Arc<Endpoint>>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
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
                    if changed_version && e.update(wh.clone()) {
                        report.secrets_to_load += 1;
                    }
                    e.clone()
                }
                _ => {
                    let e = Arc::new(Endpoint::new(wh.clone()));
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
mod tests;

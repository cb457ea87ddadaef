//! A `Webhook`'s delivery settings, read from one generation of its spec: URL, matcher, retry
//! policy, timeout, ordering, in-flight and rate limits, static headers, pause and the signing
//! Secret's name. What the API server's schema should have refused comes out as a
//! [`SpecError`] naming the field; the endpoint keeps it and reports it.
//!
//! Defaults: timeout 30 s, `PerKey`, 32 in flight, no rate limit, and for retry fields left
//! out the policy passed in (the platform's defaults over
//! [`hookline_core::retry::RetryPolicy::default`]).

use std::time::Duration;

use hookline_core::matching::Matcher;
use hookline_core::naming;
use hookline_core::retry::{Backoff, RetryPolicy};
use hookline_crds::{Backoff as CrdBackoff, Ordering, Webhook};
use kube::ResourceExt;
use reqwest::header::{HeaderName, HeaderValue};
use url::Url;

use crate::error::SpecError;

/// Default time allowed for one attempt.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default attempts in flight per `Webhook`.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 32;

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

fn duration(
    field: &'static str,
    value: Option<&String>,
    default: Duration,
) -> Result<Duration, SpecError> {
    value.map_or(Ok(default), |v| {
        hookline_core::duration::parse(v).map_err(|e| SpecError::new(field, e))
    })
}

impl Settings {
    /// Reads a `Webhook`'s spec.
    ///
    /// # Errors
    /// What the API server's schema should have refused: a URL that does not parse, a bad
    /// pattern, duration or header, a retry policy that does not validate.
    pub fn from_webhook(wh: &Webhook, defaults: &RetryPolicy) -> Result<Settings, SpecError> {
        let spec = &wh.spec;
        let url = Url::parse(&spec.url).map_err(|e| SpecError::new("url", e))?;
        hookline_core::ssrf::check_url(&url, true, None).map_err(|e| SpecError::new("url", e))?;
        let matcher =
            Matcher::new(&spec.event_types).map_err(|e| SpecError::new("eventTypes", e))?;
        let delivery = spec.delivery.clone().unwrap_or_default();
        let retry = delivery.retry.clone().unwrap_or_default();
        let policy = RetryPolicy {
            max_attempts: retry
                .max_attempts
                .map_or(Ok(defaults.max_attempts), u32::try_from)
                .map_err(|_| SpecError::new("delivery.retry.maxAttempts", "must be positive"))?,
            initial_delay: duration(
                "delivery.retry.initialDelay",
                retry.initial_delay.as_ref(),
                defaults.initial_delay,
            )?,
            max_delay: duration(
                "delivery.retry.maxDelay",
                retry.max_delay.as_ref(),
                defaults.max_delay,
            )?,
            backoff: match retry.backoff {
                None | Some(CrdBackoff::Exponential) => Backoff::Exponential,
                Some(CrdBackoff::Linear) => Backoff::Linear,
                Some(CrdBackoff::Constant) => Backoff::Constant,
            },
            ..defaults.clone()
        };
        policy
            .validate()
            .map_err(|e| SpecError::new("delivery.retry", e))?;
        let timeout = duration(
            "delivery.timeout",
            delivery.timeout.as_ref(),
            DEFAULT_TIMEOUT,
        )?;
        let max_in_flight = delivery
            .max_in_flight
            .map_or(Ok(DEFAULT_MAX_IN_FLIGHT), usize::try_from)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| SpecError::new("delivery.maxInFlight", "must be positive"))?;
        let rate_per_second = match &delivery.rate_limit {
            Some(r) if r.per_second > 0 => Some(f64::from(r.per_second)),
            Some(_) => {
                return Err(SpecError::new(
                    "delivery.rateLimit.perSecond",
                    "must be positive",
                ));
            }
            None => None,
        };
        let headers = spec
            .headers
            .iter()
            .map(|(k, v)| {
                let name = HeaderName::from_bytes(k.as_bytes())
                    .map_err(|_| SpecError::new("headers", format!("header name {k:?}")))?;
                let value = HeaderValue::from_str(v)
                    .map_err(|_| SpecError::new("headers", format!("value of header {k:?}")))?;
                Ok((name, value))
            })
            .collect::<Result<Vec<_>, SpecError>>()?;
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

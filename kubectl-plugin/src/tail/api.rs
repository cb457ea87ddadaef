//! The tenant API (`hookline-api`) as `tail` reads it: pages of
//! `GET /api/v1/tenants/{tenant}/deliveries` (filters, `since`, cursor, limit) and, for the
//! latency of a delivery's last request, `GET …/deliveries/{eventId}`. Every request carries
//! the caller's bearer token; the API's RFC 9457 problems become errors that say what is
//! missing.

use std::time::Duration;

use jiff::Timestamp;
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::tail::log::Delivery;

/// Largest page the API serves.
pub const PAGE: u32 = 500;

/// The query of one page.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Only this `Webhook`.
    pub webhook: Option<String>,
    /// Only this status (the API's name).
    pub status: Option<&'static str>,
    /// Only this event type.
    pub event_type: Option<String>,
    /// First attempt at or after.
    pub since: Option<Timestamp>,
}

/// A page of the delivery log, newest first.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Page {
    /// The deliveries.
    pub items: Vec<Delivery>,
    /// The cursor of the next page.
    #[serde(default)]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventDeliveries {
    deliveries: Vec<Detail>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Detail {
    webhook: String,
    #[serde(default)]
    attempt_log: Vec<Attempt>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Attempt {
    sent: bool,
    latency_ms: u64,
}

#[derive(Debug, Default, Deserialize)]
struct Problem {
    #[serde(default)]
    title: String,
    #[serde(default)]
    detail: Option<String>,
    #[serde(default)]
    missing: Option<serde_json::Value>,
}

/// The latency of the last request made at `webhook` in `event`.
fn last_latency(event: &EventDeliveries, webhook: &str) -> Option<u64> {
    event
        .deliveries
        .iter()
        .find(|d| d.webhook == webhook)
        .and_then(|d| d.attempt_log.iter().rev().find(|a| a.sent))
        .map(|a| a.latency_ms)
}

/// A client of one tenant's delivery log.
pub struct TenantApi {
    http: reqwest::Client,
    base: Url,
    tenant: String,
    token: String,
}

impl TenantApi {
    /// A client of `base` (the API's root URL, with any path prefix an Ingress adds).
    ///
    /// # Errors
    /// [`Error::Usage`] for a URL that is not `http(s)://`; [`Error::Config`] when the TLS stack
    /// cannot be set up.
    pub fn new(base: &str, tenant: &str, token: String) -> Result<TenantApi> {
        let base: Url = base
            .parse()
            .ok()
            .filter(|u: &Url| matches!(u.scheme(), "http" | "https") && u.has_host())
            .ok_or_else(|| {
                Error::Usage(format!(
                    "--api-url {base:?} is not an http(s):// URL such as http://127.0.0.1:8080"
                ))
            })?;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Error::Config(format!("building the HTTP client: {e}")))?;
        Ok(TenantApi {
            http,
            base,
            tenant: tenant.to_owned(),
            token,
        })
    }

    fn url(&self, rest: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty()
                .extend(["api", "v1", "tenants", &self.tenant, "deliveries"])
                .extend(rest);
        }
        url
    }

    /// One page of deliveries matching `q`, after `cursor`.
    ///
    /// # Errors
    /// As [`TenantApi::get`].
    pub async fn page(&self, q: &Query, cursor: Option<&str>) -> Result<Page> {
        let mut url = self.url(&[]);
        {
            let mut pairs = url.query_pairs_mut();
            pairs.append_pair("limit", &PAGE.to_string());
            if let Some(w) = &q.webhook {
                pairs.append_pair("webhook", w);
            }
            if let Some(s) = q.status {
                pairs.append_pair("status", s);
            }
            if let Some(t) = &q.event_type {
                pairs.append_pair("eventType", t);
            }
            if let Some(s) = q.since {
                pairs.append_pair("since", &s.to_string());
            }
            if let Some(c) = cursor {
                pairs.append_pair("cursor", c);
            }
        }
        self.get(url).await
    }

    /// The latency of the last request made for `event_id` at `webhook`, if one was made and the
    /// event is still in the log.
    ///
    /// # Errors
    /// As [`TenantApi::get`], except that an event no longer in the log is `None`.
    pub async fn latency(&self, event_id: &str, webhook: &str) -> Result<Option<u64>> {
        let event: EventDeliveries = match self.get(self.url(&[event_id])).await {
            Ok(e) => e,
            Err(Error::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(last_latency(&event, webhook))
    }

    /// `GET url` as the caller.
    ///
    /// # Errors
    /// [`Error::Refused`] when the API cannot be reached or refuses (with the problem's detail
    /// and the missing permission); [`Error::Config`] for 401 (the token); [`Error::NotFound`]
    /// for 404.
    async fn get<T: DeserializeOwned>(&self, url: Url) -> Result<T> {
        let res = self
            .http
            .get(url.clone())
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| {
                Error::Refused(format!(
                    "cannot reach the tenant API at {}: {e} (check --api-url)",
                    self.base
                ))
            })?;
        let status = res.status();
        let body = res
            .bytes()
            .await
            .map_err(|e| Error::Refused(format!("reading the tenant API's answer: {e}")))?;
        if status.is_success() {
            return serde_json::from_slice(&body).map_err(|e| {
                Error::Refused(format!(
                    "the tenant API's answer to GET {} is not what this plugin understands: {e}",
                    url.path()
                ))
            });
        }
        let p: Problem = serde_json::from_slice(&body).unwrap_or_default();
        let text = p.detail.unwrap_or(p.title);
        Err(match status {
            StatusCode::UNAUTHORIZED => Error::Config(format!(
                "the tenant API did not accept the token (401 {text}); pass a valid one with --token or HOOKLINE_TOKEN"
            )),
            StatusCode::NOT_FOUND => Error::NotFound(text),
            StatusCode::FORBIDDEN => Error::Refused(format!(
                "the tenant API refused (403): {text}{}",
                p.missing
                    .map(|m| format!("; missing {m}"))
                    .unwrap_or_default()
            )),
            _ => Error::Refused(format!("the tenant API answered {status}: {text}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_a_path_prefix_and_encode_the_event_id() {
        let api = TenantApi::new("https://hooks.example/hookline/", "acme", String::new()).unwrap();
        assert_eq!(
            api.url(&["evt/1?x"]).as_str(),
            "https://hooks.example/hookline/api/v1/tenants/acme/deliveries/evt%2F1%3Fx"
        );
        let api = TenantApi::new("http://127.0.0.1:8080", "acme", String::new()).unwrap();
        assert_eq!(
            api.url(&[]).as_str(),
            "http://127.0.0.1:8080/api/v1/tenants/acme/deliveries"
        );
        assert!(matches!(
            TenantApi::new("127.0.0.1:8080", "acme", String::new()),
            Err(Error::Usage(_))
        ));
    }

    #[test]
    fn the_latency_is_the_last_sent_attempts_at_that_webhook() {
        let e: EventDeliveries = serde_json::from_value(serde_json::json!({"eventId": "e", "deliveries": [
            {"webhook": "other", "attemptLog": [{"sent": true, "latencyMs": 1}]},
            {"webhook": "orders", "attemptLog": [{"sent": true, "latencyMs": 30}, {"sent": false, "latencyMs": 0}]}
        ]}))
        .unwrap();
        assert_eq!(last_latency(&e, "orders"), Some(30));
        assert_eq!(last_latency(&e, "gone"), None);
    }
}

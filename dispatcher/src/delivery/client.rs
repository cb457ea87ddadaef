//! One HTTP attempt: an event's payload, its signing keys and the endpoint's
//! settings flow into [`Deliverer::send`], which signs, POSTs and reads the
//! answer into a [`hookline_core::retry::Outcome`] plus a message fit for status and
//! logs (never the URL, a header value or a key).
//!
//! # On the wire
//! `POST` with the Standard Webhooks headers `webhook-id`,
//! `webhook-timestamp` (this attempt's Unix seconds) and `webhook-signature`,
//! plus `content-type: application/json`, `user-agent: Hookline/<version>`
//! and `hookline-attempt: <n>` (1 for the first attempt; outside the
//! `webhook-*` namespace, which belongs to the standard), and on a replayed
//! delivery `hookline-replay: <WebhookReplay name>`. Static headers from
//! the spec come first and cannot override these.
//!
//! # The client
//! rustls; no proxy (through a proxy only the proxy's name would be vetted);
//! redirects are not followed (3xx is a permanent failure); every address is
//! vetted at connect time by [`crate::delivery::resolver::PolicyResolver`], and an IP
//! literal host before sending; keep-alive pooling; the spec's timeout covers
//! the whole attempt, body included; at most [`MAX_RESPONSE_BYTES`] of the
//! response body are read, then it is dropped unread.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use jiff::Timestamp;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER, USER_AGENT};
use url::Url;

use crate::delivery::resolver::{PolicyResolver, find_resolve_error};
use crate::error::{Error, Result};
use hookline_core::retry::{Outcome, TransportError, parse_retry_after};
use hookline_core::signing::{self, Secret};
use hookline_core::ssrf::{AddressPolicy, ResolveError, UrlRefusal, check_url};

/// Most bytes of a response body read (and discarded).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// The attempt number header.
pub const ATTEMPT_HEADER: &str = "hookline-attempt";
/// The header marking a replayed delivery.
pub const REPLAY_HEADER: &str = hookline_core::replay::HTTP_HEADER;
/// `user-agent` of every delivery.
pub const USER_AGENT_VALUE: &str = concat!("Hookline/", env!("CARGO_PKG_VERSION"));

/// One attempt to make.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Where to POST.
    pub url: &'a Url,
    /// Static headers of the spec.
    pub headers: &'a [(HeaderName, HeaderValue)],
    /// The event id: `webhook-id`.
    pub event_id: &'a str,
    /// The body.
    pub payload: &'a Bytes,
    /// Keys to sign with; must not be empty.
    pub keys: &'a [Secret],
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Time allowed.
    pub timeout: Duration,
    /// The replay's name, for a replayed delivery (header [`hookline_core::replay::HTTP_HEADER`]).
    pub replay: Option<&'a str>,
}

/// What an attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The outcome, for [`hookline_core::retry::RetryPolicy::decide`].
    pub outcome: Outcome,
    /// From the start of the attempt to the end of the bounded body read.
    pub latency: Duration,
    /// What happened, for a person: `HTTP 503`, `connection refused`, ….
    pub message: String,
}

impl Attempt {
    /// The HTTP status, when the receiver answered.
    pub fn status(&self) -> Option<u16> {
        match self.outcome {
            Outcome::Response { status, .. } => Some(status),
            Outcome::Transport(_) => None,
        }
    }
}

/// The headers of one attempt, signed over `payload` at `timestamp`.
///
/// # Errors
/// [`TransportError::InvalidRequest`] if the event id cannot be a header value
/// (the envelope parser never lets such an id through).
pub fn headers(
    static_headers: &[(HeaderName, HeaderValue)],
    event_id: &str,
    timestamp: i64,
    payload: &[u8],
    keys: &[Secret],
    attempt: u32,
    replay: Option<&str>,
) -> Result<HeaderMap, TransportError> {
    let mut map = HeaderMap::new();
    for (name, value) in static_headers {
        map.insert(name.clone(), value.clone());
    }
    let value = |s: String| HeaderValue::from_str(&s).map_err(|_| TransportError::InvalidRequest);
    map.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    map.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
    map.insert("webhook-id", value(event_id.to_owned())?);
    map.insert("webhook-timestamp", value(timestamp.to_string())?);
    map.insert(
        "webhook-signature",
        value(signing::sign(keys, event_id, timestamp, payload))?,
    );
    map.insert(ATTEMPT_HEADER, value(attempt.to_string())?);
    if let Some(name) = replay {
        map.insert(REPLAY_HEADER, value(name.to_owned())?);
    }
    Ok(map)
}

/// The delivery HTTP client.
#[derive(Clone)]
pub struct Deliverer {
    client: reqwest::Client,
    policy: Arc<AddressPolicy>,
    allow_http: bool,
}

impl Deliverer {
    /// A client applying `policy`; `allow_http` permits `http://` URLs.
    ///
    /// # Errors
    /// When the TLS stack cannot be set up.
    pub fn new(policy: AddressPolicy, allow_http: bool) -> Result<Deliverer> {
        crate::install_crypto_provider();
        let policy = Arc::new(policy);
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(PolicyResolver::new(policy.clone()))
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .tcp_keepalive(Duration::from_secs(30))
            .build()
            .map_err(|e| Error::HttpClient(e.without_url()))?;
        Ok(Deliverer {
            client,
            policy,
            allow_http,
        })
    }

    /// Makes one attempt.
    pub async fn send(&self, req: Request<'_>) -> Attempt {
        let started = Instant::now();
        let outcome = self.try_send(req).await;
        let latency = started.elapsed();
        let (outcome, message) = match outcome {
            Ok((status, retry_after)) => (
                Outcome::Response {
                    status,
                    retry_after,
                },
                format!("HTTP {status}"),
            ),
            Err((kind, message)) => (Outcome::Transport(kind), message),
        };
        Attempt {
            outcome,
            latency,
            message,
        }
    }

    async fn try_send(
        &self,
        req: Request<'_>,
    ) -> Result<(u16, Option<Duration>), (TransportError, String)> {
        let refuse = |m: &str| (TransportError::InvalidRequest, m.to_owned());
        match check_url(req.url, self.allow_http, Some(&self.policy)) {
            Ok(()) => {}
            Err(UrlRefusal::Address(refused)) => {
                return Err((TransportError::AddressRefused, refused.to_string()));
            }
            Err(other) => return Err(refuse(&other.to_string())),
        }
        if req.keys.is_empty() {
            return Err(refuse("no signing key"));
        }
        let now = Timestamp::now();
        let headers = headers(
            req.headers,
            req.event_id,
            now.as_second(),
            req.payload,
            req.keys,
            req.attempt,
            req.replay,
        )
        .map_err(|kind| (kind, "the event id cannot be sent as a header".to_owned()))?;
        let mut response = self
            .client
            .post(req.url.clone())
            .headers(headers)
            .body(req.payload.clone())
            .timeout(req.timeout)
            .send()
            .await
            .map_err(|e| classify(&e, req.timeout))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, now));
        let mut read = 0usize;
        while read < MAX_RESPONSE_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => read += chunk.len(),
                // The receiver answered; a body that breaks off or times out
                // does not change what it answered.
                Ok(None) | Err(_) => break,
            }
        }
        Ok((status, retry_after))
    }
}

/// Maps a reqwest error to a transport failure and a message without the URL.
fn classify(error: &reqwest::Error, timeout: Duration) -> (TransportError, String) {
    if let Some(resolve) = find_resolve_error(error) {
        return match resolve {
            ResolveError::Refused { refused, .. } => (
                TransportError::AddressRefused,
                match refused.first() {
                    Some(r) => format!(
                        "every address of the host is refused by the platform's address policy, e.g. {r}"
                    ),
                    None => "the host's addresses are refused by the platform's address policy"
                        .to_owned(),
                },
            ),
            ResolveError::NoAddresses(_) => (
                TransportError::Dns,
                "the host name resolved to no address".to_owned(),
            ),
        };
    }
    if error.is_timeout() {
        return (
            TransportError::Timeout,
            format!(
                "no complete answer within {}",
                hookline_core::duration::format(timeout)
            ),
        );
    }
    if error.is_builder() {
        return (
            TransportError::InvalidRequest,
            "the request could not be built".to_owned(),
        );
    }
    let detail = root_cause(error);
    let lower = detail.to_ascii_lowercase();
    if lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake") {
        (TransportError::Tls, format!("TLS: {detail}"))
    } else if lower.contains("lookup")
        || lower.contains("resolve")
        || lower.contains("name or service")
    {
        (TransportError::Dns, format!("DNS: {detail}"))
    } else if error.is_connect() {
        (TransportError::Connect, format!("cannot connect: {detail}"))
    } else {
        (
            TransportError::Network,
            format!("connection failed: {detail}"),
        )
    }
}

/// The innermost cause's message (an io or TLS error: no URL in it).
fn root_cause(error: &(dyn StdError + 'static)) -> String {
    let mut current = error;
    while let Some(next) = current.source() {
        current = next;
    }
    let text = current.to_string();
    if text.contains("://") {
        "request failed".to_owned()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_carry_a_signature_that_verifies_and_cannot_be_overridden() {
        let key = Secret::generate();
        let statics = vec![
            (
                HeaderName::from_static("x-team"),
                HeaderValue::from_static("risk"),
            ),
            (
                HeaderName::from_static("hookline-attempt"),
                HeaderValue::from_static("99"),
            ),
        ];
        let body = br#"{"type":"a","timestamp":"2026-01-01T00:00:00Z","data":{}}"#;
        let h = headers(
            &statics,
            "evt_1",
            1_700_000_000,
            body,
            std::slice::from_ref(&key),
            2,
            None,
        )
        .unwrap();
        assert_eq!(h["x-team"], "risk");
        assert!(h.get(REPLAY_HEADER).is_none());
        assert_eq!(h[ATTEMPT_HEADER], "2");
        assert_eq!(h["webhook-id"], "evt_1");
        assert_eq!(h["webhook-timestamp"], "1700000000");
        assert_eq!(h[CONTENT_TYPE], "application/json");
        assert!(h[USER_AGENT].to_str().unwrap().starts_with("Hookline/"));
        let sig = h["webhook-signature"].to_str().unwrap();
        signing::verify(&[key], "evt_1", 1_700_000_000, body, sig).unwrap();
    }

    #[test]
    fn two_keys_during_a_rotation_give_two_signatures() {
        let keys = [Secret::generate(), Secret::generate()];
        let h = headers(&[], "e", 1, b"{}", &keys, 1, Some("after-outage")).unwrap();
        assert_eq!(
            h["webhook-signature"].to_str().unwrap().split(' ').count(),
            2
        );
        assert_eq!(h[REPLAY_HEADER], "after-outage");
    }

    fn loopback_deliverer(allow_http: bool) -> Deliverer {
        Deliverer::new(
            AddressPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]),
            allow_http,
        )
        .unwrap()
    }

    /// One attempt with a fresh key and an empty body, allowed a second.
    async fn send_to(d: &Deliverer, url: &str) -> Attempt {
        let url = Url::parse(url).unwrap();
        let payload = Bytes::from_static(b"{}");
        let keys = [Secret::generate()];
        d.send(Request {
            url: &url,
            headers: &[],
            event_id: "e",
            payload: &payload,
            keys: &keys,
            attempt: 1,
            timeout: Duration::from_secs(1),
            replay: None,
        })
        .await
    }

    #[tokio::test]
    async fn a_loopback_ip_literal_is_refused_without_an_allow_list() {
        let d = Deliverer::new(AddressPolicy::default(), true).unwrap();
        let a = send_to(&d, "http://127.0.0.1:9/hook").await;
        assert_eq!(
            a.outcome,
            Outcome::Transport(TransportError::AddressRefused)
        );
        assert!(
            a.message.contains("loopback") && !a.message.contains("/hook"),
            "{}",
            a.message
        );
    }

    #[tokio::test]
    async fn http_is_refused_unless_allowed() {
        let d = loopback_deliverer(false);
        let a = send_to(&d, "http://127.0.0.1:9/hook").await;
        assert_eq!(
            a.outcome,
            Outcome::Transport(TransportError::InvalidRequest)
        );
    }

    #[tokio::test]
    async fn a_closed_port_is_a_connect_failure_and_the_message_has_no_url() {
        let d = loopback_deliverer(true);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let a = send_to(&d, &format!("http://127.0.0.1:{port}/secret-path")).await;
        assert_eq!(
            a.outcome,
            Outcome::Transport(TransportError::Connect),
            "{}",
            a.message
        );
        assert!(!a.message.contains("secret-path"), "{}", a.message);
    }
}

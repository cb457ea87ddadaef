//! Who is calling, and may they: the bearer token of a request is authenticated with a
//! TokenReview (the API's one cluster permission), giving a [`Caller`]; a read of the delivery
//! log, which the API serves from its own store, is first allowed by a SelfSubjectAccessReview
//! sent *as the caller* for the virtual resource `deliveries.hookline.dev` in the tenant's
//! namespace. Everything else the caller asks is sent to the API server with their own token
//! ([`crate::kube_as`]), where RBAC decides.
//!
//! # Decisions
//! - Answers are cached for [`crate::settings::Settings::auth_cache`] (10 s) under the SHA-256
//!   of the token, never the token itself; refusals are cached too, so a flood of bad tokens
//!   costs the API server one TokenReview per token per period.
//! - The cache is bounded ([`CACHE_MAX`] entries); when full, expired entries go, then all.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::Api;
use kube::api::PostParams;
use sha2::{Digest, Sha256};

use crate::kube_as::Kube;
use crate::ops::Metrics;
use crate::problem::{Access, Problem};

/// Most cached answers of each kind.
pub const CACHE_MAX: usize = 10_000;

/// The group of Hookline's resources, real and virtual.
pub const GROUP: &str = hookline_core::GROUP;

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The bearer token, passed through to the API server.
    pub token: String,
    /// The user name the cluster knows them by (for logs).
    pub user: String,
    key: [u8; 32],
}

type Key = [u8; 32];

struct Cache<K, V> {
    ttl: Duration,
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: std::hash::Hash + Eq, V: Clone> Cache<K, V> {
    fn new(ttl: Duration) -> Self {
        Cache {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, k: &K) -> Option<V> {
        let entries = self.entries.lock().expect("auth cache");
        entries
            .get(k)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, v)| v.clone())
    }

    fn put(&self, k: K, v: V) {
        let mut entries = self.entries.lock().expect("auth cache");
        if entries.len() >= CACHE_MAX {
            let ttl = self.ttl;
            entries.retain(|_, (at, _)| at.elapsed() < ttl);
            if entries.len() >= CACHE_MAX {
                entries.clear();
            }
        }
        entries.insert(k, (Instant::now(), v));
    }
}

/// Authenticates tokens and checks delivery-log access.
pub struct Auth {
    kube: Kube,
    metrics: Metrics,
    tokens: Cache<Key, Result<String, String>>,
    access: Cache<(Key, String, &'static str, &'static str), bool>,
}

/// The bearer token of `headers`.
///
/// # Errors
/// 401 when there is none.
pub fn bearer(headers: &HeaderMap) -> Result<&str, Problem> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| Problem::unauthorized("no Authorization header: send `Authorization: Bearer <token>` with a Kubernetes ServiceAccount or OIDC token"))?;
    let value = value
        .to_str()
        .map_err(|_| Problem::unauthorized("the Authorization header is not text"))?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(Problem::unauthorized(
            "the Authorization header is not `Bearer <token>`",
        )),
    }
}

impl Auth {
    /// Checks with `kube`'s own client, caching answers for `ttl`.
    pub fn new(kube: Kube, metrics: Metrics, ttl: Duration) -> Auth {
        Auth {
            kube,
            metrics,
            tokens: Cache::new(ttl),
            access: Cache::new(ttl),
        }
    }

    /// The caller of a request with `headers`.
    ///
    /// # Errors
    /// 401 without a token or with one the cluster refuses; 503 when the API server cannot be
    /// asked.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, Problem> {
        let token = bearer(headers)?;
        let key: Key = Sha256::digest(token.as_bytes()).into();
        let cached = self.tokens.get(&key);
        self.metrics
            .auth_lookups
            .with_label_values(&["token", if cached.is_some() { "yes" } else { "no" }])
            .inc();
        let answer = match cached {
            Some(a) => a,
            None => {
                let a = self.review(token).await?;
                self.tokens.put(key, a.clone());
                a
            }
        };
        match answer {
            Ok(user) => Ok(Caller {
                token: token.to_owned(),
                user,
                key,
            }),
            Err(why) => Err(Problem::unauthorized(format!(
                "the cluster did not accept the token: {why}"
            ))),
        }
    }

    async fn review(&self, token: &str) -> Result<Result<String, String>, Problem> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: None,
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.kube.own.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Problem::unavailable(format!("authenticating the token failed: {e}")))?;
        let status = answer.status.unwrap_or_default();
        Ok(match (status.authenticated, status.user) {
            (Some(true), Some(user)) => Ok(user.username.unwrap_or_default()),
            _ => Err(status.error.unwrap_or_else(|| "not authenticated".into())),
        })
    }

    /// Allows `caller` to `verb` the virtual resource `resource.hookline.dev` of `tenant`
    /// (`deliveries`: the delivery log; `webhookevents`: publishing), or says what is missing.
    ///
    /// # Errors
    /// 403 naming `verb resource.hookline.dev`; 503 when the API server cannot be asked.
    pub async fn allow(
        &self,
        caller: &Caller,
        tenant: &str,
        verb: &'static str,
        resource: &'static str,
    ) -> Result<(), Problem> {
        let key = (caller.key, tenant.to_owned(), verb, resource);
        let cached = self.access.get(&key);
        self.metrics
            .auth_lookups
            .with_label_values(&["access", if cached.is_some() { "yes" } else { "no" }])
            .inc();
        let access = || Access {
            verb: verb.to_owned(),
            group: GROUP.to_owned(),
            resource: resource.to_owned(),
            namespace: tenant.to_owned(),
        };
        let allowed = match cached {
            Some(a) => a,
            None => {
                let a = self
                    .kube
                    .as_caller(&caller.token)
                    .can(tenant, verb, GROUP, resource)
                    .await
                    .map_err(|e| Problem::from_kube(e, &access()))?;
                self.access.put(key, a);
                a
            }
        };
        if allowed {
            Ok(())
        } else {
            Err(Problem::forbidden(
                access(),
                format!(
                    "{} may not {verb} {resource}.{GROUP} in namespace {tenant:?}",
                    caller.user
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn a_bearer_token_is_taken_in_any_case_of_the_scheme() {
        assert_eq!(bearer(&headers("Bearer abc")).unwrap(), "abc");
        assert_eq!(bearer(&headers("bearer  abc ")).unwrap(), "abc");
    }

    #[test]
    fn anything_but_a_bearer_token_is_a_401() {
        for h in ["Basic dXNlcjpwdw==", "Bearer", "Bearer   ", "abc"] {
            assert_eq!(bearer(&headers(h)).unwrap_err().status, 401, "{h}");
        }
        assert_eq!(bearer(&HeaderMap::new()).unwrap_err().status, 401);
    }

    #[test]
    fn cached_answers_expire_and_the_cache_stays_bounded() {
        let c: Cache<u32, bool> = Cache::new(Duration::from_millis(50));
        c.put(1, true);
        assert_eq!(c.get(&1), Some(true));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(c.get(&1), None, "expired");
        for i in 0..(CACHE_MAX as u32 + 5) {
            c.put(i, true);
        }
        assert!(c.entries.lock().unwrap().len() <= CACHE_MAX);
    }
}

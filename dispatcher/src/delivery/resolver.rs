//! The SSRF guard at connect time: a reqwest resolver that resolves with the system
//! resolver and keeps only the addresses [`AddressPolicy`] allows, so the addresses
//! checked are the very ones the connection uses (no DNS-rebinding window).
//!
//! # Wiring into reqwest
//! Build the delivery client with `.dns_resolver(PolicyResolver::new(..))`,
//! `.no_proxy()` (through a proxy, only the proxy's name would be checked)
//! and `redirect::Policy::none()`. reqwest does not call the resolver for
//! an IP-literal URL such as `http://10.0.0.1/`, so check the URL's host
//! with [`AddressPolicy::check_host`] before sending. Map an error to
//! `TransportError::AddressRefused` when [`find_resolve_error`] finds a
//! [`ResolveError::Refused`] in its source chain.

use std::error::Error as StdError;
use std::sync::Arc;

use hookline_core::ssrf::{AddressPolicy, ResolveError};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// A reqwest resolver that resolves with the system resolver (tokio's
/// `lookup_host`) and keeps only the addresses the policy allows.
#[derive(Debug, Clone)]
pub struct PolicyResolver {
    policy: Arc<AddressPolicy>,
}

impl PolicyResolver {
    /// A resolver applying `policy`.
    pub fn new(policy: Arc<AddressPolicy>) -> Self {
        Self { policy }
    }
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = Arc::clone(&self.policy);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let allowed = policy.filter(&host, resolved)?;
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

/// Finds a [`ResolveError`] in an error's source chain, as found in the
/// `reqwest::Error` of a request refused by [`PolicyResolver`].
pub fn find_resolve_error<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a ResolveError> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(found) = error.downcast_ref::<ResolveError>() {
            return Some(found);
        }
        current = error.source();
    }
    None
}

#[cfg(test)]
#[path = "resolver_tests.rs"]
mod tests;

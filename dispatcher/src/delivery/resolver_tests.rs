//! Unit tests for [`super`]: they resolve only `localhost` and `127.0.0.1`, and the
//! reqwest test is refused before any connection is made, so no traffic leaves the process.

use std::net::SocketAddr;

use super::*;

fn strict() -> AddressPolicy {
    AddressPolicy::default()
}

async fn resolve(policy: AddressPolicy, host: &str) -> Result<Vec<SocketAddr>, String> {
    let resolver = PolicyResolver::new(Arc::new(policy));
    match resolver.resolve(host.parse().unwrap()).await {
        Ok(addrs) => Ok(addrs.collect()),
        Err(err) => Err(err.to_string()),
    }
}

#[tokio::test]
async fn resolver_refuses_localhost_without_an_allow_list() {
    let err = resolve(strict(), "localhost").await.unwrap_err();
    assert!(err.contains("refused"), "{err}");
    let err = resolve(strict(), "127.0.0.1").await.unwrap_err();
    assert!(err.contains("loopback"), "{err}");
}

#[tokio::test]
async fn resolver_returns_only_allow_listed_loopback_addresses() {
    let policy = AddressPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
    let addrs = resolve(policy, "localhost").await.unwrap();
    assert!(!addrs.is_empty());
    assert!(
        addrs
            .iter()
            .all(|a| a.ip().is_ipv4() && a.ip().is_loopback()),
        "{addrs:?}"
    );
}

#[tokio::test]
async fn reqwest_refusal_is_found_in_the_error_chain() {
    crate::install_crypto_provider();
    let client = reqwest::Client::builder()
        .dns_resolver(PolicyResolver::new(Arc::new(strict())))
        .no_proxy()
        .build()
        .unwrap();
    let err = client
        .post("http://localhost:9/never-sent")
        .send()
        .await
        .unwrap_err();
    let found = find_resolve_error(&err);
    assert!(
        matches!(found, Some(ResolveError::Refused { host, .. }) if host == "localhost"),
        "{err:?}"
    );
}

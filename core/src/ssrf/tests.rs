//! Unit tests for [`super`]: the policy is a pure function of an address.

use super::*;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn strict() -> AddressPolicy {
    AddressPolicy::default()
}

fn assert_refused(cases: &[(&str, &'static str)]) {
    for (addr, reason) in cases {
        assert_eq!(
            strict().check(ip(addr)),
            Err(Refused {
                ip: ip(addr),
                reason
            }),
            "{addr}"
        );
    }
}

#[test]
fn every_non_public_ipv4_range_is_refused_with_its_reason() {
    assert_refused(&[
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "this_network"),
        ("10.0.0.1", "private"),
        ("10.255.255.255", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "shared_cgnat"),
        ("100.127.255.255", "shared_cgnat"),
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("169.254.169.254", "cloud_metadata"),
        ("169.254.0.5", "link_local"),
        ("192.0.0.170", "ietf_protocol_assignment"),
        ("192.0.2.10", "documentation"),
        ("198.51.100.7", "documentation"),
        ("203.0.113.99", "documentation"),
        ("192.88.99.1", "relay_anycast"),
        ("198.18.0.1", "benchmarking"),
        ("198.19.255.255", "benchmarking"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.254", "reserved"),
        ("255.255.255.255", "broadcast"),
    ]);
}

#[test]
fn every_non_public_ipv6_range_is_refused_with_its_reason() {
    assert_refused(&[
        ("::", "unspecified"),
        ("::1", "loopback"),
        ("fc00::1", "unique_local"),
        ("fd12:3456::1", "unique_local"),
        ("fd00:ec2::254", "cloud_metadata"),
        ("fe80::1", "link_local"),
        ("febf::1", "link_local"),
        ("fec0::1", "site_local"),
        ("ff02::1", "multicast"),
        ("2001:db8::1", "documentation"),
        ("3fff::1", "documentation"),
        ("2001:2::1", "benchmarking"),
        ("2001:0:4136:e378::1", "teredo"),
        ("100::1", "discard_only"),
        ("64:ff9b:1::a00:1", "nat64_local_use"),
        ("4000::1", "reserved"),
        ("1::1", "reserved"),
    ]);
}

#[test]
fn ipv4_embedded_in_ipv6_is_judged_by_the_embedded_address() {
    assert_refused(&[
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "cloud_metadata"),
        ("::ffff:10.1.2.3", "private"),
        ("::127.0.0.1", "loopback"),
        ("::192.168.0.1", "private"),
        ("::8.8.8.8", "reserved"),
        ("64:ff9b::127.0.0.1", "loopback"),
        ("64:ff9b::a9fe:a9fe", "cloud_metadata"),
        ("2002:7f00:1::1", "loopback"),
        ("2002:c0a8:101::", "private"),
    ]);
    // Public IPv4 through NAT64 (IPv6-only clusters) or 6to4 stays reachable.
    assert_eq!(strict().check(ip("::ffff:8.8.8.8")), Ok(()));
    assert_eq!(strict().check(ip("64:ff9b::8.8.8.8")), Ok(()));
    assert_eq!(strict().check(ip("2002:808:808::1")), Ok(()));
}

#[test]
fn public_addresses_and_range_edges_are_allowed() {
    for addr in [
        "8.8.8.8",
        "1.1.1.1",
        "9.255.255.255",
        "11.0.0.0",
        "172.15.255.255",
        "172.32.0.0",
        "100.63.255.255",
        "100.128.0.0",
        "169.253.255.255",
        "198.20.0.0",
        "223.255.255.255",
        "2606:4700:4700::1111",
        "2a00:1450:4001::200e",
        "2001:4860::8888",
    ] {
        assert_eq!(strict().check(ip(addr)), Ok(()), "{addr}");
        assert_eq!(refusal_reason(ip(addr)), None, "{addr}");
    }
}

#[test]
fn allow_list_cidrs_override_refusals_and_nothing_more() {
    let policy = AddressPolicy::new(vec![
        "127.0.0.0/8".parse().unwrap(),
        "10.1.0.0/16".parse().unwrap(),
        "fd00:1::/32".parse().unwrap(),
    ]);
    assert_eq!(policy.check(ip("127.0.0.1")), Ok(()));
    assert_eq!(policy.check(ip("::ffff:127.0.0.1")), Ok(()));
    assert_eq!(policy.check(ip("10.1.200.3")), Ok(()));
    assert_eq!(policy.check(ip("fd00:1::5")), Ok(()));
    assert!(policy.check(ip("10.2.0.1")).is_err());
    assert!(policy.check(ip("::1")).is_err());
    assert!(policy.check(ip("169.254.169.254")).is_err());
    assert_eq!(policy.allow_list().len(), 3);
}

#[test]
fn ip_literal_hosts_are_checked_and_names_are_left_to_the_resolver() {
    let policy = strict();
    assert!(policy.check_host("127.0.0.1").is_err());
    assert!(policy.check_host("[::1]").is_err());
    assert!(policy.check_host("[::ffff:a9fe:a9fe]").is_err());
    assert_eq!(policy.check_host("8.8.8.8"), Ok(()));
    assert_eq!(policy.check_host("hooks.example.com"), Ok(()));
}

#[test]
fn filtering_keeps_allowed_addresses_and_explains_an_empty_result() {
    let addr = |text: &str| SocketAddr::new(ip(text), 0);
    let policy = strict();
    assert_eq!(
        policy.filter("mixed", [addr("10.0.0.1"), addr("8.8.8.8")]),
        Ok(vec![addr("8.8.8.8")])
    );
    let err = policy.filter("internal", [addr("10.0.0.1")]).unwrap_err();
    assert!(matches!(&err, ResolveError::Refused { refused, .. } if refused.len() == 1));
    assert!(err.to_string().contains("10.0.0.1"), "{err}");
    assert_eq!(
        policy.filter("void", []),
        Err(ResolveError::NoAddresses("void".to_owned()))
    );
}

#[test]
fn urls_are_checked_for_scheme_host_and_ip_literal_alike_everywhere() {
    let url = |s: &str| url::Url::parse(s).unwrap();
    let loopback = AddressPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
    assert_eq!(
        check_url(&url("https://h.example/x"), false, Some(&strict())),
        Ok(())
    );
    assert_eq!(
        check_url(&url("http://h.example/x"), false, None),
        Err(UrlRefusal::HttpNotAllowed)
    );
    assert_eq!(check_url(&url("http://h.example/x"), true, None), Ok(()));
    assert_eq!(
        check_url(&url("ftp://h.example/x"), true, None),
        Err(UrlRefusal::Scheme("ftp".into()))
    );
    assert!(matches!(
        check_url(&url("https://127.0.0.1/x"), false, Some(&strict())),
        Err(UrlRefusal::Address(Refused {
            reason: "loopback",
            ..
        }))
    ));
    assert!(matches!(
        check_url(&url("https://[::1]/x"), false, Some(&strict())),
        Err(UrlRefusal::Address(_))
    ));
    assert_eq!(
        check_url(&url("https://127.0.0.1/x"), false, Some(&loopback)),
        Ok(())
    );
    assert_eq!(check_url(&url("https://127.0.0.1/x"), false, None), Ok(()));
}

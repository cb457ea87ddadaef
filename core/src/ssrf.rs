//! The address policy that keeps deliveries off internal networks: every IP
//! address a webhook URL resolves to flows through [`AddressPolicy::check`]
//! and comes out allowed or [`Refused`] with a reason. This module is the pure
//! classification; the dispatcher's resolver (`delivery::resolver`) applies it
//! inside its HTTP client, at connect time, to the very addresses the
//! connection will use, so a DNS answer that changes between a check and the
//! connect (rebinding) cannot slip through.
//!
//! Refused unless an allow-list CIDR contains the address: IPv4 `0/8`,
//! private `10/8`, `172.16/12`, `192.168/16`, shared `100.64/10`, loopback
//! `127/8`, link-local `169.254/16` (with the metadata address
//! `169.254.169.254`), `192.0.0/24`, documentation `192.0.2/24`,
//! `198.51.100/24`, `203.0.113/24`, `192.88.99/24`, benchmarking
//! `198.18/15`, multicast `224/4`, reserved `240/4` and broadcast; IPv6
//! unspecified, loopback, unique-local `fc00::/7`, link-local `fe80::/10`,
//! site-local `fec0::/10`, multicast `ff00::/8`, documentation
//! `2001:db8::/32` and `3fff::/20`, benchmarking `2001:2::/48`, Teredo
//! `2001::/32`, discard `100::/64`, local-use NAT64 `64:ff9b:1::/48`, and
//! anything outside global unicast `2000::/3`. IPv4 embedded in IPv6
//! (mapped `::ffff:0:0/96`, compatible `::/96`, NAT64 `64:ff9b::/96`, 6to4
//! `2002::/16`) is refused when the embedded address is; NAT64 of a public
//! address stays allowed, since IPv6-only clusters reach the internet that
//! way.
//!
//! # Where it is applied
//! The dispatcher checks an IP-literal URL host with [`AddressPolicy::check_host`]
//! before sending (its HTTP client does not resolve literals) and every resolved
//! name with [`AddressPolicy::filter`] at connect time.

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// An address the policy will not connect to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("address {ip} is refused ({reason})")]
pub struct Refused {
    /// The address as it was checked.
    pub ip: IpAddr,
    /// Which kind of range it is in, snake_case: `loopback`, `private`,
    /// `link_local`, `cloud_metadata`, `shared_cgnat`, ….
    pub reason: &'static str,
}

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), len)
}

const fn v6(segments: [u16; 8], len: u8) -> Ipv6Net {
    let [a, b, c, d, e, f, g, h] = segments;
    Ipv6Net::new_assert(Ipv6Addr::new(a, b, c, d, e, f, g, h), len)
}

/// Refused IPv4 ranges, most specific first.
const REFUSED_V4: &[(Ipv4Net, &str)] = &[
    (v4(0, 0, 0, 0, 32), "unspecified"),
    (v4(0, 0, 0, 0, 8), "this_network"),
    (v4(10, 0, 0, 0, 8), "private"),
    (v4(100, 64, 0, 0, 10), "shared_cgnat"),
    (v4(127, 0, 0, 0, 8), "loopback"),
    (v4(169, 254, 169, 254, 32), "cloud_metadata"),
    (v4(169, 254, 0, 0, 16), "link_local"),
    (v4(172, 16, 0, 0, 12), "private"),
    (v4(192, 0, 0, 0, 24), "ietf_protocol_assignment"),
    (v4(192, 0, 2, 0, 24), "documentation"),
    (v4(192, 88, 99, 0, 24), "relay_anycast"),
    (v4(192, 168, 0, 0, 16), "private"),
    (v4(198, 18, 0, 0, 15), "benchmarking"),
    (v4(198, 51, 100, 0, 24), "documentation"),
    (v4(203, 0, 113, 0, 24), "documentation"),
    (v4(224, 0, 0, 0, 4), "multicast"),
    (v4(255, 255, 255, 255, 32), "broadcast"),
    (v4(240, 0, 0, 0, 4), "reserved"),
];

/// Refused IPv6 ranges, most specific first; the embedded-IPv4 forms are
/// handled before this table, and anything outside `2000::/3` after it.
const REFUSED_V6: &[(Ipv6Net, &str)] = &[
    (v6([0, 0, 0, 0, 0, 0, 0, 0], 128), "unspecified"),
    (v6([0, 0, 0, 0, 0, 0, 0, 1], 128), "loopback"),
    (v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48), "nat64_local_use"),
    (v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64), "discard_only"),
    (v6([0x2001, 0x2, 0, 0, 0, 0, 0, 0], 48), "benchmarking"),
    (v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), "documentation"),
    (v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32), "teredo"),
    (v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20), "documentation"),
    (
        v6([0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254], 128),
        "cloud_metadata",
    ),
    (v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7), "unique_local"),
    (v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), "link_local"),
    (v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10), "site_local"),
    (v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), "multicast"),
];

const NAT64: Ipv6Net = v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96);
const V4_COMPATIBLE: Ipv6Net = v6([0, 0, 0, 0, 0, 0, 0, 0], 96);
const SIX_TO_FOUR: Ipv6Net = v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16);
const GLOBAL_UNICAST: Ipv6Net = v6([0x2000, 0, 0, 0, 0, 0, 0, 0], 3);

/// Why `ip` is not a public address, or `None` if it is. Ignores any
/// allow-list; see [`AddressPolicy::check`].
pub fn refusal_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(ip) => v4_reason(ip),
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(mapped) => v4_reason(mapped),
            None => v6_reason(ip),
        },
    }
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    REFUSED_V4
        .iter()
        .find(|(net, _)| net.contains(&ip))
        .map(|(_, reason)| *reason)
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    let octets = ip.octets();
    let low_v4 = || Ipv4Addr::new(octets[12], octets[13], octets[14], octets[15]);
    if let Some((_, reason)) = REFUSED_V6.iter().find(|(net, _)| net.contains(&ip)) {
        return Some(reason);
    }
    if NAT64.contains(&ip) {
        return v4_reason(low_v4());
    }
    if SIX_TO_FOUR.contains(&ip) {
        return v4_reason(Ipv4Addr::new(octets[2], octets[3], octets[4], octets[5]));
    }
    if V4_COMPATIBLE.contains(&ip) {
        return Some(v4_reason(low_v4()).unwrap_or("reserved"));
    }
    if GLOBAL_UNICAST.contains(&ip) {
        None
    } else {
        Some("reserved")
    }
}

/// Which addresses deliveries may connect to: every public address, plus
/// whatever the allow-list names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    allow: Vec<IpNet>,
}

impl AddressPolicy {
    /// A policy with an allow-list (empty for the strict default). Platforms
    /// list internal receivers here; tests list `127.0.0.0/8`.
    pub fn new(allow: Vec<IpNet>) -> Self {
        Self { allow }
    }

    /// The allow-list.
    pub fn allow_list(&self) -> &[IpNet] {
        &self.allow
    }

    /// Allows `ip` if it is public or inside an allow-listed CIDR.
    ///
    /// An IPv4-mapped IPv6 address is the same socket as its IPv4 form, so
    /// it is judged, and matched against the allow-list, as IPv4. Other
    /// embedded forms are matched against the allow-list as written.
    ///
    /// # Errors
    /// [`Refused`] with the kind of range the address is in.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refused> {
        let canonical = ip.to_canonical();
        let Some(reason) = refusal_reason(canonical) else {
            return Ok(());
        };
        if self.allow.iter().any(|net| net.contains(&canonical)) {
            Ok(())
        } else {
            Err(Refused { ip, reason })
        }
    }

    /// Checks a URL host (`url.host_str()`) that is an IP literal, with or
    /// without IPv6 brackets; a domain name passes here and is checked by
    /// the dispatcher's resolver once resolved.
    ///
    /// # Errors
    /// [`Refused`] for a refused IP literal.
    pub fn check_host(&self, host: &str) -> Result<(), Refused> {
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        match bare.parse::<IpAddr>() {
            Ok(ip) => self.check(ip),
            Err(_) => Ok(()),
        }
    }

    /// Keeps the allowed addresses of a resolution of `host`.
    ///
    /// # Errors
    /// [`ResolveError`] when nothing resolved, or everything was refused.
    pub fn filter(
        &self,
        host: &str,
        addrs: impl IntoIterator<Item = SocketAddr>,
    ) -> Result<Vec<SocketAddr>, ResolveError> {
        let mut allowed = Vec::new();
        let mut refused = Vec::new();
        for addr in addrs {
            match self.check(addr.ip()) {
                Ok(()) => allowed.push(addr),
                Err(refusal) => refused.push(refusal),
            }
        }
        match (allowed.is_empty(), refused.is_empty()) {
            (false, _) => Ok(allowed),
            (true, true) => Err(ResolveError::NoAddresses(host.to_owned())),
            (true, false) => Err(ResolveError::Refused {
                host: host.to_owned(),
                refused,
            }),
        }
    }
}

/// Why a resolution left no address to connect to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// The name resolved to nothing.
    #[error("{0} resolved to no address")]
    NoAddresses(String),
    /// Every address was refused; the first refusal is in the message.
    #[error("every address of {host} is refused by the address policy, e.g. {}", .refused[0])]
    Refused {
        /// The name that was resolved.
        host: String,
        /// One refusal per resolved address; never empty.
        refused: Vec<Refused>,
    },
}

/// Why a `Webhook` URL cannot be delivered to, whatever it resolves to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlRefusal {
    /// Not `http` or `https`.
    #[error("URL scheme {0:?} is not supported; use https")]
    Scheme(String),
    /// `http://` while the platform accepts https only.
    #[error("http:// URLs are not allowed on this platform; use https")]
    HttpNotAllowed,
    /// No host to connect to.
    #[error("the URL has no host")]
    NoHost,
    /// An IP-literal host the address policy refuses.
    #[error(transparent)]
    Address(Refused),
}

/// The one URL check of every site that takes a `Webhook` URL (the controller's validation,
/// the dispatcher's settings and its HTTP client): `https` (or `http` when `allow_http`), a
/// host, and — when a policy is given — an IP-literal host the policy allows. Names are left
/// to the resolver, which applies the policy at connect time.
///
/// # Errors
/// The first [`UrlRefusal`].
pub fn check_url(
    url: &url::Url,
    allow_http: bool,
    policy: Option<&AddressPolicy>,
) -> Result<(), UrlRefusal> {
    match url.scheme() {
        "https" => {}
        "http" if allow_http => {}
        "http" => return Err(UrlRefusal::HttpNotAllowed),
        other => return Err(UrlRefusal::Scheme(other.to_owned())),
    }
    let ip = match url.host() {
        Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
        Some(url::Host::Domain(_)) => return Ok(()),
        None => return Err(UrlRefusal::NoHost),
    };
    match policy {
        Some(policy) => policy.check(ip).map_err(UrlRefusal::Address),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests;

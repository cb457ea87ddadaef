//! Loopback IPs for Pods. Every Pod gets its own address in `127.A.x.y` (the `--pod-ip-base`
//! `127.A`), so replicas on one host can all bind the same port on their `status.podIP`.
//! Addresses come from a wrapping counter and are never handed out twice while held;
//! addresses ending in `.0` or `.255` are skipped.

use std::{collections::BTreeSet, net::Ipv4Addr};

/// Hands out and takes back pod IPs.
#[derive(Debug, Clone)]
pub struct IpAllocator {
    prefix: [u8; 2],
    /// The host part (`x * 256 + y`) tried next.
    next: u16,
    in_use: BTreeSet<Ipv4Addr>,
}

impl IpAllocator {
    /// An allocator for `base`, two octets of the loopback range such as `127.1`.
    ///
    /// # Errors
    /// When `base` is not `127.N`.
    pub fn new(base: &str) -> Result<Self, String> {
        let parts: Vec<&str> = base.split('.').collect();
        let [a, b] = parts.as_slice() else {
            return Err(format!("pod IP base must look like 127.N, got {base:?}"));
        };
        let a: u8 = a.parse().map_err(|_| format!("bad pod IP base {base:?}"))?;
        let b: u8 = b.parse().map_err(|_| format!("bad pod IP base {base:?}"))?;
        if a != 127 {
            return Err(format!("pod IP base must be in 127.0.0.0/8, got {base:?}"));
        }
        Ok(Self {
            prefix: [a, b],
            next: 1,
            in_use: BTreeSet::new(),
        })
    }

    fn usable(host: u16) -> bool {
        let y = host & 0xff;
        y != 0 && y != 255
    }

    fn addr(&self, host: u16) -> Ipv4Addr {
        let [x, y] = host.to_be_bytes();
        Ipv4Addr::new(self.prefix[0], self.prefix[1], x, y)
    }

    /// Whether `ip` lies in this allocator's range.
    pub fn covers(&self, ip: Ipv4Addr) -> bool {
        let o = ip.octets();
        o[..2] == self.prefix && Self::usable(u16::from_be_bytes([o[2], o[3]]))
    }

    /// Claims a specific address (a Pod that already has one from a previous run).
    /// Returns false when it is outside the range or already held.
    pub fn reserve(&mut self, ip: Ipv4Addr) -> bool {
        self.covers(ip) && self.in_use.insert(ip)
    }

    /// The next free address, or `None` when all are held.
    pub fn allocate(&mut self) -> Option<Ipv4Addr> {
        for _ in 0..=u16::MAX {
            let host = self.next;
            self.next = self.next.wrapping_add(1);
            if !Self::usable(host) {
                continue;
            }
            let ip = self.addr(host);
            if self.in_use.insert(ip) {
                return Some(ip);
            }
        }
        None
    }

    /// Gives an address back.
    pub fn release(&mut self, ip: Ipv4Addr) {
        self.in_use.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_allocated_in_order_from_the_base() {
        let mut a = IpAllocator::new("127.1").unwrap();
        assert_eq!(a.allocate(), Some(Ipv4Addr::new(127, 1, 0, 1)));
        assert_eq!(a.allocate(), Some(Ipv4Addr::new(127, 1, 0, 2)));
    }

    #[test]
    fn released_address_is_not_reused_before_the_counter_wraps() {
        let mut a = IpAllocator::new("127.1").unwrap();
        let first = a.allocate().unwrap();
        a.release(first);
        assert_ne!(a.allocate(), Some(first));
    }

    #[test]
    fn reserved_address_is_skipped_by_the_counter() {
        let mut a = IpAllocator::new("127.1").unwrap();
        assert!(a.reserve(Ipv4Addr::new(127, 1, 0, 1)));
        assert!(!a.reserve(Ipv4Addr::new(127, 1, 0, 1)));
        assert_eq!(a.allocate(), Some(Ipv4Addr::new(127, 1, 0, 2)));
    }

    #[test]
    fn addresses_ending_in_0_or_255_are_never_handed_out() {
        let mut a = IpAllocator::new("127.3").unwrap();
        let ips: Vec<Ipv4Addr> = (0..600).filter_map(|_| a.allocate()).collect();
        assert_eq!(ips.len(), 600);
        assert!(
            ips.iter()
                .all(|ip| ip.octets()[3] != 0 && ip.octets()[3] != 255)
        );
        assert!(!a.reserve(Ipv4Addr::new(127, 3, 1, 0)));
    }

    #[test]
    fn exhausted_range_yields_none() {
        let mut a = IpAllocator::new("127.1").unwrap();
        let n = std::iter::from_fn(|| a.allocate()).count();
        assert_eq!(n, 256 * 254);
        assert_eq!(a.allocate(), None);
    }

    #[test]
    fn base_outside_loopback_is_rejected() {
        assert!(IpAllocator::new("10.1").is_err());
        assert!(IpAllocator::new("127.1.2").is_err());
        assert!(IpAllocator::new("127.x").is_err());
    }

    #[test]
    fn reserve_rejects_foreign_addresses() {
        let mut a = IpAllocator::new("127.1").unwrap();
        assert!(!a.reserve(Ipv4Addr::new(127, 2, 0, 1)));
    }
}

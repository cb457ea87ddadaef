//! Deterministic names of everything Hookline makes for a tenant (a namespace) or a `Webhook`:
//! the dispatcher Deployment and its RBAC, the generated signing Secret, and the tenant's Kafka
//! topics. The controller creates them and the dispatcher is told them; both derive them here.
//!
//! | what | name |
//! | --- | --- |
//! | dispatcher Deployment, ServiceAccount, Role, RoleBinding | `hookline-dispatcher-<namespace>` |
//! | generated signing Secret | `<webhook>-signing` |
//! | events topic (producers write here) | `hookline.<namespace>.events` |
//! | delayed-retry topics, one per delay tier | `hookline.<namespace>.retry.<tier>` (`1s`, `10s`, `1m`, `10m`, `1h`) |
//! | dead-letter topic | `hookline.<namespace>.dlq` |
//! | delivery-attempts topic (one record per attempt, for audit) | `hookline.<namespace>.attempts` |
//! | dedup topic (event ids seen, compacted) | `hookline.<namespace>.dedup` |
//! | consumer group of the tenant's dispatchers | `hookline-dispatcher.<namespace>` |
//!
//! Names that would exceed a Kubernetes limit are cut and given a stable hash suffix, so two
//! long namespaces never collide.

use std::time::Duration;

/// Longest dispatcher name: Deployment pod names add `-<rs hash>-<pod hash>` (17 characters)
/// and must stay within a 63-character label value.
const MAX_DISPATCHER_NAME: usize = 46;
/// Longest Secret name (DNS subdomain).
const MAX_SECRET_NAME: usize = 253;

/// Delay tiers of the retry topics, shortest first.
pub const RETRY_TIERS: &[(Duration, &str)] = &[
    (Duration::from_secs(1), "1s"),
    (Duration::from_secs(10), "10s"),
    (Duration::from_secs(60), "1m"),
    (Duration::from_secs(600), "10m"),
    (Duration::from_secs(3600), "1h"),
];

/// The consumer group of `tenant`'s dispatchers (all replicas share it).
pub fn consumer_group(tenant: &str) -> String {
    format!("hookline-dispatcher.{tenant}")
}

/// FNV-1a, 64 bit: a hash whose value never changes between releases (unlike `DefaultHasher`).
pub fn stable_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn bounded(name: String, max: usize) -> String {
    if name.len() <= max {
        return name;
    }
    let hash = format!("{:08x}", stable_hash(&name) as u32);
    let mut cut = name[..max - hash.len() - 1]
        .trim_end_matches(['-', '.'])
        .to_owned();
    cut.push('-');
    cut.push_str(&hash);
    cut
}

/// Name of the tenant's dispatcher Deployment, and of its ServiceAccount, Role and RoleBinding.
pub fn dispatcher(tenant: &str) -> String {
    bounded(format!("hookline-dispatcher-{tenant}"), MAX_DISPATCHER_NAME)
}

/// Name of the Secret generated for a `Webhook` without `secretRef`.
pub fn signing_secret(webhook: &str) -> String {
    bounded(format!("{webhook}-signing"), MAX_SECRET_NAME)
}

/// The Kafka topics of one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// Producers write events here.
    pub events: String,
    /// Delayed retries, one topic per tier of [`RETRY_TIERS`], shortest first.
    pub retry: Vec<(Duration, String)>,
    /// Events that never succeeded, with the reason in headers.
    pub dead_letter: String,
    /// One record per delivery attempt.
    pub attempts: String,
    /// The event ids seen, per events partition (compacted).
    pub dedup: String,
}

impl Topics {
    /// Every topic name.
    pub fn all(&self) -> Vec<&str> {
        let mut v = vec![self.events.as_str()];
        v.extend(self.retry.iter().map(|(_, t)| t.as_str()));
        v.push(&self.dead_letter);
        v.push(&self.attempts);
        v.push(&self.dedup);
        v
    }
}

/// The events topic of `tenant`: [`topics`]`(tenant).events` without the others.
pub fn events_topic(tenant: &str) -> String {
    format!("hookline.{tenant}.events")
}

/// The topics of `tenant` (a namespace name: at most 63 characters of `[a-z0-9-]`, so every
/// topic name stays well inside Kafka's 249).
pub fn topics(tenant: &str) -> Topics {
    let base = format!("hookline.{tenant}");
    Topics {
        events: events_topic(tenant),
        retry: RETRY_TIERS
            .iter()
            .map(|(d, s)| (*d, format!("{base}.retry.{s}")))
            .collect(),
        dead_letter: format!("{base}.dlq"),
        attempts: format!("{base}.attempts"),
        dedup: format!("{base}.dedup"),
    }
}

/// Regular expression (librdkafka subscription syntax) matching every tenant's attempts topic.
pub const ATTEMPTS_TOPIC_PATTERN: &str = r"^hookline\.[a-z0-9-]+\.attempts$";

/// The tenant whose attempts topic is `topic` (the inverse of [`topics`]`(tenant).attempts`).
pub fn tenant_of_attempts_topic(topic: &str) -> Option<&str> {
    let tenant = topic.strip_prefix("hookline.")?.strip_suffix(".attempts")?;
    (!tenant.is_empty()
        && tenant
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
    .then_some(tenant)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tenant_is_read_back_from_its_attempts_topic_and_nothing_else_is_taken() {
        for t in ["acme", "a-1", "x"] {
            assert_eq!(tenant_of_attempts_topic(&topics(t).attempts), Some(t));
        }
        assert_eq!(tenant_of_attempts_topic(&topics("acme").events), None);
        assert_eq!(tenant_of_attempts_topic(&topics("acme").dead_letter), None);
        assert_eq!(tenant_of_attempts_topic("hookline..attempts"), None);
        assert_eq!(tenant_of_attempts_topic("hookline.a.b.attempts"), None);
    }

    #[test]
    fn short_names_are_kept_as_they_are() {
        assert_eq!(dispatcher("acme"), "hookline-dispatcher-acme");
        assert_eq!(signing_secret("fraud"), "fraud-signing");
    }

    #[test]
    fn long_namespaces_get_bounded_distinct_dispatcher_names() {
        let a = dispatcher(&"a".repeat(63));
        let b = dispatcher(&format!("{}b", "a".repeat(62)));
        assert!(a.len() <= MAX_DISPATCHER_NAME && b.len() <= MAX_DISPATCHER_NAME);
        assert_ne!(a, b);
        assert_eq!(a, dispatcher(&"a".repeat(63)), "names are deterministic");
        assert!(!a.contains("--"));
    }

    #[test]
    fn topics_are_named_from_the_namespace() {
        let t = topics("acme");
        assert_eq!(t.events, "hookline.acme.events");
        assert_eq!(t.dead_letter, "hookline.acme.dlq");
        assert_eq!(t.retry[0].1, "hookline.acme.retry.1s");
        assert_eq!(t.all().len(), 4 + RETRY_TIERS.len());
        assert_eq!(t.dedup, "hookline.acme.dedup");
        assert!(t.all().iter().all(|n| n.len() <= 249));
    }

    #[test]
    fn stable_hash_does_not_change_between_releases() {
        assert_eq!(stable_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
    }
}

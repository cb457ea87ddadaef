//! Attempt records that look like a tenant's: a [`Profile`] (one tenant, its `Webhook`s, event
//! types and keys, how densely attempts fall in time) flows into a [`Generator`], which yields
//! [`Ingested`] records in the order the attempts topic would hold them — by attempt time, so a
//! failed attempt's retry arrives later in the stream, one backoff after it — each with the
//! partition (by event id, as the dispatcher keys attempt records) and that partition's next
//! offset. [`batch`] groups them as ingestion does.
//!
//! The mix (seeded, so every run of a size sees the same records): each event goes to one
//! `Webhook`; 86 % of deliveries succeed at once, 11 % on the second attempt, 2.5 % on the third
//! or fourth, 0.5 % are dead-lettered after six (`retries_exhausted`) — 1.2 attempts per delivery.
//! Failures are `http_5xx` (503, tens of ms), `timeout` (30 s) or `connect` (refused, a few ms)
//! with an error text; retries follow the default exponential backoff from 1 s with equal
//! jitter. Event ids are random (`evt_` + 22 base-62 characters), as most producers' are, so
//! the store's unique index is written at random places, never appended to.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use hookline_api::store::{Batch, Ingested, Position};
use hookline_core::naming::{self, stable_hash};
use hookline_core::retry_topics::AttemptRecord;
use jiff::Timestamp;

/// What the generated tenant looks like.
#[derive(Debug, Clone)]
pub struct Profile {
    /// The tenant (namespace).
    pub tenant: String,
    /// Its `Webhook`s, `w0000`…
    pub webhooks: usize,
    /// Event types, each event one of them at random.
    pub types: Vec<String>,
    /// Distinct ordering keys.
    pub keys: usize,
    /// Partitions of the attempts topic.
    pub partitions: i32,
    /// Time of the first attempt, Unix ms.
    pub start_ms: i64,
    /// Attempts per second of attempt time (events arrive at this ÷ 1.2).
    pub attempts_per_s: f64,
    /// The seed.
    pub seed: u64,
}

/// Mean attempts per delivery of the mix (see the module docs).
pub const ATTEMPTS_PER_DELIVERY: f64 = 1.2;

impl Profile {
    /// One tenant with 10 `Webhook`s, 8 event types and 10,000 keys, on 6 partitions.
    pub fn tenant(tenant: &str, start_ms: i64, attempts_per_s: f64, seed: u64) -> Profile {
        Profile {
            tenant: tenant.to_owned(),
            webhooks: 10,
            types: [
                "order.created",
                "order.paid",
                "order.shipped",
                "order.refunded",
                "customer.created",
                "customer.updated",
                "invoice.issued",
                "invoice.overdue",
            ]
            .iter()
            .map(|t| (*t).to_owned())
            .collect(),
            keys: 10_000,
            partitions: 6,
            start_ms,
            attempts_per_s,
            seed,
        }
    }

    /// The attempts topic the records claim to come from.
    pub fn topic(&self) -> String {
        naming::topics(&self.tenant).attempts
    }

    /// Name of `Webhook` `i`.
    pub fn webhook(i: usize) -> String {
        format!("w{i:04}")
    }
}

/// splitmix64: small, fast, good enough for a workload, and the same everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// Why the failed attempts of a delivery failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Http5xx,
    Timeout,
    Connect,
}

/// One delivery: what stays the same across its attempts.
#[derive(Debug, Clone)]
struct Delivery {
    event_id: String,
    event_type: String,
    key: String,
    webhook: String,
    partition: i32,
    /// Attempts it takes in all.
    total: u32,
    /// Whether the last one is a dead letter.
    dead: bool,
    failure: Failure,
}

/// The next attempt of a delivery, due at `due_ms`.
#[derive(Debug)]
struct Due {
    due_ms: i64,
    order: u64,
    attempt: u32,
    delivery: Box<Delivery>,
}

impl PartialEq for Due {
    fn eq(&self, o: &Self) -> bool {
        (self.due_ms, self.order) == (o.due_ms, o.order)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Due {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.due_ms, self.order).cmp(&(o.due_ms, o.order))
    }
}

/// Yields a tenant's attempt records in attempts-topic order (endless; take what you need).
pub struct Generator {
    profile: Profile,
    topic: String,
    rng: Rng,
    events: u64,
    order: u64,
    retries: BinaryHeap<Reverse<Due>>,
    offsets: Vec<i64>,
}

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn rfc3339(ms: i64) -> String {
    Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| t.to_string())
}

impl Generator {
    /// Starts at the profile's first attempt.
    pub fn new(profile: Profile) -> Generator {
        Generator {
            topic: profile.topic(),
            rng: Rng::new(profile.seed),
            offsets: vec![0; usize::try_from(profile.partitions.max(1)).unwrap_or(1)],
            profile,
            events: 0,
            order: 0,
            retries: BinaryHeap::new(),
        }
    }

    /// The profile.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    fn event_time(&self, i: u64) -> i64 {
        let per_s = self.profile.attempts_per_s / ATTEMPTS_PER_DELIVERY;
        self.profile.start_ms + (i as f64 * 1000.0 / per_s) as i64
    }

    fn new_delivery(&mut self) -> Delivery {
        let r = &mut self.rng;
        let mut id = String::with_capacity(26);
        id.push_str("evt_");
        let (mut a, mut b) = (r.next_u64(), r.next_u64());
        for i in 0..22 {
            let x = if i < 11 { &mut a } else { &mut b };
            id.push(char::from(BASE62[(*x % 62) as usize]));
            *x /= 62;
        }
        let u = r.unit();
        let (total, dead) = if u < 0.86 {
            (1, false)
        } else if u < 0.97 {
            (2, false)
        } else if u < 0.995 {
            (3 + u32::from(r.unit() < 0.5), false)
        } else {
            (6, true)
        };
        let f = r.unit();
        let failure = if f < 0.6 {
            Failure::Http5xx
        } else if f < 0.85 {
            Failure::Timeout
        } else {
            Failure::Connect
        };
        let p = &self.profile;
        let partition = (stable_hash(&id) % p.partitions.max(1) as u64) as i32;
        Delivery {
            event_type: p.types[r.below(p.types.len())].clone(),
            key: format!("cust-{}", r.below(p.keys)),
            webhook: Profile::webhook(r.below(p.webhooks)),
            event_id: id,
            partition,
            total,
            dead,
            failure,
        }
    }

    /// The record of attempt `attempt` of `d` at `time_ms`; schedules the next one.
    fn attempt(&mut self, d: Box<Delivery>, attempt: u32, time_ms: i64) -> Ingested {
        let last = attempt >= d.total;
        let failed = !last || d.dead;
        let (status, latency_ms, reason, error) = if !failed {
            let l = 15 + (self.rng.unit().powi(3) * 400.0) as u64;
            (Some(200), l, None, None)
        } else {
            match d.failure {
                Failure::Http5xx => (
                    Some(503),
                    20 + self.rng.below(60) as u64,
                    Some("http_5xx"),
                    Some("the receiver answered 503 Service Unavailable"),
                ),
                Failure::Timeout => (
                    None,
                    30_000,
                    Some("timeout"),
                    Some("no response within the 30s timeout"),
                ),
                Failure::Connect => (
                    None,
                    1 + self.rng.below(5) as u64,
                    Some("connect"),
                    Some("connection refused (os error 111)"),
                ),
            }
        };
        let mut due = None;
        let outcome = if !failed {
            "delivered"
        } else if last {
            "dead_letter"
        } else {
            // Default policy: exponential from 1 s, equal jitter (half fixed, half random).
            let nominal = 1000i64 << (attempt - 1).min(20);
            let delay = nominal / 2 + (self.rng.unit() * (nominal / 2) as f64) as i64;
            due = Some(time_ms + latency_ms as i64 + delay);
            "retry"
        };
        let record = AttemptRecord {
            event_id: d.event_id.clone(),
            event_type: d.event_type.clone(),
            key: Some(d.key.clone()),
            webhook: d.webhook.clone(),
            attempt,
            sent: true,
            status,
            latency_ms,
            outcome: outcome.to_owned(),
            reason: reason.map(str::to_owned),
            error: error.map(str::to_owned),
            next_attempt_at: due.map(rfc3339),
            dead_letter_reason: (last && d.dead).then(|| "retries_exhausted".to_owned()),
            time: rfc3339(time_ms),
            replay: None,
        };
        let p = usize::try_from(d.partition).unwrap_or(0);
        let offset = self.offsets[p];
        self.offsets[p] += 1;
        let partition = d.partition;
        if let Some(next) = due {
            self.order += 1;
            self.retries.push(Reverse(Due {
                due_ms: next,
                order: self.order,
                attempt: attempt + 1,
                delivery: d,
            }));
        }
        Ingested {
            tenant: self.profile.tenant.clone(),
            topic: self.topic.clone(),
            partition,
            offset,
            record,
        }
    }

    /// The next offset of every partition (what a store holds after everything yielded so far).
    pub fn positions(&self) -> Vec<Position> {
        (0..)
            .zip(&self.offsets)
            .filter(|(_, o)| **o > 0)
            .map(|(partition, o)| Position {
                topic: self.topic.clone(),
                partition,
                next_offset: *o,
            })
            .collect()
    }
}

impl Iterator for Generator {
    type Item = Ingested;

    fn next(&mut self) -> Option<Ingested> {
        let next_event = self.event_time(self.events);
        let retry_first = self
            .retries
            .peek()
            .is_some_and(|Reverse(d)| d.due_ms <= next_event);
        if retry_first {
            let Reverse(due) = self.retries.pop()?;
            return Some(self.attempt(due.delivery, due.attempt, due.due_ms));
        }
        self.events += 1;
        let d = Box::new(self.new_delivery());
        Some(self.attempt(d, 1, next_event))
    }
}

/// `records` as one batch, with the position after each partition's last record.
pub fn batch(records: Vec<Ingested>) -> Batch {
    let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for r in &records {
        let e = next.entry((r.topic.clone(), r.partition)).or_insert(0);
        *e = (*e).max(r.offset + 1);
    }
    Batch {
        records,
        positions: next
            .into_iter()
            .map(|((topic, partition), next_offset)| Position {
                topic,
                partition,
                next_offset,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    fn records(n: usize) -> Vec<Ingested> {
        Generator::new(Profile::tenant("acme", 1_700_000_000_000, 100.0, 7))
            .take(n)
            .collect()
    }

    #[test]
    fn deliveries_take_about_one_point_two_attempts_and_event_ids_are_unique() {
        let rs = records(100_000);
        let deliveries: HashSet<(&str, &str)> = rs
            .iter()
            .map(|r| (r.record.event_id.as_str(), r.record.webhook.as_str()))
            .collect();
        let firsts = rs.iter().filter(|r| r.record.attempt == 1).count();
        assert_eq!(
            deliveries.len(),
            firsts,
            "one webhook per event, ids unique"
        );
        let per = rs.len() as f64 / firsts as f64;
        assert!((1.15..1.25).contains(&per), "{per} attempts per delivery");
        let webhooks: HashSet<&str> = rs.iter().map(|r| r.record.webhook.as_str()).collect();
        assert_eq!(webhooks.len(), 10);
        assert!(rs.iter().any(|r| r.record.outcome == "dead_letter"));
    }

    #[test]
    fn retries_come_later_in_the_stream_with_later_times_and_offsets_run_per_partition() {
        let rs = records(50_000);
        let mut seen: HashMap<&str, (usize, i64, u32)> = HashMap::new();
        let mut retried_later = 0;
        for (i, r) in rs.iter().enumerate() {
            let t = r.record.time.parse::<Timestamp>().unwrap().as_millisecond();
            if let Some((j, t0, a)) = seen.get(r.record.event_id.as_str()) {
                assert_eq!(r.record.attempt, a + 1);
                assert!(t > *t0);
                retried_later += usize::from(i > j + 100);
            }
            seen.insert(&r.record.event_id, (i, t, r.record.attempt));
        }
        assert!(retried_later > 1000, "{retried_later}");
        let mut last: HashMap<i32, i64> = HashMap::new();
        for r in &rs {
            let want = last.get(&r.partition).map_or(0, |o| o + 1);
            assert_eq!(r.offset, want);
            last.insert(r.partition, r.offset);
        }
        let b = batch(rs);
        assert_eq!(b.positions.len(), 6);
    }

    #[test]
    fn the_same_seed_gives_the_same_records() {
        let a: Vec<String> = records(100)
            .into_iter()
            .map(|r| r.record.event_id)
            .collect();
        let b: Vec<String> = records(100)
            .into_iter()
            .map(|r| r.record.event_id)
            .collect();
        assert_eq!(a, b);
    }
}

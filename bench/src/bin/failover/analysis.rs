//! The figures of one run, as plain functions of what flowed in: the receiver's request log
//! ([`Req`], in arrival order) and what the producer wrote ([`Produced`]: each event's
//! partition and produce time, `None` when Kafka did not acknowledge it). Out come the
//! fail-over time per partition after a kill ([`failover`]), the duplicates ([`duplicates`]),
//! the events never answered 2xx ([`lost`]) and the longest silence of each partition
//! ([`max_gaps`]). Every time is µs on the bench clock; results are in seconds.

use serde::Serialize;

/// One request the receiver saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Req {
    /// The event's sequence number.
    pub seq: u32,
    /// `hookline-attempt` (1 when absent).
    pub attempt: u32,
    /// Whether it was answered 2xx.
    pub ok: bool,
    /// When it arrived.
    pub recv_us: u64,
}

/// An event Kafka acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Produced {
    /// Its events partition.
    pub partition: usize,
    /// Its produce (due) time, as embedded in the event.
    pub t_us: u64,
}

/// The first arrival (answered or not) of each event `seq < n`.
pub fn first_arrivals(reqs: &[Req], n: usize) -> Vec<Option<u64>> {
    let mut first = vec![None; n];
    for r in reqs {
        if let Some(f) = first.get_mut(r.seq as usize) {
            *f = Some(f.map_or(r.recv_us, |t: u64| t.min(r.recv_us)));
        }
    }
    first
}

/// Per partition: seconds from `kill_us` until the receiver first saw an event of that partition
/// produced after the kill — how long the partition went unconsumed. `None` when no such event
/// arrived (none was produced, or it never arrived).
pub fn failover(
    kill_us: u64,
    events: &[Option<Produced>],
    first: &[Option<u64>],
    partitions: usize,
) -> Vec<Option<f64>> {
    let mut out: Vec<Option<u64>> = vec![None; partitions];
    for (e, f) in events.iter().zip(first) {
        if let (Some(e), Some(f)) = (e, f)
            && e.t_us > kill_us
            && let Some(slot) = out.get_mut(e.partition)
        {
            *slot = Some(slot.map_or(*f, |t| t.min(*f)));
        }
    }
    out.into_iter()
        .map(|t| t.map(|t| t.saturating_sub(kill_us) as f64 / 1e6))
        .collect()
}

/// Events answered 2xx more than once.
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq, Eq)]
pub struct Duplicates {
    /// Events answered 2xx more than once.
    pub ids: u64,
    /// 2xx answers beyond the first, summed over events.
    pub extra: u64,
    /// Of those extra answers, the ones whose request said `hookline-attempt: 1`.
    pub extra_attempt1: u64,
}

/// The duplicates among events `seq < n`; `reqs` in arrival order (the first 2xx is the
/// delivery, every later one an extra copy).
pub fn duplicates(reqs: &[Req], n: usize) -> Duplicates {
    let mut oks = vec![0u32; n];
    let mut d = Duplicates::default();
    for r in reqs.iter().filter(|r| r.ok) {
        let Some(c) = oks.get_mut(r.seq as usize) else {
            continue;
        };
        *c += 1;
        if *c == 2 {
            d.ids += 1;
        }
        if *c >= 2 {
            d.extra += 1;
            if r.attempt == 1 {
                d.extra_attempt1 += 1;
            }
        }
    }
    d
}

/// Acknowledged events never answered 2xx.
pub fn lost(reqs: &[Req], events: &[Option<Produced>]) -> u64 {
    let mut ok = vec![false; events.len()];
    for r in reqs.iter().filter(|r| r.ok) {
        if let Some(o) = ok.get_mut(r.seq as usize) {
            *o = true;
        }
    }
    events
        .iter()
        .zip(ok)
        .filter(|(e, ok)| e.is_some() && !ok)
        .count() as u64
}

/// Per partition: the longest time between two successive first arrivals of its events, in
/// seconds — how long the partition stood still while it had events (at 1,000 events/s over 6
/// partitions a healthy partition sees one every 6 ms).
pub fn max_gaps(events: &[Option<Produced>], first: &[Option<u64>], partitions: usize) -> Vec<f64> {
    let mut per: Vec<Vec<u64>> = vec![Vec::new(); partitions];
    for (e, f) in events.iter().zip(first) {
        if let (Some(e), Some(f)) = (e, f)
            && let Some(v) = per.get_mut(e.partition)
        {
            v.push(*f);
        }
    }
    per.into_iter()
        .map(|mut v| {
            v.sort_unstable();
            v.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0) as f64 / 1e6
        })
        .collect()
}

/// Produce → first arrival of every event that arrived, µs.
pub fn latencies_us(events: &[Option<Produced>], first: &[Option<u64>]) -> Vec<u32> {
    events
        .iter()
        .zip(first)
        .filter_map(|(e, f)| {
            let (e, f) = (e.as_ref()?, f.as_ref()?);
            Some(u32::try_from(f.saturating_sub(e.t_us)).unwrap_or(u32::MAX))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(seq: u32, attempt: u32, ok: bool, recv_us: u64) -> Req {
        Req {
            seq,
            attempt,
            ok,
            recv_us,
        }
    }

    fn ev(partition: usize, t_us: u64) -> Option<Produced> {
        Some(Produced { partition, t_us })
    }

    #[test]
    fn failover_is_the_first_arrival_of_an_event_produced_after_the_kill() {
        // Partition 0: event 0 before the kill, event 2 after it, seen 4 s after the kill.
        // Partition 1: event 1 after the kill, seen 0.5 s after it (failed, still counts).
        let events = [ev(0, 900), ev(1, 1_100), ev(0, 1_200)];
        let reqs = [
            req(0, 1, true, 5_000_000),
            req(1, 1, false, 501_000),
            req(2, 1, true, 4_001_000),
        ];
        let first = first_arrivals(&reqs, 3);
        let f = failover(1_000, &events, &first, 3);
        assert_eq!(f, vec![Some(4.0), Some(0.5), None]);
    }

    #[test]
    fn extra_2xx_answers_are_duplicates_and_their_attempt_is_told() {
        let reqs = [
            req(0, 1, false, 1),
            req(0, 2, true, 2),
            req(0, 1, true, 3),
            req(0, 2, true, 4),
            req(1, 1, true, 5),
            req(9, 1, true, 6),
        ];
        let d = duplicates(&reqs, 2);
        assert_eq!(
            d,
            Duplicates {
                ids: 1,
                extra: 2,
                extra_attempt1: 1
            }
        );
    }

    #[test]
    fn an_acknowledged_event_without_a_2xx_is_lost() {
        let events = [ev(0, 1), ev(0, 2), None];
        let reqs = [req(0, 1, true, 5), req(1, 1, false, 6)];
        assert_eq!(lost(&reqs, &events), 1);
    }

    #[test]
    fn the_longest_silence_of_each_partition_is_its_gap() {
        let events = [ev(0, 0), ev(0, 1), ev(0, 2), ev(1, 0)];
        let first = [Some(1_000_000), Some(1_010_000), Some(3_010_000), Some(5)];
        assert_eq!(max_gaps(&events, &first, 2), vec![2.0, 0.0]);
        assert_eq!(latencies_us(&events, &first)[3], 5);
    }
}

//! Numbers out of samples: latency percentiles (nearest rank) from the sink's
//! per-delivery latencies, sustained rates from its 100 ms timeline, and the
//! median / min / max [`Spread`] over repeated runs that every reported
//! figure is.

use serde::Serialize;

use crate::sink::BUCKET_US;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Latency {
    /// Number of samples.
    pub samples: usize,
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

/// The nearest-rank `p`-th percentile (0–100) of sorted `v`.
pub fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    f64::from(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Percentiles of latency samples given in µs.
pub fn latency(mut us: Vec<u32>) -> Latency {
    us.sort_unstable();
    let ms = |p: f64| percentile(&us, p) / 1000.0;
    Latency {
        samples: us.len(),
        p50_ms: ms(50.0),
        p95_ms: ms(95.0),
        p99_ms: ms(99.0),
        p999_ms: ms(99.9),
        max_ms: us.last().map_or(0.0, |m| f64::from(*m) / 1000.0),
    }
}

/// A sustained rate read from a timeline of 100 ms buckets.
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq)]
pub struct Window {
    /// Arrivals per second inside the window.
    pub rate: f64,
    /// The window's length in seconds.
    pub seconds: f64,
    /// Index of its first bucket.
    pub first: usize,
    /// Index of its last bucket.
    pub last: usize,
}

/// The rate between the buckets where `lo` and `hi` (fractions of `total`)
/// of the arrivals had arrived: 5–95 % leaves out the ramp-up and the tail.
pub fn window(timeline: &[u32], total: u64, lo: f64, hi: f64) -> Window {
    let (lo_n, hi_n) = (
        (total as f64 * lo).ceil() as u64,
        (total as f64 * hi).ceil() as u64,
    );
    let mut cum = 0u64;
    let (mut first, mut last) = (None, None);
    for (i, c) in timeline.iter().enumerate() {
        cum += u64::from(*c);
        if first.is_none() && cum >= lo_n.max(1) {
            first = Some(i);
        }
        if last.is_none() && cum >= hi_n.max(1) {
            last = Some(i);
            break;
        }
    }
    let (Some(first), Some(last)) = (first, last.or(timeline.len().checked_sub(1))) else {
        return Window::default();
    };
    let n: u64 = timeline[first..=last].iter().map(|c| u64::from(*c)).sum();
    let seconds = (last - first + 1) as f64 * BUCKET_US as f64 / 1e6;
    Window {
        rate: n as f64 / seconds,
        seconds,
        first,
        last,
    }
}

/// Median, min and max over runs, with the runs' values.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Spread {
    /// Median (mean of the middle two for an even count).
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
    /// Every run's value, in run order.
    pub runs: Vec<f64>,
}

/// The spread of `values` (NaNs dropped).
pub fn spread(values: &[f64]) -> Spread {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return Spread::default();
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
    };
    Spread {
        median,
        min: v[0],
        max: v[n - 1],
        runs: values.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        let l = latency((1..=1000).map(|x| x * 1000).collect());
        assert_eq!(l.p50_ms, 500.0);
        assert_eq!(l.max_ms, 1000.0);
    }

    #[test]
    fn the_window_leaves_out_ramp_up_and_tail() {
        // 1 per bucket of ramp, 100 per bucket for 10 buckets, 1 per bucket of tail.
        let mut t = vec![1u32; 5];
        t.extend([100; 10]);
        t.extend([1; 5]);
        let total = t.iter().map(|c| u64::from(*c)).sum();
        let w = window(&t, total, 0.05, 0.95);
        assert!(w.rate > 900.0 && w.rate <= 1000.0, "{w:?}");
    }

    #[test]
    fn spreads_give_median_min_and_max() {
        let s = spread(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(spread(&[1.0, 2.0]).median, 1.5);
        assert_eq!(spread(&[]).median, 0.0);
    }
}

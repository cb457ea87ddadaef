//! The one clock of a benchmark: microseconds since this process first asked,
//! from the monotonic clock. The producer writes it into each event's `data`
//! (`"t"`), the sink and the baseline client read it when a request arrives,
//! so produce→receive latency is a difference on one clock in one process,
//! immune to wall-clock steps.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

static ORIGIN: OnceLock<Instant> = OnceLock::new();

/// The origin of [`now_us`]; fixed on first use.
pub fn origin() -> Instant {
    *ORIGIN.get_or_init(Instant::now)
}

/// Microseconds since [`origin`].
pub fn now_us() -> u64 {
    u64::try_from(origin().elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// The instant `us` microseconds after [`origin`].
pub fn at_us(us: u64) -> Instant {
    origin() + Duration::from_micros(us)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_is_monotonic_and_maps_back_to_instants() {
        let a = now_us();
        std::thread::sleep(Duration::from_millis(2));
        let b = now_us();
        assert!(b >= a + 2_000);
        assert!(at_us(b) <= Instant::now());
    }
}

//! Memory per remembered event id in the dispatcher's dedup state
//! ([`hookline_core::dedup::Seen`]): the process's resident set (`VmRSS`) before and after
//! remembering N ids (default 1,000,000) spread over 23 hours of a 24-hour window, as a steady
//! stream would leave them, three runs. The maps' large tables are `mmap`ed by the allocator,
//! so the resident set follows what is live. The ids' own strings are not kept.
//! Run: `cargo run --release -p hookline-bench --bin dedup-memory [N]`.

use std::time::Duration;

use hookline_core::dedup::{Check, Seen, id_hash};

fn rss_bytes() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<i64>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024)
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let window = Duration::from_secs(86_400);
    for run in 1..=3 {
        let before = rss_bytes();
        let mut seen = Seen::new(window);
        let mut id = String::with_capacity(32);
        for i in 0..n {
            let at = 1_000_000 + i * 82_800 / n;
            id.clear();
            std::fmt::Write::write_fmt(&mut id, format_args!("evt_{run}_{i:012}")).unwrap();
            assert_eq!(
                seen.check(id_hash(&id), i64::try_from(i).unwrap(), at),
                Check::First
            );
        }
        let after = rss_bytes();
        println!(
            "run {run}: {} ids remembered, resident set +{} bytes, {:.1} bytes per id",
            seen.len(),
            after - before,
            (after - before) as f64 / n as f64
        );
        drop(seen);
    }
}

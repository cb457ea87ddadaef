//! Memory bounds in bytes: the container's memory limit as its cgroup states it, and the
//! [`Budget`] the dispatcher derives from it for what it holds per record — records read ahead
//! by the Kafka consumer, records waiting in the producer's queue, and the deliveries in memory.
//!
//! # Decisions
//! - The limit is the cgroup's (v2 `memory.max`, v1 `memory.limit_in_bytes` and the
//!   hierarchical limit of `memory.stat`), the smallest along the path to the root: what the
//!   kernel's OOM killer enforces. A flag may state it instead (`--memory-limit`).
//! - Of the limit, [`RESERVE`] plus a tenth stay for the process itself (runtime, TLS and HTTP
//!   connections, metrics: the dispatcher idles at ~32 MiB, a debug build at ~45 MiB with 26
//!   of them its mapped binary) and for what the kernel charges to the container besides
//!   (socket buffers). Of the rest, an eighth each for the consumer's read-ahead and the
//!   producer's queue, three eighths for the deliveries in memory — counted as the bytes their
//!   records occupy in the event and its signed body, about twice the record — and three
//!   eighths are left for what passes through: records handed over by the consumer before a
//!   pause took hold, request and response buffers, and memory the allocator has not returned.
//!   Measured (tests/tests/memory.rs, debug build, 64 KiB events): with half for the
//!   deliveries the container's charge peaked at 223 of 256 MiB; the split was made more
//!   careful after that.
//! - Without a limit, the deliveries in memory may hold [`UNLIMITED_PENDING_BYTES`] and the
//!   Kafka clients keep their defaults.

use std::path::{Path, PathBuf};

/// What a process keeps for itself before the budget is shared out, in bytes.
pub const RESERVE: u64 = 64 << 20;

/// The bytes the deliveries in memory may hold when the container has no limit.
pub const UNLIMITED_PENDING_BYTES: u64 = 1 << 30;

/// The least share of each part: enough for a few records of the default size bound.
const MIN_PART: u64 = 4 << 20;

/// How the dispatcher's memory is shared out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The limit it derives from (`None`: no limit).
    pub limit: Option<u64>,
    /// Bytes of the records the deliveries in memory may hold before consumption pauses.
    pub pending_bytes: u64,
    /// The consumer's read-ahead (`queued.max.messages.kbytes` and `fetch.max.bytes`), when
    /// bounded.
    pub consumer_queue_bytes: Option<u64>,
    /// The producer's queue (`queue.buffering.max.kbytes`), when bounded.
    pub producer_queue_bytes: Option<u64>,
}

impl Budget {
    /// The budget under a memory limit of `limit` bytes, or without one.
    pub fn new(limit: Option<u64>) -> Budget {
        let Some(limit) = limit else {
            return Budget {
                limit: None,
                pending_bytes: UNLIMITED_PENDING_BYTES,
                consumer_queue_bytes: None,
                producer_queue_bytes: None,
            };
        };
        let usable = limit.saturating_sub(RESERVE + limit / 10);
        Budget {
            limit: Some(limit),
            pending_bytes: (usable / 8 * 3).max(MIN_PART),
            consumer_queue_bytes: Some((usable / 8).max(MIN_PART)),
            producer_queue_bytes: Some((usable / 8).max(MIN_PART)),
        }
    }

    /// The consumer settings that bound its read-ahead (none without a limit). A fetch is
    /// never smaller than one record of `max_record_bytes`, or a record that size could not
    /// be read.
    pub fn consumer_settings(&self, max_record_bytes: usize) -> Vec<(String, String)> {
        let Some(bytes) = self.consumer_queue_bytes else {
            return Vec::new();
        };
        let fetch = bytes.max(crate::kafka::max_message_bytes(max_record_bytes) as u64);
        vec![
            (
                "queued.max.messages.kbytes".into(),
                (bytes / 1024).to_string(),
            ),
            ("fetch.max.bytes".into(), fetch.to_string()),
            // librdkafka requires it above fetch.max.bytes (by 512 bytes of framing).
            (
                "receive.message.max.bytes".into(),
                (fetch + 1024).to_string(),
            ),
        ]
    }

    /// The producer settings that bound its queue (none without a limit).
    pub fn producer_settings(&self, max_record_bytes: usize) -> Vec<(String, String)> {
        let Some(bytes) = self.producer_queue_bytes else {
            return Vec::new();
        };
        let bytes = bytes.max(2 * crate::kafka::max_message_bytes(max_record_bytes) as u64);
        vec![(
            "queue.buffering.max.kbytes".into(),
            (bytes / 1024).to_string(),
        )]
    }
}

/// A cgroup limit file's value: `max` (v2) or a number at or above 2^60 (v1's "unlimited",
/// 9223372036854771712) is no limit.
pub fn parse_limit(text: &str) -> Option<u64> {
    let n = text.trim().parse::<u64>().ok()?;
    (n > 0 && n < (1 << 60)).then_some(n)
}

/// The `hierarchical_memory_limit` of a v1 `memory.stat`.
fn hierarchical_limit(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("hierarchical_memory_limit "))
        .and_then(parse_limit)
}

/// The limit files that bound the process whose `/proc/self/cgroup` is `proc_cgroup`, with
/// the cgroup file system at `root`: each file with how to read it. Both the process's own
/// path and the root are listed (in a container with its own cgroup namespace the path is
/// `/` and the root is the container's cgroup).
pub fn limit_files(proc_cgroup: &str, root: &Path) -> Vec<(PathBuf, LimitFile)> {
    let mut out = Vec::new();
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let rel = path.trim_start_matches('/');
        if controllers.is_empty() {
            // v2: memory.max of the cgroup and of every ancestor.
            let mut dir = root.join(rel);
            loop {
                out.push((dir.join("memory.max"), LimitFile::Plain));
                if dir.as_path() == root || !dir.pop() {
                    break;
                }
            }
        } else if controllers.split(',').any(|c| c == "memory") {
            for dir in [root.join("memory").join(rel), root.join("memory")] {
                out.push((dir.join("memory.limit_in_bytes"), LimitFile::Plain));
                out.push((dir.join("memory.stat"), LimitFile::V1Stat));
            }
        }
    }
    out
}

/// How a limit file states its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitFile {
    /// The file is the number (or `max`).
    Plain,
    /// A v1 `memory.stat`, whose `hierarchical_memory_limit` counts the ancestors' too.
    V1Stat,
}

/// The smallest limit among `files` read by `read`.
pub fn smallest_limit(
    files: &[(PathBuf, LimitFile)],
    read: impl Fn(&Path) -> Option<String>,
) -> Option<u64> {
    files
        .iter()
        .filter_map(|(path, kind)| {
            let text = read(path)?;
            match kind {
                LimitFile::Plain => parse_limit(&text),
                LimitFile::V1Stat => hierarchical_limit(&text),
            }
        })
        .min()
}

/// This process's memory limit from its cgroup (v1 or v2), if it has one.
pub fn cgroup_limit() -> Option<u64> {
    let proc_cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let files = limit_files(&proc_cgroup, Path::new("/sys/fs/cgroup"));
    smallest_limit(&files, |p| std::fs::read_to_string(p).ok())
}

/// Bytes, or a number with a `KiB`/`MiB`/`GiB` suffix or a Kubernetes `Ki`/`Mi`/`Gi` one.
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_size(s: &str) -> Result<usize, String> {
    const UNITS: [(&str, usize); 6] = [
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ];
    let (n, unit) = UNITS
        .iter()
        .find_map(|(suffix, unit)| s.strip_suffix(suffix).map(|n| (n, *unit)))
        .unwrap_or((s, 1));
    n.trim()
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{s:?} is not a size: bytes, or a number with KiB, MiB or GiB"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn sizes_take_binary_suffixes_and_refuse_the_rest() {
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("64KiB"), Ok(65_536));
        assert_eq!(parse_size("256Mi"), Ok(256 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("1MB").is_err());
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn unlimited_values_are_no_limit() {
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("9223372036854771712\n"), None);
        assert_eq!(parse_limit("268435456\n"), Some(256 << 20));
        assert_eq!(parse_limit("0"), None);
    }

    #[test]
    fn a_256_mib_limit_leaves_the_reserve_and_shares_the_rest() {
        let b = Budget::new(Some(256 << 20));
        let usable = (256u64 << 20) - RESERVE - (256u64 << 20) / 10;
        assert_eq!(b.pending_bytes, usable / 8 * 3);
        assert_eq!(b.consumer_queue_bytes, Some(usable / 8));
        let total = RESERVE
            + (256u64 << 20) / 10
            + b.pending_bytes
            + b.consumer_queue_bytes.unwrap()
            + b.producer_queue_bytes.unwrap();
        assert!(total < 256 << 20, "{total}");
        let consumer: HashMap<_, _> = b.consumer_settings(1 << 20).into_iter().collect();
        assert_eq!(
            consumer["queued.max.messages.kbytes"],
            (usable / 8 / 1024).to_string()
        );
        let fetch: u64 = consumer["fetch.max.bytes"].parse().unwrap();
        let receive: u64 = consumer["receive.message.max.bytes"].parse().unwrap();
        assert!(receive > fetch + 512);
    }

    #[test]
    fn a_tiny_limit_still_admits_records_of_the_size_bound_and_none_keeps_defaults() {
        let b = Budget::new(Some(32 << 20));
        assert_eq!(b.pending_bytes, MIN_PART);
        let consumer: HashMap<_, _> = b.consumer_settings(4 << 20).into_iter().collect();
        let fetch: u64 = consumer["fetch.max.bytes"].parse().unwrap();
        assert!(fetch >= 4 << 20, "{fetch}");
        let none = Budget::new(None);
        assert_eq!(none.pending_bytes, UNLIMITED_PENDING_BYTES);
        assert!(none.consumer_settings(1 << 20).is_empty());
        assert!(none.producer_settings(1 << 20).is_empty());
    }

    #[test]
    fn the_smallest_limit_along_the_cgroup_path_counts() {
        let root = Path::new("/cg");
        // v1: the process's own cgroup is unlimited, its parent has 256 MiB.
        let v1 = "4:memory:/pods/disp\n3:cpu:/\n";
        let files = limit_files(v1, root);
        let fs: HashMap<PathBuf, String> = [
            (
                "/cg/memory/pods/disp/memory.limit_in_bytes",
                "9223372036854771712",
            ),
            (
                "/cg/memory/pods/disp/memory.stat",
                "cache 0\nhierarchical_memory_limit 268435456\n",
            ),
            ("/cg/memory/memory.limit_in_bytes", "9223372036854771712"),
        ]
        .into_iter()
        .map(|(p, v)| (PathBuf::from(p), v.to_owned()))
        .collect();
        assert_eq!(
            smallest_limit(&files, |p| fs.get(p).cloned()),
            Some(256 << 20)
        );
        // v2 with a cgroup namespace: the path is `/`, the root's memory.max is the limit.
        let files = limit_files("0::/\n", root);
        let fs: HashMap<PathBuf, String> =
            [(PathBuf::from("/cg/memory.max"), "134217728\n".to_owned())].into();
        assert_eq!(
            smallest_limit(&files, |p| fs.get(p).cloned()),
            Some(128 << 20)
        );
        // v2 without one: an ancestor's limit bounds the process.
        let files = limit_files("0::/a/b\n", root);
        let fs: HashMap<PathBuf, String> = [
            (PathBuf::from("/cg/a/b/memory.max"), "max\n".to_owned()),
            (PathBuf::from("/cg/a/memory.max"), "67108864\n".to_owned()),
        ]
        .into();
        assert_eq!(
            smallest_limit(&files, |p| fs.get(p).cloned()),
            Some(64 << 20)
        );
        assert_eq!(smallest_limit(&limit_files("", root), |_| None), None);
    }
}

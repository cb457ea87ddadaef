//! The store on its own, in this process: generated records flow into
//! [`SqliteStore::apply`] in batches of [`MAX_BATCH`] ([`fill`]: only `apply` is timed, not
//! the generating), and the filled store answers the API's queries ([`queries`]: one kind at a
//! time, each a closed loop of single calls with random arguments). Out come rates per segment
//! of the fill, per-batch times, the file's size and where its bytes go ([`layout`]), and
//! latency percentiles per query kind.
//!
//! Caveat: the machine has far more memory than the file, so after the fill every query reads
//! from the page cache; a store larger than memory would be slower.

use std::path::Path;
use std::time::{Duration, Instant};

use hookline_api::ingest::MAX_BATCH;
use hookline_api::model::Window;
use hookline_api::store::sqlite::SqliteStore;
use hookline_api::store::{Cursor, DeliveryLog, Filter, Status};
use rusqlite::OptionalExtension as _;
use serde::Serialize;

use super::records::{self, Generator, Profile, Rng};
use crate::stats::{self, Latency};

/// What a fill did.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Fill {
    /// Attempts stored.
    pub attempts: u64,
    /// Deliveries among them (first attempts).
    pub deliveries: u64,
    /// Seconds inside `apply`.
    pub apply_s: f64,
    /// CPU-seconds of the applying thread inside `apply` (what a core of its own would need).
    pub apply_cpu_s: f64,
    /// Seconds in all (generating included).
    pub wall_s: f64,
    /// Attempts per second of `apply` time.
    pub rate: f64,
    /// Attempts per CPU-second of `apply`: the rate on a core of its own, on a shared machine.
    pub cpu_rate: f64,
    /// `(attempts stored at the segment's end, attempts/s within the segment)`.
    pub segments: Vec<(u64, f64)>,
    /// Time per batch (ms percentiles).
    pub batch: Latency,
    /// Why it stopped before the count, if it did.
    pub stopped: Option<String>,
    /// A uniform sample of the event ids stored.
    #[serde(skip)]
    pub sample_ids: Vec<String>,
    /// First and last attempt time, Unix ms.
    pub span_ms: (i64, i64),
}

/// Applies `n` records of `generator` to `store` in batches of [`MAX_BATCH`], for at most
/// `limit` of wall time; rates per `segment` attempts; keeps a sample of `sample` event ids.
///
/// # Errors
/// When the store fails.
pub fn fill(
    store: &SqliteStore,
    generator: &mut Generator,
    n: u64,
    limit: Duration,
    segment: u64,
    sample: usize,
) -> anyhow::Result<Fill> {
    let started = Instant::now();
    let mut f = Fill::default();
    let mut rng = Rng::new(generator.profile().seed ^ 0x5eed);
    let mut batch_us = Vec::new();
    let (mut seg_at, mut seg_s) = (0u64, 0.0f64);
    let mut first_ms = None;
    let mut last_ms = 0;
    let mut seen_firsts = 0u64;
    let mut next_say = Instant::now() + Duration::from_secs(30);
    while f.attempts < n {
        if started.elapsed() > limit {
            f.stopped = Some(format!(
                "stopped at the {}-s limit after {} attempts",
                limit.as_secs(),
                f.attempts
            ));
            break;
        }
        let take = usize::try_from((n - f.attempts).min(MAX_BATCH as u64)).unwrap_or(MAX_BATCH);
        let recs: Vec<_> = generator.by_ref().take(take).collect();
        for r in &recs {
            if r.record.attempt == 1 {
                seen_firsts += 1;
                // Reservoir sampling: every delivery equally likely to be kept.
                if f.sample_ids.len() < sample {
                    f.sample_ids.push(r.record.event_id.clone());
                } else {
                    let j = rng.below(usize::try_from(seen_firsts).unwrap_or(usize::MAX));
                    if j < sample {
                        f.sample_ids[j].clone_from(&r.record.event_id);
                    }
                }
            }
        }
        if let (Some(a), Some(b)) = (recs.first(), recs.last()) {
            first_ms.get_or_insert_with(|| ms(&a.record.time));
            last_ms = ms(&b.record.time);
        }
        let b = records::batch(recs);
        let (t, cpu) = (Instant::now(), thread_cpu_s());
        store.apply(&b)?;
        let dt = t.elapsed();
        f.apply_cpu_s += thread_cpu_s() - cpu;
        batch_us.push(u32::try_from(dt.as_micros()).unwrap_or(u32::MAX));
        f.apply_s += dt.as_secs_f64();
        seg_s += dt.as_secs_f64();
        f.attempts += b.records.len() as u64;
        if f.attempts - seg_at >= segment || f.attempts >= n {
            f.segments
                .push((f.attempts, (f.attempts - seg_at) as f64 / seg_s.max(1e-9)));
            (seg_at, seg_s) = (f.attempts, 0.0);
        }
        if Instant::now() > next_say {
            eprintln!(
                "    … {} attempts stored, {:.0}/s so far",
                f.attempts,
                f.attempts as f64 / f.apply_s.max(1e-9)
            );
            next_say += Duration::from_secs(30);
        }
    }
    f.deliveries = seen_firsts;
    f.wall_s = started.elapsed().as_secs_f64();
    f.rate = f.attempts as f64 / f.apply_s.max(1e-9);
    f.cpu_rate = f.attempts as f64 / f.apply_cpu_s.max(1e-9);
    f.batch = stats::latency(batch_us);
    f.span_ms = (first_ms.unwrap_or(0), last_ms);
    Ok(f)
}

/// CPU time of the calling thread, seconds.
pub fn thread_cpu_s() -> f64 {
    use nix::time::{ClockId, clock_gettime};
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map_or(0.0, |t| t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9)
}

fn ms(rfc3339: &str) -> i64 {
    hookline_api::store::sqlite::parse_ms(rfc3339).unwrap_or(0)
}

/// The profile and fill of an existing store file (its one tenant, the attempts and deliveries
/// it holds, their time span and a uniform sample of `sample` event ids, drawn by row id).
///
/// # Errors
/// When the file cannot be read or holds no deliveries.
pub fn describe(path: &Path, sample: usize) -> anyhow::Result<(Profile, Fill)> {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let tenant: String =
        conn.query_row("SELECT tenant FROM deliveries LIMIT 1", [], |r| r.get(0))?;
    let (lo, hi, max_id): (i64, i64, i64) = conn.query_row(
        "SELECT min(first_ms), max(first_ms), max(id) FROM deliveries WHERE tenant = ?1",
        [&tenant],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let attempts: i64 = conn.query_row("SELECT count(*) FROM attempts", [], |r| r.get(0))?;
    let mut rng = Rng::new(0xD5);
    let mut st = conn.prepare("SELECT event_id FROM deliveries WHERE id = ?1")?;
    let mut ids = Vec::with_capacity(sample);
    while ids.len() < sample {
        let id = 1 + i64::try_from(rng.below(usize::try_from(max_id).unwrap_or(1))).unwrap_or(0);
        if let Some(e) = st.query_row([id], |r| r.get::<_, String>(0)).optional()? {
            ids.push(e);
        }
    }
    let profile = Profile::tenant(&tenant, lo, 1.0, 0);
    let fill = Fill {
        attempts: u64::try_from(attempts).unwrap_or(0),
        deliveries: u64::try_from(max_id).unwrap_or(0),
        sample_ids: ids,
        span_ms: (lo, hi),
        ..Fill::default()
    };
    Ok((profile, fill))
}

/// Bytes of the store file after a checkpoint, and per table or index (SQLite's `dbstat`).
#[derive(Debug, Clone, Serialize, Default)]
pub struct Layout {
    /// The database file, WAL checkpointed and truncated.
    pub file_bytes: u64,
    /// Bytes per table or index.
    pub objects: Vec<(String, u64)>,
}

/// Checkpoints the WAL into the file (truncating it) and reads how the bytes are used. Call
/// with no store open on `path`.
///
/// # Errors
/// When the file cannot be opened or checkpointed.
pub fn layout(path: &Path) -> anyhow::Result<Layout> {
    let conn = rusqlite::Connection::open(path)?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    let objects = conn
        .prepare("SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC")
        .and_then(|mut st| {
            st.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .unwrap_or_default();
    Ok(Layout {
        file_bytes: std::fs::metadata(path)?.len(),
        objects,
    })
}

/// One kind of query the API makes, with its arguments drawn at random.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    /// `GET deliveries/{eventId}`: one event's deliveries with their attempts.
    Event,
    /// A page of 100, newest first, no filter.
    Page,
    /// … of one `Webhook`.
    PageWebhook,
    /// … with `status=dead_lettered` (0.5 % of deliveries).
    PageDeadLettered,
    /// … of one event type.
    PageEventType,
    /// … of one `Webhook` and `status=dead_lettered`.
    PageWebhookDeadLettered,
    /// … of one `Webhook` and one event type.
    PageWebhookEventType,
    /// … of one `Webhook`, after a cursor at a random time (deep in).
    PageWebhookDeepCursor,
    /// `stats`, 24 h in 15-minute buckets (the API's default).
    Stats24h,
    /// `stats` of one `Webhook`, 24 h.
    Stats24hWebhook,
    /// `stats`, 30 days in 6-hour buckets.
    Stats30d,
}

impl Query {
    /// Every kind, in the report's order.
    pub const ALL: [Query; 11] = [
        Query::Event,
        Query::Page,
        Query::PageWebhook,
        Query::PageDeadLettered,
        Query::PageEventType,
        Query::PageWebhookDeadLettered,
        Query::PageWebhookEventType,
        Query::PageWebhookDeepCursor,
        Query::Stats24h,
        Query::Stats24hWebhook,
        Query::Stats30d,
    ];

    /// For a person.
    pub fn name(self) -> &'static str {
        match self {
            Query::Event => "event by id",
            Query::Page => "page of 100",
            Query::PageWebhook => "page of 100, webhook=",
            Query::PageDeadLettered => "page of 100, status=dead_lettered",
            Query::PageEventType => "page of 100, eventType=",
            Query::PageWebhookDeadLettered => "page of 100, webhook= & status=dead_lettered",
            Query::PageWebhookEventType => "page of 100, webhook= & eventType=",
            Query::PageWebhookDeepCursor => "page of 100, webhook=, cursor deep in",
            Query::Stats24h => "stats 24h",
            Query::Stats24hWebhook => "stats 24h, webhook=",
            Query::Stats30d => "stats 30d",
        }
    }
}

/// Random arguments for one query of `kind`.
#[derive(Debug, Clone)]
pub struct Args {
    /// Event id ([`Query::Event`]).
    pub event_id: String,
    /// The list filter.
    pub filter: Filter,
    /// The cursor.
    pub cursor: Option<Cursor>,
    /// Stats: `webhook`, `from_ms`, `to_ms`, `bucket_ms`.
    pub stats: (Option<String>, i64, i64, i64),
}

/// Draws the arguments of one `kind` query over a store filled from `profile` whose attempts
/// span `span_ms`, at `now_ms`.
pub fn args(
    kind: Query,
    rng: &mut Rng,
    ids: &[String],
    profile: &Profile,
    span_ms: (i64, i64),
    now_ms: i64,
) -> Args {
    let webhook = Some(Profile::webhook(rng.below(profile.webhooks)));
    let event_type = Some(profile.types[rng.below(profile.types.len())].clone());
    let mut a = Args {
        event_id: ids.get(rng.below(ids.len())).cloned().unwrap_or_default(),
        filter: Filter::default(),
        cursor: None,
        stats: (None, 0, 0, 0),
    };
    // As the API's `GET …/stats` computes them (`routes/deliveries.rs`).
    let stats = |webhook: Option<String>, window: Window| {
        let (minutes, bucket) = window.minutes();
        let bucket = bucket * 60_000;
        let to = (now_ms / bucket + 1) * bucket;
        (webhook, to - minutes * 60_000, to, bucket)
    };
    match kind {
        Query::Event | Query::Page => {}
        Query::PageWebhook => a.filter.webhook = webhook,
        Query::PageDeadLettered => a.filter.status = Some(Status::DeadLettered),
        Query::PageEventType => a.filter.event_type = event_type,
        Query::PageWebhookDeadLettered => {
            a.filter.webhook = webhook;
            a.filter.status = Some(Status::DeadLettered);
        }
        Query::PageWebhookEventType => {
            a.filter.webhook = webhook;
            a.filter.event_type = event_type;
        }
        Query::PageWebhookDeepCursor => {
            a.filter.webhook = webhook;
            let (lo, hi) = span_ms;
            a.cursor = Some(Cursor {
                first_ms: lo + (rng.unit() * (hi - lo) as f64) as i64,
                seq: i64::MAX,
            });
        }
        Query::Stats24h => a.stats = stats(None, Window::Day),
        Query::Stats24hWebhook => a.stats = stats(webhook, Window::Day),
        Query::Stats30d => a.stats = stats(None, Window::Month),
    }
    a
}

/// Page size of the list queries.
pub const PAGE: usize = 100;

/// Runs one query against `store`; how many items came back.
///
/// # Errors
/// When the store fails.
pub fn run_one(store: &SqliteStore, tenant: &str, kind: Query, a: &Args) -> anyhow::Result<usize> {
    Ok(match kind {
        Query::Event => store.event(tenant, &a.event_id)?.len(),
        Query::Stats24h | Query::Stats24hWebhook | Query::Stats30d => {
            let (w, from, to, bucket) = &a.stats;
            store
                .stats(tenant, w.as_deref(), *from, *to, *bucket)?
                .buckets
                .len()
        }
        _ => store.list(tenant, &a.filter, a.cursor, PAGE)?.items.len(),
    })
}

/// Latencies of up to `count` queries of `kind` (at most `limit` of time), and how many found
/// nothing (an empty event or page).
///
/// # Errors
/// When the store fails.
#[allow(clippy::too_many_arguments)]
pub fn queries(
    store: &SqliteStore,
    profile: &Profile,
    kind: Query,
    ids: &[String],
    span_ms: (i64, i64),
    count: usize,
    limit: Duration,
    seed: u64,
) -> anyhow::Result<(Latency, usize)> {
    let mut rng = Rng::new(seed);
    // Stats windows end at the log's last attempt (a reused or cut-short store ends earlier).
    let now = span_ms.1;
    let started = Instant::now();
    let mut us = Vec::with_capacity(count);
    let mut empty = 0;
    while us.len() < count && started.elapsed() < limit {
        let a = args(kind, &mut rng, ids, profile, span_ms, now);
        let t = Instant::now();
        let n = run_one(store, &profile.tenant, kind, &a)?;
        us.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
        empty += usize::from(n == 0);
    }
    Ok((stats::latency(us), empty))
}

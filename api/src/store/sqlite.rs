//! The delivery log in one SQLite file (WAL mode): one writer (ingestion) and a small pool of
//! readers (the API's requests), which WAL lets read while the writer writes.
//!
//! Tables: `deliveries` (one row per event × `Webhook`; indexed for the list's filters, newest
//! first), `attempts` (clustered by delivery and Kafka offset, so one event's attempts are one
//! range read), `rollup` (per-minute counts and histograms, see [`super::rollup`]) and
//! `positions` (the next offset of every attempts partition, written in the same transaction as
//! the rows).
//!
//! # Decisions
//! - `synchronous=NORMAL`: a power cut may lose the last transactions, never corrupt the file;
//!   what was lost is read again from Kafka because the positions went with it.
//! - The schema carries a version (`user_version`); a file of another version, or one that is
//!   not a database, is moved aside and rebuilt from Kafka — it is an index, not the truth.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use hookline_core::retry_topics::DUPLICATE;
use jiff::Timestamp;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};
use tracing::warn;

use super::rollup::{Histogram, Minute, Minutes, minute_of};
use super::{
    AttemptView, Batch, Bucket, Counts, Cursor, DeliveryDetail, DeliveryLog, DeliveryView, Filter,
    Page, Position, Result, Stats, Status, StoreError,
};

const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS positions (
  topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
  PRIMARY KEY (topic, partition)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS deliveries (
  id INTEGER PRIMARY KEY,
  tenant TEXT NOT NULL, event_id TEXT NOT NULL, webhook TEXT NOT NULL,
  event_type TEXT NOT NULL, key TEXT, status TEXT NOT NULL, attempts INTEGER NOT NULL,
  first_ms INTEGER NOT NULL, last_ms INTEGER NOT NULL, last_status INTEGER, last_reason TEXT,
  next_attempt_ms INTEGER, dead_letter_reason TEXT, duplicates INTEGER NOT NULL DEFAULT 0);
CREATE UNIQUE INDEX IF NOT EXISTS deliveries_event ON deliveries (tenant, event_id, webhook);
CREATE INDEX IF NOT EXISTS deliveries_time ON deliveries (tenant, first_ms);
CREATE INDEX IF NOT EXISTS deliveries_webhook ON deliveries (tenant, webhook, first_ms);
CREATE INDEX IF NOT EXISTS deliveries_status ON deliveries (tenant, status, first_ms);
CREATE INDEX IF NOT EXISTS deliveries_type ON deliveries (tenant, event_type, first_ms);
CREATE TABLE IF NOT EXISTS attempts (
  delivery INTEGER NOT NULL, offset INTEGER NOT NULL, attempt INTEGER NOT NULL,
  sent INTEGER NOT NULL, time_ms INTEGER NOT NULL, outcome TEXT NOT NULL, status INTEGER,
  latency_ms INTEGER NOT NULL, reason TEXT, error TEXT, next_attempt_ms INTEGER,
  dead_letter_reason TEXT,
  PRIMARY KEY (delivery, offset)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rollup (
  tenant TEXT NOT NULL, webhook TEXT NOT NULL, minute INTEGER NOT NULL,
  delivered INTEGER NOT NULL, failed INTEGER NOT NULL, retrying INTEGER NOT NULL,
  dead_lettered INTEGER NOT NULL, duplicates INTEGER NOT NULL, hist BLOB NOT NULL,
  PRIMARY KEY (tenant, webhook, minute)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rollup_time ON rollup (tenant, minute);
";

const UPSERT_DELIVERY: &str = "
INSERT INTO deliveries (tenant, event_id, webhook, event_type, key, status, attempts, first_ms,
  last_ms, last_status, last_reason, next_attempt_ms, dead_letter_reason)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?9, ?10, ?11, ?12)
ON CONFLICT (tenant, event_id, webhook) DO UPDATE SET
  status = excluded.status, attempts = max(attempts, excluded.attempts),
  last_ms = max(last_ms, excluded.last_ms), last_status = coalesce(excluded.last_status, last_status),
  last_reason = excluded.last_reason, next_attempt_ms = excluded.next_attempt_ms,
  dead_letter_reason = excluded.dead_letter_reason
RETURNING id";

/// A suppressed duplicate: counted on its delivery, whose status it leaves alone (a delivery
/// known only from a duplicate so far is `pending`).
const UPSERT_DUPLICATE: &str = "
INSERT INTO deliveries (tenant, event_id, webhook, event_type, key, status, attempts, first_ms,
  last_ms, duplicates)
VALUES (?1, ?2, ?3, ?4, ?5, 'pending', 0, ?6, ?6, 1)
ON CONFLICT (tenant, event_id, webhook) DO UPDATE SET duplicates = duplicates + 1
RETURNING id";

const INSERT_ATTEMPT: &str = "
INSERT OR IGNORE INTO attempts (delivery, offset, attempt, sent, time_ms, outcome, status,
  latency_ms, reason, error, next_attempt_ms, dead_letter_reason)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)";

const DELIVERY_COLUMNS: &str = "event_id, webhook, event_type, key, status, attempts, first_ms, \
     last_ms, last_status, last_reason, next_attempt_ms, dead_letter_reason, id, duplicates";

/// How many reader connections are kept open.
const READERS: usize = 4;

/// The delivery log in a SQLite file.
pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

fn rfc3339(ms: i64) -> String {
    Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| t.to_string())
}

/// Unix ms of an RFC 3339 time.
pub fn parse_ms(s: &str) -> Option<i64> {
    s.parse::<Timestamp>().ok().map(Timestamp::as_millisecond)
}

fn open_writer(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "cache_size", -65_536)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // A checkpoint (and its fsync) per ~80 MiB of WAL rather than 4 MiB: a batch of 5,000
    // attempts dirties more than 1,000 pages, so the default checkpointed after every commit.
    // Ingest of a fresh store went from 18,468 to 21,301 attempts/s (medians of 3); the batch
    // that checkpoints takes longer, p99 per batch 442 → 531 ms (BENCHMARKS.md, issue 12).
    conn.pragma_update(None, "wal_autocheckpoint", 20_000)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let has_tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
    if has_tables > 0 && version != SCHEMA_VERSION {
        return Err(rusqlite::Error::InvalidQuery);
    }
    conn.execute_batch(SCHEMA)?;
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (or creates) the store at `path`. A file that is not a database of this schema is
    /// moved aside (`<path>.broken-<unix s>`) and a new store is made, to be rebuilt from Kafka.
    ///
    /// # Errors
    /// When no store can be made at `path` (directory missing or not writable).
    pub fn open(path: &Path) -> Result<SqliteStore> {
        let writer = match open_writer(path) {
            Ok(c) => c,
            Err(e) => {
                let aside = path.with_extension(format!("broken-{}", Timestamp::now().as_second()));
                warn!(store = %path.display(), error = %e, aside = %aside.display(),
                      "the delivery log is unreadable or of another version; rebuilding it from Kafka");
                std::fs::rename(path, &aside).map_err(|e| StoreError(e.to_string()))?;
                for ext in ["db-wal", "db-shm"] {
                    let _ = std::fs::remove_file(path.with_extension(ext));
                }
                open_writer(path)?
            }
        };
        Ok(SqliteStore {
            path: path.to_owned(),
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
        })
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let conn = self.readers.lock().expect("readers").pop();
        let conn = match conn {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                c.busy_timeout(std::time::Duration::from_secs(5))?;
                c
            }
        };
        let out = f(&conn);
        let mut pool = self.readers.lock().expect("readers");
        if pool.len() < READERS {
            pool.push(conn);
        }
        Ok(out?)
    }

    /// The database file's size in bytes (with its WAL), for the benchmarks and metrics.
    pub fn size_bytes(&self) -> u64 {
        ["", "-wal"]
            .iter()
            .filter_map(|s| {
                let mut p = self.path.clone().into_os_string();
                p.push(s);
                std::fs::metadata(p).ok()
            })
            .map(|m| m.len())
            .sum()
    }
}

fn delivery_row(r: &Row<'_>) -> rusqlite::Result<(DeliveryView, i64)> {
    let status: String = r.get(4)?;
    Ok((
        DeliveryView {
            event_id: r.get(0)?,
            webhook: r.get(1)?,
            event_type: r.get(2)?,
            key: r.get(3)?,
            status: Status::parse(&status).unwrap_or(Status::DeadLettered),
            attempts: r.get(5)?,
            first_attempt_at: rfc3339(r.get(6)?),
            last_attempt_at: rfc3339(r.get(7)?),
            last_status_code: r.get(8)?,
            last_reason: r.get(9)?,
            next_attempt_at: r.get::<_, Option<i64>>(10)?.map(rfc3339),
            dead_letter_reason: r.get(11)?,
            duplicates: r.get(13)?,
        },
        r.get(12)?,
    ))
}

fn attempt_row(r: &Row<'_>) -> rusqlite::Result<AttemptView> {
    Ok(AttemptView {
        attempt: r.get(0)?,
        sent: r.get(1)?,
        time: rfc3339(r.get(2)?),
        outcome: r.get(3)?,
        status_code: r.get(4)?,
        latency_ms: unsigned(r, 5)?,
        reason: r.get(6)?,
        error: r.get(7)?,
        next_attempt_at: r.get::<_, Option<i64>>(8)?.map(rfc3339),
        dead_letter_reason: r.get(9)?,
    })
}

fn unsigned(r: &Row<'_>, i: usize) -> rusqlite::Result<u64> {
    Ok(u64::try_from(r.get::<_, i64>(i)?).unwrap_or(0))
}

/// A rollup row's minute from its columns `delivered, failed, retrying, dead_lettered,
/// duplicates, hist`
/// starting at column `at`.
fn minute_row(r: &Row<'_>, at: usize) -> rusqlite::Result<Minute> {
    Ok(Minute {
        counts: Counts {
            delivered: unsigned(r, at)?,
            failed: unsigned(r, at + 1)?,
            retrying: unsigned(r, at + 2)?,
            dead_lettered: unsigned(r, at + 3)?,
            duplicates: unsigned(r, at + 4)?,
        },
        histogram: Histogram::from_bytes(&r.get::<_, Vec<u8>>(at + 5)?),
    })
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn add_rollup(tx: &rusqlite::Transaction<'_>, minutes: Minutes) -> rusqlite::Result<()> {
    let mut get = tx.prepare_cached(
        "SELECT delivered, failed, retrying, dead_lettered, duplicates, hist FROM rollup
         WHERE tenant = ?1 AND webhook = ?2 AND minute = ?3",
    )?;
    let mut put = tx.prepare_cached(
        "INSERT OR REPLACE INTO rollup VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    for ((tenant, webhook, minute), add) in minutes {
        let mut m = get
            .query_row(params![tenant, webhook, minute], |r| minute_row(r, 0))
            .optional()?
            .unwrap_or_default();
        m.merge(&add);
        put.execute(params![
            tenant,
            webhook,
            minute,
            signed(m.counts.delivered),
            signed(m.counts.failed),
            signed(m.counts.retrying),
            signed(m.counts.dead_lettered),
            signed(m.counts.duplicates),
            m.histogram.to_bytes()
        ])?;
    }
    Ok(())
}

impl DeliveryLog for SqliteStore {
    fn positions(&self) -> Result<Vec<Position>> {
        let conn = self.writer.lock().expect("writer");
        let mut st = conn.prepare("SELECT topic, partition, next_offset FROM positions")?;
        let rows = st.query_map([], |r| {
            Ok(Position {
                topic: r.get(0)?,
                partition: r.get(1)?,
                next_offset: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn apply(&self, batch: &Batch) -> Result<()> {
        let mut conn = self.writer.lock().expect("writer");
        let tx = conn.transaction()?;
        {
            let mut floors: HashMap<(&str, i32), i64> = HashMap::new();
            let mut pos = tx.prepare_cached(
                "SELECT next_offset FROM positions WHERE topic = ?1 AND partition = ?2",
            )?;
            for p in &batch.positions {
                let at: Option<i64> = pos
                    .query_row(params![p.topic, p.partition], |r| r.get(0))
                    .optional()?;
                floors.insert((&p.topic, p.partition), at.unwrap_or(0));
            }
            let mut upsert = tx.prepare_cached(UPSERT_DELIVERY)?;
            let mut duplicate = tx.prepare_cached(UPSERT_DUPLICATE)?;
            let mut insert = tx.prepare_cached(INSERT_ATTEMPT)?;
            let mut minutes = Minutes::new();
            let now = Timestamp::now().as_millisecond();
            for ing in &batch.records {
                let floor = floors
                    .get(&(ing.topic.as_str(), ing.partition))
                    .copied()
                    .unwrap_or(0);
                if ing.offset < floor {
                    continue;
                }
                let r = &ing.record;
                let time_ms = parse_ms(&r.time).unwrap_or(now);
                let next_ms = r.next_attempt_at.as_deref().and_then(parse_ms);
                let status = Status::after(&r.outcome);
                let id: i64 = if r.outcome == DUPLICATE {
                    duplicate.query_row(
                        params![
                            ing.tenant,
                            r.event_id,
                            r.webhook,
                            r.event_type,
                            r.key,
                            time_ms
                        ],
                        |row| row.get(0),
                    )?
                } else {
                    upsert.query_row(
                        params![
                            ing.tenant,
                            r.event_id,
                            r.webhook,
                            r.event_type,
                            r.key,
                            status.as_str(),
                            r.attempt,
                            time_ms,
                            r.status,
                            r.reason,
                            next_ms,
                            r.dead_letter_reason
                        ],
                        |row| row.get(0),
                    )?
                };
                insert.execute(params![
                    id,
                    ing.offset,
                    r.attempt,
                    r.sent,
                    time_ms,
                    r.outcome,
                    r.status,
                    signed(r.latency_ms),
                    r.reason,
                    r.error,
                    next_ms,
                    r.dead_letter_reason
                ])?;
                minutes
                    .entry((ing.tenant.clone(), r.webhook.clone(), minute_of(time_ms)))
                    .or_default()
                    .add(&r.outcome, r.sent, r.latency_ms);
            }
            add_rollup(&tx, minutes)?;
            let mut put = tx.prepare_cached(
                "INSERT INTO positions VALUES (?1, ?2, ?3)
                 ON CONFLICT (topic, partition) DO UPDATE
                 SET next_offset = max(next_offset, excluded.next_offset)",
            )?;
            for p in &batch.positions {
                put.execute(params![p.topic, p.partition, p.next_offset])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn event(&self, tenant: &str, event_id: &str) -> Result<Vec<DeliveryDetail>> {
        self.read(|conn| {
            let mut st = conn.prepare_cached(&format!(
                "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE tenant = ?1 AND event_id = ?2
                 ORDER BY webhook"
            ))?;
            let deliveries = st
                .query_map(params![tenant, event_id], delivery_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut at = conn.prepare_cached(
                "SELECT attempt, sent, time_ms, outcome, status, latency_ms, reason, error,
                        next_attempt_ms, dead_letter_reason
                 FROM attempts WHERE delivery = ?1 ORDER BY offset",
            )?;
            deliveries
                .into_iter()
                .map(|(delivery, id)| {
                    Ok(DeliveryDetail {
                        delivery,
                        attempt_log: at
                            .query_map(params![id], attempt_row)?
                            .collect::<rusqlite::Result<_>>()?,
                    })
                })
                .collect()
        })
    }

    fn list(
        &self,
        tenant: &str,
        filter: &Filter,
        after: Option<Cursor>,
        limit: usize,
    ) -> Result<Page> {
        let mut sql = format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE tenant = ?1");
        let mut args: Vec<rusqlite::types::Value> = vec![tenant.to_owned().into()];
        let mut push = |sql: &mut String, clause: &str, v: rusqlite::types::Value| {
            args.push(v);
            sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
        };
        if let Some(w) = &filter.webhook {
            push(&mut sql, " AND webhook = ?", w.clone().into());
        }
        if let Some(s) = filter.status {
            push(&mut sql, " AND status = ?", s.as_str().to_owned().into());
        }
        if let Some(t) = &filter.event_type {
            push(&mut sql, " AND event_type = ?", t.clone().into());
        }
        if let Some(ms) = filter.since_ms {
            push(&mut sql, " AND first_ms >= ?", ms.into());
        }
        if let Some(ms) = filter.until_ms {
            push(&mut sql, " AND first_ms < ?", ms.into());
        }
        if let Some(c) = after {
            // A row value: the index's first_ms bounds the scan. Spelled `first_ms < ?a OR
            // (first_ms = ?b AND id < ?c)`, SQLite read the filter's index range from the newest
            // row down to the cursor: a page deep into 7.3 million attempts took 43 ms at the
            // median instead of 0.45 ms (BENCHMARKS.md, issue 12).
            push(&mut sql, " AND (first_ms, id) < (?", c.first_ms.into());
            push(&mut sql, ", ?)", c.seq.into());
        }
        push(
            &mut sql,
            " ORDER BY first_ms DESC, id DESC LIMIT ?",
            i64::try_from(limit + 1).unwrap_or(i64::MAX).into(),
        );
        self.read(|conn| {
            let mut st = conn.prepare_cached(&sql)?;
            let mut rows = st
                .query_map(rusqlite::params_from_iter(args), delivery_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let next = if rows.len() > limit {
                rows.truncate(limit);
                rows.last().map(|(d, seq)| Cursor {
                    first_ms: parse_ms(&d.first_attempt_at).unwrap_or(0),
                    seq: *seq,
                })
            } else {
                None
            };
            Ok(Page {
                items: rows.into_iter().map(|(d, _)| d).collect(),
                next,
            })
        })
    }

    fn stats(
        &self,
        tenant: &str,
        webhook: Option<&str>,
        from_ms: i64,
        to_ms: i64,
        bucket_ms: i64,
    ) -> Result<Stats> {
        let bucket_ms = bucket_ms.max(60_000);
        let from = minute_of(from_ms);
        let n = usize::try_from((to_ms - from + bucket_ms - 1) / bucket_ms).unwrap_or(0);
        let mut minutes = vec![Minute::default(); n];
        self.read(|conn| {
            // Each `Webhook`'s window is one range of the primary key (tenant, webhook, minute);
            // without a `Webhook`, their names are found by skipping through the key (a loose
            // index scan), and CROSS JOIN keeps that list outer (SQLite otherwise read the time
            // index and rescanned the list for every row). Read through the time index, every
            // row was a second lookup: 30 days took 269 ms at the median instead of 115 ms, one
            // `Webhook`'s 24 hours 19.6 ms instead of 1.0 ms (BENCHMARKS.md, issue 12).
            let mut st = conn.prepare_cached(if webhook.is_some() {
                "SELECT minute, delivered, failed, retrying, dead_lettered, duplicates, hist FROM rollup
                 WHERE tenant = ?1 AND webhook = ?2 AND minute >= ?3 AND minute < ?4"
            } else {
                "WITH RECURSIVE w(name) AS (
                   SELECT min(webhook) FROM rollup WHERE tenant = ?1
                   UNION ALL
                   SELECT (SELECT min(webhook) FROM rollup WHERE tenant = ?1 AND webhook > name)
                   FROM w WHERE name IS NOT NULL)
                 SELECT r.minute, r.delivered, r.failed, r.retrying, r.dead_lettered, r.duplicates,
                        r.hist
                 FROM w CROSS JOIN rollup r
                   ON r.tenant = ?1 AND r.webhook = w.name AND r.minute >= ?3 AND r.minute < ?4"
            })?;
            let mut rows = st.query(params![tenant, webhook, from, to_ms])?;
            while let Some(r) = rows.next()? {
                let minute: i64 = r.get(0)?;
                let i = usize::try_from((minute - from) / bucket_ms).unwrap_or(0);
                if let Some(slot) = minutes.get_mut(i) {
                    slot.merge(&minute_row(r, 1)?);
                }
            }
            Ok(())
        })?;
        let mut total = Minute::default();
        let buckets = minutes
            .iter()
            .enumerate()
            .map(|(i, m)| {
                total.merge(m);
                Bucket {
                    start: rfc3339(from + i64::try_from(i).unwrap_or(0) * bucket_ms),
                    counts: m.counts.clone(),
                    latency_ms: m.histogram.percentiles(),
                }
            })
            .collect();
        Ok(Stats {
            bucket_seconds: u64::try_from(bucket_ms / 1000).unwrap_or(60),
            buckets,
            latency_ms: total.histogram.percentiles(),
            total: total.counts,
        })
    }

    fn expire(&self, before_ms: i64) -> Result<u64> {
        const CHUNK: usize = 5_000;
        let tenants: Vec<String> = self
            .positions()?
            .iter()
            .filter_map(|p| hookline_core::naming::tenant_of_attempts_topic(&p.topic))
            .map(str::to_owned)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut gone = 0u64;
        for tenant in tenants {
            loop {
                let mut conn = self.writer.lock().expect("writer");
                let tx = conn.transaction()?;
                let ids: Vec<i64> = {
                    let mut st = tx.prepare_cached(
                        "SELECT id FROM deliveries WHERE tenant = ?1 AND first_ms < ?2 LIMIT ?3",
                    )?;
                    st.query_map(params![tenant, before_ms, CHUNK as i64], |r| r.get(0))?
                        .collect::<rusqlite::Result<_>>()?
                };
                {
                    let mut a = tx.prepare_cached("DELETE FROM attempts WHERE delivery = ?1")?;
                    let mut d = tx.prepare_cached("DELETE FROM deliveries WHERE id = ?1")?;
                    for id in &ids {
                        a.execute([id])?;
                        d.execute([id])?;
                    }
                }
                tx.execute(
                    "DELETE FROM rollup WHERE tenant = ?1 AND minute < ?2",
                    params![tenant, minute_of(before_ms)],
                )?;
                tx.commit()?;
                gone += ids.len() as u64;
                if ids.len() < CHUNK {
                    break;
                }
            }
        }
        Ok(gone)
    }
}

#[cfg(test)]
#[path = "sqlite_tests.rs"]
mod tests;

//! Scenario 7, the delivery log and the tenant API (issue 12), in four parts, each a list of
//! [`Point`]s whose runs repeat [`Plan::runs`] times:
//!
//! 1. **apply**: generated attempt records (one tenant, 10 `Webhook`s, random event ids, 1.2
//!    attempts per delivery, retries later in the stream, attempt times as dense as 30,000/s)
//!    stored by `SqliteStore::apply` in batches of `MAX_BATCH` into a fresh store, in process.
//! 2. **ingest through Kafka**: the same kind of records produced as JSON to a bench-owned
//!    `hookline.<tenant>.attempts` topic, then read by a release `hookline-api` into a store of
//!    its own until its position reaches the end; the baseline is a plain consumer reading the
//!    same topic without storing anything, alternating with it.
//! 3. **a big store**: a tenant namespace with 10 `Webhook`s is made, and a store file under
//!    the store directory is filled with [`Plan::log_attempts`] attempts of that tenant spread
//!    over 14 days (timed: an ingest figure into a growing store; bounded by
//!    [`Plan::fill_limit_s`]), its size taken per million attempts.
//! 4. **queries**: each query kind the API makes of the log, with random arguments, in process
//!    (the baseline column) and over HTTP through a release `hookline-api` on that store file
//!    with a real tenant token (the Hookline column); then the open-loop `Webhook` CRUD mix
//!    through `hookline-api` against the same mix sent straight to the kube-apiserver
//!    ([`queries`]).
//!
//! The store file is deleted at the end unless `--keep-store`; `--reuse-store` queries a kept
//! one in process instead of filling one (before/after figures of a store change).

use std::path::PathBuf;
use std::time::Duration;

use hookline_api::store::sqlite::SqliteStore;
use serde_json::json;

use super::{Ctx, Point, defs, tenant};
use crate::delivery_log::ingest::{self, base_watched};
use crate::delivery_log::records::{Generator, Profile};
use crate::delivery_log::store::{self, Fill};
use crate::runner::RunResult;
use crate::stats::spread;

mod queries;

const SCENARIO: &str = "delivery-log";
/// Attempt-time density of the apply and Kafka runs: the dispatcher's full rate.
const FULL_RATE: f64 = 30_000.0;
/// How far back the big store's attempts reach: the attempts topics' retention.
const SPAN_MS: i64 = 14 * 24 * 3_600_000;

/// What scenario 7 needs beyond the plan.
#[derive(Debug, Clone)]
pub struct ApiSetup {
    /// The release `hookline-api`.
    pub bin: PathBuf,
    /// Where store files go.
    pub store_dir: PathBuf,
    /// Keep the big store file afterwards.
    pub keep_store: bool,
    /// Query the big store file left by an earlier run (in process only) instead of filling one.
    pub reuse_store: bool,
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn failed(name: &str, e: &anyhow::Error) -> Point {
    eprintln!("  {SCENARIO}: {name} failed: {e:#}");
    Point {
        scenario: SCENARIO.into(),
        name: format!("{name}: failed"),
        notes: vec![format!("{e:#}")],
        ..Point::default()
    }
}

/// Scenario 7.
pub(super) async fn run(ctx: &Ctx<'_>, out: &mut Vec<Point>) -> anyhow::Result<()> {
    let setup = &ctx.api;
    anyhow::ensure!(
        setup.bin.exists(),
        "{} not found: cargo build --release -p hookline-api",
        setup.bin.display()
    );
    std::fs::create_dir_all(&setup.store_dir)?;
    if ctx.plan.apply_attempts > 0 {
        match apply_point(ctx).await {
            Ok(p) => out.push(p),
            Err(e) => out.push(failed("store apply", &e)),
        }
    }
    if ctx.plan.kafka_attempts > 0 {
        match kafka_point(ctx).await {
            Ok(p) => out.push(p),
            Err(e) => out.push(failed("ingest through Kafka", &e)),
        }
    }
    if ctx.plan.log_attempts > 0 {
        if setup.reuse_store {
            queries::reused_store(ctx, out).await?;
        } else {
            big_store(ctx, out).await?;
        }
    }
    Ok(())
}

fn big_store_path(ctx: &Ctx<'_>) -> PathBuf {
    ctx.api
        .store_dir
        .join(format!("delivery-log-{}.db", ctx.plan.log_attempts))
}

fn fill_run(run: String, f: &Fill, n: u64) -> RunResult {
    let mut r = RunResult {
        system: "hookline".into(),
        run,
        expected: n,
        delivered: f.attempts,
        complete: f.attempts >= n,
        rate: f.rate,
        window_s: f.apply_s,
        first_to_last_s: f.wall_s,
        ..RunResult::default()
    };
    r.notes.push(format!(
        "{:.0} attempts per CPU-second of apply ({:.0} µs each)",
        f.cpu_rate,
        1e6 / f.cpu_rate.max(1e-9)
    ));
    r.notes.push(format!(
        "batch of {}: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        hookline_api::ingest::MAX_BATCH,
        f.batch.p50_ms,
        f.batch.p99_ms,
        f.batch.max_ms
    ));
    r.notes.push(format!(
        "attempts/s by segment: {}",
        f.segments
            .iter()
            .map(|(at, rate)| format!("{:.0}k {rate:.0}", *at as f64 / 1000.0))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    if let Some(s) = &f.stopped {
        r.notes.push(s.clone());
    }
    r
}

/// Part 1: `apply` into a fresh store at the dispatcher's full rate.
async fn apply_point(ctx: &Ctx<'_>) -> anyhow::Result<Point> {
    let n = ctx.plan.apply_attempts;
    eprintln!("== {SCENARIO}: SqliteStore::apply, {n} attempts into a fresh store");
    let mut p = Point::new(
        SCENARIO,
        format!("store apply: {n} attempts, fresh store"),
        "rate",
        json!({"attempts": n, "batch": hookline_api::ingest::MAX_BATCH, "attempt_rate": FULL_RATE}),
    );
    let (mut batch_p99, mut cpu_rate) = (Vec::new(), Vec::new());
    for run in 0..ctx.plan.runs {
        let path = ctx.api.store_dir.join(format!("apply-{run}.db"));
        ingest::remove_store(&path);
        let profile = Profile::tenant(
            "hl-bench-apply",
            now_ms() - (n as f64 / FULL_RATE * 1000.0) as i64,
            FULL_RATE,
            0xA11 + run as u64,
        );
        let limit = Duration::from_secs(ctx.plan.fill_limit_s);
        let p2 = path.clone();
        let f = tokio::task::spawn_blocking(move || {
            let s = SqliteStore::open(&p2)?;
            store::fill(&s, &mut Generator::new(profile), n, limit, n / 5, 0)
        })
        .await??;
        ingest::remove_store(&path);
        let r = fill_run(format!("apply{run}"), &f, n);
        eprintln!(
            "  apply run {run}: {:.0} attempts/s; {}",
            f.rate,
            r.notes.join("; ")
        );
        batch_p99.push(f.batch.p99_ms);
        cpu_rate.push(f.cpu_rate);
        p.hookline.push(r);
    }
    p.summarise();
    p.summary.insert("batch_p99_ms".into(), spread(&batch_p99));
    p.summary.insert("cpu_rate".into(), spread(&cpu_rate));
    Ok(p)
}

/// Part 2: through Kafka, `hookline-api` against a plain consumer.
async fn kafka_point(ctx: &Ctx<'_>) -> anyhow::Result<Point> {
    let n = ctx.plan.kafka_attempts;
    let env = ctx.env;
    let tenant = format!("hlb-ingest-{}", hookline_tests::random_suffix());
    let profile = Profile::tenant(
        &tenant,
        now_ms() - (n as f64 / FULL_RATE * 1000.0) as i64,
        FULL_RATE,
        0x1A6,
    );
    let topic = profile.topic();
    let partitions = profile.partitions;
    hookline_tests::kafka::create_topics(env, std::slice::from_ref(&topic), partitions).await?;
    let result = kafka_runs(ctx, &profile, n).await;
    hookline_tests::kafka::delete_topics(env, std::slice::from_ref(&topic)).await;
    result
}

async fn kafka_runs(ctx: &Ctx<'_>, profile: &Profile, n: u64) -> anyhow::Result<Point> {
    let topic = profile.topic();
    eprintln!("== {SCENARIO}: ingest through Kafka, {n} attempt records in {topic}");
    let producer = ctx.bench.bulk.clone();
    let (t, prof) = (topic.clone(), profile.clone());
    let produced = crate::producer::on_thread(move || {
        let records = Generator::new(prof)
            .take(usize::try_from(n).unwrap_or(usize::MAX))
            .map(|r| {
                (
                    r.record.event_id.clone(),
                    serde_json::to_vec(&r.record).unwrap_or_default(),
                )
            });
        crate::producer::produce_records(&producer, &t, records, Duration::from_secs(300))
    })
    .await?;
    anyhow::ensure!(
        produced.acked == n,
        "only {} of {n} attempt records acknowledged",
        produced.acked
    );
    let mut p = Point::new(
        SCENARIO,
        format!("ingest through Kafka: {n} attempts"),
        "rate",
        json!({"attempts": n, "partitions": profile.partitions}),
    );
    p.notes.push(format!(
        "produced at {:.0}/s ({} bytes per record on average, JSON)",
        produced.rate,
        record_bytes(profile)
    ));
    // Every hookline-api of the environment reads the new topic once; let them finish first.
    let waited = ingest::wait_others_idle(&[], Duration::from_secs(300)).await;
    p.notes.push(format!(
        "waited {:.0} s for the environment's other hookline-api processes to read the topic",
        waited.as_secs_f64()
    ));
    let limit = Duration::from_secs(ctx.plan.drain_limit_s.max(120));
    let mut others = Vec::new();
    for run in 0..ctx.plan.runs {
        let mut w = base_watched();
        ingest::watch_others(&mut w, &[]);
        let (bootstrap, t, w2) = (ctx.env.kafka_bootstrap.clone(), topic.clone(), w.clone());
        let parts = profile.partitions;
        let raw = tokio::task::spawn_blocking(move || {
            ingest::raw_consume(&bootstrap, &t, parts, n, limit, &w2)
        })
        .await??;
        let b = progress_run("baseline", format!("raw{run}"), n, &raw, "bench");
        say_rate(&b);
        p.baseline.push(b);

        let path = ctx.api.store_dir.join(format!("ingest-{run}.db"));
        let seeded = ingest::other_positions(&ctx.env.kafka_bootstrap, &topic)?;
        ingest::seeded_store(&path, seeded)?;
        let api = ingest::api_ingest(
            ctx.env,
            &ctx.client,
            &ctx.api.bin,
            &path,
            &topic,
            n,
            limit,
            w,
        )
        .await;
        ingest::remove_store(&path);
        let api = api?;
        let mut h = progress_run("hookline", format!("api{run}"), n, &api.progress, "api");
        h.ready_s = Some(api.ready_s);
        if let Some((rss, peak)) = api.rss {
            (h.rss_mib, h.rss_peak_mib) = (Some(rss), Some(peak));
        }
        let (batches, secs) = api.batches;
        h.notes.push(format!(
            "{:.0} s from process start to the last record stored; {batches:.0} batches of {:.0} on average, {:.1} ms each; ingested counter {:.0}",
            api.progress.elapsed_s,
            api.metric / batches.max(1.0),
            secs / batches.max(1.0) * 1000.0,
            api.metric
        ));
        if let Some(c) = &h.cpu {
            others.push(ingest::others_cores(c));
        }
        say_rate(&h);
        p.hookline.push(h);
    }
    p.summarise();
    if !others.is_empty() {
        p.summary.insert("other_api_cores".into(), spread(&others));
    }
    Ok(p)
}

fn record_bytes(profile: &Profile) -> usize {
    let rs: Vec<_> = Generator::new(profile.clone()).take(1000).collect();
    rs.iter()
        .map(|r| serde_json::to_vec(&r.record).map_or(0, |v| v.len()))
        .sum::<usize>()
        / rs.len().max(1)
}

/// A run read from `prog`; `role` is the process doing the reading (for its CPU per record).
fn progress_run(
    system: &str,
    run: String,
    n: u64,
    prog: &ingest::Progress,
    role: &str,
) -> RunResult {
    let (rate, window_s) = prog.rate(n, 0.05, 0.95);
    let mut r = RunResult {
        system: system.into(),
        run,
        expected: n,
        delivered: prog.records,
        complete: prog.records >= n,
        rate,
        window_s,
        first_to_last_s: prog.elapsed_s,
        cpu: prog.cpu(n, 0.05, 0.95),
        ..RunResult::default()
    };
    if let Some(c) = &r.cpu
        && c.cpu_s(role) > 0.0
    {
        let records = rate * c.wall_s;
        r.notes.push(format!(
            "{role}: {:.1} CPU-ms per 1,000 attempts ({:.0} attempts per CPU-second)",
            c.cpu_s(role) * 1e6 / records.max(1.0),
            records / c.cpu_s(role)
        ));
    }
    if !r.complete {
        r.notes.push(format!(
            "incomplete: {} of {n} within the limit",
            prog.records
        ));
    }
    r
}

fn say_rate(r: &RunResult) {
    let cores = r.cpu.as_ref().map_or(String::new(), |c| {
        format!(
            "  cores: api {:.2} kafka {:.2} bench {:.2} others {:.2} (machine {:.2})",
            c.cores("api"),
            c.cores("kafka"),
            c.cores("bench"),
            ingest::others_cores(c),
            c.machine_cores
        )
    });
    eprintln!(
        "  {SCENARIO} {:<9} {} {:>9.0}/s  {}/{}{}{}",
        r.system,
        r.run,
        r.rate,
        r.delivered,
        r.expected,
        cores,
        if r.notes.is_empty() {
            String::new()
        } else {
            format!("  [{}]", r.notes.join("; "))
        }
    );
}

/// Parts 3 and 4: the big store, its queries in process and over HTTP, and the CRUD mix.
async fn big_store(ctx: &Ctx<'_>, out: &mut Vec<Point>) -> anyhow::Result<()> {
    let d = defs(ctx, 10, |i| vec![format!("bench.w{i:04}")], true);
    let t = tenant(ctx, "dlog", &d).await?;
    let ns = t.name().to_owned();
    let path = big_store_path(ctx);
    ingest::remove_store(&path);
    let result = big_store_in(ctx, out, &ns, &path).await;
    t.delete().await;
    if ctx.api.keep_store {
        eprintln!("  keeping {} (--keep-store)", path.display());
    } else {
        ingest::remove_store(&path);
    }
    result
}

async fn big_store_in(
    ctx: &Ctx<'_>,
    out: &mut Vec<Point>,
    ns: &str,
    path: &std::path::Path,
) -> anyhow::Result<()> {
    let n = ctx.plan.log_attempts;
    let start = now_ms() - SPAN_MS;
    let profile = Profile::tenant(ns, start, n as f64 / (SPAN_MS as f64 / 1000.0), 0xB16);
    eprintln!(
        "== {SCENARIO}: filling {} with {n} attempts of {ns} over 14 days (at most {} s)",
        path.display(),
        ctx.plan.fill_limit_s
    );
    let (p2, prof, limit) = (
        path.to_owned(),
        profile.clone(),
        Duration::from_secs(ctx.plan.fill_limit_s),
    );
    let segment = (n / 10).max(1);
    let fill = tokio::task::spawn_blocking(move || {
        let s = SqliteStore::open(&p2)?;
        store::fill(&s, &mut Generator::new(prof), n, limit, segment, 20_000)
    })
    .await??;
    let layout = store::layout(path)?;
    let mut p = Point::new(
        SCENARIO,
        format!("store fill: {} attempts over 14 days", fill.attempts),
        "rate",
        json!({"attempts": n, "stored": fill.attempts, "deliveries": fill.deliveries}),
    );
    let r = fill_run("fill".into(), &fill, n);
    eprintln!(
        "  fill: {:.0} attempts/s; {}",
        fill.rate,
        r.notes.join("; ")
    );
    p.hookline.push(r);
    p.summarise();
    p.summary
        .insert("cpu_rate".into(), spread(&[fill.cpu_rate]));
    p.summary
        .insert("batch_p99_ms".into(), spread(&[fill.batch.p99_ms]));
    let per_million = mib(layout.file_bytes) / (fill.attempts as f64 / 1e6).max(1e-9);
    p.summary
        .insert("store_mib_per_million".into(), spread(&[per_million]));
    p.summary
        .insert("store_mib".into(), spread(&[mib(layout.file_bytes)]));
    p.notes.push(format!(
        "store file {:.0} MiB after a checkpoint: {per_million:.0} MiB per million attempts ({:.2} attempts per delivery); by object: {}",
        mib(layout.file_bytes),
        fill.attempts as f64 / fill.deliveries.max(1) as f64,
        layout
            .objects
            .iter()
            .map(|(name, b)| format!("{name} {:.0}", mib(*b)))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    eprintln!("  {}", p.notes.join("; "));
    out.push(p);
    queries::queries_and_crud(ctx, out, ns, path, &profile, &fill).await
}

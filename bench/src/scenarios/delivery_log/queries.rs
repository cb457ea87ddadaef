//! Part 4 of scenario 7: the big store's queries — every kind in process (the baseline) and
//! over HTTP through a release `hookline-api` on the store file with a real tenant token — and
//! the open-loop `Webhook` CRUD mix through `hookline-api` against the same mix sent straight
//! to the kube-apiserver; with `--reuse-store`, the in-process queries alone on a kept file.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hookline_api::store::sqlite::SqliteStore;
use hookline_api::store::{Batch, DeliveryLog};
use hookline_tests::LogDump;
use hookline_tests::api::{ApiOptions, OwnApi, tenant_token};
use serde_json::json;

use super::{SCENARIO, big_store_path, failed};
use crate::delivery_log::http::{self, Target};
use crate::delivery_log::ingest::{self, base_watched};
use crate::delivery_log::records::Profile;
use crate::delivery_log::store::{self, Fill, Query};
use crate::procstat::{CpuSplit, Snapshot};
use crate::runner::RunResult;
use crate::scenarios::{Ctx, Point};
use crate::stats;

/// `--reuse-store`: the in-process queries on the big store file of an earlier run.
pub(super) async fn reused_store(ctx: &Ctx<'_>, out: &mut Vec<Point>) -> anyhow::Result<()> {
    let path = big_store_path(ctx);
    anyhow::ensure!(
        path.exists(),
        "{} does not exist: run once with --keep-store",
        path.display()
    );
    let p2 = path.clone();
    let (profile, fill) =
        tokio::task::spawn_blocking(move || store::describe(&p2, 20_000)).await??;
    eprintln!(
        "== {SCENARIO}: reusing {} ({} attempts of {}), in process only",
        path.display(),
        fill.attempts,
        profile.tenant
    );
    let store = Arc::new(SqliteStore::open(&path)?);
    let ids = Arc::new(fill.sample_ids.clone());
    let (count, limit) = (
        ctx.plan.log_queries,
        Duration::from_secs(ctx.plan.query_limit_s),
    );
    let mut points: Vec<Point> = Query::ALL
        .iter()
        .map(|q| {
            Point::new(
                SCENARIO,
                format!("log in process: {}", q.name()),
                "latency",
                json!({"query": q.name(), "attempts": fill.attempts, "queries": count}),
            )
        })
        .collect();
    for run in 0..ctx.plan.runs {
        for (i, kind) in Query::ALL.iter().copied().enumerate() {
            let seed = 1000 * run as u64 + i as u64;
            let (s, prof, ids2, span) = (store.clone(), profile.clone(), ids.clone(), fill.span_ms);
            let (l, empty) = tokio::task::spawn_blocking(move || {
                store::queries(&s, &prof, kind, &ids2, span, count, limit, seed)
            })
            .await??;
            eprintln!(
                "  {:<52} run {run}: p50 {:.2} p99 {:.2} ms ({} queries, {empty} empty)",
                kind.name(),
                l.p50_ms,
                l.p99_ms,
                l.samples
            );
            points[i]
                .hookline
                .push(latency_run("store", format!("store{run}"), l));
        }
    }
    for mut p in points {
        p.summarise();
        out.push(p);
    }
    Ok(())
}

/// Every query kind in process (baseline) and over HTTP (Hookline), then the CRUD mix.
pub(super) async fn queries_and_crud(
    ctx: &Ctx<'_>,
    out: &mut Vec<Point>,
    ns: &str,
    path: &Path,
    profile: &Profile,
    fill: &Fill,
) -> anyhow::Result<()> {
    // The API must read only what other tenants write from now on, not their whole topics.
    let seeded = ingest::other_positions(&ctx.env.kafka_bootstrap, "")?;
    let store = Arc::new(SqliteStore::open(path)?);
    store.apply(&Batch {
        records: Vec::new(),
        positions: seeded,
    })?;
    let mut dump = LogDump::new();
    let api = OwnApi::start_built(
        ctx.env,
        &ctx.client,
        &mut dump,
        &[&format!("--store={}", path.display()), "--auth-cache=10s"],
        ApiOptions {
            binary: Some(ctx.api.bin.clone()),
            log_level: Some("info".into()),
        },
    )
    .await?;
    let token = tenant_token(
        &ctx.client,
        ns,
        "bench-editor",
        Some("hookline-tenant-edit"),
    )
    .await?;
    let web = http::client(&ctx.env.kubeconfig)?;
    let ids = Arc::new(fill.sample_ids.clone());
    let span = fill.span_ms;
    let count = ctx.plan.log_queries;
    let limit = Duration::from_secs(ctx.plan.query_limit_s);
    eprintln!(
        "== {SCENARIO}: {count} queries per kind and run, in process and over HTTP ({})",
        api.base
    );
    // Warm-up: connections, the token review and access review caches, both processes' caches.
    let _ = http::log_queries(
        &web,
        &api.base,
        &token,
        profile,
        Query::Event,
        &ids,
        span,
        100,
        limit,
        1,
    )
    .await;
    let mut points: Vec<Point> = Query::ALL
        .iter()
        .map(|q| {
            Point::new(
                SCENARIO,
                format!("log: {}", q.name()),
                "latency",
                json!({"query": q.name(), "attempts": fill.attempts, "queries": count}),
            )
        })
        .collect();
    for run in 0..ctx.plan.runs {
        for (i, kind) in Query::ALL.iter().copied().enumerate() {
            let seed = 1000 * run as u64 + i as u64;
            let (s, prof, ids2) = (store.clone(), profile.clone(), ids.clone());
            let local = tokio::task::spawn_blocking(move || {
                store::queries(&s, &prof, kind, &ids2, span, count, limit, seed)
            })
            .await??;
            let remote = http::log_queries(
                &web,
                &api.base,
                &token,
                profile,
                kind,
                &ids,
                span,
                count,
                limit,
                seed + 7,
            )
            .await;
            let p = &mut points[i];
            let mut b = latency_run("baseline", format!("store{run}"), local.0);
            if local.1 > 0 {
                b.notes.push(format!("{} answered empty", local.1));
            }
            let mut h = latency_run("hookline", format!("http{run}"), remote.0);
            if remote.1 > 0 {
                h.notes.push(format!("{} not 200", remote.1));
            }
            eprintln!(
                "  {:<52} run {run}: in process p50 {:.2} p99 {:.2} ms, HTTP p50 {:.2} p99 {:.2} ms ({} queries{})",
                kind.name(),
                b.latency.as_ref().map_or(0.0, |l| l.p50_ms),
                b.latency.as_ref().map_or(0.0, |l| l.p99_ms),
                h.latency.as_ref().map_or(0.0, |l| l.p50_ms),
                h.latency.as_ref().map_or(0.0, |l| l.p99_ms),
                h.latency.as_ref().map_or(0, |l| l.samples),
                if h.notes.is_empty() {
                    String::new()
                } else {
                    format!("; {}", h.notes.join("; "))
                }
            );
            p.baseline.push(b);
            p.hookline.push(h);
        }
    }
    for (i, mut p) in points.into_iter().enumerate() {
        p.summarise();
        if i == 0 {
            p.notes.push(
                "baseline = the same query called in process on the store; hookline = GET through hookline-api with a tenant token (so for every log point)"
                    .into(),
            );
        }
        if fill.stopped.is_some() && p.name.contains("stats 24h") {
            p.notes.push("the fill stopped early, so the API's last 24 h (its window ends now) hold fewer attempts than in process (whose window ends at the last attempt)".into());
        }
        out.push(p);
    }
    drop(store);
    let crud = crud_point(ctx, &api, &web, &token, ns).await;
    match crud {
        Ok(p) => out.push(p),
        Err(e) => out.push(failed("Webhook CRUD", &e)),
    }
    drop(api);
    Ok(())
}

fn latency_run(system: &str, run: String, l: stats::Latency) -> RunResult {
    RunResult {
        system: system.into(),
        run,
        expected: l.samples as u64,
        delivered: l.samples as u64,
        complete: true,
        latency: Some(l),
        ..RunResult::default()
    }
}

fn apiserver_pid() -> Option<u32> {
    std::fs::read_to_string(hookline_tests::run_dir().join("pids/kube-apiserver.pid"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Part 4b: the `Webhook` mix through `hookline-api` against the kube-apiserver directly.
async fn crud_point(
    ctx: &Ctx<'_>,
    api: &OwnApi,
    web: &reqwest::Client,
    token: &str,
    ns: &str,
) -> anyhow::Result<Point> {
    let server = ctx
        .env
        .vars
        .get("HOOKLINE_APISERVER")
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("env.sh does not set HOOKLINE_APISERVER"))?;
    let (rate, secs) = (ctx.plan.crud_rate, ctx.plan.crud_secs);
    eprintln!(
        "== {SCENARIO}: Webhook CRUD mix open-loop at {rate}/s for {secs} s, hookline-api and the kube-apiserver"
    );
    let webhooks: Vec<String> = (0..10).map(Profile::webhook).collect();
    let mut p = Point::new(
        SCENARIO,
        format!("Webhook CRUD: {rate:.0} req/s open loop, 60% GET / 20% list / 20% PATCH"),
        "latency",
        json!({"rate": rate, "seconds": secs, "webhooks": webhooks.len()}),
    );
    let mut w = base_watched();
    if let Some(pid) = api.pid() {
        w.pids.push(("api".into(), pid));
    }
    if let Some(pid) = apiserver_pid() {
        w.pids.push(("apiserver".into(), pid));
    }
    let targets = [
        ("baseline", Target::Kube(server)),
        ("hookline", Target::Api(api.base.clone())),
    ];
    for (_, target) in &targets {
        let _ = http::crud(web, target, token, ns, &webhooks, rate, 1.0, 99).await;
    }
    for run in 0..ctx.plan.runs {
        for (system, target) in &targets {
            let seed = 500 + run as u64;
            let a = Snapshot::take(&w);
            let c = http::crud(web, target, token, ns, &webhooks, rate, secs, seed).await;
            let b = Snapshot::take(&w);
            let r = crud_run(system, run, &c, CpuSplit::between(&a, &b));
            eprintln!(
                "  {system:<9} run {run}: p50 {:.2} ms p99 {:.2} ms max {:.0} ms, {}/{} 2xx, {:.0} req/s; cores api {:.2} apiserver {:.2}",
                c.latency.p50_ms,
                c.latency.p99_ms,
                c.latency.max_ms,
                c.ok,
                c.sent,
                c.rate,
                r.cpu.as_ref().map_or(0.0, |c| c.cores("api")),
                r.cpu.as_ref().map_or(0.0, |c| c.cores("apiserver")),
            );
            if *system == "baseline" {
                p.baseline.push(r);
            } else {
                p.hookline.push(r);
            }
        }
    }
    p.summarise();
    Ok(p)
}

fn crud_run(system: &str, run: usize, c: &http::Crud, cpu: CpuSplit) -> RunResult {
    let mut r = RunResult {
        system: system.into(),
        run: format!("crud{run}"),
        expected: c.sent as u64,
        delivered: c.ok as u64,
        complete: c.ok == c.sent,
        rate: c.rate,
        latency: Some(c.latency.clone()),
        cpu: Some(cpu),
        ..RunResult::default()
    };
    r.notes.push(
        c.by_op
            .iter()
            .map(|(op, l)| format!("{op} p50 {:.2} p99 {:.2} ms", l.p50_ms, l.p99_ms))
            .collect::<Vec<_>>()
            .join(", "),
    );
    if c.ok < c.sent {
        r.notes.push(format!("answers: {:?}", c.statuses));
    }
    if c.max_send_lag_ms > 10.0 {
        r.notes.push(format!(
            "sender fell {:.0} ms behind its schedule at worst",
            c.max_send_lag_ms
        ));
    }
    r
}

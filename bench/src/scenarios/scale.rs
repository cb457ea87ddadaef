//! Scenario 5, scale: 1,000 `Webhook`s with generated signing Secrets are
//! created 8 at a time, the controller's time until all are Ready is taken,
//! then events flow open-loop at 1,000 events/s, each to one of them, for the
//! dispatcher's latency, CPU and RSS (idle and under load) with that many
//! `Webhook`s.

use std::time::{Duration, Instant};

use serde_json::json;

use super::{Ctx, Point, defs, rate_point, setup};
use crate::cluster::Tenant;
use crate::stats::spread;

/// Scenario 5.
pub(super) async fn run(ctx: &Ctx<'_>, out: &mut Vec<Point>) -> anyhow::Result<()> {
    let n = ctx.plan.scale_webhooks;
    let d = defs(ctx, n, |i| vec![format!("bench.w{i:04}")], false);
    let t = Tenant::create(ctx.env, &ctx.client, "scale").await?;
    eprintln!(
        "== scale: creating {n} webhooks (generated signing Secrets) in {}",
        t.name()
    );
    let t0 = Instant::now();
    t.create_webhooks(&d, 8).await?;
    let created_s = t0.elapsed().as_secs_f64();
    let ready = t.wait_ready(Duration::from_secs(900), t0).await?;
    let name = format!(
        "{n} webhooks, {:.0} events/s, each event to one",
        ctx.plan.scale_rate
    );
    let mut p = Point::new(
        "scale",
        name,
        "latency",
        json!({"webhooks": n, "rate": ctx.plan.scale_rate, "seconds": ctx.plan.rate_secs}),
    );
    p.notes.push(format!(
        "{n} Webhooks created in {created_s:.1} s (8 in parallel)"
    ));
    match ready {
        Some(dt) => {
            p.summary
                .insert("controller_ready_s".into(), spread(&[dt.as_secs_f64()]));
            p.notes.push(format!("controller: all {n} Ready {:.1} s after the first create (one measurement; the controller is the debug build the pod runner runs)", dt.as_secs_f64()));
        }
        None => p
            .notes
            .push(format!("controller: not all {n} Ready within 900 s")),
    }
    eprintln!("   {}", p.notes.join("; "));
    let types = (0..n).map(|i| format!("bench.w{i:04}")).collect();
    let s = setup(ctx, &t, n, n, false, types, 1024);
    let controller_ready = p.summary.remove("controller_ready_s");
    let mut p = rate_point(ctx, p, &s, ctx.plan.scale_rate, ctx.plan.rate_secs, false).await;
    if let Some(c) = controller_ready {
        p.summary.insert("controller_ready_s".into(), c);
    }
    out.push(p);
    t.delete().await;
    Ok(())
}

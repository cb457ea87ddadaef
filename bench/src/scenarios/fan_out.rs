//! Scenario 3, fan-out: a backlog of 1 KiB events, each to all of 10 or of
//! 100 `Webhook`s, is drained; the baseline sends every event to every URL.
//! The backlog shrinks with the fan-out so that each point makes the same
//! number of deliveries.

use serde_json::json;

use super::{Ctx, Point, backlog_point, defs, setup, tenant};

/// Scenario 3.
pub(super) async fn run(ctx: &Ctx<'_>, out: &mut Vec<Point>) -> anyhow::Result<()> {
    for &f in &ctx.plan.fanouts {
        let d = defs(ctx, f, |_| vec!["bench.*".into()], true);
        let t = tenant(ctx, &format!("fan{f}"), &d).await?;
        let events = ctx.plan.fanout_deliveries / f;
        let s = setup(ctx, &t, f, f, true, vec!["bench.event".into()], 1024);
        let name = format!("1 event → {f} webhooks, 1 KiB");
        eprintln!("== fan-out: {name}, {events} events");
        let p = Point::new(
            "fan-out",
            name,
            "rate",
            json!({"fan_out": f, "events": events, "value_bytes": 1024}),
        );
        out.push(backlog_point(ctx, p, &s, events, true).await);
        t.delete().await;
    }
    Ok(())
}

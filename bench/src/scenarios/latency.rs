//! Scenario 2, latency (and the latency half of 4, isolation): events flow
//! open-loop at fixed rates to one `Webhook`, and the time from produce to
//! first arrival at the sink is measured beside the baseline's. With
//! `isolation`, a second `Webhook` whose receiver never answers shares the
//! tenant, at 1,000 events/s, and no baseline runs.

use serde_json::json;

use super::{Ctx, Point, defs, isolation::dead, rate_point, setup, tenant};

/// Scenario 2, and the latency half of 4.
pub(super) async fn run(
    ctx: &Ctx<'_>,
    out: &mut Vec<Point>,
    isolation: bool,
) -> anyhow::Result<()> {
    let sink = &ctx.bench.sink;
    let mut d = defs(ctx, 1, |_| vec!["bench.*".into()], true);
    if isolation {
        d.push(dead(1, sink));
    }
    let t = tenant(ctx, if isolation { "isolat" } else { "lat" }, &d).await?;
    let s = setup(ctx, &t, 1, d.len(), false, vec!["bench.event".into()], 1024);
    let rates = if isolation {
        vec![1000.0]
    } else {
        ctx.plan.rates.clone()
    };
    for rate in rates {
        let (scenario, name) = if isolation {
            (
                "isolation",
                format!("{rate:.0} events/s, 1 webhook + 1 dead"),
            )
        } else {
            ("latency", format!("{rate:.0} events/s"))
        };
        eprintln!("== {scenario}: {name} for {} s", ctx.plan.rate_secs);
        let p = Point::new(
            scenario,
            name,
            "latency",
            json!({"rate": rate, "seconds": ctx.plan.rate_secs, "webhooks": 1, "dead": isolation, "value_bytes": 1024}),
        );
        out.push(rate_point(ctx, p, &s, rate, ctx.plan.rate_secs, !isolation).await);
    }
    t.delete().await;
    Ok(())
}

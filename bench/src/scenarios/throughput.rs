//! Scenario 1, throughput (and the throughput half of 4, isolation): a
//! backlog of 1 KiB or 5 KiB events is produced before the dispatcher starts,
//! each event to one of 1 or 10 `Webhook`s, and drained; the baseline client
//! sends the same requests. With `isolation`, one more `Webhook` whose
//! receiver never answers shares the tenant, and no baseline runs.

use serde_json::json;

use super::{Ctx, Point, backlog_point, defs, isolation::dead, kib, setup, tenant};

/// Scenario 1, and the throughput half of 4.
pub(super) async fn run(
    ctx: &Ctx<'_>,
    out: &mut Vec<Point>,
    isolation: bool,
) -> anyhow::Result<()> {
    let sink = &ctx.bench.sink;
    for &w in &ctx.plan.webhooks {
        let per_type = |i: usize| vec![format!("bench.w{i:04}")];
        let mut d = defs(ctx, w, per_type, true);
        if isolation {
            d.push(dead(w, sink));
        }
        let label = if isolation {
            format!("iso{w}")
        } else {
            format!("tp{w}")
        };
        let t = tenant(ctx, &label, &d).await?;
        let types: Vec<String> = (0..w).map(|i| format!("bench.w{i:04}")).collect();
        let payloads = if isolation {
            vec![1024]
        } else {
            ctx.plan.payloads.clone()
        };
        for &bytes in &payloads {
            let events = if bytes > 1024 {
                ctx.plan.backlog_5k
            } else {
                ctx.plan.backlog_1k
            };
            let s = setup(ctx, &t, w, d.len(), false, types.clone(), bytes);
            let (scenario, name) = if isolation {
                (
                    "isolation",
                    format!("{w} webhook(s) + 1 dead, {}", kib(bytes)),
                )
            } else {
                ("throughput", format!("{w} webhook(s), {}", kib(bytes)))
            };
            eprintln!("== {scenario}: {name}, backlog of {events}");
            let p = Point::new(
                scenario,
                name,
                "rate",
                json!({"webhooks": w, "dead": isolation, "value_bytes": bytes, "events": events, "partitions": ctx.bench.partitions}),
            );
            out.push(backlog_point(ctx, p, &s, events, !isolation).await);
        }
        t.delete().await;
    }
    Ok(())
}

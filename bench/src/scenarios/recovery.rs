//! Scenario 6, recovery: the receiver refuses connections while a backlog is
//! produced and the dispatcher retries and parks it, then comes back; what is
//! measured is how long the backlog takes to drain after its return.

use std::time::Duration;

use serde_json::json;

use super::{Ctx, Point, RECOVERY_PORT, say, setup, tenant};
use crate::cluster::WebhookDef;

/// Scenario 6.
pub(super) async fn run(ctx: &Ctx<'_>, out: &mut Vec<Point>) -> anyhow::Result<()> {
    let sink = &ctx.bench.sink;
    let d = vec![WebhookDef {
        name: "w0000".into(),
        url: sink.url(RECOVERY_PORT, 0),
        event_types: vec!["bench.*".into()],
        delivery: None,
        shared_secret: true,
    }];
    let t = tenant(ctx, "rec", &d).await?;
    let mut s = setup(ctx, &t, 1, 1, false, vec!["bench.event".into()], 1024);
    s.urls = vec![sink.url(RECOVERY_PORT, 0)];
    let events = ctx.plan.recovery_events;
    let name = format!("backlog of {events} events, 1 KiB, receiver refusing then back");
    eprintln!("== recovery: {name}");
    let mut p = Point::new(
        "recovery",
        name,
        "recovery",
        json!({"events": events, "value_bytes": 1024}),
    );
    for _ in 0..ctx.plan.runs {
        match ctx
            .bench
            .hookline_recovery(
                &s,
                RECOVERY_PORT,
                events,
                Duration::from_secs(ctx.plan.recovery_down_s),
                Duration::from_secs(ctx.plan.recovery_limit_s),
            )
            .await
        {
            Ok(r) => {
                say(&p, &r);
                p.hookline.push(r);
            }
            Err(e) => p.notes.push(format!("hookline run failed: {e:#}")),
        }
    }
    p.summarise();
    out.push(p);
    t.delete().await;
    Ok(())
}

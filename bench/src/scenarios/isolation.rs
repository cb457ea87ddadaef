//! Scenario 4, isolation: the throughput and latency scenarios again with
//! one more `Webhook` whose receiver never answers (`dead`, 5 s timeout),
//! and each resulting point set beside its clean counterpart (`compare`):
//! how much a dead receiver costs a tenant's healthy `Webhook`s.

use std::collections::BTreeMap;

use serde_json::json;

use super::{BLACKHOLE_PORT, Ctx, Point, latency, throughput};
use crate::cluster::WebhookDef;
use crate::stats::{Spread, spread};

/// The `Webhook` whose receiver never answers (index `index` of the sink).
pub(super) fn dead(index: usize, sink: &crate::sink::Sink) -> WebhookDef {
    WebhookDef {
        name: "dead".into(),
        url: sink.url(BLACKHOLE_PORT, index),
        event_types: vec!["bench.*".into()],
        delivery: Some(json!({"timeout": "5s"})),
        shared_secret: true,
    }
}

/// Scenario 4: throughput, then latency, with the dead `Webhook`.
pub(super) async fn run(ctx: &Ctx<'_>, out: &mut Vec<Point>) -> anyhow::Result<()> {
    throughput::run(ctx, out, true).await?;
    latency::run(ctx, out, true).await
}

/// Puts each isolation point beside its clean counterpart (same webhooks, no
/// dead one) when that ran in the same invocation: `vs_clean` is the
/// healthy throughput (or p99) with the dead receiver over the clean one.
pub(super) fn compare(points: &mut [Point]) {
    let clean: Vec<(serde_json::Value, String, BTreeMap<String, Spread>)> = points
        .iter()
        .filter(|p| p.scenario == "throughput" || p.scenario == "latency")
        .map(|p| (p.params.clone(), p.kind.clone(), p.summary.clone()))
        .collect();
    for p in points.iter_mut().filter(|p| p.scenario == "isolation") {
        let same = |c: &serde_json::Value| {
            ["webhooks", "value_bytes", "rate"]
                .iter()
                .all(|k| c.get(*k) == p.params.get(*k))
        };
        let Some((_, kind, summary)) = clean.iter().find(|(c, k, _)| same(c) && *k == p.kind)
        else {
            continue;
        };
        let key = if kind == "rate" { "rate" } else { "p99_ms" };
        if let (Some(iso), Some(cl)) = (
            p.summary.get(key).map(|s| s.median),
            summary.get(key).map(|s| s.median),
        ) && cl > 0.0
        {
            let ratio = iso / cl;
            p.summary.insert("vs_clean".into(), spread(&[ratio]));
            p.notes.retain(|n| !n.starts_with("beside the clean run"));
            p.notes.push(format!(
                "beside the clean run: {key} {iso:.1} with the dead receiver vs {cl:.1} without ({ratio:.2}×)"
            ));
        }
    }
}

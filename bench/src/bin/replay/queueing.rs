//! The sources and the two ways of moving them (see `main.rs` for the whole benchmark): the
//! dead-letter topic filled by a raw producer ([`fill`]), the controller's runner ([`inject`],
//! measured by [`queue_inject`]) against a raw consumer + producer copy ([`raw_copy`],
//! [`queue_raw`]), and a real `WebhookReplay` delivered end to end ([`end_to_end`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hookline_bench::cluster::Env;
use hookline_bench::procstat::{CpuSplit, Snapshot, Watched};
use hookline_bench::sink::Recorder;
use hookline_controller::replay::{Injection, Progress, inject};
use hookline_core::replay::{Filter, ReplayTag};
use hookline_core::retry_topics::DeadLetter;
use hookline_crds::{PartitionRange, WebhookReplay};
use hookline_tests::random_suffix;
use kube::api::{Api, DeleteParams, PostParams};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, FutureProducer, FutureRecord, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;

use crate::{Cli, EndToEnd, OTHER, PREFIX, Queued, WEBHOOK, delivery, load};
use delivery::Ctx;

pub(crate) fn config(settings: hookline_core::kafka::Settings) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in settings {
        c.set(k, v);
    }
    c
}

pub(crate) fn base(env: &Env) -> hookline_core::kafka::Settings {
    hookline_core::kafka::base(&env.kafka_bootstrap, std::iter::empty())
}

/// Fills `dlq` with `n` dead letters of [`WEBHOOK`] and `n/10` of [`OTHER`] (every eleventh
/// record), 1 KiB events over `keys` keys; returns records written and records/s.
pub(crate) async fn fill(
    env: &Env,
    dlq: &str,
    events_topic: &str,
    cli: &Cli,
) -> anyhow::Result<(usize, f64)> {
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &env.kafka_bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "10")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "500000")
        .set("message.timeout.ms", "60000")
        .create()?;
    let (n, others) = (cli.events, cli.events / 10);
    let total = n + others;
    let now = jiff::Timestamp::now();
    let t0 = Instant::now();
    let mut pending = Vec::with_capacity(10_000);
    let mut buf = Vec::with_capacity(cli.bytes + 64);
    let (mut mine, mut theirs) = (0usize, 0usize);
    for i in 0..total {
        let other = (i % 11 == 10 && theirs < others) || mine == n;
        let (webhook, prefix, seq) = if other {
            theirs += 1;
            (OTHER, "o-", theirs - 1)
        } else {
            mine += 1;
            (WEBHOOK, PREFIX, mine - 1)
        };
        let key_n = seq % cli.keys.max(1);
        let key = format!("k{key_n}");
        buf.clear();
        load::event(prefix, seq, 0, cli.bytes, &mut buf);
        let dl = DeadLetter {
            reason: "retries_exhausted".into(),
            error: "HTTP 500 after 8 attempts".into(),
            topic: events_topic.to_owned(),
            partition: i32::try_from(key_n % 6)?,
            offset: i64::try_from(seq)?,
            webhook: Some(webhook.to_owned()),
            attempts: Some(8),
            status: Some(500),
        };
        let mut headers = OwnedHeaders::new();
        for (k, v) in dl.headers(now) {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        let record = FutureRecord::to(dlq)
            .key(&key)
            .payload(&buf[..])
            .headers(headers);
        // The local queue holds 500,000 records and at most 10,000 are outstanding.
        let sent = producer
            .send_result(record)
            .map_err(|(e, _)| anyhow::anyhow!("filling the dead-letter topic: {e}"))?;
        pending.push(sent);
        if pending.len() == 10_000 {
            settle(&mut pending).await?;
        }
    }
    settle(&mut pending).await?;
    Ok((total, total as f64 / t0.elapsed().as_secs_f64()))
}

async fn settle(pending: &mut Vec<rdkafka::producer::DeliveryFuture>) -> anyhow::Result<()> {
    for r in futures::future::join_all(pending.drain(..)).await {
        match r {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => anyhow::bail!("filling the dead-letter topic: {e}"),
            Err(_) => anyhow::bail!("filling the dead-letter topic: the producer went away"),
        }
    }
    Ok(())
}

/// Runs `inject` on a blocking thread, stopped after `limit`; returns the progress, wall time
/// and error, if any.
async fn run_inject(
    env: &Env,
    job: Injection,
    limit: Duration,
    writer_set: &[String],
) -> (Arc<Progress>, f64, Option<String>) {
    let group = format!("hookline-replay.{}", job.tag.uid);
    let reader = config(hookline_core::kafka::replay_reader(&base(env), &group));
    let mut writer = config(hookline_core::kafka::replay_writer(&base(env), &group));
    for kv in writer_set {
        if let Some((k, v)) = kv.split_once('=') {
            writer.set(k, v);
        }
    }
    let progress = Arc::new(Progress::default());
    let p = progress.clone();
    let t0 = Instant::now();
    let mut task = tokio::task::spawn_blocking(move || inject(&reader, &writer, &job, &p));
    let result = match tokio::time::timeout(limit, &mut task).await {
        Ok(r) => r,
        Err(_) => {
            progress.stop.store(true, Ordering::Relaxed);
            task.await
        }
    };
    let wall = t0.elapsed().as_secs_f64();
    let error = match result {
        Ok(Ok(())) if progress.queued_all.load(Ordering::Relaxed) => None,
        Ok(Ok(())) => Some(format!("stopped after {} s", limit.as_secs())),
        Ok(Err(e)) => Some(e),
        Err(e) => Some(e.to_string()),
    };
    (progress, wall, error)
}

fn filter() -> Filter {
    Filter {
        webhook: WEBHOOK.to_owned(),
        reasons: Vec::new(),
        event_types: None,
        subscribed: None,
        ids: Vec::new(),
        window_ms: None,
    }
}

/// The baseline: every record of `ranges` of `source` copied (key, value, headers, partition)
/// to `target` by a plain consumer and an idempotent `acks=all` producer, no transactions.
fn raw_copy(
    env: &Env,
    source: &str,
    ranges: &[PartitionRange],
    target: &str,
    limit: Duration,
) -> Result<(i64, i64), String> {
    let group = format!("hlb-replay-raw.{}", random_suffix());
    let consumer: BaseConsumer = config(hookline_core::kafka::replay_reader(&base(env), &group))
        .create()
        .map_err(|e| e.to_string())?;
    let mut producer_settings = hookline_core::kafka::producer(
        &base(env),
        hookline_core::envelope::DEFAULT_MAX_RECORD_BYTES,
    );
    producer_settings.push(("linger.ms".into(), "5".into()));
    let producer: ThreadedProducer<_> = config(producer_settings)
        .create()
        .map_err(|e| e.to_string())?;
    let mut tpl = TopicPartitionList::new();
    let mut left = 0i64;
    let mut ends = std::collections::HashMap::new();
    for r in ranges.iter().filter(|r| r.start < r.end) {
        tpl.add_partition_offset(source, r.partition, Offset::Offset(r.start))
            .map_err(|e| e.to_string())?;
        left += r.end - r.start;
        ends.insert(r.partition, r.end);
    }
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + limit;
    let (mut scanned, mut written) = (0i64, 0i64);
    while left > 0 && Instant::now() < deadline {
        let Some(msg) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let msg = msg.map_err(|e| e.to_string())?;
        if ends
            .get(&msg.partition())
            .is_none_or(|end| msg.offset() >= *end)
        {
            continue;
        }
        scanned += 1;
        left -= 1;
        let headers = msg.headers().map(|hs| {
            let mut out = OwnedHeaders::new();
            for h in hs.iter() {
                out = out.insert(Header {
                    key: h.key,
                    value: h.value,
                });
            }
            out
        });
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(target)
            .payload(msg.payload().unwrap_or_default())
            .partition(msg.partition());
        if let Some(k) = msg.key() {
            record = record.key(k);
        }
        if let Some(h) = headers {
            record = record.headers(h);
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    back,
                )) if Instant::now() < deadline => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(format!("copying: {e}")),
            }
        }
        written += 1;
    }
    producer
        .flush(Duration::from_secs(60))
        .map_err(|e| format!("flushing: {e}"))?;
    if left > 0 {
        return Err(format!(
            "stopped after {} s, {left} not copied",
            limit.as_secs()
        ));
    }
    Ok((scanned, written))
}

pub(crate) async fn queue_inject(
    env: &Env,
    watched: &Watched,
    dlq: &str,
    ranges: &[PartitionRange],
    target: &str,
    cli: &Cli,
    run: usize,
) -> Queued {
    let tag = ReplayTag {
        name: format!("bench-q{run}"),
        uid: format!("q{run}-{}", random_suffix()),
    };
    let job = Injection {
        topic: dlq.to_owned(),
        ranges: ranges.to_vec(),
        filter: filter(),
        tag,
        retry_topic: target.to_owned(),
        rate: 1e9,
    };
    let a = Snapshot::take(watched);
    let (p, wall_s, error) =
        run_inject(env, job, Duration::from_secs(cli.limit_s), &cli.writer_set).await;
    let cpu = CpuSplit::between(&a, &Snapshot::take(watched));
    let written = p.matched.load(Ordering::Relaxed);
    Queued {
        system: "inject".into(),
        scanned: p.scanned.load(Ordering::Relaxed),
        written,
        wall_s,
        rate: written as f64 / wall_s,
        error,
        cpu,
    }
}

pub(crate) async fn queue_raw(
    env: &Env,
    watched: &Watched,
    dlq: &str,
    ranges: &[PartitionRange],
    target: &str,
    cli: &Cli,
) -> Queued {
    let (env2, dlq, ranges, target) = (
        env.clone(),
        dlq.to_owned(),
        ranges.to_vec(),
        target.to_owned(),
    );
    let limit = Duration::from_secs(cli.limit_s);
    let a = Snapshot::take(watched);
    let t0 = Instant::now();
    let r = tokio::task::spawn_blocking(move || raw_copy(&env2, &dlq, &ranges, &target, limit))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
    let wall_s = t0.elapsed().as_secs_f64();
    let cpu = CpuSplit::between(&a, &Snapshot::take(watched));
    let ((scanned, written), error) = match r {
        Ok(x) => (x, None),
        Err(e) => ((0, 0), Some(e)),
    };
    Queued {
        system: "raw-copy".into(),
        scanned,
        written,
        wall_s,
        rate: written as f64 / wall_s,
        error,
        cpu,
    }
}

/// A `WebhookReplay` of [`WEBHOOK`]'s dead letters; its tag (name, uid).
async fn create_replay(api: &Api<WebhookReplay>, name: &str) -> anyhow::Result<ReplayTag> {
    let r: WebhookReplay = serde_json::from_value(json!({
        "apiVersion": "hookline.dev/v1alpha1", "kind": "WebhookReplay",
        "metadata": {"name": name},
        "spec": {"webhookRef": {"name": WEBHOOK}, "source": {"deadLetters": {}}},
    }))?;
    let made = api.create(&PostParams::default(), &r).await?;
    Ok(ReplayTag {
        name: name.to_owned(),
        uid: made
            .metadata
            .uid
            .ok_or_else(|| anyhow::anyhow!("the WebhookReplay has no uid"))?,
    })
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn end_to_end(
    ctx: &Ctx<'_>,
    d: &hookline_bench::dispatcher::Dispatcher,
    replays: &Api<WebhookReplay>,
    dlq: &str,
    ranges: &[PartitionRange],
    retry_topic: &str,
    cli: &Cli,
    run: usize,
) -> anyhow::Result<EndToEnd> {
    let tag = create_replay(
        replays,
        &format!("bench-e2e{run}-{}", &random_suffix()[..4]),
    )
    .await?;
    // Let the dispatcher's watch see it: before that, the replay would count as deleted.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let n = cli.events;
    let rec = Arc::new(Recorder::new(PREFIX, n, 1, false, 0));
    ctx.sink.set_recorder(rec.clone());
    let mut watched = ctx.watched.clone();
    watched.pids.push(("dispatcher".into(), d.pid));
    let job = Injection {
        topic: dlq.to_owned(),
        ranges: ranges.to_vec(),
        filter: filter(),
        tag: tag.clone(),
        retry_topic: retry_topic.to_owned(),
        rate: 1e9,
    };
    let limit = Duration::from_secs(cli.limit_s);
    let a = Snapshot::take(&watched);
    let start_us = hookline_bench::clock::now_us();
    let t0 = Instant::now();
    let (_, queue_s, mut error) = run_inject(ctx.env, job, limit, &cli.writer_set).await;
    let left = limit.saturating_sub(t0.elapsed());
    if !delivery::wait_for(&rec, n as u64, left).await && error.is_none() {
        error = Some(format!(
            "{} of {n} delivered within {} s",
            rec.unique(),
            limit.as_secs()
        ));
    }
    let cpu = CpuSplit::between(&a, &Snapshot::take(&watched));
    let last_us = rec.last_us.load(Ordering::Relaxed);
    let e2e_s = last_us.saturating_sub(start_us) as f64 / 1e6;
    let counters = d.counters().await.ok();
    let _ = replays.delete(&tag.name, &DeleteParams::default()).await;
    Ok(EndToEnd {
        expected: n as u64,
        delivered: rec.unique(),
        duplicates: rec.duplicates.load(Ordering::Relaxed),
        foreign: rec.foreign.load(Ordering::Relaxed),
        queue_s,
        e2e_s,
        rate: rec.unique() as f64 / e2e_s.max(1e-9),
        cpu,
        counters,
        error,
    })
}

//! Kafka helpers for tests and the benchmark: topics of their own (created and deleted with the
//! admin API, since the broker has automatic topic creation off), a producer that waits for
//! `acks=all`, records produced one at a time or many at once, and a consumer that reads a topic
//! from the beginning.

use std::time::Duration;

use anyhow::{Context as _, bail};
use rdkafka::{
    ClientConfig, Message,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{Consumer, StreamConsumer},
    message::{Header, Headers, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};

use crate::{Env, random_suffix};

/// A record as read back.
#[derive(Debug, Clone)]
pub struct Record {
    /// Key bytes, if any.
    pub key: Option<Vec<u8>>,
    /// Value bytes, if any.
    pub value: Option<Vec<u8>>,
    /// Headers in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Partition and offset.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
}

impl Record {
    /// The last value of header `name` as text (Hookline's own headers are UTF-8).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

fn base_config(env: &Env) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &env.kafka_bootstrap);
    c
}

/// How long the broker may take to create or delete topics.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Creates `hl-test-<prefix>-<random>` with `partitions` partitions and returns its name.
///
/// # Errors
/// When the broker refuses.
pub async fn create_topic(env: &Env, prefix: &str, partitions: i32) -> anyhow::Result<String> {
    let name = format!("hl-test-{prefix}-{}", random_suffix());
    create_topics(env, std::slice::from_ref(&name), partitions).await?;
    Ok(name)
}

/// Creates the topics `names`, `partitions` partitions each, replication factor 1.
///
/// # Errors
/// When the broker refuses one.
pub async fn create_topics(env: &Env, names: &[String], partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = base_config(env).create()?;
    let new: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
    for r in admin.create_topics(&new, &opts).await? {
        if let Err((topic, code)) = r {
            bail!("creating topic {topic}: {code}");
        }
    }
    Ok(())
}

/// Deletes the topics `names`, best effort (a missing topic or an unreachable broker is not an
/// error: this is clean-up).
pub async fn delete_topics(env: &Env, names: &[String]) {
    let Ok(admin) = base_config(env).create::<AdminClient<DefaultClientContext>>() else {
        return;
    };
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let opts = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
    let _ = admin.delete_topics(&refs, &opts).await;
}

/// A producer with `acks=all` and idempotence on, as Hookline's users are told to configure.
///
/// # Errors
/// When the client cannot be created.
pub fn producer(env: &Env) -> anyhow::Result<FutureProducer> {
    Ok(base_config(env)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "0")
        .create()?)
}

/// A producer like [`producer`] that compresses its batches with `codec` (`gzip`, `snappy`,
/// `lz4`, `zstd`), as upstream producers commonly do.
///
/// # Errors
/// When librdkafka refuses the codec (built without it).
pub fn compressing_producer(env: &Env, codec: &str) -> anyhow::Result<FutureProducer> {
    Ok(base_config(env)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "0")
        .set("compression.type", codec)
        .create()?)
}

/// Produces one record and waits for the broker's acknowledgement.
///
/// # Errors
/// When delivery fails.
pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&str>,
    value: &[u8],
    headers: &[(&str, &[u8])],
) -> anyhow::Result<(i32, i64)> {
    let mut hs = OwnedHeaders::new();
    for (k, v) in headers {
        hs = hs.insert(Header {
            key: k,
            value: Some(*v),
        });
    }
    let mut record = FutureRecord::to(topic).payload(value).headers(hs);
    if let Some(k) = key {
        record = record.key(k);
    }
    let delivery = producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| anyhow::anyhow!("producing to {topic}: {e}"))?;
    Ok((delivery.partition, delivery.offset))
}

/// Hands every (key, value) of `records` to the producer at once, in the given order, and waits
/// for all acknowledgements (30 s each): a burst, for tests that need load rather than a strict
/// order (a full local queue makes the producer retry a record, which may reorder it).
///
/// # Errors
/// When a record is not acknowledged.
pub async fn produce_many(
    producer: &FutureProducer,
    topic: &str,
    records: impl IntoIterator<Item = (String, Vec<u8>)>,
) -> anyhow::Result<()> {
    let sends = records.into_iter().map(|(key, value)| async move {
        producer
            .send(
                FutureRecord::to(topic).key(&key).payload(&value),
                Duration::from_secs(30),
            )
            .await
            .map(|_| ())
            .map_err(|(e, _)| anyhow::anyhow!("producing to {topic}: {e}"))
    });
    for r in futures::future::join_all(sends).await {
        r?;
    }
    Ok(())
}

/// A consumer in `group` that joins it as the static member `instance` (`group.instance.id`),
/// as a dispatcher in the Pod of that name does.
///
/// # Errors
/// When the client cannot be created.
pub fn static_member(env: &Env, group: &str, instance: &str) -> anyhow::Result<StreamConsumer> {
    Ok(base_config(env)
        .set("group.id", group)
        .set("group.instance.id", instance)
        .set("enable.auto.commit", "false")
        .create()?)
}

/// Reads `count` records of `topic` from the beginning, in a fresh consumer group.
///
/// # Errors
/// When fewer arrive within `deadline`.
pub async fn consume(
    env: &Env,
    topic: &str,
    count: usize,
    deadline: Duration,
) -> anyhow::Result<Vec<Record>> {
    let consumer: StreamConsumer = base_config(env)
        .set("group.id", format!("hl-test-{}", random_suffix()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[topic])?;
    let mut out = Vec::new();
    let end = tokio::time::Instant::now() + deadline;
    while out.len() < count {
        let msg = tokio::time::timeout_at(end, consumer.recv())
            .await
            .with_context(|| {
                format!(
                    "only {} of {count} records from {topic} within {deadline:?}",
                    out.len()
                )
            })??;
        let headers = msg
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        out.push(Record {
            key: msg.key().map(<[u8]>::to_vec),
            value: msg.payload().map(<[u8]>::to_vec),
            headers,
            partition: msg.partition(),
            offset: msg.offset(),
        });
    }
    Ok(out)
}

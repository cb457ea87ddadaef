//! Kafka client settings as plain `(name, value)` pairs, so what delivery depends on is decided
//! and tested here and merely applied by the binaries' Kafka clients. Extra librdkafka
//! settings flow in from `HOOKLINE_KAFKA_<NAME>` variables through [`env_settings`]; the
//! settings at-least-once delivery depends on (manual commits, `acks=all`, idempotence, the
//! `range` assignor) are applied last, so nothing can override them.

/// `(librdkafka setting, value)`.
pub type Settings = Vec<(String, String)>;

/// librdkafka settings from `HOOKLINE_KAFKA_<NAME>` variables:
/// `HOOKLINE_KAFKA_SECURITY_PROTOCOL` becomes `security.protocol`.
/// `HOOKLINE_KAFKA_BOOTSTRAP` and `HOOKLINE_KAFKA_SECRET` are not settings.
pub fn env_settings(vars: impl Iterator<Item = (String, String)>) -> Settings {
    vars.filter_map(|(k, v)| {
        let name = k.strip_prefix("HOOKLINE_KAFKA_")?;
        (!name.is_empty() && name != "BOOTSTRAP" && name != "SECRET")
            .then(|| (name.to_ascii_lowercase().replace('_', "."), v))
    })
    .collect()
}

fn pairs(items: &[(&str, &str)]) -> Settings {
    items
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Defaults, then the platform's settings (`base`: bootstrap servers and the environment's),
/// then the forced ones: later entries win.
fn layered(defaults: &[(&str, &str)], base: &Settings, forced: Settings) -> Settings {
    let mut out = pairs(defaults);
    out.extend(base.iter().cloned());
    out.extend(forced);
    out
}

/// Bootstrap servers plus the given environment's `HOOKLINE_KAFKA_*` settings.
pub fn base(bootstrap: &str, env: impl Iterator<Item = (String, String)>) -> Settings {
    let mut out = vec![("bootstrap.servers".to_owned(), bootstrap.to_owned())];
    out.extend(env_settings(env));
    out
}

/// The dispatcher's consumer of the events and retry topics: one group for all of them
/// with the `range` assignor, so that partition *i* of every topic goes to the same replica
/// (the per-key ordering relies on it); offsets are committed by hand, only once settled.
///
/// `instance` (the Pod's name) makes the replica a *static member* (`group.instance.id`): a
/// container restarted in its Pod rejoins as the same member and gets its partitions straight
/// back, without a rebalance of the group and without waiting for its old session to time
/// out. The session timeout (10 s) bounds how long the partitions of a replica that is gone
/// for good (its Pod deleted) stay unread; heartbeats every second let the others see a
/// rebalance start within a second.
pub fn consumer(base: &Settings, group: &str, instance: Option<&str>) -> Settings {
    let mut forced = pairs(&[
        ("group.id", group),
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        ("partition.assignment.strategy", "range"),
        ("enable.partition.eof", "false"),
    ]);
    if let Some(instance) = instance.filter(|i| !i.is_empty()) {
        forced.push(("group.instance.id".to_owned(), instance.to_owned()));
    }
    layered(
        &[
            ("auto.offset.reset", "earliest"),
            ("statistics.interval.ms", "10000"),
            ("session.timeout.ms", CONSUMER_SESSION_TIMEOUT_MS),
            ("heartbeat.interval.ms", "1000"),
            // librdkafka (2.4+) waits this long before fetching again for a partition whose
            // read-ahead queue was full (default 1 s). Large records fill a bounded queue in a
            // few fetches: with the default, a backlog of 64 KiB events drained at 1,050/s under
            // a 256 MiB budget, with 20 ms at 3,350/s (BENCHMARKS.md).
            ("fetch.queue.backoff.ms", "20"),
        ],
        base,
        forced,
    )
}

/// The dispatcher consumer's session timeout: how long a replica that vanished without a
/// word (its Pod deleted, its node lost) keeps its partitions.
pub const CONSUMER_SESSION_TIMEOUT_MS: &str = "10000";

/// What a dispatcher's record may carry on top of the event it was read as: retry or
/// dead-letter headers (a few hundred bytes, the error text at most
/// [`crate::retry_topics::ERROR_TEXT_MAX`]), a replay's tag, and Kafka's record and batch
/// framing (about a hundred bytes).
pub const RECORD_HEADROOM_BYTES: usize = 16 * 1024;

/// The largest record written for an event of up to `max_record_bytes` (the bound on key,
/// value and headers that `--max-record-bytes` sets, [`crate::envelope::Limits`]): the
/// dispatcher producer's `message.max.bytes`, and the `max.message.bytes` of the retry and
/// dead-letter topics the controller makes, so that no retry or dead letter of an accepted
/// event is refused for its size. Within librdkafka's range (1000 … 1,000,000,000).
///
/// Not covered: an event whose envelope grows when re-serialized (a CloudEvent with `text/*`
/// data full of characters JSON escapes); such a record is dead-lettered as a reference
/// ([`crate::retry_topics::reference`]).
pub fn max_message_bytes(max_record_bytes: usize) -> usize {
    max_record_bytes
        .saturating_add(RECORD_HEADROOM_BYTES)
        .clamp(1000, 1_000_000_000)
}

/// The producer of retry, dead-letter and attempt records: `acks=all` and idempotence, so
/// an acknowledged retry is durable and never doubled; `message.max.bytes` admits the retry
/// or dead letter of any event within `max_record_bytes` ([`max_message_bytes`]; librdkafka's
/// default, 1,000,000, is below the default bound of 1 MiB).
pub fn producer(base: &Settings, max_record_bytes: usize) -> Settings {
    let max = max_message_bytes(max_record_bytes).to_string();
    layered(
        &[
            ("linger.ms", "5"),
            ("message.timeout.ms", "60000"),
            ("compression.type", "none"),
            ("message.max.bytes", max.as_str()),
        ],
        base,
        pairs(&[("acks", "all"), ("enable.idempotence", "true")]),
    )
}

/// The producer a record goes through again after the broker refused its batch as too large
/// or invalid ([`producer`] with `batch.num.messages=1`, no linger): Kafka judges a batch, not
/// a record, and librdkafka does not split a refused batch (the Java producer does), so a small
/// record that shared a batch with one the topic refuses is refused with it. Alone, a record
/// is refused only for what it is.
pub fn solo_producer(base: &Settings, max_record_bytes: usize) -> Settings {
    let mut out = producer(base, max_record_bytes);
    out.extend(pairs(&[("batch.num.messages", "1"), ("linger.ms", "0")]));
    out
}

/// A group-less reader of the retry topics, used once per assignment to find the retries
/// still pending.
pub fn scanner(base: &Settings, group: &str) -> Settings {
    let scan_group = format!("{group}.scan");
    layered(
        &[],
        base,
        pairs(&[
            ("group.id", &scan_group),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("enable.partition.eof", "false"),
        ]),
    )
}

/// `hookline-api`'s reader of the attempts topics: it assigns partitions itself and keeps its
/// positions in its own store, so the group only names it (nothing is committed).
pub fn delivery_log(base: &Settings, group: &str) -> Settings {
    layered(
        &[("fetch.wait.max.ms", "100")],
        base,
        pairs(&[
            ("group.id", group),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("enable.partition.eof", "false"),
            ("auto.offset.reset", "earliest"),
        ]),
    )
}

/// The controller's reader of a replay's source (`group`: one per replay, whose offsets are
/// committed only inside the writer's transactions) and of the attempts topic: it assigns
/// partitions itself and reads committed records only.
pub fn replay_reader(base: &Settings, group: &str) -> Settings {
    layered(
        &[("fetch.wait.max.ms", "100")],
        base,
        pairs(&[
            ("group.id", group),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("enable.partition.eof", "false"),
            ("auto.offset.reset", "earliest"),
            ("isolation.level", "read_committed"),
        ]),
    )
}

/// The controller's writer of a replay's retry records: transactional (`transactional_id`,
/// one per replay), so a chunk of records and the source position after it are committed
/// together or not at all, and a second writer of the same replay fences the first.
pub fn replay_writer(base: &Settings, transactional_id: &str) -> Settings {
    layered(
        &[("linger.ms", "5"), ("transaction.timeout.ms", "60000")],
        base,
        pairs(&[
            ("acks", "all"),
            ("enable.idempotence", "true"),
            ("transactional.id", transactional_id),
        ]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(settings: &'a Settings, key: &str) -> Option<&'a str> {
        settings
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn kafka_settings_come_from_prefixed_environment_variables() {
        let vars = [
            ("HOOKLINE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("HOOKLINE_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
            ("HOOKLINE_KAFKA_BOOTSTRAP", "k:9092"),
            ("HOOKLINE_KAFKA_SECRET", "kafka-creds"),
            ("PATH", "/bin"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let got = env_settings(vars.into_iter());
        assert_eq!(
            got,
            vec![
                ("security.protocol".to_owned(), "SASL_SSL".to_owned()),
                ("sasl.mechanism".to_owned(), "SCRAM-SHA-512".to_owned())
            ]
        );
    }

    #[test]
    fn the_settings_delivery_depends_on_cannot_be_overridden() {
        let env = [
            ("HOOKLINE_KAFKA_ENABLE_AUTO_COMMIT", "true"),
            ("HOOKLINE_KAFKA_ACKS", "1"),
            ("HOOKLINE_KAFKA_SESSION_TIMEOUT_MS", "45000"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let base = base("k:9092", env.into_iter());
        let c = consumer(&base, "hookline-dispatcher.acme", Some("d-7f9c"));
        assert_eq!(get(&c, "group.instance.id"), Some("d-7f9c"));
        assert_eq!(get(&c, "heartbeat.interval.ms"), Some("1000"));
        assert_eq!(get(&c, "enable.auto.commit"), Some("false"));
        assert_eq!(get(&c, "partition.assignment.strategy"), Some("range"));
        assert_eq!(get(&c, "group.id"), Some("hookline-dispatcher.acme"));
        assert_eq!(
            get(&c, "session.timeout.ms"),
            Some("45000"),
            "a default yields"
        );
        assert_eq!(get(&c, "bootstrap.servers"), Some("k:9092"));
        let p = producer(&base, crate::envelope::DEFAULT_MAX_RECORD_BYTES);
        assert_eq!(get(&p, "acks"), Some("all"));
        assert_eq!(get(&p, "enable.idempotence"), Some("true"));
        let s = scanner(&base, "g");
        assert_eq!(get(&s, "group.id"), Some("g.scan"));
        // Only the group's consumer is the static member: the scanner and a consumer without a
        // Pod name (the benchmark's) join as dynamic members.
        assert_eq!(get(&s, "group.instance.id"), None);
        let dynamic = consumer(&base, "g", None);
        assert_eq!(get(&dynamic, "group.instance.id"), None);
        assert_eq!(
            get(&consumer(&base, "g", Some("")), "group.instance.id"),
            None
        );
    }

    #[test]
    fn the_producer_admits_the_retry_of_the_largest_event_the_dispatcher_accepts() {
        let max = crate::envelope::DEFAULT_MAX_RECORD_BYTES;
        let p = producer(&base("k:9092", std::iter::empty()), max);
        let limit: usize = get(&p, "message.max.bytes").unwrap().parse().unwrap();
        assert!(
            limit >= max + 1024,
            "{limit}: an event at the bound plus its headers"
        );
        assert!(limit > 1_000_000, "above librdkafka's default");
        assert_eq!(max_message_bytes(0), RECORD_HEADROOM_BYTES);
        assert_eq!(max_message_bytes(usize::MAX), 1_000_000_000);
    }

    #[test]
    fn the_solo_producer_sends_each_record_alone_with_the_producers_guarantees() {
        let env = [
            ("HOOKLINE_KAFKA_BATCH_NUM_MESSAGES", "500"),
            ("HOOKLINE_KAFKA_LINGER_MS", "200"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let base = base("k:9092", env.into_iter());
        let max = crate::envelope::DEFAULT_MAX_RECORD_BYTES;
        let s = solo_producer(&base, max);
        assert_eq!(
            get(&s, "batch.num.messages"),
            Some("1"),
            "the platform's setting yields"
        );
        assert_eq!(get(&s, "linger.ms"), Some("0"));
        let p = producer(&base, max);
        assert_eq!(
            get(&p, "linger.ms"),
            Some("200"),
            "the main producer takes it"
        );
        for key in [
            "acks",
            "enable.idempotence",
            "message.max.bytes",
            "bootstrap.servers",
        ] {
            assert_eq!(get(&s, key), get(&p, key), "{key}");
        }
    }

    #[test]
    fn a_replay_writes_in_transactions_and_reads_only_committed_records() {
        let base = vec![
            ("isolation.level".to_owned(), "read_uncommitted".to_owned()),
            ("transactional.id".to_owned(), "other".to_owned()),
        ];
        let r = replay_reader(&base, "hookline-replay.u1");
        assert_eq!(get(&r, "isolation.level"), Some("read_committed"));
        assert_eq!(get(&r, "enable.auto.commit"), Some("false"));
        let w = replay_writer(&base, "hookline-replay.u1");
        assert_eq!(get(&w, "transactional.id"), Some("hookline-replay.u1"));
        assert_eq!(get(&w, "acks"), Some("all"));
    }
}

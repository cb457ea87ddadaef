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
pub fn consumer(base: &Settings, group: &str) -> Settings {
    layered(
        &[
            ("auto.offset.reset", "earliest"),
            ("statistics.interval.ms", "10000"),
            ("session.timeout.ms", "30000"),
        ],
        base,
        pairs(&[
            ("group.id", group),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("partition.assignment.strategy", "range"),
            ("enable.partition.eof", "false"),
        ]),
    )
}

/// The producer of retry, dead-letter and attempt records: `acks=all` and idempotence, so
/// an acknowledged retry is durable and never doubled.
pub fn producer(base: &Settings) -> Settings {
    layered(
        &[
            ("linger.ms", "5"),
            ("message.timeout.ms", "60000"),
            ("compression.type", "none"),
        ],
        base,
        pairs(&[("acks", "all"), ("enable.idempotence", "true")]),
    )
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
        let c = consumer(&base, "hookline-dispatcher.acme");
        assert_eq!(get(&c, "enable.auto.commit"), Some("false"));
        assert_eq!(get(&c, "partition.assignment.strategy"), Some("range"));
        assert_eq!(get(&c, "group.id"), Some("hookline-dispatcher.acme"));
        assert_eq!(
            get(&c, "session.timeout.ms"),
            Some("45000"),
            "a default yields"
        );
        assert_eq!(get(&c, "bootstrap.servers"), Some("k:9092"));
        let p = producer(&base);
        assert_eq!(get(&p, "acks"), Some("all"));
        assert_eq!(get(&p, "enable.idempotence"), Some("true"));
        let s = scanner(&base, "g");
        assert_eq!(get(&s, "group.id"), Some("g.scan"));
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

//! The dispatcher's settings: its flags are [`hookline_core::args::DispatcherArgs`], the type
//! the controller writes them with; this module turns them, with the `HOOKLINE_KAFKA_*`
//! settings of the process environment, into the Kafka client configurations of the consumer,
//! the producer and the start-up scanner ([`hookline_core::kafka`] decides their contents).

use hookline_core::args::DispatcherArgs;
use hookline_core::kafka::{self, Settings};
use hookline_core::memory::Budget;
use rdkafka::ClientConfig;

/// The dispatcher's flags.
pub type Config = DispatcherArgs;

fn client_config(settings: Settings) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (k, v) in settings {
        config.set(k, v);
    }
    config
}

fn base(config: &Config) -> Settings {
    kafka::base(&config.kafka_bootstrap, std::env::vars())
}

/// The memory budget: from `--memory-limit`, else from the process's cgroup.
pub fn budget(config: &Config) -> Budget {
    Budget::new(
        config
            .memory_limit
            .map(|n| n as u64)
            .or_else(hookline_core::memory::cgroup_limit),
    )
}

/// `first`, then `settings`: later entries win, so the budget's bounds give way to the
/// platform's `HOOKLINE_KAFKA_*` settings.
fn under(first: Settings, settings: Settings) -> Settings {
    first.into_iter().chain(settings).collect()
}

/// The consumer of the events and retry topics ([`kafka::consumer`]); `instance` is the Pod's
/// name (`POD_NAME`, from the downward API), which makes the replica a static group member.
/// Its read-ahead is bounded by `budget`.
pub fn consumer_config(config: &Config, instance: Option<&str>, budget: &Budget) -> ClientConfig {
    client_config(under(
        budget.consumer_settings(config.max_record_bytes),
        kafka::consumer(&base(config), &config.consumer_group, instance),
    ))
}

/// The producer of retry, dead-letter and attempt records ([`kafka::producer`]); its queue is
/// bounded by `budget`.
pub fn producer_config(config: &Config, budget: &Budget) -> ClientConfig {
    client_config(under(
        budget.producer_settings(config.max_record_bytes),
        kafka::producer(&base(config), config.max_record_bytes),
    ))
}

/// The producer of records sent alone after their batch was refused ([`kafka::solo_producer`]).
pub fn solo_producer_config(config: &Config, budget: &Budget) -> ClientConfig {
    client_config(under(
        budget.producer_settings(config.max_record_bytes),
        kafka::solo_producer(&base(config), config.max_record_bytes),
    ))
}

/// The group-less reader of the retry topics ([`kafka::scanner`]).
pub fn scanner_config(config: &Config) -> ClientConfig {
    client_config(kafka::scanner(&base(config), &config.consumer_group))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_configs_carry_the_settings_delivery_depends_on() {
        let c = Config::for_tenant("acme", "k:9092");
        let budget = Budget::new(None);
        let consumer = consumer_config(&c, Some("hookline-dispatcher-acme-5d8f-x2"), &budget);
        assert_eq!(
            consumer.get("group.instance.id"),
            Some("hookline-dispatcher-acme-5d8f-x2")
        );
        assert_eq!(consumer.get("enable.auto.commit"), Some("false"));
        assert_eq!(consumer.get("fetch.queue.backoff.ms"), Some("20"));
        assert_eq!(consumer.get("group.id"), Some("hookline-dispatcher.acme"));
        assert_eq!(consumer.get("bootstrap.servers"), Some("k:9092"));
        assert_eq!(producer_config(&c, &budget).get("acks"), Some("all"));
        assert_eq!(
            solo_producer_config(&c, &budget).get("batch.num.messages"),
            Some("1")
        );
        assert_eq!(
            scanner_config(&c).get("group.id"),
            Some("hookline-dispatcher.acme.scan")
        );
    }

    #[test]
    fn a_memory_limit_bounds_the_kafka_queues_unless_the_platform_sets_them() {
        let mut c = Config::for_tenant("acme", "k:9092");
        c.memory_limit = Some(256 << 20);
        let b = budget(&c);
        assert_eq!(b.limit, Some(256 << 20));
        let kbytes = (b.consumer_queue_bytes.unwrap() / 1024).to_string();
        let consumer = consumer_config(&c, None, &b);
        assert_eq!(
            consumer.get("queued.max.messages.kbytes"),
            Some(kbytes.as_str())
        );
        assert!(
            producer_config(&c, &b)
                .get("queue.buffering.max.kbytes")
                .is_some()
        );
        // A platform setting (HOOKLINE_KAFKA_*) comes later and wins.
        let platform = vec![("queued.max.messages.kbytes".to_owned(), "1000".to_owned())];
        let merged = client_config(under(b.consumer_settings(c.max_record_bytes), platform));
        assert_eq!(merged.get("queued.max.messages.kbytes"), Some("1000"));
    }
}

//! The dispatcher's settings: its flags are [`hookline_core::args::DispatcherArgs`], the type
//! the controller writes them with; this module turns them, with the `HOOKLINE_KAFKA_*`
//! settings of the process environment, into the Kafka client configurations of the consumer,
//! the producer and the start-up scanner ([`hookline_core::kafka`] decides their contents).

use hookline_core::args::DispatcherArgs;
use hookline_core::kafka::{self, Settings};
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

/// The consumer of the events and retry topics ([`kafka::consumer`]); `instance` is the Pod's
/// name (`POD_NAME`, from the downward API), which makes the replica a static group member.
pub fn consumer_config(config: &Config, instance: Option<&str>) -> ClientConfig {
    client_config(kafka::consumer(
        &base(config),
        &config.consumer_group,
        instance,
    ))
}

/// The producer of retry, dead-letter and attempt records ([`kafka::producer`]).
pub fn producer_config(config: &Config) -> ClientConfig {
    client_config(kafka::producer(&base(config), config.max_record_bytes))
}

/// The producer of records sent alone after their batch was refused ([`kafka::solo_producer`]).
pub fn solo_producer_config(config: &Config) -> ClientConfig {
    client_config(kafka::solo_producer(&base(config), config.max_record_bytes))
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
        let consumer = consumer_config(&c, Some("hookline-dispatcher-acme-5d8f-x2"));
        assert_eq!(
            consumer.get("group.instance.id"),
            Some("hookline-dispatcher-acme-5d8f-x2")
        );
        assert_eq!(consumer.get("enable.auto.commit"), Some("false"));
        assert_eq!(consumer.get("group.id"), Some("hookline-dispatcher.acme"));
        assert_eq!(consumer.get("bootstrap.servers"), Some("k:9092"));
        assert_eq!(producer_config(&c).get("acks"), Some("all"));
        assert_eq!(
            solo_producer_config(&c).get("batch.num.messages"),
            Some("1")
        );
        assert_eq!(
            scanner_config(&c).get("group.id"),
            Some("hookline-dispatcher.acme.scan")
        );
    }
}

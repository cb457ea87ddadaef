//! `hookline-api`'s flags: where it listens, which Kafka it reads the attempts topics from, and
//! where its delivery log lives and for how long. Each flag also reads an environment variable,
//! which is how the Helm chart sets them; Kafka TLS/SASL settings come as `HOOKLINE_KAFKA_*`
//! variables, as for the controller.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// `hookline-api` flags.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "hookline-api",
    version,
    about = "The tenant API of Hookline and its delivery log"
)]
pub struct Settings {
    /// Address of the tenant API (`/api/v1`).
    #[arg(long, env = "HOOKLINE_API_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Address of `/metrics`, `/healthz` and `/readyz` (kept off the API's port, which an
    /// Ingress exposes).
    #[arg(long, env = "HOOKLINE_OPS_LISTEN", default_value = "0.0.0.0:9090")]
    pub ops_listen: SocketAddr,

    /// Kafka bootstrap servers (host:port, comma-separated).
    #[arg(long, env = "HOOKLINE_KAFKA_BOOTSTRAP")]
    pub kafka_bootstrap: String,

    /// The delivery log's SQLite file (rebuilt from Kafka when missing).
    #[arg(
        long,
        env = "HOOKLINE_API_STORE",
        default_value = "/var/lib/hookline-api/deliveries.db"
    )]
    pub store: PathBuf,

    /// How long deliveries stay in the log, from their first attempt (e.g. `720h`, 30 days). The attempts
    /// topics keep 14 days, so a rebuilt log reaches back at most that far.
    #[arg(long, env = "HOOKLINE_API_RETENTION", default_value = "720h", value_parser = parse_duration)]
    pub retention: Duration,

    /// Largest request body accepted (bytes, or with a `KiB`/`MiB` suffix).
    #[arg(long, env = "HOOKLINE_API_MAX_BODY", default_value = "1MiB", value_parser = parse_size)]
    pub max_body: usize,

    /// How long an authenticated token or an access decision is reused before it is asked
    /// again (TokenReview, SelfSubjectAccessReview). The kube-apiserver's own webhook
    /// authenticator caches for 2 minutes; shorter here so that a revoked binding bites soon.
    #[arg(long, env = "HOOKLINE_API_AUTH_CACHE", default_value = "10s", value_parser = parse_duration)]
    pub auth_cache: Duration,

    /// How long `POST …/test` waits for the dispatcher's answer before returning 202 with a
    /// link to poll.
    #[arg(long, env = "HOOKLINE_API_TEST_WAIT", default_value = "10s", value_parser = parse_duration)]
    pub test_wait: Duration,

    /// How long a published event may wait for Kafka's acknowledgement before the request is
    /// answered 503 (the record is then abandoned, never written later).
    #[arg(long, env = "HOOKLINE_API_PUBLISH_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub publish_timeout: Duration,

    /// Events per second each tenant may publish over HTTP (bursts of one second's worth).
    #[arg(long, env = "HOOKLINE_API_PUBLISH_RATE", default_value_t = 20_000.0)]
    pub publish_rate: f64,

    /// Largest published event (its envelope, as the dispatcher bounds a record), bytes or with
    /// a `KiB`/`MiB` suffix.
    #[arg(long, env = "HOOKLINE_API_MAX_EVENT", default_value = "256KiB", value_parser = parse_size)]
    pub max_event: usize,

    /// Print the OpenAPI document and exit.
    #[arg(long)]
    pub print_openapi: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    hookline_core::duration::parse(s).map_err(|e| e.to_string())
}

pub use hookline_core::memory::parse_size;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_keep_thirty_days_and_a_mebibyte() {
        let s = Settings::parse_from(["hookline-api", "--kafka-bootstrap", "k:9092"]);
        assert_eq!(s.retention, Duration::from_secs(30 * 86_400));
        assert_eq!(s.max_body, 1 << 20);
    }
}

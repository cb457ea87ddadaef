//! What Kubernetes and Prometheus see of the API, on its own port: `/metrics`, `/healthz` (the
//! process answers and ingestion has turned within [`STALL_LIMIT`]) and `/readyz` (the store is
//! open and the API port is bound). [`Metrics`] is every counter the API keeps; labels stay
//! bounded (route templates, methods, status codes — never tenants' names or ids).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};
use tokio_util::sync::CancellationToken;

/// How long ingestion may go without turning before `/healthz` fails.
pub const STALL_LIMIT: Duration = Duration::from_secs(120);

/// The API's metrics.
#[derive(Clone)]
pub struct Metrics {
    /// The registry served at `/metrics`.
    pub registry: Registry,
    /// Requests by route template, method and status code.
    pub requests: IntCounterVec,
    /// Request latency by route template.
    pub request_seconds: HistogramVec,
    /// Attempt records stored.
    pub ingested: IntCounter,
    /// Attempt records skipped, by reason (`unparsable`).
    pub skipped: IntCounterVec,
    /// Time to store one batch.
    pub apply_seconds: Histogram,
    /// Partitions of attempts topics assigned.
    pub partitions: IntGauge,
    /// Size of the store file.
    pub store_bytes: IntGauge,
    /// TokenReviews and SelfSubjectAccessReviews asked, by kind and whether a cached answer
    /// was used.
    pub auth_lookups: IntCounterVec,
}

impl Metrics {
    /// Registers every metric in a new registry.
    ///
    /// # Panics
    /// Never in practice: the names are constants and unique.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "hookline_api_requests_total",
                "API requests by route, method and status code",
            ),
            &["route", "method", "code"],
        )
        .expect("metric");
        let request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "hookline_api_request_duration_seconds",
                "API request latency by route",
            )
            .buckets(vec![
                0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
            ]),
            &["route"],
        )
        .expect("metric");
        let ingested = IntCounter::new(
            "hookline_api_ingested_attempts_total",
            "Attempt records stored in the delivery log",
        )
        .expect("metric");
        let skipped = IntCounterVec::new(
            Opts::new(
                "hookline_api_ingest_skipped_total",
                "Attempt records skipped, by reason",
            ),
            &["reason"],
        )
        .expect("metric");
        let apply_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "hookline_api_store_batch_seconds",
                "Time to store one batch of attempt records",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
            ]),
        )
        .expect("metric");
        let partitions = IntGauge::new(
            "hookline_api_ingest_partitions",
            "Partitions of attempts topics read into the delivery log",
        )
        .expect("metric");
        let store_bytes =
            IntGauge::new("hookline_api_store_bytes", "Size of the delivery log file")
                .expect("metric");
        let auth_lookups = IntCounterVec::new(
            Opts::new(
                "hookline_api_auth_lookups_total",
                "TokenReviews and access reviews, by kind and whether a cached answer served",
            ),
            &["kind", "cached"],
        )
        .expect("metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_seconds.clone()),
            Box::new(ingested.clone()),
            Box::new(skipped.clone()),
            Box::new(apply_seconds.clone()),
            Box::new(partitions.clone()),
            Box::new(store_bytes.clone()),
            Box::new(auth_lookups.clone()),
        ] {
            registry.register(c).expect("unique metric");
        }
        Metrics {
            registry,
            requests,
            request_seconds,
            ingested,
            skipped,
            apply_seconds,
            partitions,
            store_bytes,
            auth_lookups,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Liveness and readiness flags.
#[derive(Debug, Default)]
pub struct Health {
    serving: AtomicBool,
    stopping: AtomicBool,
    heartbeat: AtomicU64,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl Health {
    /// The API port is bound.
    pub fn set_serving(&self) {
        self.serving.store(true, Ordering::Relaxed);
    }

    /// Shutting down.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Ingestion turned.
    pub fn beat(&self) {
        self.heartbeat.store(unix_now(), Ordering::Relaxed);
    }

    /// Ready for requests.
    pub fn ready(&self) -> bool {
        self.serving.load(Ordering::Relaxed) && !self.stopping.load(Ordering::Relaxed)
    }

    /// Ingestion turned recently (or has not started yet).
    pub fn live(&self) -> bool {
        let beat = self.heartbeat.load(Ordering::Relaxed);
        beat == 0 || unix_now().saturating_sub(beat) < STALL_LIMIT.as_secs()
    }
}

struct OpsState {
    metrics: Metrics,
    health: Arc<Health>,
}

async fn metrics(State(s): State<Arc<OpsState>>) -> (StatusCode, String) {
    let mut buf = Vec::new();
    match TextEncoder::new().encode(&s.metrics.registry.gather(), &mut buf) {
        Ok(()) => (StatusCode::OK, String::from_utf8_lossy(&buf).into_owned()),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn healthz(State(s): State<Arc<OpsState>>) -> StatusCode {
    if s.health.live() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn readyz(State(s): State<Arc<OpsState>>) -> StatusCode {
    if s.health.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// Serves the ops endpoints on `addr` until `stop`.
///
/// # Errors
/// When `addr` cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    health: Arc<Health>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(self::metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Arc::new(OpsState { metrics, health }));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}

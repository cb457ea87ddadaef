//! The HTTP side of the dispatcher that Kubernetes and Prometheus talk to:
//! `/metrics` (the registry, text format), `/healthz` (the pipeline loop has
//! turned recently) and `/readyz` (the consumer is subscribed and the
//! `Webhook`s are listed). The pipeline and the reflector flip the flags in
//! [`Health`]; nothing else flows through here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio_util::sync::CancellationToken;

/// How long the pipeline loop may go without turning before `/healthz` fails.
pub const STALL_LIMIT: Duration = Duration::from_secs(120);

/// Readiness and liveness flags, shared with the pipeline.
#[derive(Debug, Default)]
pub struct Health {
    subscribed: AtomicBool,
    synced: AtomicBool,
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
    /// The consumer subscribed to its topics.
    pub fn set_subscribed(&self) {
        self.subscribed.store(true, Ordering::Relaxed);
    }

    /// The `Webhook` reflector listed everything once.
    pub fn set_synced(&self) {
        self.synced.store(true, Ordering::Relaxed);
    }

    /// Shutting down: no longer ready.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// The pipeline loop is alive.
    pub fn beat(&self) {
        self.heartbeat.store(unix_now(), Ordering::Relaxed);
    }

    /// Ready to deliver.
    pub fn ready(&self) -> bool {
        self.subscribed.load(Ordering::Relaxed)
            && self.synced.load(Ordering::Relaxed)
            && !self.stopping.load(Ordering::Relaxed)
    }

    /// Alive: the loop turned within [`STALL_LIMIT`] (or has not started yet).
    pub fn alive(&self) -> bool {
        let beat = self.heartbeat.load(Ordering::Relaxed);
        beat == 0 || unix_now().saturating_sub(beat) < STALL_LIMIT.as_secs()
    }
}

#[derive(Clone)]
struct AppState {
    registry: Registry,
    health: Arc<Health>,
}

async fn metrics(State(s): State<AppState>) -> (StatusCode, String) {
    let mut buf = Vec::new();
    match TextEncoder::new().encode(&s.registry.gather(), &mut buf) {
        Ok(()) => (StatusCode::OK, String::from_utf8_lossy(&buf).into_owned()),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn healthz(State(s): State<AppState>) -> (StatusCode, &'static str) {
    if s.health.alive() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::INTERNAL_SERVER_ERROR, "pipeline stalled")
    }
}

async fn readyz(State(s): State<AppState>) -> (StatusCode, &'static str) {
    if s.health.ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// The router, for tests and [`serve`].
pub fn router(registry: Registry, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { registry, health })
}

/// Binds `listen` and serves until `stop` is cancelled.
///
/// # Errors
/// When the address cannot be bound.
pub async fn serve(
    listen: SocketAddr,
    registry: Registry,
    health: Arc<Health>,
    stop: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let app = router(registry, health);
    Ok(tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_needs_both_the_consumer_and_the_reflector_and_ends_on_shutdown() {
        let h = Health::default();
        assert!(!h.ready());
        h.set_subscribed();
        assert!(!h.ready());
        h.set_synced();
        assert!(h.ready());
        h.set_stopping();
        assert!(!h.ready());
    }

    #[test]
    fn alive_until_the_loop_stalls() {
        let h = Health::default();
        assert!(h.alive(), "not started yet counts as alive");
        h.beat();
        assert!(h.alive());
        h.heartbeat
            .store(unix_now() - STALL_LIMIT.as_secs() - 1, Ordering::Relaxed);
        assert!(!h.alive());
    }
}

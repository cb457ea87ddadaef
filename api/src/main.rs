//! `hookline-api` entry point: flags, logging, the delivery log's store and its ingestion from
//! Kafka, retention, the ops server and the tenant API, until SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use hookline_api::app::App;
use hookline_api::auth::Auth;
use hookline_api::ingest::Ingest;
use hookline_api::kube_as::Kube;
use hookline_api::openapi;
use hookline_api::ops::{self, Health, Metrics};
use hookline_api::publish::Publisher;
use hookline_api::routes;
use hookline_api::settings::Settings;
use hookline_api::store::DeliveryLog;
use hookline_api::store::sqlite::SqliteStore;
use hookline_core::envelope::Limits;
use jiff::Timestamp;
use rdkafka::ClientConfig;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How often expired deliveries are deleted.
const EXPIRY_EVERY: Duration = Duration::from_secs(600);

async fn shutdown_signal(stop: CancellationToken, health: Arc<Health>) {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
    info!("stopping");
    health.set_stopping();
    stop.cancel();
}

/// Deletes what is older than `retention` now and every [`EXPIRY_EVERY`]; keeps the size gauge.
async fn housekeeping(
    store: Arc<SqliteStore>,
    retention: Duration,
    metrics: Metrics,
    stop: CancellationToken,
) {
    loop {
        let before = Timestamp::now().as_millisecond()
            - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.expire(before)).await {
            Ok(Ok(n)) if n > 0 => info!(deliveries = n, "expired old deliveries"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(error = %e, "expiring old deliveries failed"),
            Err(e) => warn!(error = %e, "the expiry task failed"),
        }
        metrics
            .store_bytes
            .set(i64::try_from(store.size_bytes()).unwrap_or(i64::MAX));
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(EXPIRY_EVERY) => {}
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::parse();
    if settings.print_openapi {
        print!("{}", openapi::render());
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn,rdkafka=warn".into()),
        )
        .json()
        .init();
    let stop = CancellationToken::new();
    let metrics = Metrics::new();
    let health = Arc::new(Health::default());

    if let Some(dir) = settings.store.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the store's directory {}", dir.display()))?;
    }
    let store = Arc::new(
        SqliteStore::open(&settings.store)
            .with_context(|| format!("opening the delivery log {}", settings.store.display()))?,
    );
    info!(store = %settings.store.display(), "delivery log open");

    let config = kube::Config::infer()
        .await
        .context("reading the Kubernetes client configuration")?;
    let kube = Kube::new(config).context("building the Kubernetes clients")?;

    let mut kafka = ClientConfig::new();
    let base = hookline_core::kafka::base(&settings.kafka_bootstrap, std::env::vars());
    for (k, v) in hookline_core::kafka::delivery_log(&base, "hookline-api") {
        kafka.set(k, v);
    }
    let ingest = Ingest::new(
        &kafka,
        store.clone() as Arc<dyn DeliveryLog>,
        metrics.clone(),
        health.clone(),
    )
    .context("creating the Kafka consumer")?;
    let ingest = tokio::spawn(ingest.run(stop.clone()));
    tokio::spawn(housekeeping(
        store.clone(),
        settings.retention,
        metrics.clone(),
        stop.clone(),
    ));
    let ops = tokio::spawn(ops::serve(
        settings.ops_listen,
        metrics.clone(),
        health.clone(),
        stop.clone(),
    ));

    let publisher = Publisher::new(
        hookline_core::kafka::producer(&base, settings.max_event),
        settings.publish_timeout,
        settings.publish_rate,
        Limits {
            max_record_bytes: settings.max_event,
        },
    )
    .context("creating the Kafka producer")?;
    let app = Arc::new(App {
        publisher,
        auth: Auth::new(kube.clone(), metrics.clone(), settings.auth_cache),
        kube,
        store,
        metrics,
        max_body: settings.max_body,
        test_wait: settings.test_wait,
        openapi: openapi::render(),
    });
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding {}", settings.listen))?;
    info!(listen = %settings.listen, ops = %settings.ops_listen, "serving the tenant API");
    health.set_serving();
    tokio::spawn(shutdown_signal(stop.clone(), health));
    let stopped = stop.clone();
    axum::serve(listener, routes::router(app))
        .with_graceful_shutdown(async move { stopped.cancelled().await })
        .await
        .context("serving the API")?;
    stop.cancel();
    let _ = ingest.await;
    match ops.await {
        Ok(Err(e)) => Err(e).context("serving the ops endpoints"),
        _ => Ok(()),
    }
}

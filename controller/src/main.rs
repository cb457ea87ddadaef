//! `hookline-controller` entry point: flags, logging, the /metrics /healthz /readyz server,
//! the Kafka readiness probe, leader election, then both reconcilers ([`run::run`]) for as
//! long as this replica leads.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use axum::{Router, extract::State, http::StatusCode, routing::get};
use clap::Parser;
use hookline_controller::{
    leader, metrics::Metrics, run, settings::Settings, topics::TopicManager,
};
use kube::{Api, Client};
use prometheus::{Encoder, Registry, TextEncoder};
use tracing::{info, warn};

#[derive(Clone)]
struct Health {
    registry: Registry,
    ready: Arc<std::sync::atomic::AtomicBool>,
}

async fn metrics(State(h): State<Health>) -> (StatusCode, String) {
    let mut buf = Vec::new();
    match TextEncoder::new().encode(&h.registry.gather(), &mut buf) {
        Ok(()) => (StatusCode::OK, String::from_utf8_lossy(&buf).into_owned()),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn readyz(State(h): State<Health>) -> StatusCode {
    if h.ready.load(std::sync::atomic::Ordering::Relaxed) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .json()
        .init();
    let settings = Settings::parse();
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let registry = Registry::new();
    let metrics_ = Metrics::register(&registry);
    // Ready once this replica runs (as leader or as a standby candidate).
    let health = Health {
        registry,
        // Not ready until Kafka has answered once (see the probe below).
        ready: Arc::new(std::sync::atomic::AtomicBool::new(false)),
    };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(health.clone());
    let listener = tokio::net::TcpListener::bind(&settings.listen)
        .await
        .with_context(|| format!("binding {}", settings.listen))?;
    info!(listen = %settings.listen, "serving /metrics, /healthz, /readyz");
    tokio::spawn(async move { axum::serve(listener, app).await });

    let topics = Arc::new(TopicManager::new(
        &settings.kafka_bootstrap,
        settings.topic_partitions,
        settings.topic_replication,
        settings.topic_min_insync_replicas,
        settings.dedup_window,
    )?);
    // Standby replicas probe too: every replica's readiness says whether Kafka is reachable.
    {
        // Readiness follows Kafka: a controller that cannot reach the brokers cannot create
        // topics, so it says so in /readyz (and in each Webhook's DispatcherReady condition)
        // instead of crash-looping.
        let (topics, ready) = (topics.clone(), health.ready.clone());
        tokio::spawn(async move {
            loop {
                let ok = match topics.reachable(Duration::from_secs(5)).await {
                    Ok(()) => true,
                    Err(e) => {
                        warn!(error = %e, "Kafka is unreachable; not ready");
                        false
                    }
                };
                ready.store(ok, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(if ok { 15 } else { 3 })).await;
            }
        });
    }
    let lost = if settings.leader_elect {
        let api = Api::namespaced(client.clone(), &settings.operator_namespace);
        let fut = leader::lead(
            api,
            "hookline-controller".into(),
            settings.pod_name.clone(),
            leader::Timing::default(),
        )
        .await;
        metrics_.leader.set(1);
        futures::future::Either::Left(fut)
    } else {
        metrics_.leader.set(1);
        futures::future::Either::Right(futures::future::pending::<()>())
    };

    // Both reconcilers start only now, as leader (or without leader election).
    let run = run::run(client, settings, metrics_, topics);
    tokio::select! {
        () = run => info!("controllers stopped"),
        () = lost => {
            warn!("lost leadership; exiting so that a fresh candidate takes over");
            tokio::time::sleep(Duration::from_millis(100)).await;
            std::process::exit(1);
        }
    }
    Ok(())
}

//! `hookline-dispatcher` entry point: flags, logging, the /metrics /healthz
//! /readyz server, then the tasks — the `Webhook` reflector, the signing-Secret
//! loader, the status writer — and the Kafka pipeline, started once the
//! `Webhook`s are listed (so that no event is matched against an empty list).
//! SIGTERM or Ctrl-C stops the pipeline gracefully, then the status writer
//! writes one last time.

/// mimalloc rather than glibc's malloc: at saturation a fifth of the
/// dispatcher's CPU went to glibc's allocator (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use hookline_core::envelope::Limits;
use hookline_core::retry_topics::Tiers;
use hookline_crds::Webhook;
use hookline_dispatcher::delivery::attempt::Shared;
use hookline_dispatcher::delivery::client::Deliverer;
use hookline_dispatcher::delivery::test_send::test_send;
use hookline_dispatcher::kafka::consumer;
use hookline_dispatcher::kafka::writer::{Solo, Writer};
use hookline_dispatcher::ops::config::{self, Config};
use hookline_dispatcher::ops::health::{self, Health};
use hookline_dispatcher::ops::metrics::Metrics;
use hookline_dispatcher::pipeline::pressure::Pressure;
use hookline_dispatcher::pipeline::{Pipeline, Wiring};
use hookline_dispatcher::tenant::endpoints::Registry;
use hookline_dispatcher::tenant::reflector::Reflector;
use hookline_dispatcher::tenant::replays::Replays;
use hookline_dispatcher::tenant::{keys, status};
use kube::runtime::events::{Recorder, Reporter};
use kube::{Api, Client};
use rdkafka::producer::FutureProducer;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

async fn signalled() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
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
    let config = Config::parse();
    let default_retry = config.default_retry().map_err(anyhow::Error::msg)?;
    hookline_dispatcher::install_crypto_provider();
    let ns = config.tenant_namespace.clone();
    info!(namespace = %ns, events = %config.events_topic, group = %config.consumer_group, "starting");

    let prom = prometheus::Registry::new();
    let metrics = Metrics::register(&prom, &ns);
    let health = Arc::new(Health::default());
    let server_stop = CancellationToken::new();
    let listen: std::net::SocketAddr = config
        .listen
        .parse()
        .with_context(|| format!("--listen {:?} is not an address:port", config.listen))?;
    let server = health::serve(listen, prom, health.clone(), server_stop.clone())
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    info!(listen = %config.listen, "serving /metrics, /healthz, /readyz");

    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let registry = Arc::new(Registry::new(default_retry));
    let deliverer = Deliverer::new(config.address.policy(), config.address.allow_http)?;
    let tasks_stop = CancellationToken::new();

    let secrets_wake = Arc::new(Notify::new());
    let (synced_tx, mut synced_rx) = watch::channel(false);
    let reflector = Reflector {
        client: client.clone(),
        namespace: ns.clone(),
        registry: registry.clone(),
        secrets: secrets_wake.clone(),
        start_test: {
            let deliverer = deliverer.clone();
            Box::new(move |endpoint, nonce| {
                tokio::spawn(test_send(endpoint, nonce, deliverer.clone()));
            })
        },
        metrics: metrics.clone(),
        synced: synced_tx,
    };
    tokio::spawn(reflector.run(tasks_stop.clone()));
    tokio::spawn(keys::run(
        client.clone(),
        ns.clone(),
        registry.clone(),
        secrets_wake,
        config.secret_refresh,
        tasks_stop.clone(),
    ));
    let reporter = Reporter {
        controller: "hookline-dispatcher".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let status_stop = CancellationToken::new();
    let status_task = tokio::spawn(status::run(
        Api::<Webhook>::namespaced(client.clone(), &ns),
        registry.clone(),
        Recorder::new(client.clone(), reporter),
        metrics.clone(),
        config.status_interval,
        status_stop.clone(),
    ));

    let stop = CancellationToken::new();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            signalled().await;
            info!("signal received; shutting down");
            stop.cancel();
        });
    }
    tokio::select! {
        r = synced_rx.wait_for(|s| *s) => { r.context("the Webhook reflector stopped")?; }
        () = stop.cancelled() => {
            server_stop.cancel();
            return Ok(());
        }
    }
    let replays = Replays::watch(client.clone(), &ns, tasks_stop.clone());
    if !replays.ready(Duration::from_secs(30)).await {
        warn!(
            "WebhookReplays not listed within 30 s (RBAC?); replays cannot be cancelled until they are"
        );
    }
    health.set_synced();

    let budget = config::budget(&config);
    info!(
        memory_limit = ?budget.limit,
        pending_bytes = budget.pending_bytes,
        consumer_queue_bytes = ?budget.consumer_queue_bytes,
        producer_queue_bytes = ?budget.producer_queue_bytes,
        "memory budget"
    );
    metrics.memory_limit.set(
        budget
            .limit
            .map_or(0, |l| i64::try_from(l).unwrap_or(i64::MAX)),
    );
    let producer: FutureProducer = config::producer_config(&config, &budget)
        .create()
        .context("creating the Kafka producer")?;
    let tiers = Tiers::new(
        config
            .tiers()
            .into_iter()
            .map(|t| (t.delay, t.topic))
            .collect(),
    );
    let mut topics: Vec<&str> = vec![config.events_topic.as_str()];
    topics.extend(tiers.topics());
    {
        // The dedup topic too: remembering an id is part of settling its record.
        let (config, names, stop) = (
            config::scanner_config(&config),
            topics
                .iter()
                .map(|t| (*t).to_owned())
                .chain(config.dedup_topic.clone())
                .collect::<Vec<_>>(),
            stop.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            consumer::wait_for_topics(&config, &names, &|| stop.is_cancelled())
        })
        .await?
        .context("looking up the tenant's topics")?;
    }
    // Keys first, so that the first records do not find a Webhook without one.
    for _ in 0..50 {
        if registry.snapshot().iter().all(|e| e.has_keys()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pod_name = std::env::var("POD_NAME").ok();
    let (consumer, rebalances, committable) = consumer::subscribe(
        &config::consumer_config(&config, pod_name.as_deref(), &budget),
        &config.events_topic,
        &topics,
        metrics.clone(),
    )
    .context("subscribing to the tenant's topics")?;
    health.set_subscribed();
    info!(topics = ?topics, static_member = ?pod_name, "subscribed");

    let (completions_tx, completions) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        writer: Writer {
            producer,
            tiers,
            events_topic: config.events_topic.clone(),
            dead_letter_topic: config.dead_letter_topic.clone(),
            attempts_topic: config.attempts_topic.clone(),
            dedup_topic: config.dedup_topic.clone(),
            solo: Solo::new(config::solo_producer_config(&config, &budget)),
        },
        deliverer,
        metrics,
        completions: completions_tx,
        stop: CancellationToken::new(),
    });
    let pipeline = Pipeline::new(Wiring {
        consumer,
        rebalances,
        committable,
        scanner: config::scanner_config(&config),
        shared,
        completions,
        registry,
        health: health.clone(),
        pressure: Pressure::new(config.max_pending, budget.pending_bytes),
        limits: Limits {
            max_record_bytes: config.max_record_bytes,
        },
        dedup_window: config.dedup_window,
        grace: config.shutdown_grace,
        replays,
    });
    // On a worker thread rather than this one: completions and records then
    // wake a task in the runtime instead of parking and unparking the main
    // thread for every message (see BENCHMARKS.md).
    let outcome = tokio::spawn(pipeline.run(stop)).await;
    if let Err(e) = &outcome {
        error!(error = %e, "the pipeline stopped abnormally");
    }

    status_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), status_task).await;
    tasks_stop.cancel();
    server_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    // A pipeline that died (a panic, or a Kafka client's fatal error) exits non-zero so
    // Kubernetes restarts the container; the offsets it did not commit are delivered again.
    outcome.context("the pipeline task failed")??;
    info!("stopped");
    Ok(())
}

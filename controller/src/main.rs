//! `hookline-controller` entry point: flags, logging, the /metrics /healthz /readyz server,
//! leader election, and the kube `Controller` that drives [`reconcile`].

use std::{collections::HashMap, sync::Arc, time::Duration};

use anyhow::Context as _;
use axum::{Router, extract::State, http::StatusCode, routing::get};
use clap::Parser;
use futures::StreamExt;
use hookline_controller::{
    children::{LABEL_MANAGED_BY, LABEL_TENANT},
    leader,
    metrics::Metrics,
    reconcile::{self, Context},
    settings::Settings,
    topics::TopicManager,
};
use hookline_crds::Webhook;
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Secret};
use kube::{
    Api, Client, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        Controller, Predicate, WatchStreamExt,
        events::{Recorder, Reporter},
        predicates, reflector,
        reflector::ObjectRef,
        watcher::{self, watcher},
    },
};
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

    let webhooks = Api::<Webhook>::all(client.clone());
    // Reconcile on what the controller acts on — spec (generation, which also moves on
    // deletion), annotations (rotation) and finalizers — not on the dispatcher's status
    // writes, which come every few seconds per busy Webhook. Periodic requeues still run.
    let (store, writer) = reflector::store();
    let trigger = watcher(webhooks, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(
            predicates::generation
                .combine(predicates::annotations)
                .combine(predicates::finalizers),
            Default::default(),
        );
    let controller = Controller::for_stream(trigger, store.clone());

    let by_tenant = {
        let store = store.clone();
        move |tenant: &str| {
            store
                .state()
                .iter()
                .filter(|w| w.namespace().as_deref() == Some(tenant))
                .map(|w| ObjectRef::from_obj(w.as_ref()))
                .collect::<Vec<_>>()
        }
    };
    let deployments = Api::<Deployment>::namespaced(client.clone(), &settings.operator_namespace);
    let deployment_cfg =
        watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}=hookline-controller"));
    let referencing = {
        let store = store.clone();
        move |secret: &str, ns: &str| {
            store
                .state()
                .iter()
                .filter(|w| w.namespace().as_deref() == Some(ns))
                .filter(|w| {
                    w.spec.secret_ref.as_ref().map_or_else(
                        || hookline_crds::naming::signing_secret(&w.name_any()) == secret,
                        |r| r.name == secret,
                    )
                })
                .map(|w| ObjectRef::from_obj(w.as_ref()))
                .collect::<Vec<_>>()
        }
    };
    let secret_events = watcher(
        Api::<PartialObjectMeta<Secret>>::all(client.clone()),
        watcher::Config::default(),
    )
    .touched_objects();

    let reporter = Reporter {
        controller: "hookline-controller".into(),
        instance: Some(settings.pod_name.clone()),
    };
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        settings,
        metrics: metrics_,
        topics,
        store,
        tenant_locks: std::sync::Mutex::new(HashMap::new()),
        failures: std::sync::Mutex::new(HashMap::new()),
    });
    {
        // Webhooks by readiness, from the reflector, every 10 s.
        let ctx = ctx.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let state = ctx.store.state();
                let (t, f, u) =
                    hookline_controller::metrics::readiness(state.iter().map(|w| w.as_ref()));
                for (label, n) in [("true", t), ("false", f), ("unknown", u)] {
                    ctx.metrics.webhooks.with_label_values(&[label]).set(n);
                }
            }
        });
    }

    let run = controller
        .watches(deployments, deployment_cfg, move |d| {
            d.labels()
                .get(LABEL_TENANT)
                .map(|t| by_tenant(t))
                .unwrap_or_default()
        })
        .watches_stream(secret_events, move |s| match s.namespace() {
            Some(ns) => referencing(&s.name_any(), &ns),
            None => Vec::new(),
        })
        .shutdown_on_signal()
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                warn!(error = %e, "controller stream");
            }
        });
    tokio::select! {
        () = run => info!("controller stopped"),
        () = lost => {
            warn!("lost leadership; exiting so that a fresh candidate takes over");
            tokio::time::sleep(Duration::from_millis(100)).await;
            std::process::exit(1);
        }
    }
    Ok(())
}

//! A tenant of the controller-created dispatcher, for end-to-end tests: a namespace of the
//! test's own (deleted when dropped) with the controller installed, and the helpers tests use on
//! it — create a `Webhook` and wait for Ready, produce to its events topic, read or rotate its
//! signing key, wait for status counters, reach its dispatcher Pod. Helpers panic on failure,
//! with the cause, as the test would. The benchmark's tenants are made here too
//! ([`Tenant::create_in`]).

use std::time::Duration;

use hookline_core::{conditions::types, naming, signing};
use hookline_crds::{Webhook, annotations};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use rdkafka::producer::FutureRecord;
use serde_json::json;

use crate::{Env, TestNamespace, install, kafka, wait};

/// How long a helper waits for the controller or the dispatcher.
pub const WITHIN: Duration = Duration::from_secs(120);

/// A tenant namespace with the controller installed.
pub struct Tenant {
    /// The environment.
    pub env: Env,
    /// Admin client.
    pub client: Client,
    /// The namespace.
    pub ns: TestNamespace,
    /// Its `Webhook`s.
    pub api: Api<Webhook>,
}

/// The integer `status.<field>` of `wh` (0 when unset).
pub fn status_count(wh: &Webhook, field: &str) -> i64 {
    serde_json::to_value(&wh.status).map_or(0, |s| s[field].as_i64().unwrap_or(0))
}

impl Tenant {
    /// Installs the controller (again, if another test process raced it: two `helm upgrade`s
    /// at once can fail) and creates `hl-<prefix>-<random>`.
    ///
    /// # Panics
    /// When the controller cannot be installed in 5 tries or the namespace not created.
    pub async fn create(prefix: &str) -> Tenant {
        let env = Env::get().unwrap();
        let client = env.client().await.unwrap();
        let mut tries = 0;
        while let Err(e) = install::controller(&env, &client).await {
            tries += 1;
            assert!(tries < 5, "installing the controller: {e:#}");
            eprintln!("installing the controller failed ({e:#}); trying again");
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        Self::create_in(env, client, prefix).await.unwrap()
    }

    /// Creates `hl-<prefix>-<random>` in `env`, whose controller the caller has made sure of
    /// (the benchmark: it neither starts the environment nor reinstalls a running controller,
    /// and carries on after a failure).
    ///
    /// # Errors
    /// When the API server refuses the namespace.
    pub async fn create_in(env: Env, client: Client, prefix: &str) -> anyhow::Result<Tenant> {
        let ns = TestNamespace::create(&env, &client, prefix).await?;
        let api = Api::<Webhook>::namespaced(client.clone(), &ns.name);
        Ok(Tenant {
            env,
            client,
            ns,
            api,
        })
    }

    /// Creates a `Webhook` with `extra` merged into its spec and waits until it is Ready
    /// (secret, topics, dispatcher available).
    ///
    /// # Panics
    /// When the API server refuses it or it is not Ready within [`WITHIN`].
    pub async fn webhook(
        &self,
        name: &str,
        url: &str,
        event_types: &[&str],
        extra: serde_json::Value,
    ) -> Webhook {
        let mut spec = json!({"url": url, "eventTypes": event_types});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        let wh: Webhook = serde_json::from_value(json!({
            "apiVersion": "hookline.dev/v1alpha1", "kind": "Webhook",
            "metadata": {"name": name}, "spec": spec
        }))
        .unwrap();
        self.api.create(&PostParams::default(), &wh).await.unwrap();
        wait::condition(&self.api, name, types::READY, WITHIN)
            .await
            .unwrap()
    }

    /// The tenant's topics.
    pub fn topics(&self) -> naming::Topics {
        naming::topics(&self.ns.name)
    }

    /// Produces one record to the events topic and waits for its acknowledgement.
    ///
    /// # Panics
    /// When Kafka does not acknowledge it.
    pub async fn produce(&self, key: &str, value: &[u8]) {
        let producer = kafka::producer(&self.env).unwrap();
        kafka::produce(&producer, &self.topics().events, Some(key), value, &[])
            .await
            .unwrap();
    }

    /// Produces `records` (key, value) to the events topic in this order — each is handed to
    /// the producer before the next, so one key's records get increasing offsets — and waits
    /// for every acknowledgement; returns each record's (partition, offset).
    ///
    /// # Panics
    /// When Kafka refuses a record or does not acknowledge it.
    pub async fn produce_in_order(&self, records: &[(String, Vec<u8>)]) -> Vec<(i32, i64)> {
        let producer = kafka::producer(&self.env).unwrap();
        let topic = self.topics().events;
        let mut pending = Vec::with_capacity(records.len());
        for (key, value) in records {
            let mut record = FutureRecord::to(&topic).key(key).payload(value);
            loop {
                match producer.send_result(record) {
                    Ok(delivery) => break pending.push(delivery),
                    Err((e, back)) => {
                        // Only a full local queue is worth waiting out.
                        assert!(
                            e.rdkafka_error_code()
                                == Some(rdkafka::types::RDKafkaErrorCode::QueueFull),
                            "producing to {topic}: {e}"
                        );
                        record = back;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }
        let mut out = Vec::with_capacity(pending.len());
        for delivery in futures::future::join_all(pending).await {
            let d = delivery
                .expect("the producer is alive")
                .map_err(|(e, _)| e)
                .expect("acknowledged");
            out.push((d.partition, d.offset));
        }
        out
    }

    /// The `whsec_…` text of the `Webhook`'s signing Secret, as a customer copies it out.
    ///
    /// # Panics
    /// When the Secret is missing or holds no `whsec_` key.
    pub async fn whsec(&self, webhook: &str) -> String {
        let secret = Api::<Secret>::namespaced(self.client.clone(), &self.ns.name)
            .get(&naming::signing_secret(webhook))
            .await
            .unwrap();
        let text = String::from_utf8(secret.data.unwrap()["secret"].0.clone()).unwrap();
        assert!(text.starts_with("whsec_"), "the Secret holds a whsec_ key");
        text
    }

    /// The `Webhook`'s current signing key.
    ///
    /// # Panics
    /// As [`Tenant::whsec`], or when the key does not parse.
    pub async fn signing_key(&self, webhook: &str) -> signing::Secret {
        signing::Secret::parse(&self.whsec(webhook).await).unwrap()
    }

    /// Asks the controller to rotate the `Webhook`'s signing key (annotation
    /// `hookline.dev/rotate-secret: <nonce>`) and waits until `status.secret.generation` is
    /// `generation`.
    ///
    /// # Panics
    /// When the patch is refused or the generation does not arrive within [`WITHIN`].
    pub async fn rotate_key(&self, webhook: &str, nonce: &str, generation: i64) {
        let patch = json!({"metadata": {"annotations": {(annotations::ROTATE_SECRET): nonce}}});
        self.api
            .patch(webhook, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        let what = format!("key generation {generation} in status");
        wait::until(WITHIN, &what, || async {
            let wh = self.api.get(webhook).await?;
            Ok(wh
                .status
                .and_then(|s| s.secret)
                .filter(|s| s.generation == generation)
                .map(|_| ()))
        })
        .await
        .unwrap();
    }

    /// Waits until `status.<field>` of `name` is at least `n`, and returns the `Webhook`.
    ///
    /// # Panics
    /// When that does not happen within [`WITHIN`].
    pub async fn wait_count(&self, name: &str, field: &str, n: i64) -> Webhook {
        wait::until(WITHIN, &format!("{name} status.{field} >= {n}"), || async {
            let wh = self.api.get(name).await?;
            let got = status_count(&wh, field);
            anyhow::ensure!(got >= n, "status.{field} = {got}");
            Ok(Some(wh))
        })
        .await
        .unwrap()
    }

    /// The tenant's dispatcher Pods (in the operator namespace).
    ///
    /// # Panics
    /// When they cannot be listed.
    pub async fn dispatcher_pods(&self) -> Vec<Pod> {
        Api::<Pod>::namespaced(self.client.clone(), install::OPERATOR_NAMESPACE)
            .list(&ListParams::default().labels(&format!("hookline.dev/tenant={}", self.ns.name)))
            .await
            .unwrap()
            .items
    }

    /// GETs `path` from the tenant's dispatcher Pod (its Pod IP, port 9090); the raw response.
    ///
    /// # Errors
    /// When no dispatcher Pod has an IP yet or its port does not answer (a process just
    /// restarted has a PID some time before it listens).
    pub async fn dispatcher_get(&self, path: &str) -> anyhow::Result<String> {
        use anyhow::Context as _;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let ip = self
            .dispatcher_pods()
            .await
            .iter()
            .find_map(|p| p.status.as_ref()?.pod_ip.clone())
            .context("no dispatcher Pod with an IP")?;
        let mut s = tokio::net::TcpStream::connect((ip.as_str(), 9090))
            .await
            .with_context(|| format!("connecting to the dispatcher at {ip}:9090"))?;
        let req = format!("GET {path} HTTP/1.1\r\nhost: {ip}\r\nconnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    }
}

//! A `hookline-api` of a test's own: the very binary the chart runs, as the chart's own
//! ServiceAccount (`hookline-system/hookline-api`, which may only create TokenReviews), with a
//! store in a directory of its own, so a test can kill it, delete its store and start it again.
//! Also: tokens of tenant ServiceAccounts bound to the chart's tenant roles, and a small HTTP
//! client that returns status, headers and JSON.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::PostParams;
use kube::config::Kubeconfig;
use kube::{Api, Client};
use serde_json::{Value, json};

use crate::dispatcher::debug_binary;
use crate::install::OPERATOR_NAMESPACE;
use crate::{Env, LogDump, random_suffix, wait};

/// A token of ServiceAccount `ns/sa`, valid for an hour.
///
/// # Errors
/// When the account does not exist.
pub async fn token(admin: &Client, ns: &str, sa: &str) -> anyhow::Result<String> {
    let tr: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 3600}}))?;
    Ok(Api::<ServiceAccount>::namespaced(admin.clone(), ns)
        .create_token_request(sa, &PostParams::default(), &tr)
        .await?
        .status
        .context("no token issued")?
        .token)
}

/// A new ServiceAccount `sa` in `ns`, bound there to ClusterRole `role` (unless `None`); its
/// token.
///
/// # Errors
/// When the API server refuses.
pub async fn tenant_token(
    admin: &Client,
    ns: &str,
    sa: &str,
    role: Option<&str>,
) -> anyhow::Result<String> {
    let account: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": sa}}))?;
    Api::<ServiceAccount>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &account)
        .await?;
    if let Some(role) = role {
        let binding: RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": format!("{sa}-{role}")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}],
        }))?;
        Api::<RoleBinding>::namespaced(admin.clone(), ns)
            .create(&PostParams::default(), &binding)
            .await?;
    }
    token(admin, ns, sa).await
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The process an [`OwnApi`] runs, when not the tests' ([`OwnApi::start_built`]); flags are
/// given as for [`OwnApi::start_with`]. Every field left `None` keeps the tests' choice.
#[derive(Debug, Clone, Default)]
pub struct ApiOptions {
    /// The binary (tests: the debug build; the benchmark: the release build).
    pub binary: Option<PathBuf>,
    /// `RUST_LOG` (tests: `info,hookline_api=debug`).
    pub log_level: Option<String>,
}

/// A running (or stopped) `hookline-api`.
pub struct OwnApi {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// `127.0.0.1:<ops port>`.
    pub ops: String,
    /// The store file.
    pub store: PathBuf,
    args: Vec<String>,
    kubeconfig: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    http: reqwest::Client,
    binary: PathBuf,
    log_level: String,
}

impl OwnApi {
    /// Starts one as the chart's `hookline-api` ServiceAccount and waits until it is ready.
    ///
    /// # Errors
    /// When the account has no token (chart not installed), or the process does not get ready.
    pub async fn start(env: &Env, admin: &Client, dump: &mut LogDump) -> anyhow::Result<OwnApi> {
        Self::start_with(env, admin, dump, &[]).await
    }

    /// Like [`OwnApi::start`], with flags of the test's own: each `--name=value` replaces the
    /// default flag of that name (e.g. `--kafka-bootstrap=127.0.0.1:1`, a Kafka that is down).
    ///
    /// # Errors
    /// As [`OwnApi::start`].
    pub async fn start_with(
        env: &Env,
        admin: &Client,
        dump: &mut LogDump,
        flags: &[&str],
    ) -> anyhow::Result<OwnApi> {
        Self::start_built(env, admin, dump, flags, ApiOptions::default()).await
    }

    /// Like [`OwnApi::start_with`], running another build or with another log level (`opts`);
    /// a `--store=` flag names the store file, which may already hold a delivery log.
    ///
    /// # Errors
    /// As [`OwnApi::start`]; also when the binary is missing.
    pub async fn start_built(
        env: &Env,
        admin: &Client,
        dump: &mut LogDump,
        flags: &[&str],
        opts: ApiOptions,
    ) -> anyhow::Result<OwnApi> {
        let dir = std::env::temp_dir().join(format!("hookline-api-{}", random_suffix()));
        std::fs::create_dir_all(&dir)?;
        let token = token(admin, OPERATOR_NAMESPACE, "hookline-api").await?;
        let mut kc = Kubeconfig::read_from(&env.kubeconfig)?;
        for user in &mut kc.auth_infos {
            user.auth_info = Some(kube::config::AuthInfo {
                token: Some(token.clone().into()),
                ..Default::default()
            });
        }
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, serde_yaml::to_string(&kc)?)?;
        let (port, ops) = (free_port()?, free_port()?);
        let store = flags
            .iter()
            .find_map(|f| f.strip_prefix("--store="))
            .map_or_else(|| dir.join("deliveries.db"), PathBuf::from);
        let args = vec![
            format!("--listen=127.0.0.1:{port}"),
            format!("--ops-listen=127.0.0.1:{ops}"),
            format!("--kafka-bootstrap={}", env.kafka_bootstrap),
            format!("--store={}", store.display()),
            "--auth-cache=2s".to_owned(),
        ];
        let name = |f: &str| f.split('=').next().unwrap_or_default().to_owned();
        let mut args: Vec<String> = args
            .into_iter()
            .filter(|a| !flags.iter().any(|f| name(f) == name(a)))
            .collect();
        args.extend(flags.iter().map(|f| (*f).to_owned()));
        let log = dir.join("api.log");
        dump.extra.push(log.clone());
        let mut api = OwnApi {
            base: format!("http://127.0.0.1:{port}"),
            ops: format!("127.0.0.1:{ops}"),
            store,
            args,
            kubeconfig,
            log,
            child: None,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            binary: opts.binary.unwrap_or_else(|| debug_binary("hookline-api")),
            log_level: opts
                .log_level
                .unwrap_or_else(|| "info,hookline_api=debug".to_owned()),
        };
        api.restart().await?;
        Ok(api)
    }

    /// Starts the process again (after [`OwnApi::kill9`]) and waits until it is ready.
    ///
    /// # Errors
    /// When it does not start or get ready within a minute.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let binary = &self.binary;
        anyhow::ensure!(
            binary.exists(),
            "{} is missing: cargo build -p hookline-api (--release for a release build)",
            binary.display()
        );
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = std::process::Command::new(binary)
            .env_clear()
            .env("KUBECONFIG", &self.kubeconfig)
            .env("RUST_LOG", &self.log_level)
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .args(&self.args)
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting hookline-api")?;
        self.child = Some(child);
        let ops = self.ops.clone();
        wait::until(Duration::from_secs(60), "hookline-api ready", || {
            let ops = ops.clone();
            async move { Ok(crate::http_get(&ops, "/readyz").ok().map(|_| ())) }
        })
        .await
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The log file (stdout and stderr).
    pub fn log_path(&self) -> &std::path::Path {
        &self.log
    }

    /// SIGKILL, no shutdown.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `method path` with `token` (if any) and a JSON `body` (if any); status, headers, JSON
    /// body (`Value::Null` when empty or not JSON).
    ///
    /// # Errors
    /// When the request cannot be made.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<(u16, BTreeMap<String, String>, Value)> {
        let body = body.map(serde_json::to_vec).transpose()?;
        self.call_raw(method, path, token, body, headers).await
    }

    /// [`call`](Self::call) with a body of exactly these bytes (sent as `application/json`).
    ///
    /// # Errors
    /// When the request cannot be made.
    pub async fn call_raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<(u16, BTreeMap<String, String>, Value)> {
        let mut req = self
            .http
            .request(method.parse()?, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = req
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = res.status().as_u16();
        let hs = res
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let bytes = res.bytes().await?;
        Ok((
            status,
            hs,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    /// `POST /api/v1/tenants/{tenant}/events` of `body` as `token` with `headers`; status,
    /// headers and JSON body.
    ///
    /// # Errors
    /// When the request cannot be made.
    pub async fn publish(
        &self,
        tenant: &str,
        token: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<(u16, BTreeMap<String, String>, Value)> {
        let path = format!("/api/v1/tenants/{tenant}/events");
        self.call("POST", &path, Some(token), Some(body), headers)
            .await
    }

    /// `GET path` as `token`, expecting 200; the JSON.
    ///
    /// # Errors
    /// Any other status (with the body), or a failed request.
    pub async fn get(&self, path: &str, token: &str) -> anyhow::Result<Value> {
        let (status, _, body) = self.call("GET", path, Some(token), None, &[]).await?;
        anyhow::ensure!(status == 200, "GET {path}: {status} {body}");
        Ok(body)
    }
}

impl Drop for OwnApi {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A tenant set up for publishing: `Webhook` `orders` (`transaction.*`, with `extra` in its spec)
/// delivering to a receiver at `/orders`, a `hookline-api` of the test's own, and the tokens of
/// a publisher (`hookline-publisher`) and a viewer (`hookline-tenant-view`).
pub struct Publishing {
    /// The tenant.
    pub t: crate::tenant::Tenant,
    /// The receiver.
    pub rx: crate::receiver::Receiver,
    /// The API.
    pub api: OwnApi,
    /// A token that may publish.
    pub publisher: String,
    /// A token that may read the delivery log.
    pub viewer: String,
}

impl Publishing {
    /// Sets it all up in `hl-<prefix>-…`.
    ///
    /// # Panics
    /// When any part cannot be made.
    pub async fn start(prefix: &str, extra: Value, dump: &mut LogDump) -> Publishing {
        let t = crate::tenant::Tenant::create(prefix).await;
        let rx = crate::receiver::Receiver::start().await.unwrap();
        t.webhook("orders", &rx.url("/orders"), &["transaction.*"], extra)
            .await;
        let api = OwnApi::start(&t.env, &t.client, dump).await.unwrap();
        let ns = t.ns.name.clone();
        let publisher = tenant_token(&t.client, &ns, "publisher", Some("hookline-publisher"))
            .await
            .unwrap();
        let viewer = tenant_token(&t.client, &ns, "viewer", Some("hookline-tenant-view"))
            .await
            .unwrap();
        Publishing {
            t,
            rx,
            api,
            publisher,
            viewer,
        }
    }
}

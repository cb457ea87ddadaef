//! Readiness, liveness and startup probes. A `Probe` of the pod spec becomes a [`ProbeSpec`]
//! (pure: named ports resolved from the container's ports, the pod IP as default host,
//! Kubernetes' defaults for timings); [`run_once`] performs one check against the process,
//! and a [`Tracker`] turns the stream of results into a verdict that flips only after
//! `successThreshold` successes or `failureThreshold` failures in a row.

use std::{path::Path, time::Duration};

use k8s_openapi::{
    api::core::v1::{Container, Probe},
    apimachinery::pkg::util::intstr::IntOrString,
};
use tokio::{net::TcpStream, process::Command};

use crate::image::{ImageRule, Invocation, exec_invocation};

/// What one probe checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// HTTP GET; a status in 200..400 is a success.
    Http {
        /// Full URL.
        url: String,
        /// Extra request headers.
        headers: Vec<(String, String)>,
    },
    /// A TCP connection that opens is a success.
    Tcp {
        /// `host:port`.
        addr: String,
    },
    /// A command that exits 0 is a success.
    Exec(Invocation),
    /// A probe that cannot be performed (e.g. an unknown named port): always fails.
    Invalid(String),
    /// A probe kind the runner does not implement (gRPC): always succeeds.
    Unsupported(String),
}

/// A probe with its timings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    /// The check.
    pub check: Check,
    /// Wait after the container started before the first check.
    pub initial_delay: Duration,
    /// Time between checks.
    pub period: Duration,
    /// Time one check may take.
    pub timeout: Duration,
    /// Successes in a row that make the verdict "ok".
    pub success_threshold: u32,
    /// Failures in a row that make the verdict "failed".
    pub failure_threshold: u32,
}

fn positive(v: Option<i32>, default: u32) -> u32 {
    v.and_then(|v| u32::try_from(v).ok())
        .filter(|v| *v > 0)
        .unwrap_or(default)
}

fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    let number = match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => match name.parse::<i32>() {
            Ok(n) => n,
            Err(_) => container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.container_port)
                .ok_or_else(|| format!("named port {name:?} not found in container ports"))?,
        },
    };
    u16::try_from(number)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("invalid port {number}"))
}

fn host_for(host: Option<&String>, pod_ip: &str) -> String {
    match host.map(String::as_str) {
        Some(h) if !h.is_empty() => h.to_string(),
        _ => pod_ip.to_string(),
    }
}

/// The check a probe describes for `container` in a pod at `pod_ip`.
pub fn check_for(
    probe: &Probe,
    container: &Container,
    pod_ip: &str,
    rule: &ImageRule,
    exists: impl Fn(&Path) -> bool,
) -> Check {
    if let Some(http) = &probe.http_get {
        let port = match resolve_port(&http.port, container) {
            Ok(p) => p,
            Err(e) => return Check::Invalid(e),
        };
        let scheme = match http.scheme.as_deref() {
            Some(s) if s.eq_ignore_ascii_case("https") => "https",
            _ => "http",
        };
        let host = host_for(http.host.as_ref(), pod_ip);
        let path = http.path.as_deref().unwrap_or("/");
        let slash = if path.starts_with('/') { "" } else { "/" };
        let headers = http
            .http_headers
            .iter()
            .flatten()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect();
        return Check::Http {
            url: format!("{scheme}://{host}:{port}{slash}{path}"),
            headers,
        };
    }
    if let Some(tcp) = &probe.tcp_socket {
        return match resolve_port(&tcp.port, container) {
            Ok(port) => Check::Tcp {
                addr: format!("{}:{port}", host_for(tcp.host.as_ref(), pod_ip)),
            },
            Err(e) => Check::Invalid(e),
        };
    }
    if let Some(exec) = &probe.exec {
        return match exec_invocation(exec.command.as_deref().unwrap_or_default(), rule, exists) {
            Some(inv) => Check::Exec(inv),
            None => Check::Invalid("exec probe without a command".into()),
        };
    }
    if probe.grpc.is_some() {
        return Check::Unsupported("gRPC probes are not supported by the pod runner".into());
    }
    Check::Invalid("probe has no handler".into())
}

/// A probe of the pod spec with Kubernetes' defaults (period 10 s, timeout 1 s, success 1,
/// failure 3).
pub fn probe_spec(probe: &Probe, check: Check) -> ProbeSpec {
    ProbeSpec {
        check,
        initial_delay: Duration::from_secs(u64::from(positive(probe.initial_delay_seconds, 0))),
        period: Duration::from_secs(u64::from(positive(probe.period_seconds, 10))),
        timeout: Duration::from_secs(u64::from(positive(probe.timeout_seconds, 1))),
        success_threshold: positive(probe.success_threshold, 1),
        failure_threshold: positive(probe.failure_threshold, 3),
    }
}

/// Consecutive-result bookkeeping for one probe.
#[derive(Debug, Clone)]
pub struct Tracker {
    success_threshold: u32,
    failure_threshold: u32,
    ok_streak: u32,
    fail_streak: u32,
    /// The verdict so far.
    pub verdict: bool,
}

impl Tracker {
    /// A tracker starting from `initial` (false for readiness and startup, true for liveness).
    pub fn new(spec: &ProbeSpec, initial: bool) -> Self {
        Self {
            success_threshold: spec.success_threshold,
            failure_threshold: spec.failure_threshold,
            ok_streak: 0,
            fail_streak: 0,
            verdict: initial,
        }
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.fail_streak
    }

    /// Failures in a row that flip the verdict.
    pub fn failure_threshold(&self) -> u32 {
        self.failure_threshold
    }

    /// Records one result; returns the new verdict when it flipped.
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        if ok {
            self.ok_streak += 1;
            self.fail_streak = 0;
        } else {
            self.fail_streak += 1;
            self.ok_streak = 0;
        }
        let flip = if self.verdict {
            !ok && self.fail_streak >= self.failure_threshold
        } else {
            ok && self.ok_streak >= self.success_threshold
        };
        if flip {
            self.verdict = !self.verdict;
            return Some(self.verdict);
        }
        None
    }
}

/// HTTP clients for probes: no proxy, no redirects, and no certificate checks for HTTPS
/// (as the kubelet).
#[derive(Debug, Clone)]
pub struct Prober {
    http: reqwest::Client,
}

impl Prober {
    /// Builds the client.
    ///
    /// # Errors
    /// When the TLS backend cannot be set up.
    pub fn new() -> Result<Self, reqwest::Error> {
        // reqwest is built without a rustls crypto provider; use ring, which kube already
        // links. Installing fails harmlessly when a provider is already in place.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .tls_danger_accept_invalid_certs(true)
            .build()?;
        Ok(Self { http })
    }
}

/// Performs one check; `Err` carries why it failed.
///
/// # Errors
/// The failure reason.
pub async fn run_once(
    spec: &ProbeSpec,
    prober: &Prober,
    env: &[(String, String)],
    dir: &Path,
) -> Result<(), String> {
    match &spec.check {
        Check::Http { url, headers } => {
            let mut req = prober.http.get(url).timeout(spec.timeout);
            for (k, v) in headers {
                req = req.header(k, v);
            }
            let resp = req.send().await.map_err(|e| format!("GET {url}: {e}"))?;
            let code = resp.status().as_u16();
            if (200..400).contains(&code) {
                Ok(())
            } else {
                Err(format!("GET {url}: HTTP {code}"))
            }
        }
        Check::Tcp { addr } => {
            match tokio::time::timeout(spec.timeout, TcpStream::connect(addr)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("connect {addr}: {e}")),
                Err(_) => Err(format!("connect {addr}: timed out")),
            }
        }
        Check::Exec(inv) => {
            let mut cmd = Command::new(&inv.program);
            cmd.args(&inv.args)
                .env_clear()
                .envs(env.iter().map(|(k, v)| (k, v)))
                .current_dir(dir)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true);
            let mut child = cmd
                .spawn()
                .map_err(|e| format!("exec {}: {e}", inv.program.display()))?;
            match tokio::time::timeout(spec.timeout, child.wait()).await {
                Ok(Ok(s)) if s.success() => Ok(()),
                Ok(Ok(s)) => Err(format!("exec {}: {s}", inv.program.display())),
                Ok(Err(e)) => Err(format!("exec {}: {e}", inv.program.display())),
                Err(_) => Err(format!("exec {}: timed out", inv.program.display())),
            }
        }
        Check::Invalid(why) => Err(why.clone()),
        Check::Unsupported(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn container(probe: serde_json::Value) -> Container {
        serde_json::from_value(json!({
            "name": "web",
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": probe
        }))
        .unwrap()
    }

    fn check(probe: serde_json::Value) -> Check {
        let c = container(probe);
        let rule = ImageRule::Host {
            prefix: "x/".into(),
        };
        check_for(
            c.readiness_probe.as_ref().unwrap(),
            &c,
            "127.1.0.3",
            &rule,
            |_| false,
        )
    }

    #[test]
    fn http_probe_with_named_port_targets_the_pod_ip() {
        let c = check(json!({"httpGet": {"port": "http", "path": "healthz"}}));
        assert_eq!(
            c,
            Check::Http {
                url: "http://127.1.0.3:8080/healthz".into(),
                headers: vec![]
            }
        );
    }

    #[test]
    fn http_probe_with_unknown_named_port_always_fails() {
        assert!(matches!(
            check(json!({"httpGet": {"port": "nope"}})),
            Check::Invalid(_)
        ));
    }

    #[test]
    fn tcp_probe_uses_the_given_host_and_numeric_port() {
        let c = check(json!({"tcpSocket": {"port": 9000, "host": "127.0.0.1"}}));
        assert_eq!(
            c,
            Check::Tcp {
                addr: "127.0.0.1:9000".into()
            }
        );
    }

    #[test]
    fn https_scheme_and_headers_are_kept() {
        let c = check(json!({"httpGet": {"port": 8443, "scheme": "HTTPS",
            "httpHeaders": [{"name": "X-A", "value": "1"}]}}));
        assert_eq!(
            c,
            Check::Http {
                url: "https://127.1.0.3:8443/".into(),
                headers: vec![("X-A".into(), "1".into())]
            }
        );
    }

    #[test]
    fn probe_timings_default_like_kubernetes() {
        let c = container(json!({"tcpSocket": {"port": 1}}));
        let spec = probe_spec(
            c.readiness_probe.as_ref().unwrap(),
            Check::Invalid(String::new()),
        );
        assert_eq!(spec.period, Duration::from_secs(10));
        assert_eq!(spec.timeout, Duration::from_secs(1));
        assert_eq!((spec.success_threshold, spec.failure_threshold), (1, 3));
        assert_eq!(spec.initial_delay, Duration::ZERO);
    }

    fn tracker(success: u32, failure: u32, initial: bool) -> Tracker {
        let spec = ProbeSpec {
            check: Check::Invalid(String::new()),
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: success,
            failure_threshold: failure,
        };
        Tracker::new(&spec, initial)
    }

    #[test]
    fn readiness_turns_true_after_success_threshold_successes_in_a_row() {
        let mut t = tracker(2, 3, false);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), Some(true));
        assert_eq!(t.record(true), None);
    }

    #[test]
    fn liveness_fails_only_after_failure_threshold_failures_in_a_row() {
        let mut t = tracker(1, 3, true);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some(false));
    }

    async fn one_shot_http_server(reply: &'static str) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = sock.read(&mut buf).await;
            let _ = sock.write_all(reply.as_bytes()).await;
        });
        format!("http://{addr}/")
    }

    fn spec(check: Check) -> ProbeSpec {
        ProbeSpec {
            check,
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            success_threshold: 1,
            failure_threshold: 1,
        }
    }

    #[tokio::test]
    async fn http_probe_succeeds_on_200_and_fails_on_500() {
        let prober = Prober::new().unwrap();
        let dir = std::env::temp_dir();
        let ok = one_shot_http_server("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
        let check = Check::Http {
            url: ok,
            headers: vec![],
        };
        assert_eq!(run_once(&spec(check), &prober, &[], &dir).await, Ok(()));
        let bad = one_shot_http_server("HTTP/1.1 500 Oops\r\ncontent-length: 0\r\n\r\n").await;
        let check = Check::Http {
            url: bad,
            headers: vec![],
        };
        assert!(run_once(&spec(check), &prober, &[], &dir).await.is_err());
    }

    #[tokio::test]
    async fn exec_probe_passes_env_and_reports_exit_status() {
        let prober = Prober::new().unwrap();
        let dir = std::env::temp_dir();
        let inv = |script: &str| {
            Check::Exec(Invocation {
                program: "/bin/sh".into(),
                args: vec!["-c".into(), script.into()],
            })
        };
        let env = vec![("READY".to_string(), "yes".to_string())];
        let ok = spec(inv("test \"$READY\" = yes"));
        assert_eq!(run_once(&ok, &prober, &env, &dir).await, Ok(()));
        assert!(
            run_once(&spec(inv("exit 1")), &prober, &env, &dir)
                .await
                .is_err()
        );
    }
}

//! Checking deliveries with the official Standard Webhooks library from PyPI
//! (`standardwebhooks`), not with Hookline's own signing code: the receiver's recorded requests
//! are written as JSON lines and `tests/python/verify_standard_webhooks.py` reports per request
//! whether the library verified it with the given `whsec_` keys.

use std::path::PathBuf;

use serde_json::json;

use crate::python;
use crate::random_suffix;
use crate::receiver::Recorded;

/// Files of one test in the temp dir, removed when dropped (they hold a signing key).
pub struct Scratch(PathBuf);

impl Scratch {
    /// A new directory.
    ///
    /// # Panics
    /// When it cannot be made.
    pub fn new() -> Scratch {
        let dir = std::env::temp_dir().join(format!("hookline-swh-{}", random_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// Writes `contents` to `name` in it, readable by the owner only.
    ///
    /// # Panics
    /// When the file cannot be written.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = self.0.join(name);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut f, contents.as_bytes()).unwrap();
        path
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch::new()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One recorded request as the verifier reads it: every header, and the body bytes exactly.
pub fn request_line(headers: &[(String, String)], body: &[u8]) -> String {
    let mut map = serde_json::Map::new();
    for (k, v) in headers {
        map.insert(k.clone(), json!(v));
    }
    json!({
        "headers": map,
        "body_hex": body.iter().map(|b| format!("{b:02x}")).collect::<String>(),
    })
    .to_string()
}

/// The library's verdict on one request.
#[derive(Debug, serde::Deserialize)]
pub struct Verdict {
    /// The request's line number, from 0.
    pub index: usize,
    /// Its `webhook-id`.
    pub id: Option<String>,
    /// Whether the library verified it.
    pub verified: bool,
    /// Why not.
    #[serde(default)]
    pub error: Option<String>,
    /// The verified payload's `type`.
    #[serde(rename = "type", default)]
    pub type_: Option<String>,
}

/// Runs the Python verifier over `requests` (JSON lines) with the keys in `secret_files`.
///
/// # Panics
/// When the venv or the script fails.
pub async fn verify_with_library(requests: PathBuf, secret_files: Vec<PathBuf>) -> Vec<Verdict> {
    let out = tokio::task::spawn_blocking(move || {
        let mut args: Vec<String> = Vec::new();
        for f in &secret_files {
            args.push("--secret-file".into());
            args.push(f.display().to_string());
        }
        args.push(requests.display().to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        python::run_script(&python::script("verify_standard_webhooks.py"), &args)
    })
    .await
    .unwrap()
    .unwrap();
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("verifier line {l:?}: {e}")))
        .collect()
}

/// The requests as the verifier reads them.
pub fn jsonl(requests: &[Recorded]) -> String {
    requests
        .iter()
        .map(|r| request_line(&r.headers, &r.body) + "\n")
        .collect()
}

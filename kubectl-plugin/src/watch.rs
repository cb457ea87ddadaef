//! Waiting on one object: a watch of it by name (the API server pushes each change) flows
//! through the caller's `step`, which sees every version — to draw progress — and returns
//! `Some` once the object says what was awaited.
//!
//! # Guarantees
//! - The current version is seen first, so a change that already happened is not missed.
//! - A broken watch is re-established (after a second) until the deadline; only the deadline,
//!   the object's deletion, or a refusal (401, 403: retrying cannot help) ends the wait without
//!   a result.

use std::fmt::Debug;
use std::time::Duration;

use futures::StreamExt as _;
use kube::runtime::watcher::{self, watch_object};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;

use crate::error::{Error, Object, Result};

/// Watches `name` until `step` returns `Some`, for at most `deadline` (`None`: no limit).
///
/// # Errors
/// [`Error::TimedOut`] (saying what was awaited) when the deadline passes;
/// [`Error::NotFound`] when the object is deleted or missing.
pub async fn until<K, T>(
    api: &Api<K>,
    object: &Object<'_>,
    awaiting: &str,
    deadline: Option<Duration>,
    mut step: impl FnMut(&K) -> Option<T>,
) -> Result<T>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let watch = async {
        let mut stream = std::pin::pin!(watch_object(api.clone(), object.name));
        let mut last_error = None;
        while let Some(event) = stream.next().await {
            match event {
                Ok(Some(obj)) => {
                    if let Some(done) = step(&obj) {
                        return Ok(done);
                    }
                }
                Ok(None) => {
                    return Err(Error::NotFound(format!(
                        "{} {:?} in namespace {:?} was deleted (or never existed) while waiting for {awaiting}",
                        object.kind, object.name, object.namespace
                    )));
                }
                Err(e) => {
                    if let Some(refused) = refusal(&e) {
                        return Err(Error::kube("watching", object, refused));
                    }
                    last_error = Some(e.to_string());
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        Err(Error::Refused(format!(
            "the watch of {} {} ended: {}",
            object.kind,
            object.name,
            last_error.unwrap_or_default()
        )))
    };
    match deadline {
        None => watch.await,
        Some(d) => tokio::time::timeout(d, watch).await.map_err(|_| {
            Error::TimedOut(format!(
                "no {awaiting} within {}",
                hookline_core::duration::format(d)
            ))
        })?,
    }
}

/// The client error of a watch that the API server refused for good (401, 403).
fn refusal(e: &watcher::Error) -> Option<kube::Error> {
    let inner = match e {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => e,
        _ => return None,
    };
    match inner {
        kube::Error::Api(s) if matches!(s.code, 401 | 403) => Some(kube::Error::Api(s.clone())),
        _ => None,
    }
}

//! Waiting for something to become true, with a deadline and without bare sleeps: a probe is
//! polled at a short interval until it yields a value or the deadline passes, and the error
//! names what was awaited and the last thing the probe saw.

use std::{future::Future, time::Duration};

use tokio::time::{Instant, sleep};

/// Polls `probe` every 100 ms (up to `deadline`) until it returns `Ok(Some(v))`.
/// `Ok(None)` and `Err` mean "not yet"; the last error is reported on timeout.
///
/// # Errors
/// When the deadline passes first.
pub async fn until<T, F, Fut>(deadline: Duration, what: &str, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let end = Instant::now() + deadline;
    let mut last = String::from("(no result yet)");
    loop {
        match probe().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() >= end {
            anyhow::bail!("timed out after {deadline:?} waiting for {what}; last: {last}");
        }
        sleep(Duration::from_millis(100)).await;
    }
}

/// Waits up to `deadline` until condition `type_` of `Webhook` `name` is `True`; the `Webhook`.
///
/// # Errors
/// When the deadline passes first.
pub async fn condition(
    api: &kube::Api<hookline_crds::Webhook>,
    name: &str,
    type_: &str,
    deadline: Duration,
) -> anyhow::Result<hookline_crds::Webhook> {
    until(deadline, &format!("{name} {type_}=True"), || async {
        let w = api.get(name).await?;
        Ok(condition_is_true(&w, type_).then_some(w))
    })
    .await
}

/// Whether condition `type_` of `wh` is `True`.
pub fn condition_is_true(wh: &hookline_crds::Webhook, type_: &str) -> bool {
    wh.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == type_ && c.status == "True")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn until_returns_the_first_value_the_probe_yields() {
        let calls = AtomicU32::new(0);
        let v = until(Duration::from_secs(5), "third call", || async {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            Ok((n == 3).then_some(n))
        })
        .await
        .unwrap();
        assert_eq!(v, 3);
    }

    #[tokio::test]
    async fn until_times_out_naming_what_it_waited_for_and_the_last_error() {
        let err = until::<(), _, _>(Duration::from_millis(250), "the impossible", || async {
            anyhow::bail!("still broken")
        })
        .await
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("the impossible") && err.contains("still broken"),
            "{err}"
        );
    }
}

//! `kubectl hookline tail [WEBHOOK]`: the tenant's delivery log from the tenant API, one line per
//! delivery, oldest first; with `--follow`, polled every second for new deliveries and status
//! changes ([`log::Tracker`] decides what is new and how far back each poll reaches).
//!
//! The API accepts bearer tokens only: `--token` (or `HOOKLINE_TOKEN`), else the kubeconfig
//! user's token or token file. The API's URL is not in the kubeconfig: `--api-url` (or
//! `HOOKLINE_API_URL`).
//!
//! # Caveats
//! - The list carries no latency; it is read per printed delivery from
//!   `GET …/deliveries/{eventId}` (eight at a time).

pub mod api;
pub mod log;

use std::time::Duration;

use clap::Args;
use futures::StreamExt as _;
use jiff::{SignedDuration, Timestamp};

use crate::cluster::{ClusterArgs, kubeconfig_token};
use crate::error::{Error, Result};
use crate::output::{Format, OutputArgs};
use crate::timespec;
use api::{Query, TenantApi};
use log::{Delivery, StatusFilter, Tracker};

/// Pages read by one poll while following, at most (500 deliveries each).
const FOLLOW_PAGES: usize = 20;
/// Latency look-ups in flight at once.
const LATENCY_LOOKUPS: usize = 8;

/// `tail` flags.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// Only this Webhook's deliveries; all of the tenant's when left out.
    pub webhook: Option<String>,
    /// Deliveries first attempted within this long before now.
    #[arg(long, default_value = "10m")]
    pub since: String,
    /// Only deliveries in this state: delivered, failed (retrying or dead-lettered), retrying,
    /// dead_letter, pending; repeatable or comma-separated.
    #[arg(long, value_name = "STATUS")]
    pub status: Vec<String>,
    /// Only this event type.
    #[arg(long, value_name = "TYPE")]
    pub event_type: Option<String>,
    /// Keep polling (every second) for new deliveries and status changes.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Show at most this many of the deliveries already in the log (-1: all).
    #[arg(long, default_value_t = 100, allow_negative_numbers = true)]
    pub tail: i64,
    /// Root URL of the tenant API (hookline-api), e.g. http://127.0.0.1:8080.
    #[arg(long, env = "HOOKLINE_API_URL")]
    pub api_url: Option<String>,
    /// Bearer token for the tenant API; default: the kubeconfig user's token.
    #[arg(long, env = "HOOKLINE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

const NO_URL: &str = "no tenant API URL: pass --api-url or set HOOKLINE_API_URL to the hookline-api \
    Service, e.g. `kubectl -n hookline-system port-forward svc/hookline-api 8080` and \
    --api-url http://127.0.0.1:8080";

/// The namespace and token `tail` uses: the flags, else the kubeconfig's.
async fn identity(args: &TailArgs) -> Result<(String, String)> {
    if let (Some(ns), Some(token)) = (&args.cluster.namespace, &args.token) {
        return Ok((ns.clone(), token.clone()));
    }
    let config = args.cluster.config().await?;
    let namespace = args.cluster.namespace_in(&config);
    let token = match &args.token {
        Some(t) => t.clone(),
        None => kubeconfig_token(&config).map_err(|e| {
            Error::Config(format!(
                "no token for the tenant API: pass --token or set HOOKLINE_TOKEN (e.g. `kubectl create token <serviceaccount>`); \
                 the kubeconfig has none to fall back on: {e}"
            ))
        })?,
    };
    Ok((namespace, token))
}

/// Runs `tail`.
///
/// # Errors
/// [`Error::Config`] without an API URL or a token; [`Error::Refused`] when the API refuses.
pub async fn run(args: TailArgs) -> Result<()> {
    let format = args.output.format;
    if format == Format::Yaml {
        return Err(Error::Usage(
            "tail prints -o table or -o json (one object per line)".into(),
        ));
    }
    let filter = StatusFilter::parse(&args.status).map_err(Error::Usage)?;
    let since = timespec::duration("--since", &args.since).map_err(Error::Usage)?;
    let since =
        SignedDuration::try_from(since).map_err(|e| Error::Usage(format!("--since: {e}")))?;
    let base = args
        .api_url
        .clone()
        .ok_or_else(|| Error::Config(NO_URL.into()))?;
    let (namespace, token) = identity(&args).await?;
    let api = TenantApi::new(&base, &namespace, token)?;
    let floor = Timestamp::now()
        .checked_sub(since)
        .unwrap_or(Timestamp::MIN);
    let mut tracker = Tracker::new(floor);
    let mut query = Query {
        webhook: args.webhook.clone(),
        // While following, statuses are filtered here (see `log`).
        status: if args.follow { None } else { filter.single() },
        event_type: args.event_type.clone(),
        since: Some(floor),
    };
    let keep = usize::try_from(args.tail).ok();
    let (items, oldest_if_cut) = read(
        &api,
        &query,
        keep.map_or(usize::MAX, |k| k.div_ceil(500) + 1),
    )
    .await?;
    if let Some(oldest) = oldest_if_cut {
        tracker.raise_floor(oldest);
    }
    let mut shown: Vec<Delivery> = tracker
        .fresh(items)
        .into_iter()
        .filter(|d| filter.shows(d))
        .collect();
    if let Some(k) = keep {
        shown.drain(..shown.len().saturating_sub(k));
    }
    if format == Format::Table {
        println!("{}", log::header());
    }
    print(&api, shown, format).await;
    if !args.follow {
        return Ok(());
    }
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        query.since = Some(tracker.next_since());
        match read(&api, &query, FOLLOW_PAGES).await {
            Ok((items, _)) => {
                let shown = tracker
                    .fresh(items)
                    .into_iter()
                    .filter(|d| filter.shows(d))
                    .collect();
                print(&api, shown, format).await;
            }
            Err(e @ Error::Refused(_)) => eprintln!("warning: {e}; retrying"),
            Err(e) => return Err(e),
        }
    }
}

/// Up to `pages` pages of `query`, newest first; and when more were left, the oldest first
/// attempt read.
async fn read(
    api: &TenantApi,
    query: &Query,
    pages: usize,
) -> Result<(Vec<Delivery>, Option<Timestamp>)> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..pages {
        let page = api.page(query, cursor.as_deref()).await?;
        items.extend(page.items);
        cursor = page.next_cursor;
        if cursor.is_none() {
            return Ok((items, None));
        }
    }
    let oldest = items
        .iter()
        .filter_map(|d| d.first_attempt_at.parse().ok())
        .min();
    Ok((items, oldest))
}

/// Prints `shown` (with each one's latency) in order.
async fn print(api: &TenantApi, shown: Vec<Delivery>, format: Format) {
    let with_latency = futures::stream::iter(shown)
        .map(|mut d| async move {
            if d.attempts > 0 {
                d.latency_ms = api.latency(&d.event_id, &d.webhook).await.ok().flatten();
            }
            d
        })
        .buffered(LATENCY_LOOKUPS);
    let mut with_latency = std::pin::pin!(with_latency);
    while let Some(d) = with_latency.next().await {
        match format {
            Format::Json => println!("{}", serde_json::to_string(&d).unwrap_or_default()),
            _ => println!("{}", log::line(&d)),
        }
    }
}

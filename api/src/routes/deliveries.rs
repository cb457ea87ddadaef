//! `/api/v1/tenants/{tenant}/deliveries…` and `…/stats`: the delivery log, read from the store
//! after the caller's right to `list`/`get` `deliveries.hookline.dev` in the tenant was
//! confirmed by a SelfSubjectAccessReview sent as the caller. Every store query names the
//! tenant, so no answer can hold another tenant's rows.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jiff::Timestamp;

use crate::app::App;
use crate::auth::Caller;
use crate::extract::{Named, Params, Tenant};
use crate::model::{DeliveriesQuery, DeliveryPage, EventDeliveries, StatsQuery, StatsView, Window};
use crate::problem::Problem;
use crate::store::{Cursor, Filter};

/// Default page size.
pub const DEFAULT_LIMIT: u32 = 50;
/// Largest page size.
pub const MAX_LIMIT: u32 = 500;

/// The opaque text of a cursor.
pub fn encode_cursor(c: Cursor) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}.{}", c.first_ms, c.seq))
}

/// Reads a cursor this API returned.
///
/// # Errors
/// 400 naming `cursor` for anything else.
pub fn decode_cursor(s: &str) -> Result<Cursor, Problem> {
    let bad = || {
        Problem::field(
            "cursor",
            "not a cursor this API returned (pass nextCursor as it is)",
        )
    };
    let text = URL_SAFE_NO_PAD.decode(s).map_err(|_| bad())?;
    let text = String::from_utf8(text).map_err(|_| bad())?;
    let (a, b) = text.split_once('.').ok_or_else(bad)?;
    Ok(Cursor {
        first_ms: a.parse().map_err(|_| bad())?,
        seq: b.parse().map_err(|_| bad())?,
    })
}

fn time(field: &str, s: Option<&str>) -> Result<Option<i64>, Problem> {
    s.map(|s| {
        s.parse::<Timestamp>()
            .map(Timestamp::as_millisecond)
            .map_err(|_| Problem::field(field, "not an RFC 3339 time such as 2026-12-01T10:00:00Z"))
    })
    .transpose()
}

/// The store filter, cursor and limit of a query.
///
/// # Errors
/// 400 naming the parameter: a bad time, `since` not before `until`, a bad cursor, a limit out
/// of range.
pub fn plan(q: &DeliveriesQuery) -> Result<(Filter, Option<Cursor>, usize), Problem> {
    let since_ms = time("since", q.since.as_deref())?;
    let until_ms = time("until", q.until.as_deref())?;
    if let (Some(s), Some(u)) = (since_ms, until_ms)
        && s >= u
    {
        return Err(Problem::field("until", "must be later than since"));
    }
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(Problem::field("limit", format!("must be 1 to {MAX_LIMIT}")));
    }
    let cursor = q.cursor.as_deref().map(decode_cursor).transpose()?;
    Ok((
        Filter {
            webhook: q.webhook.clone(),
            status: q.status,
            event_type: q.event_type.clone(),
            since_ms,
            until_ms,
        },
        cursor,
        limit as usize,
    ))
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> crate::store::Result<T> + Send + 'static,
) -> Result<T, Problem> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Problem::unavailable(format!("the delivery log failed: {e}")))?
        .map_err(|e| Problem::unavailable(e.to_string()))
}

/// `GET …/deliveries`.
pub async fn list(
    State(app): State<Arc<App>>,
    caller: Caller,
    Tenant(tenant): Tenant,
    Params(q): Params<DeliveriesQuery>,
) -> Result<Json<DeliveryPage>, Problem> {
    let (filter, cursor, limit) = plan(&q)?;
    app.auth
        .allow(&caller, &tenant, "list", "deliveries")
        .await?;
    let store = app.store.clone();
    let page = blocking(move || store.list(&tenant, &filter, cursor, limit)).await?;
    Ok(Json(DeliveryPage {
        items: page.items,
        next_cursor: page.next.map(encode_cursor),
    }))
}

/// `GET …/deliveries/{eventId}`.
pub async fn event(
    State(app): State<Arc<App>>,
    caller: Caller,
    Named(tenant, event_id): Named,
) -> Result<Json<EventDeliveries>, Problem> {
    app.auth
        .allow(&caller, &tenant, "get", "deliveries")
        .await?;
    let store = app.store.clone();
    let (t, id) = (tenant.clone(), event_id.clone());
    let deliveries = blocking(move || store.event(&t, &id)).await?;
    if deliveries.is_empty() {
        return Err(Problem::not_found(format!(
            "no delivery of event {event_id:?} in tenant {tenant:?} (not matched by any Webhook, not attempted yet, or older than the log's retention)"
        )));
    }
    Ok(Json(EventDeliveries {
        event_id,
        deliveries,
    }))
}

/// `GET …/stats`.
pub async fn stats(
    State(app): State<Arc<App>>,
    caller: Caller,
    Tenant(tenant): Tenant,
    Params(q): Params<StatsQuery>,
) -> Result<Json<StatsView>, Problem> {
    app.auth
        .allow(&caller, &tenant, "list", "deliveries")
        .await?;
    let (window, bucket) = q.window.unwrap_or(Window::Day).minutes();
    let bucket_ms = bucket * 60_000;
    let now = Timestamp::now().as_millisecond();
    let to = (now / bucket_ms + 1) * bucket_ms;
    let from = to - window * 60_000;
    let store = app.store.clone();
    let webhook = q.webhook.clone();
    let stats =
        blocking(move || store.stats(&tenant, webhook.as_deref(), from, to, bucket_ms)).await?;
    let rfc = |ms: i64| {
        Timestamp::from_millisecond(ms)
            .map(|t| t.to_string())
            .unwrap_or_default()
    };
    Ok(Json(StatsView {
        from: rfc(from),
        to: rfc(to),
        stats,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_forged_ones_are_refused() {
        let c = Cursor {
            first_ms: 1_700_000_000_123,
            seq: 42,
        };
        assert_eq!(decode_cursor(&encode_cursor(c)).unwrap(), c);
        for bad in ["", "!!", "MTIz", &URL_SAFE_NO_PAD.encode("a.b")] {
            let p = decode_cursor(bad).unwrap_err();
            assert_eq!(p.errors[0].field, "cursor", "{bad}");
        }
    }

    #[test]
    fn a_time_range_must_run_forward_and_limits_stay_in_range() {
        let q = |since: &str, until: &str, limit: Option<u32>| DeliveriesQuery {
            since: Some(since.into()),
            until: Some(until.into()),
            limit,
            ..DeliveriesQuery::default()
        };
        let t1 = "2026-12-01T10:00:00Z";
        let t2 = "2026-12-01T11:00:00Z";
        assert!(plan(&q(t1, t2, None)).is_ok());
        assert_eq!(plan(&q(t2, t1, None)).unwrap_err().errors[0].field, "until");
        assert_eq!(
            plan(&q(t1, "yesterday", None)).unwrap_err().errors[0].field,
            "until"
        );
        assert_eq!(
            plan(&q(t1, t2, Some(0))).unwrap_err().errors[0].field,
            "limit"
        );
        assert_eq!(
            plan(&q(t1, t2, Some(501))).unwrap_err().errors[0].field,
            "limit"
        );
        assert_eq!(plan(&q(t1, t2, Some(500))).unwrap().2, 500);
    }
}

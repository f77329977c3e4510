//! What the request path counts, and where: per route ([`RouteStats`], carried across
//! reloads by name in the snapshot; a listener's requests that matched no route in its
//! [`crate::snapshot::ListenerStats`]), per pool ([`PoolStats`]) and per backend
//! ([`BackendStats`], inside the backend's carried state). Each request is counted once,
//! when its record is done ([`request`]), whichever wire path served it.

use super::series::{Count, Hist, Series};
use crate::config::WhenAllDown;
use crate::proxy::choose::StickyResult;
use crate::record::Record;
use http::Method;
use std::sync::Arc;

/// The requests of one route (or of none).
#[derive(Default)]
pub struct RouteStats {
    /// `switchyard_http_requests_total`
    pub requests: Series<RequestKey, Count>,
    /// `switchyard_http_request_duration_seconds`
    pub durations: Series<Where, Hist>,
    /// `switchyard_split_decisions_total`: the pool a split chose, and whether its cookie
    /// named it (else it was drawn).
    pub splits: Series<(Arc<str>, bool), Count>,
}

/// The labels of a request count besides the route.
#[derive(Clone, PartialEq, Eq)]
pub struct RequestKey {
    pub at: Where,
    pub method: u8,
    pub status: u16,
}

/// The listener and pool of a request.
#[derive(Clone, PartialEq, Eq)]
pub struct Where {
    pub listener: Arc<str>,
    /// `None`: no pool (no route, or answered before one was chosen).
    pub pool: Option<Arc<str>>,
}

/// The counts of one pool.
#[derive(Default)]
pub struct PoolStats {
    /// `switchyard_sticky_decisions_total`, by [`StickyResult`] in [`STICKY`] order.
    pub sticky: [Count; 4],
    /// `switchyard_pool_fail_open_total`
    pub fail_open: Count,
}

/// The sticky results in the order of [`PoolStats::sticky`].
pub const STICKY: [StickyResult; 4] = [
    StickyResult::Hit,
    StickyResult::New,
    StickyResult::Reassigned,
    StickyResult::Invalid,
];

/// The counts of one backend.
#[derive(Default)]
pub struct BackendStats {
    /// `switchyard_upstream_requests_total`, by response status.
    pub responses: Series<u16, Count>,
    /// `switchyard_upstream_response_duration_seconds`: request sent -> response head.
    pub latency: Hist,
    /// `switchyard_upstream_connect_errors_total`
    pub connect_errors: Count,
}

/// The standard methods, by their index in the `method` label; anything else is `OTHER`.
pub const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "OTHER",
];

fn method_index(m: Option<&Method>) -> u8 {
    let Some(m) = m else { return 9 };
    match *m {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::PATCH => 5,
        Method::OPTIONS => 6,
        Method::CONNECT => 7,
        Method::TRACE => 8,
        _ => 9,
    }
}

/// Whether two labels are the same: almost always the very same `Arc` (std compares
/// `Arc<str>` by content only; its pointer shortcut needs a sized type).
fn same(a: &Arc<str>, b: &Arc<str>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

/// Count the request of `r`, now that it is done.
pub fn request(r: &Record) {
    if !cfg!(feature = "metrics") {
        return;
    }
    let (route, pool) = match (&r.snap, r.route) {
        (Some(s), Some(i)) => (&*s.route_stats[i], r.pool.map(|p| &s.pools[p])),
        _ => (&r.conn.stats.unrouted, None),
    };
    let listener = &r.conn.listener;
    let pool_name = pool.map(|p| &p.name);
    let at = |w: &Where| {
        same(&w.listener, listener)
            && match (&w.pool, pool_name) {
                (Some(a), Some(b)) => same(a, b),
                (None, None) => true,
                _ => false,
            }
    };
    let make = || Where {
        listener: listener.clone(),
        pool: pool_name.cloned(),
    };
    let method = method_index(r.method.as_ref());
    // No status: the client went away before any response (nginx's 499).
    let status = if r.status == 0 { 499 } else { r.status };
    route.requests.with(
        |k| k.status == status && k.method == method && at(&k.at),
        || RequestKey {
            at: make(),
            method,
            status,
        },
        Count::inc,
    );
    // A 101's record lasts as long as its tunnel: a WebSocket's hours are not a latency.
    if status != 101 {
        route.durations.with(at, make, |h| h.observe(r.elapsed()));
    }
    let Some(pool) = pool else { return };
    if let Some(c) = r.split {
        route.splits.with(
            |(p, by)| same(p, &pool.name) && *by == c.by_cookie,
            || (pool.name.clone(), c.by_cookie),
            Count::inc,
        );
    }
    if let Some(s) = r.sticky
        && let Some(i) = STICKY.iter().position(|x| *x == s.result)
    {
        pool.stats.sticky[i].inc();
    }
    if r.all_down == Some(WhenAllDown::FailOpen) {
        pool.stats.fail_open.inc();
    }
}

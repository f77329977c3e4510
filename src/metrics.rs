//! Prometheus metrics for the admin listener's `/metrics`.
//!
//! What the proxy's state already holds is read when Prometheus scrapes, not counted
//! again on the request path: backend health and in-flight counts, draining backends'
//! quiet time, reloads, TLS handshake errors and dropped access-log lines come from the
//! current snapshot and [`Shared`] by a collector of our own ([`State`]), so the series of
//! removed backends are gone from the next scrape. The process collector adds CPU, memory,
//! file descriptors and threads.
//!
//! What only the request path knows is counted there ([`stats`]), on atomics in structures
//! resolved when the snapshot is compiled (per route, pool and backend), and rendered from
//! the current snapshot: routes and backends a reload removes leave the next scrape.

pub mod series;
pub mod stats;

use crate::access_log::AccessLog;
use crate::snapshot::{Shared, Snapshot};
use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, Registry, TextEncoder};
use series::{BUCKETS, Hist};
use stats::{METHODS, STICKY, Where};
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};

/// The registry `/metrics` renders.
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// Metrics of the proxy whose state is `shared` and whose access log is `log`.
    pub fn new(shared: &Arc<Shared>, log: AccessLog) -> Metrics {
        let registry = Registry::new();
        registry
            .register(Box::new(State::new(shared, log)))
            .expect("the state collector's names are unique");
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("the process collector's names are unique");
        Metrics { registry }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding of gathered metrics");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// The families read from the proxy's state at scrape time.
struct State {
    /// Weak: the registry lives in the admin task, which must not keep the proxy alive.
    shared: Weak<Shared>,
    log: AccessLog,
    descs: Vec<Desc>,
}

/// (name, help, labels, type) of each family [`State`] reports, in the order `collect`
/// lists their series.
const FAMILIES: &[(&str, &str, &[&str], MetricType)] = &[
    (
        "switchyard_backend_up",
        "1 while the backend may take requests (not taken out by health checks or passive ejection), else 0",
        &["pool", "backend"],
        MetricType::GAUGE,
    ),
    (
        "switchyard_backend_active_requests",
        "Requests in flight on the backend (until their response bodies are done)",
        &["pool", "backend"],
        MetricType::GAUGE,
    ),
    (
        "switchyard_backend_draining",
        "1 for a backend marked drain: true (no new users; sticky users stay)",
        &["pool", "backend"],
        MetricType::GAUGE,
    ),
    (
        "switchyard_backend_last_request_age_seconds",
        "Seconds since a draining backend last started a request: safe to remove when long enough",
        &["pool", "backend"],
        MetricType::GAUGE,
    ),
    (
        "switchyard_config_reloads_total",
        "Config reloads by result (success: taken; failure: the running config stayed)",
        &["result"],
        MetricType::COUNTER,
    ),
    (
        "switchyard_dns_lookups_total",
        "Lookups of backend names by result (failure: an error, a timeout or no address; the last good addresses stay)",
        &["name", "result"],
        MetricType::COUNTER,
    ),
    (
        "switchyard_dns_answer_changes_total",
        "Lookups of a backend name whose addresses differed from the last good answer (each rebuilds its pools)",
        &["name"],
        MetricType::COUNTER,
    ),
    (
        "switchyard_dns_addresses",
        "Addresses a backend name resolves to now (the last good answer)",
        &["name"],
        MetricType::GAUGE,
    ),
    (
        "switchyard_tls_handshake_errors_total",
        "Failed TLS handshakes (plain HTTP on a TLS port included)",
        &["listener"],
        MetricType::COUNTER,
    ),
    (
        "switchyard_access_log_dropped_total",
        "Access log lines dropped because the writer fell behind",
        &[],
        MetricType::COUNTER,
    ),
    (
        "switchyard_http_requests_total",
        "Client requests by listener, route, pool, method and status (route and pool none when no route matched)",
        &["listener", "route", "pool", "method", "status"],
        MetricType::COUNTER,
    ),
    (
        "switchyard_http_request_duration_seconds",
        "Client request duration, from its head to the end of its response",
        &["listener", "route", "pool"],
        MetricType::HISTOGRAM,
    ),
    (
        "switchyard_upstream_requests_total",
        "Backend responses by status",
        &["pool", "backend", "status"],
        MetricType::COUNTER,
    ),
    (
        "switchyard_upstream_response_duration_seconds",
        "Backend wait, from the request sent to the response head",
        &["pool", "backend"],
        MetricType::HISTOGRAM,
    ),
    (
        "switchyard_upstream_connect_errors_total",
        "Failed connects to a backend (refused, timed out, TLS)",
        &["pool", "backend"],
        MetricType::COUNTER,
    ),
    (
        "switchyard_downstream_connections_active",
        "Client connections open now",
        &["listener"],
        MetricType::GAUGE,
    ),
    (
        "switchyard_downstream_connections_total",
        "Client connections accepted",
        &["listener"],
        MetricType::COUNTER,
    ),
    (
        "switchyard_sticky_decisions_total",
        "Sticky cookie outcomes: hit, new (no cookie), reassigned (its backend down or gone), invalid (bad or expired)",
        &["pool", "result"],
        MetricType::COUNTER,
    ),
    (
        "switchyard_split_decisions_total",
        "Pools chosen by a split, by its cookie (a returning user, or QA forcing a variant) or by weight",
        &["route", "pool", "by"],
        MetricType::COUNTER,
    ),
    (
        "switchyard_pool_fail_open_total",
        "Requests tried on a pool none of whose backends was healthy (when_all_down: fail_open)",
        &["pool"],
        MetricType::COUNTER,
    ),
    (
        "switchyard_tcp_connections_total",
        "Connections a tcp listener relayed, by the backend they were connected to",
        &["listener", "pool", "backend"],
        MetricType::COUNTER,
    ),
    (
        "switchyard_tcp_connections_active",
        "Connections a tcp listener is relaying now",
        &["listener"],
        MetricType::GAUGE,
    ),
    (
        "switchyard_tcp_bytes_total",
        "Bytes a tcp listener relayed: in from clients, out to clients",
        &["listener", "direction"],
        MetricType::COUNTER,
    ),
];

/// The name of every family the proxy exports besides the process collector's.
pub fn names() -> impl Iterator<Item = &'static str> {
    FAMILIES.iter().map(|(name, _, _, _)| *name)
}

impl State {
    fn new(shared: &Arc<Shared>, log: AccessLog) -> State {
        let descs = FAMILIES
            .iter()
            .map(|(name, help, labels, _)| {
                Desc::new(
                    name.to_string(),
                    help.to_string(),
                    labels.iter().map(|l| l.to_string()).collect(),
                    HashMap::new(),
                )
                .expect("a valid metric description")
            })
            .collect();
        State {
            shared: Arc::downgrade(shared),
            log,
            descs,
        }
    }
}

impl Collector for State {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Some(shared) = self.shared.upgrade() else {
            return Vec::new();
        };
        let snap = shared.load();
        let (mut up, mut active, mut draining, mut age) = (vec![], vec![], vec![], vec![]);
        for pool in &snap.pools {
            for b in &pool.backends {
                let labels = [("pool", &*pool.name), ("backend", &*b.label)];
                up.push(gauge(&labels, f64::from(u8::from(b.up()))));
                active.push(gauge(&labels, f64::from(b.state.in_flight())));
                draining.push(gauge(&labels, f64::from(u8::from(b.drain))));
                if b.drain
                    && let Some(quiet) = b.state.quiet_for()
                {
                    age.push(gauge(&labels, quiet.as_secs_f64()));
                }
            }
        }
        let mut reloads = Vec::new();
        for (result, n) in [
            ("success", shared.reloads.ok.load(Relaxed)),
            ("failure", shared.reloads.failed.load(Relaxed)),
        ] {
            // A counter series appears at its first event (SPEC "Metrics").
            if n > 0 {
                reloads.push(counter(&[("result", result)], n as f64));
            }
        }
        let (mut lookups, mut changes, mut addresses) = (vec![], vec![], vec![]);
        for (name, st, n) in shared.dns.stats() {
            for (result, c) in [
                ("success", st.ok.load(Relaxed)),
                ("failure", st.failed.load(Relaxed)),
            ] {
                if c > 0 {
                    lookups.push(counter(&[("name", &name), ("result", result)], c as f64));
                }
            }
            match st.changed.load(Relaxed) {
                0 => {}
                c => changes.push(counter(&[("name", &name)], c as f64)),
            }
            addresses.push(gauge(&[("name", &name)], n as f64));
        }
        let dropped = match self.log.dropped() {
            0 => vec![],
            n => vec![counter(&[], n as f64)],
        };
        let r = requests(&shared, &snap);
        let b = upstream(&snap);
        let (open, accepted, tls) = connections(&shared, &snap);
        let t = tcp(&shared, &snap);
        // One list per family, in FAMILIES order (the length is checked at compile time).
        let series: [Vec<Metric>; FAMILIES.len()] = [
            up,
            active,
            draining,
            age,
            reloads,
            lookups,
            changes,
            addresses,
            tls,
            dropped,
            r.requests,
            r.durations,
            b.responses,
            b.latency,
            b.connect_errors,
            open,
            accepted,
            r.sticky,
            r.splits,
            r.fail_open,
            t.connections,
            t.active,
            t.bytes,
        ];
        FAMILIES
            .iter()
            .zip(series)
            .map(|((name, help, _, kind), metrics)| family(name, help, *kind, metrics))
            .collect()
    }
}

/// The request families, from every route of `snap` and each listener's unrouted requests.
#[derive(Default)]
struct Requests {
    requests: Vec<Metric>,
    durations: Vec<Metric>,
    sticky: Vec<Metric>,
    splits: Vec<Metric>,
    fail_open: Vec<Metric>,
}

fn requests(shared: &Shared, snap: &Snapshot) -> Requests {
    let mut out = Requests::default();
    let listeners = shared.listener_stats_all();
    let routes = snap
        .config
        .routes
        .iter()
        .zip(snap.route_stats.iter())
        .map(|(r, st)| (&*r.name, &**st))
        .chain(
            listeners
                .iter()
                .filter(|(name, _)| snap.listener(name).is_some())
                .map(|(_, st)| ("none", &st.unrouted)),
        );
    // Series of a listener or pool a reload removed (or renamed) stay in a kept route's
    // list, and are not shown.
    let current = |w: &Where| {
        snap.listener(&w.listener).is_some()
            && w.pool
                .as_ref()
                .is_none_or(|p| snap.pools.iter().any(|x| x.name == *p))
    };
    for (route, st) in routes {
        for e in st
            .requests
            .entries()
            .into_iter()
            .filter(|e| current(&e.0.at))
        {
            let (k, n) = (&e.0, e.1.get());
            let status = k.status.to_string();
            out.requests.push(counter(
                &[
                    ("listener", &k.at.listener),
                    ("route", route),
                    ("pool", k.at.pool.as_deref().unwrap_or("none")),
                    ("method", METHODS[usize::from(k.method)]),
                    ("status", &status),
                ],
                n as f64,
            ));
        }
        for e in st.durations.entries().into_iter().filter(|e| current(&e.0)) {
            let labels = [
                ("listener", &*e.0.listener),
                ("route", route),
                ("pool", e.0.pool.as_deref().unwrap_or("none")),
            ];
            out.durations.push(histogram(&labels, &e.1));
        }
        for e in st.splits.entries() {
            let ((pool, by_cookie), n) = (&e.0, e.1.get());
            let by = if *by_cookie { "cookie" } else { "weight" };
            out.splits.push(counter(
                &[("route", route), ("pool", pool), ("by", by)],
                n as f64,
            ));
        }
    }
    for pool in &snap.pools {
        for (i, result) in STICKY.iter().enumerate() {
            let n = pool.stats.sticky[i].get();
            if n > 0 {
                out.sticky.push(counter(
                    &[("pool", &pool.name), ("result", result.as_str())],
                    n as f64,
                ));
            }
        }
        let n = pool.stats.fail_open.get();
        if n > 0 {
            out.fail_open
                .push(counter(&[("pool", &pool.name)], n as f64));
        }
    }
    out
}

/// The backend families of `snap`'s pools.
#[derive(Default)]
struct Upstream {
    responses: Vec<Metric>,
    latency: Vec<Metric>,
    connect_errors: Vec<Metric>,
}

fn upstream(snap: &Snapshot) -> Upstream {
    let mut out = Upstream::default();
    for pool in &snap.pools {
        for b in &pool.backends {
            let labels = [("pool", &*pool.name), ("backend", &*b.label)];
            let st = &b.stats;
            let mut answered = 0;
            for e in st.responses.entries() {
                let status = e.0.to_string();
                answered += e.1.get();
                out.responses.push(counter(
                    &[labels[0], labels[1], ("status", &status)],
                    e.1.get() as f64,
                ));
            }
            if answered > 0 {
                out.latency.push(histogram(&labels, &st.latency));
            }
            let n = st.connect_errors.get();
            if n > 0 {
                out.connect_errors.push(counter(&labels, n as f64));
            }
        }
    }
    out
}

/// (open, accepted client connections, failed TLS handshakes) of the listeners `snap` has.
fn connections(shared: &Shared, snap: &Snapshot) -> (Vec<Metric>, Vec<Metric>, Vec<Metric>) {
    let (mut open, mut total, mut tls) = (Vec::new(), Vec::new(), Vec::new());
    for (name, st) in shared.listener_stats_all() {
        if snap.listener(&name).is_none() {
            continue;
        }
        let labels = [("listener", &*name)];
        open.push(gauge(&labels, st.connections_active.load(Relaxed) as f64));
        let n = st.connections_total.load(Relaxed);
        if n > 0 {
            total.push(counter(&labels, n as f64));
        }
        let n = st.tls_handshake_errors.load(Relaxed);
        if n > 0 {
            tls.push(counter(&labels, n as f64));
        }
    }
    (open, total, tls)
}

/// The `switchyard_tcp_*` families.
#[derive(Default)]
struct Tcp {
    connections: Vec<Metric>,
    active: Vec<Metric>,
    bytes: Vec<Metric>,
}

/// The tcp families of the tcp listeners `snap` has.
fn tcp(shared: &Shared, snap: &Snapshot) -> Tcp {
    let mut out = Tcp::default();
    for (name, st) in shared.listener_stats_all() {
        if snap.listener(&name).is_none_or(|l| l.tcp.is_none()) {
            continue;
        }
        let t = &st.tcp;
        for ((pool, backend), n) in t.connections.entries() {
            out.connections.push(counter(
                &[("listener", &name), ("pool", pool), ("backend", backend)],
                n.get() as f64,
            ));
        }
        out.active
            .push(gauge(&[("listener", &name)], t.active.load(Relaxed) as f64));
        for (direction, n) in [("in", t.bytes_in.get()), ("out", t.bytes_out.get())] {
            if n > 0 {
                out.bytes.push(counter(
                    &[("listener", &name), ("direction", direction)],
                    n as f64,
                ));
            }
        }
    }
    out
}

fn histogram(labels: &[(&str, &str)], h: &Hist) -> Metric {
    let (cumulative, sum) = h.snapshot();
    let mut m = labelled(labels);
    let mut p = prometheus::proto::Histogram::default();
    p.set_sample_count(*cumulative.last().expect("a +Inf bucket"));
    p.set_sample_sum(sum);
    p.set_bucket(
        BUCKETS
            .iter()
            .zip(&cumulative)
            .map(|(&le, &n)| {
                let mut b = prometheus::proto::Bucket::default();
                b.set_upper_bound(le);
                b.set_cumulative_count(n);
                b
            })
            .collect(),
    );
    m.set_histogram(p);
    m
}

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

fn labelled(labels: &[(&str, &str)]) -> Metric {
    let mut m = Metric::default();
    m.set_label(
        labels
            .iter()
            .map(|(n, v)| {
                let mut l = LabelPair::default();
                l.set_name(n.to_string());
                l.set_value(v.to_string());
                l
            })
            .collect(),
    );
    m
}

fn gauge(labels: &[(&str, &str)], v: f64) -> Metric {
    let mut m = labelled(labels);
    let mut g = Gauge::default();
    g.set_value(v);
    m.set_gauge(g);
    m
}

fn counter(labels: &[(&str, &str)], v: f64) -> Metric {
    let mut m = labelled(labels);
    let mut c = Counter::default();
    c.set_value(v);
    m.set_counter(c);
    m
}

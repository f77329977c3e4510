//! Prometheus metrics for the admin listener's `/metrics`.
//!
//! What the proxy's state already holds is read when Prometheus scrapes, not counted
//! again on the request path: backend health and in-flight counts, draining backends'
//! quiet time, reloads, TLS handshake errors and dropped access-log lines come from the
//! current snapshot and [`Shared`] by a collector of our own ([`State`]), so the series of
//! removed backends are gone from the next scrape. The process collector adds CPU, memory,
//! file descriptors and threads.
// TODO(#metrics): request and upstream counters and histograms, sticky decisions and
// fail-open counts, from the per-request record on its way out.

use crate::access_log::AccessLog;
use crate::snapshot::Shared;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, Registry, TextEncoder};
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

/// (name, help, labels) of each family [`State`] reports.
const FAMILIES: &[(&str, &str, &[&str])] = &[
    (
        "switchyard_backend_up",
        "1 while the backend may take requests (not taken out by health checks or passive ejection), else 0",
        &["pool", "backend"],
    ),
    (
        "switchyard_backend_active_requests",
        "Requests in flight on the backend (until their response bodies are done)",
        &["pool", "backend"],
    ),
    (
        "switchyard_backend_draining",
        "1 for a backend marked drain: true (no new users; sticky users stay)",
        &["pool", "backend"],
    ),
    (
        "switchyard_backend_last_request_age_seconds",
        "Seconds since a draining backend last started a request: safe to remove when long enough",
        &["pool", "backend"],
    ),
    (
        "switchyard_config_reloads_total",
        "Config reloads by result (success: taken; failure: the running config stayed)",
        &["result"],
    ),
    (
        "switchyard_tls_handshake_errors_total",
        "Failed TLS handshakes (plain HTTP on a TLS port included)",
        &["listener"],
    ),
    (
        "switchyard_access_log_dropped_total",
        "Access log lines dropped because the writer fell behind",
        &[],
    ),
];

impl State {
    fn new(shared: &Arc<Shared>, log: AccessLog) -> State {
        let descs = FAMILIES
            .iter()
            .map(|(name, help, labels)| {
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
        let tls = shared
            .listener_counters()
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(l, n)| counter(&[("listener", &l)], n as f64))
            .collect();
        let dropped = match self.log.dropped() {
            0 => vec![],
            n => vec![counter(&[], n as f64)],
        };
        let kinds = [
            MetricType::GAUGE,
            MetricType::GAUGE,
            MetricType::GAUGE,
            MetricType::GAUGE,
            MetricType::COUNTER,
            MetricType::COUNTER,
            MetricType::COUNTER,
        ];
        let series = [up, active, draining, age, reloads, tls, dropped];
        FAMILIES
            .iter()
            .zip(kinds)
            .zip(series)
            .map(|(((name, help, _), kind), metrics)| family(name, help, kind, metrics))
            .collect()
    }
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

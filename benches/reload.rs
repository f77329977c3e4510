//! What a reload costs: `cargo bench --bench reload`.
//!
//! A config of 1,000 routes (host, prefix and pattern routes, some with method, header and
//! cookie conditions) over 20 pools of 10 backends (200 in all, a few sticky, hashed or
//! checked), as `routes.yaml` text. Measured:
//! - `reload/parse`: `config::parse` (YAML, validation with every key's line and column);
//! - `reload/compile`: `Snapshot::compile` against the previous snapshot (the router's
//!   tries, the pools with their balancers, rings and sticky keys, backend state taken over);
//! - `reload/whole`: both, and the swap in a live `Shared` (health checkers reconciled on
//!   a runtime), which is what SIGHUP or a file change costs besides reading the file.
//!
//! The target is under 50 ms for the whole.
//!
//! `metrics/render/...`: `/metrics` for that config, and for one of 20 routes over the same
//! 200 backends, once every route has seen three statuses and every backend two, with
//! their latency histograms (target: under 5 ms for 200 backends).

use criterion::{Criterion, criterion_group, criterion_main};
use std::fmt::Write;
use std::hint::black_box;
use std::path::Path;
use std::time::Duration;
use switchyard::access_log::AccessLog;
use switchyard::config;
use switchyard::metrics::Metrics;
use switchyard::metrics::series::{Count, Hist};
use switchyard::metrics::stats::{RequestKey, Where};
use switchyard::snapshot::{Shared, Snapshot};

const POOLS: usize = 20;
const PER_POOL: usize = 10;
const ROUTES: usize = 1000;

fn yaml(routes: usize) -> String {
    let mut y =
        String::from("listeners: [{name: web, bind: \"127.0.0.1:0\"}]\naccess_log: off\npools:\n");
    for p in 0..POOLS {
        let _ = writeln!(y, "  pool{p}:");
        match p % 4 {
            0 => y.push_str("    sticky: {cookie: sy_pool"),
            1 => y.push_str("    balance: cookie_hash\n    hash_key: session"),
            2 => y.push_str("    balance: p2c_ewma"),
            _ => y.push_str("    balance: least_connections"),
        }
        if p % 4 == 0 {
            let _ = write!(y, "{p}, max_age: 1h}}");
        }
        y.push('\n');
        if p % 2 == 0 {
            y.push_str("    health_check: {path: /healthz, interval: 5s, timeout: 1s}\n");
        }
        y.push_str("    backends:\n");
        for b in 0..PER_POOL {
            let _ = writeln!(
                y,
                "      - {{addr: \"10.{}.{}.{}:8080\", weight: {}}}",
                p,
                b / 250,
                b % 250 + 1,
                1 + b % 3
            );
        }
    }
    y.push_str("routes:\n");
    for r in 0..routes {
        let pool = r % POOLS;
        let _ = writeln!(y, "  - name: route{r}");
        let host = if r % 3 == 0 {
            format!("host: \"svc{}.example.com\", ", r % 50)
        } else {
            String::new()
        };
        match r % 5 {
            0 => {
                let _ = writeln!(
                    y,
                    "    match: {{{host}path: \"/api/v{}/items{r}/{{id}}\", methods: [GET, POST]}}",
                    r % 3
                );
            }
            1 => {
                let _ = writeln!(
                    y,
                    "    match: {{{host}prefix: /api/svc{r}, headers: {{x-canary: \"1\"}}}}"
                );
            }
            2 => {
                let _ = writeln!(
                    y,
                    "    match: {{{host}prefix: /shop/{r}, cookies: {{beta: \"yes\"}}}}"
                );
            }
            _ => {
                let _ = writeln!(y, "    match: {{{host}prefix: /r{r}/x}}");
            }
        }
        let _ = writeln!(y, "    pool: pool{pool}");
    }
    y
}

fn bench(c: &mut Criterion) {
    let text = yaml(ROUTES);
    let path = Path::new("bench.yaml");
    let parse = || {
        config::parse(path, &text)
            .unwrap_or_else(|e| panic!("bench config invalid: {e:?}"))
            .config
    };
    let first = Snapshot::compile(parse(), None, &Default::default());
    assert_eq!(first.config.routes.len(), ROUTES);
    assert_eq!(
        first.pools.iter().map(|p| p.backends.len()).sum::<usize>(),
        POOLS * PER_POOL
    );
    let mut g = c.benchmark_group("reload");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("parse", |b| b.iter(|| black_box(parse())));
    let cfg = parse();
    g.bench_function("compile", |b| {
        b.iter(|| {
            black_box(Snapshot::compile(
                cfg.clone(),
                Some(&first),
                &Default::default(),
            ))
        })
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let shared = std::sync::Arc::new(Shared::new(
        Snapshot::compile(parse(), None, &Default::default()),
        Default::default(),
    ));
    g.bench_function("whole", |b| b.iter(|| shared.swap(parse())));
    shared.checks.stop();
    g.finish();

    let mut g = c.benchmark_group("metrics");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(5));
    for routes in [ROUTES, 20] {
        let text = yaml(routes);
        let cfg = config::parse(path, &text).expect("bench config").config;
        let (shared, metrics) = populated(cfg);
        g.bench_function(format!("render/{routes}_routes_200_backends"), |b| {
            b.iter(|| black_box(metrics.render()))
        });
        shared.checks.stop();
    }
    g.finish();
}

/// A proxy's state for `cfg` once every route has seen three statuses and every backend
/// two, with latencies; and its metrics.
fn populated(cfg: config::Config) -> (std::sync::Arc<Shared>, Metrics) {
    let shared = std::sync::Arc::new(Shared::new(
        Snapshot::compile(cfg, None, &Default::default()),
        Default::default(),
    ));
    let snap = shared.load();
    let listener: std::sync::Arc<str> = "web".into();
    for (r, st) in snap.route_stats.iter().enumerate() {
        let pool = &snap.pools[r % POOLS].name;
        for status in [200u16, 404, 503] {
            st.requests.with(
                |_| false,
                || RequestKey {
                    at: Where {
                        listener: listener.clone(),
                        pool: Some(pool.clone()),
                    },
                    method: 0,
                    status,
                },
                |c: &Count| c.inc(),
            );
        }
        st.durations.with(
            |_| false,
            || Where {
                listener: listener.clone(),
                pool: Some(pool.clone()),
            },
            |h: &Hist| h.observe(Duration::from_millis(3)),
        );
    }
    for p in &snap.pools {
        for b in &p.backends {
            for status in [200u16, 503] {
                b.stats.responses.with(|_| false, || status, Count::inc);
            }
            b.stats.latency.observe(Duration::from_millis(2));
        }
    }
    let metrics = Metrics::new(
        &shared,
        AccessLog::start(switchyard::config::AccessLogFormat::Off),
    );
    let text = metrics.render();
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("switchyard_backend_up{"))
            .count(),
        POOLS * PER_POOL
    );
    drop(snap);
    (shared, metrics)
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! The backend pick, per balance mode, at 4 and 64 backends: `cargo bench --bench pick`.
//!
//! Pools are built as the proxy builds them (`config::parse` -> `Snapshot::compile`), and
//! picked from as a request's decision picks:
//! - `pick/MODE/N`: `Pool::pick` alone (the ring pick for the hash modes, fed keys from a
//!   table of 1024 so the binary search does not always take the same path).
//! - `choose/MODE/N`: `proxy::choose::choose` on an `http::request::Parts`, which adds
//!   reading the hash key (a cookie, a header, the client's address) or, for `sticky`,
//!   reading the cookie, verifying the token (HMAC-SHA256) and looking its backend up.
//! - `verify/N`: `Sticky::verify` alone.
//!
//! The target is well under 1 us per pick, token verification included. The run is kept
//! short (about a minute in all); pass `-- --measurement-time 5` for steadier numbers.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::request::Parts;
use http::{HeaderValue, Request};
use std::cell::Cell;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use switchyard::access_log::AccessLog;
use switchyard::config::AccessLogFormat;
use switchyard::pool::{Pick, Tried};
use switchyard::proxy::choose::choose;
use switchyard::proxy::{ConnInfo, Forwarded};
use switchyard::snapshot::Snapshot;
use switchyard::sticky::{Verdict, unix_now};

const SIZES: [usize; 2] = [4, 64];

/// A snapshot with one pool of `n` backends balanced by `balance` (plus `extra` pool
/// keys), and one route to it.
fn snapshot(balance: &str, n: usize, extra: &str) -> Snapshot {
    let backends: Vec<String> = (0..n)
        .map(|i| format!("{{addr: \"10.0.{}.{}:8080\"}}", i / 250, i % 250 + 1))
        .collect();
    let yaml = format!(
        "listeners:\n  - name: http\n    bind: \"127.0.0.1:18080\"\n\
         pools:\n  p:\n    balance: {balance}\n{extra}    backends: [{}]\n\
         routes:\n  - name: all\n    match: {{prefix: /}}\n    pool: p\n",
        backends.join(", ")
    );
    let loaded = switchyard::config::parse(Path::new("bench.yaml"), &yaml)
        .unwrap_or_else(|e| panic!("bench config does not parse: {e:?}\n{yaml}"));
    Snapshot::compile(loaded.config, None, &Default::default())
}

/// A connection as a plain listener sees it, from `peer`.
fn conn(peer: IpAddr) -> ConnInfo {
    ConnInfo {
        listener: "http".into(),
        redirect_https: None,
        peer: SocketAddr::new(peer, 40000),
        local: SocketAddr::from(([127, 0, 0, 1], 8080)),
        tls: None,
        clock: Arc::default(),
        client_ip: HeaderValue::from_str(&peer.to_string()).expect("an IP is a header value"),
        forwarded: Forwarded::Append,
        log: AccessLog::start(AccessLogFormat::Off),
        stats: Arc::default(),
    }
}

/// A GET of `/api/products/1` with these fields, as the proxy sees its head.
fn request(fields: &[(&str, String)]) -> Parts {
    let mut b = Request::get("/api/products/1").header("host", "shop.example");
    for (name, value) in fields {
        b = b.header(*name, value.as_str());
    }
    b.body(()).expect("a valid request").into_parts().0
}

/// The `i`th request of a hash mode's bench, and its connection: each has its own key.
fn keyed(mode: &str, i: usize) -> (Parts, ConnInfo) {
    let client = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
    match mode {
        "ip_hash" => {
            let ip = Ipv4Addr::new(198, 51, (i >> 8) as u8, i as u8);
            (request(&[]), conn(IpAddr::V4(ip)))
        }
        "cookie_hash" => {
            let cookie = format!("theme=dark; session=s{i:08}; lang=en");
            (request(&[("cookie", cookie)]), conn(client))
        }
        _ => (request(&[("x-user", format!("user-{i}"))]), conn(client)),
    }
}

/// 1024 hash keys, as the ring sees them.
fn keys() -> Vec<u64> {
    (0..1024u32)
        .map(|i| switchyard::balance::hash(format!("session-{i}").as_bytes()))
        .collect()
}

fn pick(c: &mut Criterion) {
    let mut g = c.benchmark_group("pick");
    for n in SIZES {
        for mode in ["round_robin", "least_connections", "random", "p2c_ewma"] {
            let snap = snapshot(mode, n, "");
            let pool = &snap.pools[0];
            let tried = Tried::default();
            g.bench_with_input(BenchmarkId::new(mode, n), &n, |b, _| {
                b.iter(|| {
                    let Pick::Healthy(i) = pool.pick(black_box(&tried), None) else {
                        panic!("every backend is up")
                    };
                    i
                });
            });
        }
        // ip_hash, cookie_hash and header_hash share the ring pick; they differ only in
        // reading the key (see `choose`).
        let snap = snapshot("cookie_hash", n, "    hash_key: session\n");
        let pool = &snap.pools[0];
        let tried = Tried::default();
        let keys = keys();
        let at = Cell::new(0usize);
        g.bench_with_input(BenchmarkId::new("ring", n), &n, |b, _| {
            b.iter(|| {
                let k = keys[at.get() & 1023];
                at.set(at.get() + 1);
                let Pick::Healthy(i) = pool.pick(black_box(&tried), Some(k)) else {
                    panic!("every backend is up")
                };
                i
            });
        });
    }
    g.finish();
}

fn choose_bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("choose");
    let plain = conn(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)));
    for n in SIZES {
        // The hash modes, key read included: 1024 requests with different keys.
        for (mode, extra) in [
            ("ip_hash", ""),
            ("cookie_hash", "    hash_key: session\n"),
            ("header_hash", "    hash_key: x-user\n"),
        ] {
            let snap = snapshot(mode, n, extra);
            let to = &snap.config.routes[0].to;
            let own = &snap.cookies;
            let reqs: Vec<(Parts, ConnInfo)> = (0..1024).map(|i| keyed(mode, i)).collect();
            let at = Cell::new(0usize);
            g.bench_with_input(BenchmarkId::new(mode, n), &n, |b, _| {
                b.iter(|| {
                    let (req, conn) = &reqs[at.get() & 1023];
                    at.set(at.get() + 1);
                    choose(&snap.pools, to, own, conn, black_box(req)).expect("a backend")
                });
            });
        }
        // Sticky: a valid token for each backend in turn; verify it and go there.
        let snap = snapshot("round_robin", n, "    sticky: {cookie: sy}\n");
        let pool = &snap.pools[0];
        let st = pool.sticky.as_ref().expect("a sticky pool");
        let to = &snap.config.routes[0].to;
        let own = &snap.cookies;
        let now = unix_now();
        let reqs: Vec<Parts> = (0..n)
            .map(|i| {
                let token = String::from_utf8(st.token(i, now).to_vec()).expect("base64");
                request(&[("cookie", format!("sy={token}"))])
            })
            .collect();
        for (i, req) in reqs.iter().enumerate() {
            let c = choose(&snap.pools, to, own, &plain, req).expect("a backend");
            assert_eq!(c.backend, i, "the token's backend");
            assert_eq!(c.sticky.map(|s| s.result.as_str()), Some("hit"));
        }
        let at = Cell::new(0usize);
        g.bench_with_input(BenchmarkId::new("sticky", n), &n, |b, _| {
            b.iter(|| {
                let req = &reqs[at.get() % n];
                at.set(at.get() + 1);
                choose(&snap.pools, to, own, &plain, black_box(req)).expect("a backend")
            });
        });
    }
    g.finish();
}

fn verify(c: &mut Criterion) {
    let mut g = c.benchmark_group("verify");
    for n in SIZES {
        let snap = snapshot("round_robin", n, "    sticky: {cookie: sy}\n");
        let st = snap.pools[0].sticky.as_ref().expect("a sticky pool");
        let now = unix_now();
        let tokens: Vec<_> = (0..n).map(|i| st.token(i, now)).collect();
        let at = Cell::new(0usize);
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                let t = &tokens[at.get() % n];
                at.set(at.get() + 1);
                let v = st.verify(black_box(t), now);
                debug_assert!(matches!(v, Verdict::Valid { .. }));
                v
            });
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
        .nresamples(10_000);
    targets = pick, choose_bench, verify
}
criterion_main!(benches);

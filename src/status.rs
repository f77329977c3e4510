//! `/status` on the admin listener: the running proxy as JSON (SPEC "Admin page"), from the
//! current snapshot and the same counters `/metrics` renders.
//!
//! A backend's `health` is one word: `down` (active checks took it out), `ejected`
//! (passive ejection), `draining` (healthy, `drain: true`) or `up`, with `reason` the last
//! check flip's. `requests` counts its responses and `errors` its 5xx and failed connects.
//! Latency is given as the histogram's cumulative bucket counts (`le` in seconds, +Inf
//! last), so a page polling `/status` can take the difference of two polls and read a
//! live p99 from it, which a lifetime percentile could not give.

use crate::metrics::series::{BUCKETS, Hist};
use crate::pool::Backend;
use crate::snapshot::Shared;
use serde_json::{Value, json};
use std::time::SystemTime;

/// The `/status` document.
pub fn status(shared: &Shared) -> Value {
    let snap = shared.load();
    let listeners: Vec<Value> = shared
        .listener_stats_all()
        .into_iter()
        .filter_map(|(name, st)| {
            let l = snap.listener(&name)?;
            let tcp = l.tcp.as_ref().map(|t| {
                let pool = |i: usize| snap.config.pools[i].name.to_string();
                let backends: Vec<Value> = st
                    .tcp
                    .connections
                    .entries()
                    .iter()
                    .map(|((p, b), n)| json!({"pool": &**p, "backend": &**b, "connections": n.get()}))
                    .collect();
                json!({
                    "pool": pool(t.pool),
                    "sni_routes": t.sni_routes.iter().map(|(s, p)| json!({"sni": s, "pool": pool(*p)})).collect::<Vec<_>>(),
                    "proxy_protocol": t.proxy_protocol.map(|v| v.as_str()),
                    "active": st.tcp.active.load(std::sync::atomic::Ordering::Relaxed),
                    "bytes_in": st.tcp.bytes_in.get(),
                    "bytes_out": st.tcp.bytes_out.get(),
                    "backends": backends,
                })
            });
            Some(json!({
                "name": &*name,
                "bind": l.bind.to_string(),
                "addr": shared.listener_addr(&name).map(|a| a.to_string()),
                "tls": l.tls.is_some(),
                "mode": if l.tcp.is_some() { "tcp" } else { "http" },
                "accept_proxy": l.accept_proxy,
                "tcp": tcp,
                "connections_active": st.connections_active.load(std::sync::atomic::Ordering::Relaxed),
                "connections_total": st.connections_total.load(std::sync::atomic::Ordering::Relaxed),
                "tls_handshake_errors": st.tls_handshake_errors.load(std::sync::atomic::Ordering::Relaxed),
            }))
        })
        .collect();
    let routes: Vec<Value> = snap
        .config
        .routes
        .iter()
        .zip(snap.route_stats.iter())
        .map(|(r, st)| {
            let (mut requests, mut errors) = (0, 0);
            for e in st.requests.entries() {
                let n = e.1.get();
                requests += n;
                if e.0.status >= 500 {
                    errors += n;
                }
            }
            let latency = merged(st.durations.entries().iter().map(|e| &e.1));
            json!({
                "name": &*r.name,
                "to": snap.config.destination(r),
                "requests": requests,
                "errors": errors,
                "latency": latency,
            })
        })
        .collect();
    let pools: Vec<Value> = snap
        .pools
        .iter()
        .map(|p| {
            let backends: Vec<Value> = p.backends.iter().map(backend).collect();
            let sticky: serde_json::Map<String, Value> = crate::metrics::stats::STICKY
                .iter()
                .enumerate()
                .map(|(i, r)| (r.as_str().to_string(), json!(p.stats.sticky[i].get())))
                .collect();
            json!({
                "name": &*p.name,
                "balance": p.balance.as_str(),
                "sticky": p.sticky.as_ref().map(|_| sticky),
                "fail_open": p.stats.fail_open.get(),
                "backends": backends,
            })
        })
        .collect();
    let last = shared.reloads.last().map(|l| {
        json!({
            "result": if l.error.is_none() { "success" } else { "failure" },
            "at": time(l.at),
            "error": l.error,
        })
    });
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "config": {
            "loaded_at": time(shared.loaded_at()),
            "last_reload": last,
            "reloads": {
                "success": shared.reloads.ok.load(std::sync::atomic::Ordering::Relaxed),
                "failure": shared.reloads.failed.load(std::sync::atomic::Ordering::Relaxed),
            },
        },
        "listeners": listeners,
        "routes": routes,
        "pools": pools,
    })
}

fn backend(b: &std::sync::Arc<Backend>) -> Value {
    let st = &b.state;
    let health = if st.active.is_down() {
        "down"
    } else if !st.passive.available() {
        "ejected"
    } else if b.drain {
        "draining"
    } else {
        "up"
    };
    let (mut requests, mut errors) = (0, b.stats.connect_errors.get());
    for e in b.stats.responses.entries() {
        let n = e.1.get();
        requests += n;
        if e.0 >= 500 {
            errors += n;
        }
    }
    json!({
        "addr": &*b.label,
        "dns_name": b.name.as_deref(),
        "health": health,
        "reason": st.active.reason().as_deref(),
        "weight": b.weight,
        "draining": b.drain,
        "in_flight": st.in_flight(),
        "requests": requests,
        "errors": errors,
        "last_request_age_s": st.quiet_for().map(|d| d.as_secs_f64()),
        "latency": buckets(&b.stats.latency),
    })
}

/// `{"le": [...], "counts": [...]}` of `hists` added up (a route's, over its listeners
/// and pools).
fn merged<'h>(hists: impl Iterator<Item = &'h Hist>) -> Value {
    let mut counts = vec![0u64; BUCKETS.len() + 1];
    for h in hists {
        for (c, n) in counts.iter_mut().zip(h.snapshot().0) {
            *c += n;
        }
    }
    json!({"le": le(), "counts": counts})
}

fn buckets(h: &Hist) -> Value {
    json!({"le": le(), "counts": h.snapshot().0})
}

fn le() -> Vec<Value> {
    BUCKETS
        .iter()
        .map(|&b| json!(b))
        .chain(std::iter::once(json!("+Inf")))
        .collect()
}

fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

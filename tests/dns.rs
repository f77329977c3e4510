//! DNS-fed backends through real DNS: a UDP DNS server on loopback (support::dns) answers
//! the proxy's own resolver, and echo backends listen on several loopback IPs at one port.
mod support;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::dns::{Answer, DnsServer};
use support::*;

const WAIT: Duration = Duration::from_secs(10);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Whether this host can bind ::1 (IPv6 may be off in a container).
async fn ipv6() -> bool {
    tokio::net::TcpListener::bind("[::1]:0").await.is_ok()
}

/// Echo backends named `names[i]` on `ips[i]`, all on one port.
async fn on_one_port(backends: &[(&str, &str)]) -> (u16, Vec<Backend>) {
    for _ in 0..50 {
        let (first, rest) = backends.split_first().expect("at least one backend");
        let Ok(b) = Backend::echo_at(SocketAddr::new(ip(first.1), 0), first.0).await else {
            continue;
        };
        let port = b.addr.port();
        let mut all = vec![b];
        for (name, addr) in rest {
            match Backend::echo_at(SocketAddr::new(ip(addr), port), name).await {
                Ok(b) => all.push(b),
                Err(_) => break,
            }
        }
        if all.len() == backends.len() {
            return (port, all);
        }
    }
    panic!("no port free on every address");
}

/// One pool `svc` of the named backends `addrs`, refreshed every 100 ms.
fn config(addrs: &[String]) -> String {
    let backends: String = addrs
        .iter()
        .map(|a| format!("      - addr: \"{a}\"\n"))
        .collect();
    format!(
        r#"
listeners:
  - name: web
    bind: "{{listen}}"
admin:
  bind: "{{admin}}"
resolver: "{{dns}}"
access_log: off
pools:
  svc:
    dns_refresh: 100ms
    backends:
{backends}routes:
  - name: all
    match: {{ prefix: / }}
    pool: svc
"#
    )
}

/// The backends that answered `n` requests (the `x-backend` names), and their statuses.
async fn answered(p: &Proxy, n: usize) -> (BTreeSet<String>, BTreeSet<u16>) {
    let (mut names, mut statuses) = (BTreeSet::new(), BTreeSet::new());
    for _ in 0..n {
        let got = get(&p.url("/")).await;
        statuses.insert(got.status);
        if got.status == 200 {
            names.insert(got.header("x-backend").to_string());
        }
    }
    (names, statuses)
}

/// The addresses of pool `svc` in the current snapshot.
fn backends(p: &Proxy) -> Vec<String> {
    p.shared.load().pools[0]
        .backends
        .iter()
        .map(|b| b.label.to_string())
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

async fn metrics(p: &Proxy) -> String {
    get(&format!("http://{}/metrics", p.admin.unwrap()))
        .await
        .text()
}

/// The value of the series `series` (name and labels exactly as rendered), or 0.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_name_is_one_backend_per_address_and_follows_its_answer() {
    let dns = DnsServer::start().await;
    // The AAAA part needs IPv6 on loopback; without it a third IPv4 address stands in.
    let third = if ipv6().await { "::1" } else { "127.0.0.4" };
    let (port, _b) = on_one_port(&[("a", "127.0.0.2"), ("b", "127.0.0.3"), ("c", third)]).await;
    dns.addrs("svc.test", &[ip("127.0.0.2")]);
    let p = Proxy::start(&config(&[format!("svc.test:{port}")]), &[("dns", dns.addr)]).await;
    // Looked up before the first request was served.
    assert_eq!(answered(&p, 4).await, (set(&["a"]), [200].into()));

    // A and AAAA: three addresses, three backends, each with fresh state.
    dns.addrs("svc.test", &[ip("127.0.0.2"), ip("127.0.0.3"), ip(third)]);
    eventually(WAIT, || async {
        answered(&p, 12).await.0 == set(&["a", "b", "c"])
    })
    .await;
    let text = metrics(&p).await;
    for b in [
        format!("127.0.0.2:{port}"),
        format!("127.0.0.3:{port}"),
        SocketAddr::new(ip(third), port).to_string(),
    ] {
        let series = format!("switchyard_backend_up{{pool=\"svc\",backend=\"{b}\"}}");
        assert_eq!(value(&text, &series), 1.0, "{series} in\n{text}");
    }
    assert_eq!(
        value(&text, "switchyard_dns_addresses{name=\"svc.test\"}"),
        3.0
    );
    let status = get(&format!("http://{}/status", p.admin.unwrap()))
        .await
        .json();
    let backends = status["pools"][0]["backends"].as_array().unwrap().clone();
    assert_eq!(backends.len(), 3);
    for b in &backends {
        assert_eq!(b["dns_name"], "svc.test", "{b}");
    }

    // Gone from the answer: no more requests.
    dns.addrs("svc.test", &[ip("127.0.0.3")]);
    eventually(WAIT, || async { answered(&p, 6).await.0 == set(&["b"]) }).await;
    let text = metrics(&p).await;
    assert!(
        !text.contains(&format!("backend=\"127.0.0.2:{port}\"")),
        "a vanished backend leaves the scrape:\n{text}"
    );
    assert!(
        value(
            &text,
            "switchyard_dns_lookups_total{name=\"svc.test\",result=\"success\"}"
        ) >= 3.0
    );
}

#[tokio::test]
async fn a_failed_lookup_keeps_the_last_good_addresses() {
    let dns = DnsServer::start().await;
    let (port, _b) = on_one_port(&[("a", "127.0.0.2"), ("b", "127.0.0.3")]).await;
    dns.addrs("svc.test", &[ip("127.0.0.2")]);
    let p = Proxy::start(&config(&[format!("svc.test:{port}")]), &[("dns", dns.addr)]).await;
    let failures = "switchyard_dns_lookups_total{name=\"svc.test\",result=\"failure\"}";
    // SERVFAIL, then NXDOMAIN, then an answer with no address, then SERVFAIL to AAAA
    // only (A still answered): each is a failed lookup.
    for (i, answer) in [
        Some(Answer::Fail),
        None,
        Some(Answer::Addrs(vec![])),
        Some(Answer::FailV6(vec![ip("127.0.0.3")])),
    ]
    .into_iter()
    .enumerate()
    {
        match answer {
            Some(a) => dns.set("svc.test", a),
            None => dns.remove("svc.test"),
        }
        let before = value(&metrics(&p).await, failures);
        eventually(WAIT, || async {
            value(&metrics(&p).await, failures) >= before + 2.0
        })
        .await;
        assert_eq!(
            answered(&p, 6).await,
            (set(&["a"]), [200].into()),
            "case {i}: still served by the last good address"
        );
    }
    assert_eq!(
        value(
            &metrics(&p).await,
            "switchyard_dns_addresses{name=\"svc.test\"}"
        ),
        1.0
    );
    // Back: the new answer is taken.
    dns.addrs("svc.test", &[ip("127.0.0.3")]);
    eventually(WAIT, || async { answered(&p, 4).await.0 == set(&["b"]) }).await;
}

#[tokio::test]
async fn requests_on_a_vanished_address_finish() {
    let dns = DnsServer::start().await;
    let release = Arc::new(tokio::sync::Notify::new());
    let r = release.clone();
    let (port, _b) = on_one_port(&[("b", "127.0.0.3")]).await;
    let held = tokio::net::TcpListener::bind(("127.0.0.2", port))
        .await
        .expect("bind 127.0.0.2 on the same port");
    let held = Backend::serve_listener(
        held,
        Arc::new(move |_| {
            let r = r.clone();
            Box::pin(async move {
                r.notified().await;
                hyper::Response::builder()
                    .header("x-backend", "held")
                    .body(full("finished"))
                    .unwrap()
            })
        }),
        None,
    );
    dns.addrs("svc.test", &[ip("127.0.0.2")]);
    let p = Proxy::start(&config(&[format!("svc.test:{port}")]), &[("dns", dns.addr)]).await;
    let url = p.url("/slow");
    let in_flight = tokio::spawn(async move { get(&url).await });
    eventually(WAIT, || async { held.hits() == 1 }).await;

    dns.addrs("svc.test", &[ip("127.0.0.3")]);
    // Watched in the snapshot: a request sent before the change lands would wait too.
    eventually(WAIT, || async {
        backends(&p) == [format!("127.0.0.3:{port}")]
    })
    .await;
    assert_eq!(answered(&p, 2).await.0, set(&["b"]));
    release.notify_one();
    let got = in_flight.await.unwrap();
    assert_eq!(got.status, 200);
    assert_eq!(got.text(), "finished");
    assert_eq!(
        held.hits(),
        1,
        "no new request reached the vanished address"
    );
}

#[tokio::test]
async fn a_name_that_does_not_resolve_at_start_joins_when_it_does() {
    let dns = DnsServer::start().await;
    let (port, _b) = on_one_port(&[("a", "127.0.0.2")]).await;
    let p = Proxy::start(
        &config(&[format!("late.test:{port}")]),
        &[("dns", dns.addr)],
    )
    .await;
    // No backend yet: 503, and the proxy serves on.
    assert_eq!(answered(&p, 2).await, (set(&[]), [503].into()));
    dns.addrs("late.test", &[ip("127.0.0.2")]);
    eventually(WAIT, || async { answered(&p, 4).await.0.contains("a") }).await;
}

#[tokio::test]
async fn a_reload_that_adds_a_name_serves_it_from_the_first_request() {
    let dns = DnsServer::start().await;
    let (port, _b) = on_one_port(&[("a", "127.0.0.2"), ("b", "127.0.0.3")]).await;
    dns.addrs("new.test", &[ip("127.0.0.3")]);
    let p = Proxy::start(
        &config(&[format!("127.0.0.2:{port}")]),
        &[("dns", dns.addr)],
    )
    .await;
    assert_eq!(answered(&p, 2).await.0, set(&["a"]));
    p.reload(&config(&[format!("new.test:{port}")]), &[("dns", dns.addr)])
        .await
        .unwrap();
    assert_eq!(answered(&p, 4).await, (set(&["b"]), [200].into()));
    // And a reload that drops the name stops its lookups and its series; `tick.test`,
    // still in use, is the clock: three of its refreshes, and no new.test query among them.
    dns.addrs("tick.test", &[ip("127.0.0.2")]);
    p.reload(
        &config(&[format!("tick.test:{port}")]),
        &[("dns", dns.addr)],
    )
    .await
    .unwrap();
    assert_eq!(p.shared.dns.tasks(), 1);
    assert!(!metrics(&p).await.contains("new.test"));
    let (asked, ticks) = (dns.queries("new.test"), dns.queries("tick.test"));
    eventually(WAIT, || async { dns.queries("tick.test") >= ticks + 6 }).await;
    assert_eq!(
        dns.queries("new.test"),
        asked,
        "the dropped name's task stopped"
    );
}

#[tokio::test]
async fn a_failed_reload_leaves_no_lookup_behind() {
    let dns = DnsServer::start().await;
    let (port, _b) = on_one_port(&[("a", "127.0.0.2"), ("b", "127.0.0.3")]).await;
    dns.addrs("new.test", &[ip("127.0.0.2")]);
    let p = Proxy::start(
        &config(&[format!("127.0.0.3:{port}")]),
        &[("dns", dns.addr)],
    )
    .await;
    // A listener on a port in use: the reload fails after its names were looked up.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let bad = config(&[format!("new.test:{port}")]).replace(
        "admin:",
        &format!(
            "  - name: taken\n    bind: \"{}\"\nadmin:",
            taken.local_addr().unwrap()
        ),
    );
    p.reload(&bad, &[("dns", dns.addr)]).await.unwrap_err();
    assert!(!metrics(&p).await.contains("new.test"), "no series of it");
    assert_eq!(p.shared.dns.tasks(), 0);
    // The name moved meanwhile: a good reload asks again, it does not reuse the old answer.
    dns.addrs("new.test", &[ip("127.0.0.3")]);
    p.reload(&config(&[format!("new.test:{port}")]), &[("dns", dns.addr)])
        .await
        .unwrap();
    assert_eq!(answered(&p, 4).await, (set(&["b"]), [200].into()));
}

#[tokio::test]
async fn a_reload_to_another_dns_server_asks_it_at_once() {
    let (one, two) = (DnsServer::start().await, DnsServer::start().await);
    let (port, _b) = on_one_port(&[("a", "127.0.0.2"), ("b", "127.0.0.3")]).await;
    one.addrs("svc.test", &[ip("127.0.0.2")]);
    two.addrs("svc.test", &[ip("127.0.0.3")]);
    let yaml = config(&[format!("svc.test:{port}")]).replace("100ms", "1h");
    let p = Proxy::start(&yaml, &[("dns", one.addr)]).await;
    assert_eq!(answered(&p, 2).await.0, set(&["a"]));
    p.reload(&yaml, &[("dns", two.addr)]).await.unwrap();
    assert_eq!(answered(&p, 4).await, (set(&["b"]), [200].into()));
}

#[tokio::test]
async fn one_lookup_task_per_name_whatever_the_pools_and_workers() {
    let dns = DnsServer::start().await;
    let (port, _b) = on_one_port(&[("a", "127.0.0.2")]).await;
    dns.addrs("svc.test", &[ip("127.0.0.2")]);
    let yaml = config(&[format!("svc.test:{port}")]).replace(
        "routes:",
        &format!(
            "  again:\n    dns_refresh: 100ms\n    backends:\n      - addr: \"svc.test:{port}\"\nroutes:\n  - name: again\n    match: {{ prefix: /again }}\n    pool: again\n"
        ),
    );
    let p = Proxy::start_workers(&yaml, &[("dns", dns.addr)], 2).await;
    eventually(WAIT, || async { p.shared.dns.tasks() > 0 }).await;
    assert_eq!(p.shared.dns.tasks(), 1);
    // Ten more queries (A and AAAA each time) are five refreshes, four intervals of at
    // least 90 ms apart for one task; two tasks (per pool or per worker) take half that.
    let start = dns.queries("svc.test");
    let t = Instant::now();
    eventually(WAIT, || async { dns.queries("svc.test") >= start + 10 }).await;
    assert!(
        t.elapsed() >= Duration::from_millis(350),
        "10 queries in {:?}: more than one task asks",
        t.elapsed()
    );
    assert_eq!(get(&p.url("/again")).await.header("x-backend"), "a");
}

#[tokio::test]
async fn a_new_address_gets_its_own_health_check() {
    let dns = DnsServer::start().await;
    let (port, _a) = on_one_port(&[("a", "127.0.0.2")]).await;
    let sick = tokio::net::TcpListener::bind(("127.0.0.3", port))
        .await
        .expect("bind 127.0.0.3 on the same port");
    let health = Arc::new(std::sync::atomic::AtomicU16::new(503));
    let _sick = Backend::serve_listener(sick, checked_handler("sick", 200, health), None);
    dns.addrs("svc.test", &[ip("127.0.0.2")]);
    let yaml = config(&[format!("svc.test:{port}")]).replace(
        "    dns_refresh: 100ms\n",
        "    dns_refresh: 100ms\n    health_check: { interval: 100ms, timeout: 100ms, unhealthy_threshold: 1 }\n",
    );
    let p = Proxy::start(&yaml, &[("dns", dns.addr)]).await;
    dns.addrs("svc.test", &[ip("127.0.0.2"), ip("127.0.0.3")]);
    let sick_up = format!("switchyard_backend_up{{pool=\"svc\",backend=\"127.0.0.3:{port}\"}}");
    eventually(WAIT, || async {
        let text = metrics(&p).await;
        text.contains(&sick_up) && value(&text, &sick_up) == 0.0
    })
    .await;
    assert_eq!(answered(&p, 6).await, (set(&["a"]), [200].into()));
}

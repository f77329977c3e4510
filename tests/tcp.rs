//! The L4 tier: `mode: tcp` listeners relaying to TCP backends (half-close, balancing,
//! retries, health, idle timeout, limits, drain), PROXY protocol out and in, and metrics.
mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::tcp::{Mode, TcpBackend, closed_within, connect_from, greeting, read_line};
use support::*;
use switchyard::proxy_protocol::{self, Header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A proxy with one tcp listener `l4` in front of pool `game` (its backends `{b0}`...),
/// with `pool` added to the pool's keys and `listener` to the listener's.
async fn l4(backends: &[SocketAddr], pool: &str, listener: &str) -> Proxy {
    let list: Vec<String> = (0..backends.len())
        .map(|i| format!("{{addr: \"{{b{i}}}\"}}"))
        .collect();
    let yaml = format!(
        r#"
admin: {{bind: "{{admin}}"}}
access_log: off
listeners:
  - {{name: l4, bind: "{{listen}}", mode: tcp, pool: game{listener}}}
pools:
  game:
    backends: [{}]
    {pool}
"#,
        list.join(", ")
    );
    let names: Vec<String> = (0..backends.len()).map(|i| format!("b{i}")).collect();
    let addrs: Vec<(&str, SocketAddr)> = names
        .iter()
        .zip(backends)
        .map(|(n, a)| (n.as_str(), *a))
        .collect();
    Proxy::start(&yaml, &addrs).await
}

#[tokio::test]
async fn five_megabytes_echo_through_unchanged_and_the_close_comes_back() {
    let b = TcpBackend::echo("a").await;
    let p = l4(&[b.addr], "", "").await;
    let (s, name) = greeting(p.addr).await;
    assert_eq!(name, "a");
    let data: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let (mut r, mut w) = s.into_split();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        // The client's half-close: the backend sees EOF and closes its side in turn.
        w.shutdown().await.unwrap();
        w
    });
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), r.read_to_end(&mut back))
        .await
        .expect("the echo and its EOF within 20 s")
        .unwrap();
    let _w = writer.await.unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data, "the bytes came back changed");
    let st = p.shared.listener_stats(&"l4".into());
    assert_eq!(st.tcp.bytes_in.get(), data.len() as u64);
    assert_eq!(st.tcp.bytes_out.get(), data.len() as u64 + 2);
}

#[tokio::test]
async fn a_half_close_goes_through_and_the_reply_still_comes_back() {
    let b = TcpBackend::start("counter", Mode::CountThenReply).await;
    let p = l4(&[b.addr], "", "").await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(&[7u8; 100_000]).await.unwrap();
    s.shutdown().await.unwrap();
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut reply))
        .await
        .expect("the reply after the half-close")
        .unwrap();
    assert_eq!(reply, "counter got 100000 bytes");
}

/// The backend each of `n` new connections to `addr` reached, keeping them open.
async fn reached(addr: SocketAddr, n: usize) -> (Vec<String>, Vec<TcpStream>) {
    let (mut names, mut conns) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let (s, name) = greeting(addr).await;
        names.push(name);
        conns.push(s);
    }
    (names, conns)
}

async fn three() -> [TcpBackend; 3] {
    [
        TcpBackend::echo("a").await,
        TcpBackend::echo("b").await,
        TcpBackend::echo("c").await,
    ]
}

#[tokio::test]
async fn round_robin_takes_turns_by_connection() {
    let bs = three().await;
    let p = l4(&bs.each_ref().map(|b| b.addr), "balance: round_robin", "").await;
    let (names, _open) = reached(p.addr, 6).await;
    assert_eq!(&names[..3], &names[3..], "{names:?}");
    let mut first: Vec<&String> = names[..3].iter().collect();
    first.sort();
    assert_eq!(first, ["a", "b", "c"]);
}

#[tokio::test]
async fn least_connections_counts_open_connections() {
    let bs = three().await;
    let p = l4(
        &bs.each_ref().map(|b| b.addr),
        "balance: least_connections",
        "",
    )
    .await;
    let (names, mut open) = reached(p.addr, 3).await;
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(sorted, ["a", "b", "c"], "one open connection on each");
    // Close the one on `b`: the next connection must go there, every time.
    let i = names.iter().position(|n| n == "b").unwrap();
    drop(open.remove(i));
    eventually(Duration::from_secs(5), || async {
        bs[1].open.load(Ordering::SeqCst) == 0
    })
    .await;
    eventually(Duration::from_secs(5), || async {
        p.shared.load().pools[0].backends[1].state.in_flight() == 0
    })
    .await;
    let (next, _more) = reached(p.addr, 1).await;
    assert_eq!(next, ["b"]);
}

#[tokio::test]
async fn random_reaches_every_backend() {
    let bs = three().await;
    let p = l4(&bs.each_ref().map(|b| b.addr), "balance: random", "").await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..60 {
        let (_s, name) = greeting(p.addr).await;
        seen.insert(name);
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
}

/// A PROXY v1 header saying the connection comes from `src`.
fn v1_from(src: &str, dst: SocketAddr) -> Vec<u8> {
    let mut out = Vec::new();
    proxy_protocol::encode(
        proxy_protocol::Version::V1,
        src.parse().unwrap(),
        dst,
        &mut out,
    );
    out
}

#[tokio::test]
async fn ip_hash_keeps_a_client_address_on_one_backend() {
    let bs = three().await;
    let p = l4(
        &bs.each_ref().map(|b| b.addr),
        "balance: ip_hash",
        ", accept_proxy: true",
    )
    .await;
    // Clients told apart by the PROXY header a front tier sends.
    let mut by_client = std::collections::BTreeMap::new();
    for round in 0..3 {
        for c in 0..20 {
            let src = format!("198.51.100.{c}:{}", 1000 + round);
            let mut s = TcpStream::connect(p.addr).await.unwrap();
            s.write_all(&v1_from(&src, p.addr)).await.unwrap();
            let name = read_line(&mut s).await;
            let first = by_client.entry(c).or_insert_with(|| name.clone());
            assert_eq!(*first, name, "client {c} moved");
            // Bounded load moves a key off a busy backend: let this one close first.
            drop(s);
            eventually(Duration::from_secs(5), || async {
                p.shared.load().pools[0]
                    .backends
                    .iter()
                    .all(|b| b.state.in_flight() == 0)
            })
            .await;
        }
    }
    let spread: std::collections::BTreeSet<_> = by_client.values().collect();
    assert!(spread.len() >= 2, "20 clients all on {spread:?}");
}

#[tokio::test]
async fn a_refused_connect_tries_the_next_backend_and_all_down_closes() {
    let dead = refusing_addr().await;
    let b = TcpBackend::echo("alive").await;
    let p = l4(&[dead, b.addr], "retries: 1", "").await;
    for _ in 0..4 {
        let (_s, name) = greeting(p.addr).await;
        assert_eq!(name, "alive");
    }
    let errors = p.shared.load().pools[0].backends[0]
        .stats
        .connect_errors
        .get();
    assert!(errors >= 1, "the dead backend was tried: {errors}");

    let dead2 = refusing_addr().await;
    let none = l4(&[dead, dead2], "", "").await;
    let mut s = TcpStream::connect(none.addr).await.unwrap();
    assert!(
        closed_within(&mut s, Duration::from_secs(5)).await,
        "closed when no backend answers"
    );
    // And the proxy still serves.
    let (_s, name) = greeting(p.addr).await;
    assert_eq!(name, "alive");
}

#[tokio::test]
async fn tcp_health_checks_take_a_dead_backend_out_and_bring_it_back() {
    let a = TcpBackend::echo("a").await;
    let b = TcpBackend::echo("b").await;
    let p = l4(
        &[a.addr, b.addr],
        "health_check: {kind: tcp, interval: 200ms, timeout: 200ms, unhealthy_threshold: 1, healthy_threshold: 1}",
        "",
    )
    .await;
    let a_addr = a.addr;
    a.stop();
    drop(a);
    eventually(Duration::from_secs(5), || async {
        !p.shared.load().pools[0].backends[0].up()
    })
    .await;
    let before = p.shared.load().pools[0].backends[0]
        .stats
        .connect_errors
        .get();
    for _ in 0..6 {
        let (_s, name) = greeting(p.addr).await;
        assert_eq!(name, "b");
    }
    let after = p.shared.load().pools[0].backends[0]
        .stats
        .connect_errors
        .get();
    assert_eq!(before, after, "a backend marked down is not tried");
    // The same port serves again: the check brings it back.
    let _a = loop {
        match tokio::net::TcpListener::bind(a_addr).await {
            Ok(l) => break l,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    eventually(Duration::from_secs(5), || async {
        p.shared.load().pools[0].backends[0].up()
    })
    .await;
}

#[tokio::test]
async fn http_health_checks_work_on_tcp_pools() {
    let (web, health) = Backend::checked("web", 200).await;
    let p = l4(
        &[web.addr],
        "health_check: {path: /healthz, interval: 200ms, timeout: 200ms, unhealthy_threshold: 1, healthy_threshold: 1}",
        "",
    )
    .await;
    health.store(503, Ordering::SeqCst);
    eventually(Duration::from_secs(5), || async {
        !p.shared.load().pools[0].backends[0].up()
    })
    .await;
    health.store(200, Ordering::SeqCst);
    eventually(Duration::from_secs(5), || async {
        p.shared.load().pools[0].backends[0].up()
    })
    .await;
}

#[tokio::test]
async fn an_idle_connection_is_closed_and_a_busy_one_is_not() {
    let b = TcpBackend::echo("a").await;
    let p = l4(&[b.addr], "timeouts: {idle: 400ms}", "").await;
    let (mut busy, _) = greeting(p.addr).await;
    let (mut quiet, _) = greeting(p.addr).await;
    let start = Instant::now();
    // Traffic every 100 ms for a second keeps `busy` open past the idle time.
    for i in 0..10u8 {
        busy.write_all(&[i]).await.unwrap();
        let mut one = [0u8; 1];
        busy.read_exact(&mut one).await.unwrap();
        assert_eq!(one[0], i);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(start.elapsed() >= Duration::from_millis(900));
    assert!(
        closed_within(&mut quiet, Duration::from_secs(3)).await,
        "the quiet connection was closed"
    );
    busy.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    busy.read_exact(&mut one).await.unwrap();
    assert!(closed_within(&mut busy, Duration::from_secs(3)).await);
}

#[tokio::test]
async fn max_connections_holds_further_connections_until_one_closes_across_workers() {
    let b = TcpBackend::echo("a").await;
    let yaml = r#"
access_log: off
limits: {max_connections: 2}
listeners: [{name: l4, bind: "{listen}", mode: tcp, pool: game}]
pools: {game: {backends: [{addr: "{b}"}]}}
"#;
    // Two workers: the limit is the listener's, across both.
    let p = Proxy::start_workers(yaml, &[("b", b.addr)], 2).await;
    let (one, _) = greeting(p.addr).await;
    let (_two, _) = greeting(p.addr).await;
    let mut third = TcpStream::connect(p.addr).await.unwrap();
    let mut buf = [0u8; 2];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), third.read(&mut buf))
            .await
            .is_err(),
        "a third connection is not relayed while two are open"
    );
    assert_eq!(b.conns.load(Ordering::SeqCst), 2);
    drop(one);
    assert_eq!(read_line(&mut third).await, "a");
}

#[tokio::test]
async fn shutdown_lets_open_connections_finish_then_cuts_them() {
    let b = TcpBackend::echo("a").await;
    let yaml = r#"
access_log: off
shutdown_timeout: 1s
listeners: [{name: l4, bind: "{listen}", mode: tcp, pool: game}]
pools: {game: {backends: [{addr: "{b}"}]}}
"#;
    let mut p = Proxy::start(yaml, &[("b", b.addr)]).await;
    let (mut s, _) = greeting(p.addr).await;
    let started = Instant::now();
    let done = p.shutdown();
    // New connections are refused once the listener closes.
    eventually(Duration::from_secs(5), || async {
        TcpStream::connect(p.addr).await.is_err()
    })
    .await;
    // The open one still relays during the grace time...
    s.write_all(b"still here").await.unwrap();
    let mut back = [0u8; 10];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"still here");
    // ...and is cut when it is up.
    assert!(closed_within(&mut s, Duration::from_secs(5)).await);
    assert!(started.elapsed() >= Duration::from_millis(900));
    tokio::time::timeout(Duration::from_secs(5), done)
        .await
        .expect("run returns after the grace time")
        .unwrap();
}

#[tokio::test]
async fn proxy_protocol_v1_and_v2_name_the_client_to_the_backend() {
    for (version, v) in [
        ("v1", proxy_protocol::Version::V1),
        ("v2", proxy_protocol::Version::V2),
    ] {
        let b = TcpBackend::start("b", Mode::CountThenReply).await;
        let p = l4(&[b.addr], "", &format!(", proxy_protocol: {version}")).await;
        let mut s = connect_from([127, 0, 0, 9], p.addr).await;
        let client = s.local_addr().unwrap();
        s.write_all(b"payload").await.unwrap();
        s.shutdown().await.unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).await.unwrap();
        let first = b.first(0);
        let (header, len) = proxy_protocol::parse(&first)
            .unwrap_or_else(|e| panic!("{version}: {e}: {first:?}"))
            .expect("a whole header");
        assert_eq!(
            header,
            Header::Proxied {
                src: client,
                dst: p.addr
            },
            "{version}"
        );
        assert_eq!(&first[len..], b"payload", "{version}");
        let mut want = Vec::new();
        proxy_protocol::encode(v, client, p.addr, &mut want);
        assert_eq!(&first[..len], &want[..], "{version}: exact bytes");
        if v == proxy_protocol::Version::V1 {
            let line = String::from_utf8_lossy(&first[..len]).into_owned();
            assert_eq!(
                line,
                format!(
                    "PROXY TCP4 127.0.0.9 127.0.0.1 {} {}\r\n",
                    client.port(),
                    p.addr.port()
                )
            );
        }
    }
}

#[tokio::test]
async fn accept_proxy_on_a_tcp_listener_passes_the_original_client_on() {
    let b = TcpBackend::start("b", Mode::CountThenReply).await;
    let p = l4(&[b.addr], "", ", accept_proxy: true, proxy_protocol: v1").await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    let mut hdr = Vec::new();
    proxy_protocol::encode(
        proxy_protocol::Version::V2,
        "203.0.113.7:4000".parse().unwrap(),
        "192.0.2.1:443".parse().unwrap(),
        &mut hdr,
    );
    hdr.extend_from_slice(b"data");
    s.write_all(&hdr).await.unwrap();
    s.shutdown().await.unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).await.unwrap();
    assert_eq!(reply, "b got 47 bytes");
    assert_eq!(
        String::from_utf8_lossy(&b.first(0)),
        "PROXY TCP4 203.0.113.7 192.0.2.1 4000 443\r\ndata"
    );
}

#[tokio::test]
async fn accept_proxy_on_http_takes_the_client_from_v1_and_v2_and_refuses_the_rest() {
    let echo = Backend::echo("web").await;
    let yaml = r#"
access_log: off
listeners: [{name: web, bind: "{listen}", accept_proxy: true}]
pools: {p: {backends: [{addr: "{b}"}]}}
routes: [{name: all, match: {prefix: /}, pool: p}]
"#;
    let p = Proxy::start(yaml, &[("b", echo.addr)]).await;
    let get = b"GET /x HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n";
    for v in [proxy_protocol::Version::V1, proxy_protocol::Version::V2] {
        let mut req = Vec::new();
        proxy_protocol::encode(v, "203.0.113.9:5555".parse().unwrap(), p.addr, &mut req);
        req.extend_from_slice(get);
        let resp = raw(p.addr, &req, Duration::from_secs(5)).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{v:?}: {resp}");
        let body = &resp[resp.find("\r\n\r\n").unwrap() + 4..];
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["headers"]["x-forwarded-for"], "203.0.113.9", "{v:?}");
    }
    // No header, or garbage: closed without an answer; the listener goes on serving.
    for bad in [
        &get[..],
        b"PROXY TCP4 1.2.3.4 nonsense\r\n",
        b"\x00\x01garbage\r\n\r\n",
    ] {
        let resp = raw(p.addr, bad, Duration::from_secs(5)).await;
        assert_eq!(resp, "", "{:?}", String::from_utf8_lossy(bad));
    }
    let mut req = v1_from("198.51.100.1:1", p.addr);
    req.extend_from_slice(get);
    assert!(
        raw(p.addr, &req, Duration::from_secs(5))
            .await
            .starts_with("HTTP/1.1 200")
    );
}

#[tokio::test]
async fn accept_proxy_cuts_a_client_that_sends_no_header_at_the_head_timeout() {
    let b = TcpBackend::echo("a").await;
    let yaml = r#"
access_log: off
limits: {client_header_timeout: 300ms}
listeners: [{name: l4, bind: "{listen}", mode: tcp, pool: game, accept_proxy: true}]
pools: {game: {backends: [{addr: "{b}"}]}}
"#;
    let p = Proxy::start(yaml, &[("b", b.addr)]).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    let start = Instant::now();
    assert!(closed_within(&mut s, Duration::from_secs(3)).await);
    assert!(start.elapsed() >= Duration::from_millis(250));
    assert_eq!(b.conns.load(Ordering::SeqCst), 0, "never reached a backend");
}

#[tokio::test]
async fn tcp_metrics_and_status() {
    let b = TcpBackend::echo("a").await;
    let p = l4(&[b.addr], "", "").await;
    let (mut s, _) = greeting(p.addr).await;
    s.write_all(b"hello").await.unwrap();
    let mut back = [0u8; 5];
    s.read_exact(&mut back).await.unwrap();
    let admin = p.admin.unwrap();
    // The byte counts are added after each write: wait for the echo's.
    let st = p.shared.listener_stats(&"l4".into());
    eventually(Duration::from_secs(5), || async {
        st.tcp.bytes_out.get() == 7
    })
    .await;
    let text = get(&format!("http://{admin}/metrics")).await.text();
    let backend = b.addr.to_string();
    for want in [
        format!(
            "switchyard_tcp_connections_total{{listener=\"l4\",pool=\"game\",backend=\"{backend}\"}} 1"
        ),
        "switchyard_tcp_connections_active{listener=\"l4\"} 1".to_string(),
        "switchyard_tcp_bytes_total{listener=\"l4\",direction=\"in\"} 5".to_string(),
        "switchyard_tcp_bytes_total{listener=\"l4\",direction=\"out\"} 7".to_string(),
        format!("switchyard_backend_active_requests{{pool=\"game\",backend=\"{backend}\"}} 1"),
    ] {
        assert!(text.contains(&want), "missing {want} in\n{text}");
    }
    let status = get(&format!("http://{admin}/status")).await.json();
    let l = &status["listeners"][0];
    assert_eq!(l["mode"], "tcp");
    assert_eq!(l["tcp"]["pool"], "game");
    assert_eq!(l["tcp"]["active"], 1);
    assert_eq!(l["tcp"]["backends"][0]["connections"], 1);
    drop(s);
    eventually(Duration::from_secs(5), || async {
        get(&format!("http://{admin}/metrics"))
            .await
            .text()
            .contains("switchyard_tcp_connections_active{listener=\"l4\"} 0")
    })
    .await;
}

/// `yaml`'s errors, one string per error.
fn errors(yaml: &str) -> Vec<String> {
    match switchyard::config::parse(std::path::Path::new("t.yaml"), yaml) {
        Ok(_) => Vec::new(),
        Err(e) => e.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn what_makes_no_sense_on_a_tcp_listener_is_a_config_error() {
    let cases = [
        (
            "listeners: [{name: l, bind: \"127.0.0.1:0\", mode: tcp}]\npools: {g: {backends: [{addr: \"127.0.0.1:1\"}]}}",
            "t.yaml:1:44: a tcp listener needs a `pool:`",
        ),
        (
            "listeners: [{name: l, bind: \"127.0.0.1:0\", mode: tcp, pool: nope}]\npools: {g: {backends: [{addr: \"127.0.0.1:1\"}]}}",
            "listener `l` names pool `nope`, which is not defined (pools: g)",
        ),
        (
            "listeners: [{name: l, bind: \"127.0.0.1:0\", mode: tcp, pool: g}]\npools: {g: {balance: p2c_ewma, backends: [{addr: \"127.0.0.1:1\"}]}}",
            "t.yaml:2:22: pool `g` balances connections (a tcp listener sends to it): use round_robin, least_connections, random or ip_hash",
        ),
        (
            "listeners: [{name: l, bind: \"127.0.0.1:0\", mode: tcp, pool: g}]\npools: {g: {sticky: {cookie: s}, backends: [{addr: \"127.0.0.1:1\"}]}}",
            "pool `g` cannot have `sticky`",
        ),
        (
            "listeners: [{name: l, bind: \"127.0.0.1:0\", mode: tcp, pool: g}]\npools: {g: {protocol: h2, backends: [{addr: \"127.0.0.1:1\"}]}}",
            "pool `g` cannot have `protocol`",
        ),
        (
            "listeners: [{name: l, bind: \"127.0.0.1:0\", mode: tcp, pool: g, trusted_proxies: [10.0.0.0/8]}]\npools: {g: {backends: [{addr: \"127.0.0.1:1\"}]}}",
            "a tcp listener cannot have `trusted_proxies`",
        ),
        (
            "listeners: [{name: l, bind: \"127.0.0.1:0\", pool: g}]\npools: {g: {backends: [{addr: \"127.0.0.1:1\"}]}}",
            "`pool` is for `mode: tcp` listeners",
        ),
        (
            "listeners: [{name: l, bind: \"127.0.0.1:0\", mode: tcp, pool: g, sni_routes: [{sni: \"a.*.com\", pool: g}]}]\npools: {g: {backends: [{addr: \"127.0.0.1:1\"}]}}",
            "`a.*.com` is not a server name",
        ),
        (
            "listeners: [{name: l, bind: \"127.0.0.1:0\", mode: tcp, pool: g, proxy_protocol: v3}]\npools: {g: {backends: [{addr: \"127.0.0.1:1\"}]}}",
            "unknown variant `v3`",
        ),
        (
            "listeners: [{name: l, bind: \"127.0.0.1:0\"}]\npools: {g: {protocol: h2, proxy_protocol: v1, backends: [{addr: \"127.0.0.1:1\"}]}}\nroutes: [{name: r, match: {prefix: /}, pool: g}]",
            "`proxy_protocol` cannot go with `protocol: h2`",
        ),
        (
            "listeners: [{name: l, bind: \"127.0.0.1:0\", mode: tcp, pool: g, sni_routes: [{sni: 10.0.0.1, pool: g}]}]\npools: {g: {backends: [{addr: \"127.0.0.1:1\"}]}}",
            "clients send no SNI for an IP address",
        ),
        (
            "listeners: [{name: l, bind: \"127.0.0.1:0\", mode: tcp, pool: g}]\npools: {g: {timeouts: {idle: 500us}, backends: [{addr: \"127.0.0.1:1\"}]}}",
            "timeouts.idle must be at least 1ms",
        ),
        (
            "listeners: [{name: l, bind: \"127.0.0.1:0\", mode: tcp, pool: g, proxy_protocol: v1}]\npools: {g: {proxy_protocol: v2, backends: [{addr: \"127.0.0.1:1\"}]}}",
            "listener `l` sends PROXY protocol v1, but its pool `g` says v2",
        ),
    ];
    for (yaml, want) in cases {
        let got = errors(yaml);
        assert!(
            got.iter().any(|e| e.contains(want)),
            "want {want:?} for\n{yaml}\ngot {got:?}"
        );
    }
    // A pool only HTTP routes use may have all of it.
    assert!(
        errors(
            "listeners: [{name: l, bind: \"127.0.0.1:0\"}]\npools: {g: {balance: p2c_ewma, sticky: {cookie: s}, backends: [{addr: \"127.0.0.1:1\"}]}}\nroutes: [{name: r, match: {prefix: /}, pool: g}]"
        )
        .is_empty()
    );
}

/// A TLS backend (HTTP/1.1 over TLS) with its own certificate for `names`, answering
/// with `x-backend: NAME`; and that certificate.
async fn tls_backend(
    ca: &support::tls::Ca,
    dir: &std::path::Path,
    name: &str,
    names: &[&str],
) -> (Backend, rustls::pki_types::CertificateDer<'static>) {
    use rustls::pki_types::pem::PemObject;
    let leaf = ca.leaf(dir, name, names);
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&leaf.key).unwrap();
    let cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der.clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg));
    let name: std::sync::Arc<str> = name.into();
    let handler: Handler = std::sync::Arc::new(move |_req| {
        let name = name.clone();
        Box::pin(async move {
            http::Response::builder()
                .header("x-backend", &*name)
                .body(full(name.to_string()))
                .unwrap()
        })
    });
    (Backend::serve_over(handler, Some(acceptor)).await, leaf.der)
}

#[tokio::test]
async fn sni_routes_pass_tls_through_to_three_pools_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = support::tls::Ca::new();
    let (api, api_cert) = tls_backend(&ca, dir.path(), "api", &["api.example.com"]).await;
    let (shop, shop_cert) = tls_backend(&ca, dir.path(), "shop", &["*.shop.example.com"]).await;
    let (other, other_cert) = tls_backend(
        &ca,
        dir.path(),
        "default",
        &["other.example.com", "127.0.0.1"],
    )
    .await;
    let yaml = r#"
access_log: off
listeners:
  - name: pass
    bind: "{listen}"
    mode: tcp
    sni_routes:
      - { sni: API.example.com, pool: api }
      - { sni: "*.shop.example.com", pool: shop }
    pool: fallback
pools:
  api: {backends: [{addr: "{api}"}]}
  shop: {backends: [{addr: "{shop}"}]}
  fallback: {backends: [{addr: "{other}"}]}
"#;
    let p = Proxy::start(
        yaml,
        &[
            ("api", api.addr),
            ("shop", shop.addr),
            ("other", other.addr),
        ],
    )
    .await;
    let cases = [
        ("api.example.com", "api", &api_cert),
        ("eu.shop.example.com", "shop", &shop_cert),
        ("other.example.com", "default", &other_cert),
        // No SNI at all (an IP address): the listener's own pool.
        ("127.0.0.1", "default", &other_cert),
    ];
    for (name, want, cert) in cases {
        // The handshake is verified end to end: the proxy holds no certificate.
        let tls = support::tls::connect(p.addr, name, ca.client(&[b"http/1.1"])).await;
        assert_eq!(&support::tls::peer_cert(&tls), cert, "{name}");
        let mut send = h1_over(tls).await;
        let resp = send
            .send_request(
                http::Request::get("/")
                    .header("host", name)
                    .body(full(""))
                    .unwrap(),
            )
            .await
            .unwrap();
        let got = collect(resp).await;
        assert_eq!(got.header("x-backend"), want, "{name}");
    }
    // Not TLS, or a broken hello: closed, nothing reaches a backend.
    let before = api.conns.load(Ordering::SeqCst)
        + shop.conns.load(Ordering::SeqCst)
        + other.conns.load(Ordering::SeqCst);
    for bad in [
        &b"GET / HTTP/1.1\r\nhost: a\r\n\r\n"[..],
        b"\x16\x03\x01\x00\x10garbagegarbage!!",
    ] {
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        s.write_all(bad).await.unwrap();
        assert!(closed_within(&mut s, Duration::from_secs(3)).await);
    }
    let after = api.conns.load(Ordering::SeqCst)
        + shop.conns.load(Ordering::SeqCst)
        + other.conns.load(Ordering::SeqCst);
    assert_eq!(before, after);
}

#[tokio::test]
async fn a_client_hello_split_across_packets_still_routes_and_silence_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let ca = support::tls::Ca::new();
    let (api, api_cert) = tls_backend(&ca, dir.path(), "api", &["api.example.com"]).await;
    let (other, _) = tls_backend(&ca, dir.path(), "default", &["other.example.com"]).await;
    let yaml = r#"
access_log: off
limits: {client_header_timeout: 400ms}
listeners:
  - {name: pass, bind: "{listen}", mode: tcp, pool: fallback, sni_routes: [{sni: api.example.com, pool: api}]}
pools:
  api: {backends: [{addr: "{api}"}]}
  fallback: {backends: [{addr: "{other}"}]}
"#;
    let p = Proxy::start(yaml, &[("api", api.addr), ("other", other.addr)]).await;
    // A client whose socket trickles the hello out in small pieces.
    let (near, far) = tokio::io::duplex(64);
    let relay = tokio::spawn(async move {
        let mut tcp = TcpStream::connect(p.addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let (mut fr, mut fw) = tokio::io::split(far);
        let (mut tr, mut tw) = tcp.split();
        let up = async {
            let mut buf = [0u8; 100];
            loop {
                let n = fr.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                tw.write_all(&buf[..n]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let down = async {
            let _ = tokio::io::copy(&mut tr, &mut fw).await;
        };
        tokio::select! { () = up => {}, () = down => {} }
        p
    });
    let tls = tokio_rustls::TlsConnector::from(ca.client(&[b"http/1.1"]))
        .connect("api.example.com".try_into().unwrap(), near)
        .await
        .expect("handshake through the trickle");
    assert_eq!(&tls.get_ref().1.peer_certificates().unwrap()[0], &api_cert);
    drop(tls);
    let p = relay.await.unwrap();
    // Connected, but never a hello: cut at client_header_timeout.
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    let start = Instant::now();
    assert!(closed_within(&mut s, Duration::from_secs(3)).await);
    assert!(start.elapsed() >= Duration::from_millis(350));
}

#[tokio::test]
async fn l4_in_front_of_l7_in_one_process_tells_the_backend_the_real_client() {
    let users = Backend::echo("user-1").await;
    // First the L7 tier, to learn its port; then a reload puts the L4 tier in front of it.
    let l7 = r#"
access_log: off
admin: {bind: "{admin}"}
listeners:
  - {name: inner, bind: "{listen}", accept_proxy: true}
pools:
  user: {backends: [{addr: "{users}"}]}
routes: [{name: users, match: {prefix: /api/users}, pool: user}]
"#;
    let p = Proxy::start(l7, &[("users", users.addr)]).await;
    let inner = p.addr;
    let edge_yaml = format!(
        r#"
access_log: off
listeners:
  - {{name: inner, bind: "127.0.0.1:0", accept_proxy: true}}
  - {{name: edge, bind: "127.0.0.1:0", mode: tcp, pool: l7, proxy_protocol: v2}}
pools:
  user: {{backends: [{{addr: "{users}"}}]}}
  l7: {{balance: least_connections, health_check: {{kind: tcp, interval: 1s}}, backends: [{{addr: "{inner}"}}]}}
routes: [{{name: users, match: {{prefix: /api/users}}, pool: user}}]
"#,
        users = users.addr
    );
    p.reload(&edge_yaml, &[]).await.unwrap();
    let edge = p.shared.listener_addr("edge").expect("the edge is bound");
    let mut s = connect_from([127, 0, 0, 2], edge).await;
    s.write_all(b"GET /api/users/1 HTTP/1.1\r\nhost: shop\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut resp = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut resp))
        .await
        .unwrap()
        .unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        resp.to_ascii_lowercase().contains("x-backend: user-1"),
        "{resp}"
    );
    let body = &resp[resp.find("\r\n\r\n").unwrap() + 4..];
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["headers"]["x-forwarded-for"], "127.0.0.2", "{body}");
    // The L7 tier answers nobody who skips the L4 one.
    let direct = raw(
        inner,
        b"GET /api/users/1 HTTP/1.1\r\nhost: shop\r\nconnection: close\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(direct, "");
}

/// An HTTP/1.1 backend that requires a PROXY header on every connection and answers each
/// request with the client that header named (`LOCAL` for the proxy's own checks); counts
/// connections.
async fn proxy_protocol_backend() -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let c = conns.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            let c = c.clone();
            tokio::spawn(async move {
                let who = match proxy_protocol::read(&mut tcp).await {
                    Ok(Header::Proxied { src, .. }) => src.to_string(),
                    Ok(Header::Local) => "local".to_string(),
                    Err(_) => return,
                };
                c.lock().unwrap().push(who.clone());
                let svc = hyper::service::service_fn(move |_req| {
                    let who = who.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder().body(full(who)).unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, conns)
}

#[tokio::test]
async fn an_http_pool_with_proxy_protocol_names_each_client_on_a_connection_of_its_own() {
    let (b, conns) = proxy_protocol_backend().await;
    let yaml = r#"
access_log: off
listeners: [{name: web, bind: "{listen}"}]
pools:
  p:
    proxy_protocol: v2
    health_check: {path: /healthz, interval: 200ms, timeout: 200ms, unhealthy_threshold: 1, healthy_threshold: 1}
    backends: [{addr: "{b}"}]
routes: [{name: all, match: {prefix: /}, pool: p}]
"#;
    let p = Proxy::start(yaml, &[("b", b)]).await;
    // The checks pass with a LOCAL header: one that failed would take the backend out
    // (unhealthy_threshold 1), and this backend answers nothing without a header.
    let locals = || {
        conns
            .lock()
            .unwrap()
            .iter()
            .filter(|w| *w == "local")
            .count()
    };
    eventually(Duration::from_secs(5), || async { locals() >= 3 }).await;
    assert!(p.shared.load().pools[0].backends[0].up());
    for from in [[127, 0, 0, 3], [127, 0, 0, 4]] {
        let mut s = connect_from(from, p.addr).await;
        let me = s.local_addr().unwrap();
        // Every HTTP/1.1 request shape: bodiless, Content-Length and chunked bodies.
        let shapes: [&[u8]; 3] = [
            b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n",
            b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello",
            b"POST /a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ];
        for req in shapes {
            s.write_all(req).await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            let body = me.to_string();
            while !got.ends_with(body.as_bytes()) {
                let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                    .await
                    .expect("a response")
                    .unwrap();
                assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
                got.extend_from_slice(&buf[..n]);
            }
            assert!(got.starts_with(b"HTTP/1.1 200"));
        }
        // Each request had a connection of its own, named for this client.
        let mine = conns
            .lock()
            .unwrap()
            .iter()
            .filter(|w| **w == me.to_string())
            .count();
        assert_eq!(mine, 3, "connections that named {me}");
    }
    // HTTP/2 from the client (h2c): each stream's request, too.
    let tcp = connect_from([127, 0, 0, 5], p.addr).await;
    let me = tcp.local_addr().unwrap().to_string();
    let mut h2 = h2_over(tcp).await;
    for _ in 0..2 {
        let got = collect(
            h2.send_request(http::Request::get("http://x/a").body(full("")).unwrap())
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(got.text(), me);
    }
    let mine = conns.lock().unwrap().iter().filter(|w| **w == me).count();
    assert_eq!(mine, 2, "connections that named the HTTP/2 client {me}");
    assert!(p.shared.load().pools[0].backends[0].up());
}

#[tokio::test]
async fn accept_proxy_works_before_tls_and_before_h2c() {
    let dir = tempfile::tempdir().unwrap();
    let ca = support::tls::Ca::new();
    let leaf = ca.leaf(dir.path(), "site", &["site.test"]);
    let echo = Backend::echo("web").await;
    let yaml = format!(
        r#"
access_log: off
listeners:
  - {{name: tls, bind: "{{listen}}", accept_proxy: true, tls: {{certificates: [{{cert: "{}", key: "{}"}}]}}}}
  - {{name: plain, bind: "{{listen2}}", accept_proxy: true}}
pools: {{p: {{backends: [{{addr: "{{b}}"}}]}}}}
routes: [{{name: all, match: {{prefix: /}}, pool: p}}]
"#,
        leaf.cert.display(),
        leaf.key.display()
    );
    let p = Proxy::start(&yaml, &[("b", echo.addr)]).await;
    let forwarded_for = |got: Got| got.json()["headers"]["x-forwarded-for"].clone();
    // TLS after the header, HTTP/1.1 and HTTP/2 by ALPN.
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let mut tcp = TcpStream::connect(p.addrs["tls"]).await.unwrap();
        tcp.write_all(&v1_from("203.0.113.20:1000", p.addrs["tls"]))
            .await
            .unwrap();
        let tls = tokio_rustls::TlsConnector::from(ca.client(&[alpn]))
            .connect("site.test".try_into().unwrap(), tcp)
            .await
            .expect("TLS after the PROXY header");
        let req = || {
            http::Request::get("https://site.test/x")
                .header("host", "site.test")
                .body(full(""))
                .unwrap()
        };
        let got = if alpn == b"h2" {
            collect(h2_over(tls).await.send_request(req()).await.unwrap()).await
        } else {
            collect(h1_over(tls).await.send_request(req()).await.unwrap()).await
        };
        assert_eq!(got.status, 200);
        assert_eq!(forwarded_for(got), "203.0.113.20");
    }
    // h2c with prior knowledge after the header.
    let mut tcp = TcpStream::connect(p.addrs["plain"]).await.unwrap();
    let mut hdr = Vec::new();
    proxy_protocol::encode(
        proxy_protocol::Version::V2,
        "[2001:db8::7]:1000".parse().unwrap(),
        "[2001:db8::1]:80".parse().unwrap(),
        &mut hdr,
    );
    tcp.write_all(&hdr).await.unwrap();
    let mut h2 = h2_over(tcp).await;
    let got = collect(
        h2.send_request(
            http::Request::get("http://site.test/x")
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(forwarded_for(got), "2001:db8::7");
}

#[tokio::test]
async fn a_reload_that_removes_a_tcp_listener_drains_it_and_one_that_keeps_it_keeps_its_connections()
 {
    let a = TcpBackend::echo("a").await;
    let b = TcpBackend::echo("b").await;
    let yaml = r#"
access_log: off
shutdown_timeout: 1s
listeners:
  - {name: keep, bind: "{listen}", mode: tcp, pool: game}
  - {name: gone, bind: "{listen2}", mode: tcp, pool: game}
pools: {game: {backends: [{addr: "{a}"}]}}
"#;
    let p = Proxy::start(yaml, &[("a", a.addr)]).await;
    let (mut kept, _) = greeting(p.addrs["keep"]).await;
    let (mut going, _) = greeting(p.addrs["gone"]).await;
    // The pool now points elsewhere and `gone` is removed.
    let next = r#"
access_log: off
shutdown_timeout: 1s
listeners:
  - {name: keep, bind: "{listen}", mode: tcp, pool: game}
pools: {game: {backends: [{addr: "{b}"}]}}
"#;
    let reloaded = Instant::now();
    p.reload(next, &[("b", b.addr)]).await.unwrap();
    // New connections see the new pool.
    let (_new, name) = greeting(p.addrs["keep"]).await;
    assert_eq!(name, "b");
    // Both old connections still relay to their backend...
    for s in [&mut kept, &mut going] {
        s.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"ping");
    }
    // ...and the removed listener's is cut after shutdown_timeout; the kept one is not.
    assert!(closed_within(&mut going, Duration::from_secs(5)).await);
    assert!(reloaded.elapsed() >= Duration::from_millis(900));
    kept.write_all(b"pong").await.unwrap();
    let mut back = [0u8; 4];
    kept.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"pong");
}

#[tokio::test]
async fn a_backend_that_closes_first_passes_its_half_close_on_and_still_hears_the_client() {
    let b = TcpBackend::start("b", Mode::SendThenRead(3)).await;
    let p = l4(&[b.addr], "", "").await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
        .await
        .expect("the backend's EOF comes through")
        .unwrap();
    assert_eq!(got, [0, 1, 2]);
    // The client's direction is still open.
    s.write_all(b"late words").await.unwrap();
    s.shutdown().await.unwrap();
    eventually(Duration::from_secs(5), || async {
        b.first(0) == b"late words"
    })
    .await;
}

#[tokio::test]
async fn a_slow_reader_of_a_long_download_is_not_idle() {
    // 4 MB to a client reading 64 KiB every 40 ms: about 2.5 s, against an idle of 300 ms,
    // with nothing the other way.
    let total = 4 * 1024 * 1024;
    let b = TcpBackend::start("b", Mode::SendThenRead(total)).await;
    let p = l4(&[b.addr], "timeouts: {idle: 300ms}", "").await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0;
    let start = Instant::now();
    loop {
        let got = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("bytes keep coming")
            .unwrap();
        if got == 0 {
            break;
        }
        n += got;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert_eq!(n, total, "cut after {:?}", start.elapsed());
    assert!(
        start.elapsed() > Duration::from_millis(600),
        "not slow enough to test"
    );
}

#[tokio::test]
async fn the_proxy_header_and_what_follows_share_one_head_deadline() {
    let echo = Backend::echo("web").await;
    let yaml = r#"
access_log: off
limits: {client_header_timeout: 1s}
listeners: [{name: web, bind: "{listen}", accept_proxy: true}]
pools: {p: {backends: [{addr: "{b}"}]}}
routes: [{name: all, match: {prefix: /}, pool: p}]
"#;
    let p = Proxy::start(yaml, &[("b", echo.addr)]).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    let start = Instant::now();
    // The header late but in time, then silence: the cut comes 1 s after the accept, not
    // 1 s after the header.
    tokio::time::sleep(Duration::from_millis(800)).await;
    s.write_all(&v1_from("198.51.100.5:5", p.addr))
        .await
        .unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(3)).await);
    let took = start.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "cut after {took:?}: the deadlines were stacked"
    );
}

//! Errors and limits: 502, 503, 504, 413, 431, 400, timeouts, connection caps.
mod support;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config(backends: &str, extra: &str) -> String {
    format!(
        r#"
listeners: [{{name: web, bind: "{{listen}}"}}]
access_log: off
{extra}
pools:
  p:
    timeouts: {{connect: 500ms, response: 300ms}}
    backends: [{backends}]
routes:
  - {{name: small, match: {{prefix: /small}}, pool: p, limits: {{max_request_body_bytes: 10}}}}
  - {{name: all, pool: p}}
"#
    )
}

/// A proxy with `extra` top-level config in front of backend `b` alone.
async fn one_backend(b: &Backend, extra: &str) -> Proxy {
    Proxy::start(&config(r#"{addr: "{b}"}"#, extra), &[("b", b.addr)]).await
}

/// A backend that counts the request body bytes it receives.
async fn body_counter() -> (Backend, Arc<AtomicUsize>) {
    let got = Arc::new(AtomicUsize::new(0));
    let g = got.clone();
    let b = Backend::serve(move |req| {
        let g = g.clone();
        Box::pin(async move {
            let mut body = req.into_body();
            while let Some(Ok(f)) = body.frame().await {
                if let Ok(d) = f.into_data() {
                    g.fetch_add(d.len(), Ordering::SeqCst);
                }
            }
            Response::new(full("ok"))
        })
    })
    .await;
    (b, got)
}

#[tokio::test]
async fn unreachable_backend_is_502() {
    let dead = refusing_addr().await;
    let p = Proxy::start(&config(r#"{addr: "{dead}"}"#, ""), &[("dead", dead)]).await;
    let got = get(&p.url("/")).await;
    assert_eq!(got.status, 502);
    assert_eq!(got.text(), "502 Bad Gateway\n");
    assert_eq!(got.header("content-type"), "text/plain; charset=utf-8");
}

#[tokio::test]
async fn slow_backend_is_504_without_retry() {
    let (slow, release) = Backend::held("late").await;
    let other = Backend::echo("other").await;
    let p = Proxy::start(
        &config(r#"{addr: "{slow}", weight: 1000}, {addr: "{other}"}"#, ""),
        &[("slow", slow.addr), ("other", other.addr)],
    )
    .await;
    let start = Instant::now();
    let mut got = get(&p.url("/")).await;
    // Smooth round robin may start on either; find the slow one.
    if got.status == 200 {
        got = get(&p.url("/")).await;
    }
    assert_eq!(got.status, 504);
    assert_eq!(got.text(), "504 Gateway Timeout\n");
    assert!(start.elapsed() >= Duration::from_millis(300));
    // A response timeout is final: the request was delivered, so no other backend saw it.
    assert!(other.hits() <= 1);
    release.notify_waiters();
}

#[tokio::test]
async fn a_retry_hides_a_dead_backend() {
    let dead = refusing_addr().await;
    let (a, b) = (Backend::echo("a").await, Backend::echo("b").await);
    let p = Proxy::start(
        &config(r#"{addr: "{dead}"}, {addr: "{a}"}, {addr: "{b}"}"#, ""),
        &[("dead", dead), ("a", a.addr), ("b", b.addr)],
    )
    .await;
    for i in 0..50 {
        let got = if i % 2 == 0 {
            get(&p.url("/x")).await
        } else {
            send(Request::post(p.url("/x")).body(full("payload")).unwrap()).await
        };
        assert_eq!(got.status, 200, "request {i}: {}", got.text());
    }
    assert_eq!(a.hits() + b.hits(), 50);
}

#[tokio::test]
async fn a_get_is_retried_when_the_connection_dies_before_the_response() {
    // This backend accepts and drops every connection without answering.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rude = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let acc = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            acc.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
        }
    });
    let good = Backend::echo("good").await;
    let p = Proxy::start(
        &config(r#"{addr: "{rude}"}, {addr: "{good}"}"#, ""),
        &[("rude", rude), ("good", good.addr)],
    )
    .await;
    for _ in 0..4 {
        assert_eq!(get(&p.url("/")).await.status, 200);
    }
    assert!(accepted.load(Ordering::SeqCst) >= 1);
    // A POST that reached the rude backend is not replayed: 502.
    let mut saw_502 = false;
    for _ in 0..4 {
        let got = send(Request::post(p.url("/")).body(full("x")).unwrap()).await;
        saw_502 |= got.status == 502;
    }
    assert!(saw_502);
}

#[tokio::test]
async fn declared_body_over_the_limit_is_413_and_never_sent() {
    let (b, got) = body_counter().await;
    let p = one_backend(&b, "limits: {max_request_body_bytes: 100}").await;
    let r = send(
        Request::post(p.url("/x"))
            .body(full(vec![b'x'; 101]))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 413);
    assert_eq!(r.header("connection"), "close");
    let ok = send(
        Request::post(p.url("/x"))
            .body(full(vec![b'x'; 100]))
            .unwrap(),
    )
    .await;
    assert_eq!(ok.status, 200);
    // The per-route override is smaller.
    let small = send(
        Request::post(p.url("/small"))
            .body(full(vec![b'x'; 11]))
            .unwrap(),
    )
    .await;
    assert_eq!(small.status, 413);
    assert_eq!(b.hits(), 1);
    assert_eq!(got.load(Ordering::SeqCst), 100);
}

#[tokio::test]
async fn streamed_body_over_the_limit_is_cut_at_the_limit() {
    let (b, got) = body_counter().await;
    let p = one_backend(&b, "limits: {max_request_body_bytes: 100000}").await;
    let chunks = (0..20)
        .map(|_| Ok::<_, BoxError>(hyper::body::Frame::data(Bytes::from(vec![b'y'; 10_000]))));
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
    let resp = client()
        .request(
            Request::post(p.url("/x"))
                .body(BodyExt::boxed(body))
                .unwrap(),
        )
        .await;
    match resp {
        Ok(r) => assert_eq!(r.status(), 413),
        // The proxy may close the connection while the client is still sending.
        Err(e) => assert!(!e.is_connect(), "{e}"),
    }
    assert!(
        got.load(Ordering::SeqCst) <= 100_000,
        "backend got {}",
        got.load(Ordering::SeqCst)
    );
}

#[tokio::test]
async fn oversized_request_head_is_431() {
    let b = Backend::echo("b").await;
    let p = one_backend(&b, "limits: {max_request_header_bytes: 2048}").await;
    let big = "v".repeat(3000);
    let req = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    let resp = raw(p.addr, req.as_bytes(), Duration::from_secs(5)).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    let fits = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "v".repeat(1500)
    );
    let resp = raw(p.addr, fits.as_bytes(), Duration::from_secs(5)).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(b.hits(), 1);
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_400_and_closes() {
    let b = Backend::echo("b").await;
    let p = one_backend(&b, "").await;
    for head in [
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\ncontent-length: 5\r\n\r\n",
    ] {
        let req = format!("{head}5\r\nhello\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let resp = raw(p.addr, req.as_bytes(), Duration::from_secs(5)).await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
        assert_eq!(
            resp.matches("HTTP/1.1").count(),
            1,
            "connection not closed: {resp}"
        );
    }
    // Chunked alone is fine.
    let ok = "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    assert!(
        raw(p.addr, ok.as_bytes(), Duration::from_secs(5))
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert_eq!(b.hits(), 1);
}

#[tokio::test]
async fn all_down_with_reject_is_503_with_retry_after() {
    let dead = refusing_addr().await;
    let yaml = r#"
listeners: [{name: web, bind: "{listen}"}]
access_log: off
pools: {p: {when_all_down: reject, retries: 0, backends: [{addr: "{dead}"}]}}
routes: [{name: all, pool: p}]
"#;
    let p = Proxy::start(yaml, &[("dead", dead)]).await;
    // Five connect failures in a row eject the only backend.
    for _ in 0..5 {
        assert_eq!(get(&p.url("/")).await.status, 502);
    }
    let got = get(&p.url("/")).await;
    assert_eq!(got.status, 503);
    assert!(got.header("retry-after").parse::<u32>().is_ok());
}

/// Time until the server closes `s` (reads and discards whatever it sends).
async fn time_to_close(mut s: TcpStream, limit: Duration) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("connection still open after {limit:?}"),
        }
    }
}

#[tokio::test]
async fn slowloris_is_closed_at_the_header_deadline() {
    let b = Backend::echo("b").await;
    let p = one_backend(
        &b,
        "limits: {client_header_timeout: 300ms, client_idle_timeout: 5s}",
    )
    .await;
    let start = Instant::now();
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    // Trickle the head: every write is a little progress, but the deadline is for the whole head.
    let trickle = tokio::spawn(async move {
        for part in [
            "GET / HTTP/1.1\r\n",
            "Host: x\r\n",
            "X-A: 1\r\n",
            "X-B: 2\r\n",
            "X-C: 3\r\n",
        ] {
            if s.write_all(part.as_bytes()).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        s
    });
    let s = trickle.await.unwrap();
    time_to_close(s, Duration::from_secs(3)).await;
    let closed_after = start.elapsed();
    assert!(
        closed_after >= Duration::from_millis(300),
        "{closed_after:?}"
    );
    assert!(
        closed_after < Duration::from_millis(1500),
        "{closed_after:?}"
    );
    assert_eq!(b.hits(), 0);
}

#[tokio::test]
async fn idle_keep_alive_outlives_the_header_timeout_then_closes() {
    let b = Backend::echo("b").await;
    let p = one_backend(
        &b,
        "limits: {client_header_timeout: 200ms, client_idle_timeout: 800ms}",
    )
    .await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let idle = time_to_close(s, Duration::from_secs(5)).await;
    assert!(
        idle >= Duration::from_millis(700),
        "closed after {idle:?}, before the idle timeout"
    );
    assert!(idle < Duration::from_secs(3), "{idle:?}");
}

#[tokio::test]
async fn max_connections_holds_extra_connections_in_the_backlog() {
    let b = Backend::echo("b").await;
    let p = one_backend(&b, "limits: {max_connections: 1}").await;
    let mut first = TcpStream::connect(p.addr).await.unwrap();
    first
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    assert!(first.read(&mut buf).await.unwrap() > 0);
    // The second connection completes the TCP handshake (kernel backlog) but is not served.
    let mut second = TcpStream::connect(p.addr).await.unwrap();
    second
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(300), second.read(&mut buf)).await;
    assert!(waited.is_err(), "served beyond max_connections");
    drop(first);
    let n = tokio::time::timeout(Duration::from_secs(5), second.read(&mut buf))
        .await
        .expect("served once the first connection closed")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn a_malformed_request_does_not_disturb_other_clients() {
    let b = Backend::echo("b").await;
    let p = one_backend(&b, "").await;
    let garbage = raw(
        p.addr,
        b"\x16\x03\x01 not http at all\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        garbage.starts_with("HTTP/1.1 400") || garbage.is_empty(),
        "{garbage}"
    );
    assert_eq!(get(&p.url("/")).await.status, 200);
}

#[tokio::test]
async fn a_backend_that_never_accepts_is_a_connect_timeout_then_502() {
    // A listener whose backlog is full drops further SYNs, so connecting to it hangs
    // until the client gives up: a black hole on loopback.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let hole = socket.listen(0).unwrap();
    let addr = hole.local_addr().unwrap();
    let mut fillers = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => fillers.push(s),
            _ => break,
        }
        assert!(fillers.len() < 64, "backlog never filled");
    }
    let p = Proxy::start(&config(r#"{addr: "{hole}"}"#, ""), &[("hole", addr)]).await;
    let start = Instant::now();
    let got = get(&p.url("/")).await;
    assert_eq!(got.status, 502);
    // One connect timeout (500ms): a retry never goes back to a backend already tried.
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

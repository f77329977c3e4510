//! Header, idle and body timeouts, and max_connections per listener across workers.
mod support;

use futures_util::future::join_all;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One listener with `extra` top-level config, every request to pool `p` on `{b}`, whose
/// `timeouts` are `pool_timeouts`.
fn config(extra: &str, pool_timeouts: &str) -> String {
    format!(
        r#"
listeners: [{{name: web, bind: "{{listen}}"}}]
access_log: off
{extra}
pools: {{p: {{timeouts: {{{pool_timeouts}}}, backends: [{{addr: "{{b}}"}}]}}}}
routes: [{{name: all, pool: p}}]
"#
    )
}

/// A full request head for `path` that keeps the connection open.
fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n")
}

#[tokio::test]
async fn leftover_bytes_after_a_response_are_a_head_under_the_header_deadline() {
    let b = Backend::echo("b").await;
    let p = Proxy::start(
        &config(
            "limits: {client_header_timeout: 300ms, client_idle_timeout: 10s}",
            "",
        ),
        &[("b", b.addr)],
    )
    .await;
    let mut c = RawConn::open(p.addr).await;
    let start = Instant::now();
    // A whole request and the first byte of the next, in one write.
    c.write("GET /h HTTP/1.1\r\nHost: a\r\n\r\nG").await;
    let resp = c
        .response(Duration::from_secs(4))
        .await
        .expect("the whole request is answered");
    assert_eq!(resp.status, 200);
    let closed = c.closed_within(Duration::from_secs(5)).await;
    let after = start.elapsed();
    assert!(
        closed.is_some(),
        "still open after {after:?}: the byte was taken for idleness"
    );
    assert!(
        after >= Duration::from_millis(250),
        "closed after {after:?}"
    );
    assert!(
        after < Duration::from_secs(2),
        "closed after {after:?}, not at the 300ms header deadline"
    );
}

#[tokio::test]
async fn connections_holding_a_started_head_do_not_lock_out_new_clients() {
    let b = Backend::echo("b").await;
    let p = Proxy::start(
        &config(
            "limits: {client_header_timeout: 300ms, client_idle_timeout: 10s, max_connections: 3}",
            "",
        ),
        &[("b", b.addr)],
    )
    .await;
    let mut stuck = Vec::new();
    for i in 0..3 {
        let mut c = RawConn::open(p.addr).await;
        c.write(format!("GET /h{i} HTTP/1.1\r\nHost: a\r\n\r\nG"))
            .await;
        let resp = c.response(Duration::from_secs(4)).await.expect("answered");
        assert_eq!(resp.status, 200);
        stuck.push(c);
    }
    // All three slots are taken by connections owing a head; they are cut at the header
    // deadline, and a new client gets in.
    let start = Instant::now();
    let mut fresh = RawConn::open(p.addr).await;
    fresh
        .write("GET /fresh HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await;
    let got = fresh.response(Duration::from_secs(4)).await;
    assert!(
        matches!(&got, Ok(r) if r.status == 200),
        "a new client was locked out for {:?}: {got:?}",
        start.elapsed()
    );
}

/// Wait for a response on `c` for `limit`: whether one came.
async fn served_within(c: &mut RawConn, limit: Duration) -> bool {
    matches!(c.response(limit).await, Ok(r) if r.status == 200)
}

#[tokio::test]
async fn max_connections_counts_every_worker_of_the_listener() {
    let (b, release) = Backend::held("late").await;
    let p = Proxy::start_workers(
        &config("limits: {max_connections: 2}", ""),
        &[("b", b.addr)],
        2,
    )
    .await;
    // Six rather than four: the kernel spreads connections over the two workers' sockets
    // at random, and six make it likely that both workers get more than one.
    let mut conns = Vec::new();
    for i in 0..6 {
        let mut c = RawConn::open(p.addr).await;
        c.write(get(&format!("/{i}"))).await;
        conns.push(c);
    }
    eventually(Duration::from_secs(5), || async { b.hits() >= 2 }).await;
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(400) {
        assert!(
            b.hits() <= 2,
            "{} requests reached the backend with max_connections 2",
            b.hits()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    release.notify_waiters();
}

/// A proxy with 2 workers and `max_connections: 2`: `/held` to a backend that holds every
/// request, anything else to an echo backend.
async fn two_workers_two_connections(held: SocketAddr, echo: SocketAddr) -> Proxy {
    let yaml = r#"
listeners: [{name: web, bind: "{listen}"}]
access_log: off
limits: {max_connections: 2}
pools:
  held: {backends: [{addr: "{held}"}]}
  echo: {backends: [{addr: "{echo}"}]}
routes:
  - {name: held, match: {prefix: /held}, pool: held}
  - {name: rest, pool: echo}
"#;
    Proxy::start_workers(yaml, &[("held", held), ("echo", echo)], 2).await
}

#[tokio::test]
async fn a_closed_connection_frees_its_slot_for_a_client_on_any_worker() {
    let (held, release) = Backend::held("late").await;
    let echo = Backend::echo("e").await;
    let p = two_workers_two_connections(held.addr, echo.addr).await;
    let mut holder = RawConn::open(p.addr).await;
    holder.write(get("/held")).await;
    eventually(Duration::from_secs(5), || async { held.hits() == 1 }).await;
    // One slot left: each new connection gets it once the one before it is closed,
    // whichever worker's socket the kernel put it on.
    for round in 0..8 {
        let mut c = RawConn::open(p.addr).await;
        c.write(get(&format!("/round-{round}"))).await;
        assert!(
            served_within(&mut c, Duration::from_secs(3)).await,
            "round {round}: not served with a slot free"
        );
        drop(c);
    }
    release.notify_waiters();
    drop(holder);
}

#[tokio::test]
async fn one_waiting_connection_is_served_once_a_connection_closes_whichever_worker_it_waits_on() {
    let echo = Backend::echo("e").await;
    let (held, _release) = Backend::held("late").await;
    let p = two_workers_two_connections(held.addr, echo.addr).await;
    // Two served connections, kept open: both slots taken.
    let mut open = Vec::new();
    for i in 0..2 {
        let mut c = RawConn::open(p.addr).await;
        c.write(get(&format!("/open-{i}"))).await;
        assert!(served_within(&mut c, Duration::from_secs(3)).await);
        open.push(c);
    }
    // Four more wait: the kernel puts each on either worker's socket at random, so with
    // four, both workers almost surely have one waiting.
    let mut waiting = Vec::new();
    for i in 0..4 {
        let mut c = RawConn::open(p.addr).await;
        c.write(get(&format!("/waiting-{i}"))).await;
        waiting.push(c);
    }
    let early = join_all(
        waiting
            .iter_mut()
            .map(|c| served_within(c, Duration::from_millis(300))),
    )
    .await;
    assert_eq!(
        early.iter().filter(|&&s| s).count(),
        0,
        "served beyond max_connections 2: {early:?}"
    );
    // One slot frees: exactly one waiting connection gets it, on whichever worker.
    drop(open.pop());
    let later = join_all(
        waiting
            .iter_mut()
            .map(|c| served_within(c, Duration::from_secs(3))),
    )
    .await;
    assert_eq!(
        later.iter().filter(|&&s| s).count(),
        1,
        "waiting connections served after one closed: {later:?}"
    );
}

#[tokio::test]
async fn the_idle_timeout_closes_a_keep_alive_connection_on_time() {
    let b = Backend::echo("b").await;
    let p = Proxy::start(
        &config(
            "limits: {client_idle_timeout: 1s, client_header_timeout: 3s}",
            "",
        ),
        &[("b", b.addr)],
    )
    .await;
    let mut failed = Vec::new();
    for (case, req) in [
        ("GET", get("/idle")),
        (
            "POST with Content-Length",
            "POST /idle HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello".to_string(),
        ),
    ] {
        let mut c = RawConn::open(p.addr).await;
        c.write(req).await;
        let resp = c.response(Duration::from_secs(4)).await.expect("answered");
        assert_eq!(resp.status, 200);
        match c.closed_within(Duration::from_secs(6)).await {
            Some(idle)
                if idle >= Duration::from_millis(900) && idle < Duration::from_millis(2500) => {}
            Some(idle) => failed.push(format!("{case}: closed after {idle:?}, not about 1s")),
            None => failed.push(format!("{case}: still open after 6s")),
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[tokio::test]
async fn a_backend_that_stalls_mid_body_is_cut_at_the_read_timeout() {
    let b = RawBackend::start(|_, _| {
        let mut r = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n".to_vec();
        r.extend_from_slice(&[b'x'; 10]);
        Reply::bytes(r)
    })
    .await;
    let p = Proxy::start(&config("", "read: 300ms"), &[("b", b.addr)]).await;
    let mut failed = Vec::new();
    for (case, req) in [
        ("GET", get("/stall")),
        (
            "POST with Content-Length",
            "POST /stall HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello".to_string(),
        ),
    ] {
        let mut c = RawConn::open(p.addr).await;
        c.write(req).await;
        let closed = c.closed_within(Duration::from_secs(4)).await;
        let seen = c.unread();
        match closed {
            _ if !seen.starts_with("HTTP/1.1 200") => {
                failed.push(format!("{case}: the response head did not come: {seen:?}"))
            }
            Some(t) if t >= Duration::from_millis(250) && t < Duration::from_secs(2) => {}
            Some(t) => failed.push(format!("{case}: cut after {t:?}, not at about 300ms")),
            None => failed.push(format!("{case}: the response was still open after 4s")),
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[tokio::test]
async fn a_client_that_takes_no_response_bytes_is_cut_at_the_send_timeout() {
    let total = 64 << 20;
    let b = Streamer::start(
        format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n").into_bytes(),
        vec![b'x'; 64 * 1024],
        total,
    )
    .await;
    let p = Proxy::start(
        &config("limits: {client_send_timeout: 300ms}", ""),
        &[("b", b.addr)],
    )
    .await;
    let start = Instant::now();
    let mut c = RawConn::open(p.addr).await;
    c.write(get("/big")).await;
    // The client never reads: once the buffers are full, the proxy must give up on it and
    // on the backend's response.
    let ended = b.first_ended(Duration::from_secs(8)).await;
    assert!(
        matches!(ended, Some(e) if e.failed),
        "the backend's connection was not closed by the proxy ({ended:?}, {} MB written in {:?})",
        b.progress() >> 20,
        start.elapsed()
    );
    assert!(start.elapsed() < Duration::from_secs(10));
    drop(c);
}

#[tokio::test]
async fn a_client_that_stalls_mid_body_is_answered_408_or_closed_at_the_body_timeout() {
    let b = BodyBackend::start().await;
    let p = Proxy::start(
        &config("limits: {client_body_timeout: 300ms}", ""),
        &[("b", b.addr)],
    )
    .await;
    let start = Instant::now();
    let mut c = RawConn::open(p.addr).await;
    c.write("POST /slow HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789")
        .await;
    match c.response(Duration::from_secs(2)).await {
        Ok(r) => {
            assert_eq!(r.status, 408, "{}", r.head);
            assert!(
                c.closed_within(Duration::from_secs(2)).await.is_some(),
                "408 but the connection stayed open"
            );
        }
        Err(NoResponse::Closed(bytes)) => assert!(bytes.is_empty(), "{bytes:?}"),
        Err(NoResponse::TimedOut(bytes)) => {
            panic!("neither a 408 nor a close after 2s: {bytes:?}")
        }
    }
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}

/// A backend that reads a request head, then holds the connection without reading more.
async fn head_only_backend() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    let mut chunk = [0u8; 4096];
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                // Never read the body; keep the socket until the proxy gives up.
                std::future::pending::<()>().await;
                drop(s);
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_backend_that_takes_no_body_bytes_is_given_up_at_the_write_timeout() {
    let backend = head_only_backend().await;
    // More than socket buffers hold, and within the body limit.
    let p = Proxy::start(
        &config(
            "limits: {max_request_body_bytes: 134217728}",
            "write: 300ms",
        ),
        &[("b", backend)],
    )
    .await;
    let total: usize = 64 << 20;
    let tcp = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let (mut rd, mut wr) = tcp.into_split();
    let writer = tokio::spawn(async move {
        let head = format!("POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: {total}\r\n\r\n");
        if wr.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let piece = vec![b'u'; 64 * 1024];
        let mut sent = 0;
        while sent < total {
            if wr.write_all(&piece).await.is_err() {
                return;
            }
            sent += piece.len();
        }
        // Keep the write half open so that only the proxy ends the connection.
        std::future::pending::<()>().await;
    });
    let start = Instant::now();
    let mut got = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 4096];
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    writer.abort();
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(
        ended.is_ok(),
        "the client connection was still open after {:?}: {text:?}",
        start.elapsed()
    );
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 502") || text.starts_with("HTTP/1.1 504"),
        "{text:?}"
    );
}

/// The response wait starts once the request is all sent: a body that takes longer than
/// `timeouts.response` to upload, answered at once, is a 200, not a 504.
#[tokio::test]
async fn the_response_timeout_runs_from_the_end_of_a_slow_upload() {
    let backend = BodyBackend::start().await;
    let p = Proxy::start(&config("", "response: 400ms"), &[("b", backend.addr)]).await;
    let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    s.write_all(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    // Five pieces a moment apart: about a second of upload, over twice the response timeout.
    for _ in 0..5 {
        s.write_all(b"2\r\nab\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    let got = String::from_utf8_lossy(&buf[..n]);
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert_eq!(backend.got.lock().unwrap()[0].body, b"ababababab");
}

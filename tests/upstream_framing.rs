//! What backends send: caps on chunk-size lines and response heads, responses framed both
//! ways, broken first chunks, and HTTP/1.0 chunked responses, each for a bodiless GET (the
//! inline client) and a POST with a Content-Length body (hyper's client).
mod support;

use futures_util::future::join_all;
use std::time::Duration;
use support::*;

const LIMIT: Duration = Duration::from_secs(4);

/// A request with method `method` ("GET" or "POST", the POST with a 5-byte body) for `path`.
fn request(method: &str, path: &str) -> String {
    match method {
        "GET" => format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n"),
        _ => format!("POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"),
    }
}

/// One request on a new connection and its response.
async fn ask(
    addr: std::net::SocketAddr,
    req: &str,
    limit: Duration,
) -> Result<RawResponse, String> {
    let mut c = RawConn::open(addr).await;
    c.write(req).await;
    c.response(limit).await.map_err(|e| format!("{e:?}"))
}

#[tokio::test]
async fn an_endless_chunk_size_line_is_502_and_the_backend_is_cut_off() {
    let mut results = Vec::new();
    for method in ["GET", "POST"] {
        // The head and the start of a chunk-size line in one write, then a chunk extension
        // that never ends: up to 96 MB of `a` without a CRLF.
        let b = Streamer::start(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;".to_vec(),
            vec![b'a'; 64 * 1024],
            96 << 20,
        )
        .await;
        let p = Proxy::start(ONE_POOL, &[("b", b.addr)]).await;
        let r = async {
            let status = match ask(p.addr, &request(method, "/x"), Duration::from_secs(6)).await {
                Ok(r) => r.status.to_string(),
                Err(e) => e,
            };
            let mut problems = Vec::new();
            if status != "502" {
                problems.push(format!("the client got {status} instead of 502"));
            }
            match b.first_ended(Duration::from_secs(3)).await {
                Some(e) if e.failed && e.written < 16 << 20 => {}
                Some(e) => {
                    problems.push(format!("the backend was not cut off before 16 MB: {e:?}"))
                }
                None => problems.push(format!(
                    "the backend was still writing, {} MB accepted so far",
                    b.progress() >> 20
                )),
            }
            if problems.is_empty() {
                Ok(())
            } else {
                Err(problems.join("; "))
            }
        }
        .await;
        results.push((method.to_string(), r));
    }
    all_ok(results);
}

#[tokio::test]
async fn a_70_kb_response_head_in_one_write_is_502() {
    let big = format!(
        "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\nok",
        "a".repeat(70_000)
    );
    let b = RawBackend::start(move |_, _| Reply::bytes(&big).then_close()).await;
    let p = Proxy::start(ONE_POOL, &[("b", b.addr)]).await;
    let mut results = Vec::new();
    for method in ["GET", "POST"] {
        let r = match ask(p.addr, &request(method, "/big"), LIMIT).await {
            Ok(r) if r.status == 502 => Ok(()),
            Ok(r) => Err(format!(
                "got {} with a {}-byte head",
                r.status,
                r.head.len()
            )),
            Err(e) => Err(format!("no response: {e}")),
        };
        results.push((method.to_string(), r));
    }
    all_ok(results);
}

/// Two requests by `method` to a backend answering `reply` to each: every answer must pass
/// `fine`, and the second must come on a new backend connection (the first was suspect).
async fn never_reused(
    method: &str,
    reply: &'static str,
    fine: impl Fn(&RawResponse) -> bool,
) -> Result<(), String> {
    let b = RawBackend::start(move |_, _| Reply::bytes(reply)).await;
    let p = Proxy::start(ONE_POOL, &[("b", b.addr)]).await;
    for i in 0..2 {
        let got = ask(p.addr, &request(method, &format!("/{i}")), LIMIT)
            .await
            .map_err(|e| format!("request {i}: no response: {e}"))?;
        if !fine(&got) {
            return Err(format!("request {i}: got {} {:?}", got.status, got.text()));
        }
    }
    match b.conns() {
        2 => Ok(()),
        n => Err(format!("{n} backend connection(s) for 2 requests: reused")),
    }
}

#[tokio::test]
async fn a_response_with_content_length_and_chunked_is_read_chunked_and_its_connection_retired() {
    let mut results = Vec::new();
    for method in ["GET", "POST"] {
        let reply = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
                     5\r\nhello\r\n0\r\n\r\n";
        let r = never_reused(method, reply, |got| {
            (got.status, got.text().as_str()) == (200, "hello")
        })
        .await;
        results.push((method.to_string(), r));
    }
    all_ok(results);
}

#[tokio::test]
async fn a_broken_first_chunk_in_the_head_write_is_502_not_an_empty_reply() {
    let broken: [&str; 4] = [
        "zz\r\n",
        "0x5\r\nhello\r\n0\r\n\r\n",
        "ffffffffffffffffffff\r\n",
        "5\r\nhelloXX",
    ];
    let b = RawBackend::start(move |_, head| {
        let i: usize = head
            .split(' ')
            .nth(1)
            .and_then(|p| p.trim_start_matches('/').parse().ok())
            .unwrap_or(0);
        Reply::bytes(format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{}",
            broken[i]
        ))
    })
    .await;
    let p = Proxy::start(ONE_POOL, &[("b", b.addr)]).await;
    let mut cases = Vec::new();
    for method in ["GET", "POST"] {
        for (i, chunk) in broken.iter().enumerate() {
            cases.push((
                format!("{method} {chunk:?}"),
                request(method, &format!("/{i}")),
            ));
        }
    }
    let results = join_all(cases.into_iter().map(|(case, req)| async move {
        let r = match ask(p.addr, &req, LIMIT).await {
            Ok(r) if r.status == 502 => Ok(()),
            Ok(r) => Err(format!("got {}", r.status)),
            Err(e) => Err(format!("no response: {e}")),
        };
        (case, r)
    }))
    .await;
    all_ok(results);
}

#[tokio::test]
async fn an_http_1_0_chunked_response_is_not_reused_even_if_kept_alive() {
    let mut results = Vec::new();
    for method in ["GET", "POST"] {
        let reply = "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n\
                     5\r\nhello\r\n0\r\n\r\n";
        // RFC 9112 §6.1 lets a recipient treat such framing as faulty: a 502 is an answer
        // too. What matters is that the connection is not used again.
        let r = never_reused(method, reply, |got| got.status == 200 || got.status == 502).await;
        results.push((method.to_string(), r));
    }
    all_ok(results);
}

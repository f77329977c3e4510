//! The lane (HTTP/1 requests routed and rewritten on their bytes) seen from the wire on
//! both sides: a client writing exact bytes, a backend recording the exact head it gets.
//! Header names keep the sender's spelling.
mod support;

use std::time::Duration;
use support::*;

const LIMIT: Duration = Duration::from_secs(5);

async fn proxy_to(b: &RawBackend) -> Proxy {
    Proxy::start(ONE_POOL, &[("b", b.addr)]).await
}

/// The header lines of a head, without its first line.
fn lines(head: &str) -> Vec<&str> {
    head.lines().skip(1).filter(|l| !l.is_empty()).collect()
}

/// The value of the one `name` line in `lines` (ASCII case-insensitive).
fn value<'a>(lines: &[&'a str], name: &str) -> Option<&'a str> {
    let mut found = lines.iter().filter_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    });
    let v = found.next();
    assert!(found.next().is_none(), "{name} more than once in {lines:?}");
    v
}

#[tokio::test]
async fn request_fields_are_edited_on_the_bytes() {
    let b =
        RawBackend::start(|_, _| Reply::bytes("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
            .await;
    let p = proxy_to(&b).await;
    let got = raw(
        p.addr,
        b"GET /shop/./cart/../items?q=%2F&b=1 HTTP/1.1\r\n\
          Host: Shop.Test:8080\r\n\
          X-Custom-Case: kept\r\n\
          Connection: keep-alive, X-Private\r\n\
          Connection: close\r\n\
          X-Private: secret\r\n\
          Keep-Alive: timeout=5\r\n\
          Proxy-Connection: keep-alive\r\n\
          TE: trailers, deflate\r\n\
          X-Forwarded-For: 10.0.0.1\r\n\
          X-Forwarded-For: 10.0.0.2\r\n\
          X-Forwarded-Proto: spoofed\r\n\
          X-Forwarded-Host: spoofed\r\n\
          \r\n",
        LIMIT,
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    let head = b.heads.lock().unwrap()[0].clone();
    assert!(
        head.starts_with("GET /shop/items?q=%2F&b=1 HTTP/1.1\r\n"),
        "the normalized path goes upstream, the query untouched: {head}"
    );
    let l = lines(&head);
    assert!(l.contains(&"X-Custom-Case: kept"), "{head}");
    assert_eq!(value(&l, "host"), Some("Shop.Test:8080"));
    for gone in ["connection", "x-private", "keep-alive", "proxy-connection"] {
        assert_eq!(value(&l, gone), None, "{gone} forwarded: {head}");
    }
    assert_eq!(value(&l, "te"), Some("trailers"));
    assert_eq!(
        value(&l, "x-forwarded-for"),
        Some("10.0.0.1, 10.0.0.2, 127.0.0.1")
    );
    assert_eq!(value(&l, "x-forwarded-proto"), Some("http"));
    assert_eq!(value(&l, "x-forwarded-host"), Some("Shop.Test:8080"));
    let id = value(&l, "x-request-id").expect("a request id is added");
    assert_eq!(id.len(), 32, "{id}");
    let resp = lines(got.split("\r\n\r\n").next().unwrap());
    assert_eq!(value(&resp, "x-request-id"), Some(id));
    assert_eq!(
        value(&resp, "connection"),
        Some("close"),
        "the client asked to close"
    );
}

#[tokio::test]
async fn response_fields_are_edited_on_the_bytes() {
    let b = RawBackend::start(|_, _| {
        Reply::bytes(
            "HTTP/1.1 201 Created\r\n\
             Content-Length: 5\r\n\
             X-Backend-Case: kept\r\n\
             Connection: X-Internal\r\n\
             X-Internal: secret\r\n\
             Keep-Alive: timeout=5\r\n\
             Upgrade: h2c\r\n\
             X-Request-Id: the-backends\r\n\
             \r\n\
             hello",
        )
    })
    .await;
    let p = proxy_to(&b).await;
    let got = raw(
        p.addr,
        b"GET /a HTTP/1.1\r\nHost: x\r\nX-Request-Id: mine\r\nConnection: close\r\n\r\n",
        LIMIT,
    )
    .await;
    let (head, body) = got.split_once("\r\n\r\n").expect("a whole response");
    assert!(head.starts_with("HTTP/1.1 201 Created\r\n"), "{head}");
    assert_eq!(body, "hello");
    let l = lines(head);
    assert!(l.contains(&"X-Backend-Case: kept"), "{head}");
    for gone in ["x-internal", "keep-alive", "upgrade"] {
        assert_eq!(value(&l, gone), None, "{gone} reached the client: {head}");
    }
    assert_eq!(value(&l, "x-request-id"), Some("mine"));
    assert_eq!(value(&l, "content-length"), Some("5"));
    assert!(value(&l, "date").is_some(), "a Date is added: {head}");
    assert!(
        b.heads.lock().unwrap()[0].contains("X-Request-Id: mine\r\n"),
        "the client's id goes upstream as it came"
    );
}

#[tokio::test]
async fn head_requests_keep_the_length_and_pipelined_requests_answer_in_order() {
    let b = RawBackend::start(|_, head| {
        if head.starts_with("HEAD ") {
            return Reply::bytes("HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nDate: Thu, 01 Jan 2026 00:00:00 GMT\r\n\r\n");
        }
        let path = head.split(' ').nth(1).unwrap().to_string();
        Reply::bytes(format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{path}",
            path.len()
        ))
    })
    .await;
    let p = proxy_to(&b).await;
    // Three requests in one write; the last closes, so the read below ends.
    let got = raw(
        p.addr,
        b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /first HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /second HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        LIMIT,
    )
    .await;
    let responses: Vec<&str> = got.split("HTTP/1.1 200 OK\r\n").skip(1).collect();
    assert_eq!(responses.len(), 3, "{got}");
    assert!(responses[0].contains("Content-Length: 1234\r\n"), "{got}");
    assert!(
        responses[0].contains("Date: Thu, 01 Jan 2026 00:00:00 GMT\r\n"),
        "the backend's Date is kept: {got}"
    );
    assert!(
        responses[0].ends_with("\r\n\r\n"),
        "no body after HEAD: {got}"
    );
    assert!(responses[1].ends_with("\r\n\r\n/first"), "{got}");
    assert!(responses[2].ends_with("\r\n\r\n/second"), "{got}");
    assert_eq!(b.conns(), 1, "one upstream connection carried all three");
}

#[tokio::test]
async fn a_body_that_ends_at_close_reaches_the_client_chunked() {
    let b = RawBackend::start(|_, _| {
        Reply::pieces(&[b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nsome ", b"more"]).then_close()
    })
    .await;
    let p = proxy_to(&b).await;
    let got = raw(
        p.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        LIMIT,
    )
    .await;
    let (head, body) = got.split_once("\r\n\r\n").expect("a whole response");
    assert_eq!(value(&lines(head), "transfer-encoding"), Some("chunked"));
    assert_eq!(body, "5\r\nsome \r\n4\r\nmore\r\n0\r\n\r\n");
}

#[tokio::test]
async fn a_dead_backend_answers_502_with_the_request_id_and_the_connection_goes_on() {
    let dead = refusing_addr().await;
    let p = Proxy::start(ONE_POOL, &[("b", dead)]).await;
    let got = raw(
        p.addr,
        b"GET /one HTTP/1.1\r\nHost: x\r\nX-Request-Id: r-1\r\n\r\n\
          GET /two HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        LIMIT,
    )
    .await;
    let answers: Vec<&str> = got.split("HTTP/1.1 ").skip(1).collect();
    assert_eq!(answers.len(), 2, "{got}");
    assert!(answers[0].starts_with("502 "), "{got}");
    assert!(answers[0].contains("x-request-id: r-1\r\n"), "{got}");
    assert!(answers[1].starts_with("502 "), "{got}");
}

#[tokio::test]
async fn unusual_targets_and_host_problems_get_their_answers() {
    let b = RawBackend::start(|_, head| {
        let path = head.split(' ').nth(1).unwrap().to_string();
        Reply::bytes(format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{path}",
            path.len()
        ))
    })
    .await;
    let yaml = r#"
listeners: [{name: web, bind: "{listen}"}]
access_log: off
pools: {p: {backends: [{addr: "{b}"}]}}
routes: [{name: api, match: {prefix: /api}, pool: p}]
"#;
    let p = Proxy::start(yaml, &[("b", b.addr)]).await;
    let ask = |req: &'static str| async move {
        let got = raw(p.addr, req.as_bytes(), LIMIT).await;
        got.split("\r\n").next().unwrap_or_default().to_string()
    };
    // Characters outside RFC 3986 that `http::Uri` also takes (`|`): still proxied.
    assert_eq!(
        ask("GET /api/a|b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await,
        "HTTP/1.1 200 OK"
    );
    assert_eq!(
        ask("GET /nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await,
        "HTTP/1.1 404 Not Found"
    );
    assert_eq!(
        ask("GET /api HTTP/1.1\r\nHost: x\r\nHost: y\r\nConnection: close\r\n\r\n").await,
        "HTTP/1.1 400 Bad Request"
    );
    assert_eq!(
        ask("GET /api HTTP/1.1\r\nConnection: close\r\n\r\n").await,
        "HTTP/1.1 400 Bad Request"
    );
    assert_eq!(
        ask("GET /../api HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await,
        "HTTP/1.1 400 Bad Request"
    );
    let heads = b.heads.lock().unwrap().clone();
    assert_eq!(
        heads.len(),
        1,
        "only the first reached the backend: {heads:?}"
    );
    assert!(
        heads[0].starts_with("GET /api/a|b HTTP/1.1\r\n"),
        "{heads:?}"
    );
}

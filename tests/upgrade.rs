//! Upgrades: an h2c upgrade is not passed on, and a backend's 101 that the client did not
//! ask for (or for another protocol) is a 502, never a tunnel. The positive case, a
//! WebSocket tunnelled end to end, is `websocket_echo_through_the_proxy` in proxying.rs.
mod support;

use std::time::Duration;
use support::*;

const LIMIT: Duration = Duration::from_secs(4);

/// Only `/public` is routed: anything else is the proxy's own 404.
const PUBLIC_ONLY: &str = r#"
listeners: [{name: web, bind: "{listen}"}]
access_log: off
pools: {p: {backends: [{addr: "{b}"}]}}
routes: [{name: public, match: {prefix: /public}, pool: p}]
"#;

/// A backend that switches protocols (with `upgrade`) on every request for `/public`, and
/// answers anything else 200 (which only a tunnel could deliver).
async fn switching_backend(upgrade: &'static str) -> RawBackend {
    RawBackend::start(move |_, head| {
        if head.starts_with("GET /public") {
            Reply::bytes(format!(
                "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {upgrade}\r\n\
                 Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
            ))
        } else {
            Reply::bytes("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\ntunnelled")
        }
    })
    .await
}

#[tokio::test]
async fn an_h2c_upgrade_is_not_passed_on_and_an_unasked_101_is_502_not_a_tunnel() {
    let b = switching_backend("h2c").await;
    let p = Proxy::start(PUBLIC_ONLY, &[("b", b.addr)]).await;
    let mut c = RawConn::open(p.addr).await;
    c.write(
        "GET /public/x HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n\
         Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    let mut problems = Vec::new();
    match c.response(LIMIT).await {
        Ok(r) if r.status == 502 => {}
        Ok(r) => problems.push(format!("the client got {} instead of 502", r.status)),
        Err(e) => problems.push(format!("no response: {e:?}")),
    }
    // The same connection: a request no route takes must meet the proxy, not the backend.
    c.write("DELETE /admin HTTP/1.1\r\nHost: a\r\n\r\n").await;
    match c.response(LIMIT).await {
        Ok(r) if r.status == 404 => {}
        Ok(r) => problems.push(format!(
            "the next request got {} {:?} instead of the proxy's 404",
            r.status,
            r.text()
        )),
        Err(e) => problems.push(format!("no response to the next request: {e:?}")),
    }
    let heads = b.heads.lock().unwrap().clone();
    let first = heads
        .first()
        .cloned()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if first.contains("upgrade: h2c") || first.contains("http2-settings") {
        problems.push(format!("the h2c upgrade reached the backend: {first:?}"));
    }
    if heads.iter().any(|h| h.contains("/admin")) {
        problems.push(format!("/admin reached the backend: {heads:?}"));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[tokio::test]
async fn a_101_to_another_protocol_than_asked_is_502_not_a_tunnel() {
    let b = switching_backend("something-else").await;
    let p = Proxy::start(PUBLIC_ONLY, &[("b", b.addr)]).await;
    let mut c = RawConn::open(p.addr).await;
    c.write(
        "GET /public/ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await;
    let mut problems = Vec::new();
    match c.response(LIMIT).await {
        Ok(r) if r.status == 502 => {}
        Ok(r) => problems.push(format!("the client got {} instead of 502", r.status)),
        Err(e) => problems.push(format!("no response: {e:?}")),
    }
    // Bytes that a tunnel would carry raw; the backend would record them as a head.
    c.write("RAW-AFTER-THE-101\r\n\r\n").await;
    // Whatever the proxy makes of them (a 400, a close), give them a moment to travel.
    let _ = c.response(Duration::from_millis(400)).await;
    let heads = b.heads.lock().unwrap().clone();
    if heads.iter().any(|h| h.contains("RAW-AFTER-THE-101")) {
        problems.push(format!("the client's bytes were tunnelled: {heads:?}"));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

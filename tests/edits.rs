//! Header edits that must agree across request shapes: HTTP/1.1 GET, bodies (POST with
//! Content-Length, POST chunked) and HTTP/1.0, each checked on the exact head the backend
//! receives.
mod support;

use std::net::SocketAddr;
use std::time::Duration;
use support::*;

const LIMIT: Duration = Duration::from_secs(4);

/// A request on each path, for the path `/{tag}`, carrying the header lines `fields`.
fn on_every_path(tag: &str, fields: &str) -> Vec<(String, String)> {
    vec![
        (
            "HTTP/1.1 GET".to_string(),
            format!("GET /{tag}/get HTTP/1.1\r\nHost: a\r\n{fields}\r\n"),
        ),
        (
            "POST with Content-Length".to_string(),
            format!(
                "POST /{tag}/post-cl HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n{fields}\r\nhello"
            ),
        ),
        (
            "POST chunked".to_string(),
            format!(
                "POST /{tag}/post-te HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\
                 {fields}\r\n5\r\nhello\r\n0\r\n\r\n"
            ),
        ),
        (
            "HTTP/1.0 GET".to_string(),
            format!("GET /{tag}/get10 HTTP/1.0\r\nHost: a\r\n{fields}\r\n"),
        ),
    ]
}

/// Send `req` on a new connection: the client's response and the head the backend got.
async fn exchange(
    addr: SocketAddr,
    b: &BodyBackend,
    req: &str,
) -> Result<(RawResponse, String), String> {
    let path = req.split(' ').nth(1).expect("a request line").to_string();
    let mut c = RawConn::open(addr).await;
    c.write(req).await;
    let resp = c
        .response(LIMIT)
        .await
        .map_err(|e| format!("no response: {e:?}"))?;
    if resp.status != 200 {
        return Err(format!("status {}", resp.status));
    }
    let head = b
        .received()
        .into_iter()
        .find(|r| r.head.split(' ').nth(1) == Some(&path))
        .ok_or("the backend got no such request")?
        .head;
    Ok((resp, head))
}

/// Run `check` on every path's exchange; panic listing the paths where it failed.
async fn check_every_path<F>(tag: &str, fields: &str, check: F)
where
    F: Fn(&RawResponse, &str) -> Result<(), String>,
{
    let b = BodyBackend::start().await;
    let p = Proxy::start(ONE_POOL, &[("b", b.addr)]).await;
    let mut failed = Vec::new();
    for (case, req) in on_every_path(tag, fields) {
        let r = match exchange(p.addr, &b, &req).await {
            Ok((resp, head)) => check(&resp, &head).map_err(|e| format!("{e}\n{head}")),
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            failed.push(format!("{case}: {e}"));
        }
    }
    assert!(
        failed.is_empty(),
        "{} failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

fn is_fresh_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

#[tokio::test]
async fn te_gzip_and_te_trailers_on_two_lines_reach_the_backend_as_te_trailers() {
    check_every_path("te", "TE: gzip\r\nTE: trailers\r\n", |_, head| {
        let te = header_values(head, "te");
        if te == ["trailers"] {
            Ok(())
        } else {
            Err(format!("te lines {te:?}, wanted exactly [\"trailers\"]"))
        }
    })
    .await;
}

#[tokio::test]
async fn an_x_forwarded_for_the_client_named_in_connection_is_dropped_before_the_proxy_appends() {
    check_every_path(
        "xff",
        "Connection: x-forwarded-for\r\nX-Forwarded-For: 6.6.6.6\r\n",
        |_, head| {
            let xff = header_values(head, "x-forwarded-for");
            if xff == ["127.0.0.1"] {
                Ok(())
            } else {
                Err(format!("x-forwarded-for {xff:?}, wanted [\"127.0.0.1\"]"))
            }
        },
    )
    .await;
}

/// The backend gets one fresh 32-hex id, and the client is told the same one.
fn one_fresh_id_shared(resp: &RawResponse, head: &str) -> Result<(), String> {
    let up = header_values(head, "x-request-id");
    let down = header_values(&resp.head, "x-request-id");
    match (up.as_slice(), down.as_slice()) {
        ([u], [d]) if is_fresh_id(u) && u == d => Ok(()),
        _ => Err(format!(
            "backend got x-request-id {up:?}, client got {down:?}: wanted one 32-hex id, the same"
        )),
    }
}

#[tokio::test]
async fn an_x_request_id_the_client_named_in_connection_is_replaced_by_a_fresh_one_both_sides_see()
{
    check_every_path(
        "rid",
        "Connection: x-request-id\r\nX-Request-Id: abc\r\n",
        one_fresh_id_shared,
    )
    .await;
}

#[tokio::test]
async fn an_empty_x_request_id_is_replaced_by_a_fresh_one_both_sides_see() {
    check_every_path("empty-rid", "X-Request-Id:\r\n", one_fresh_id_shared).await;
}

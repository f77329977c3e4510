//! Request framing and validation on the wire: each request judged by its own fields,
//! Host syntax, bodies on GET/HEAD/DELETE, malformed chunked bodies, transfer codings.
mod support;

use futures_util::future::join_all;
use std::time::Duration;
use support::*;

const LIMIT: Duration = Duration::from_secs(4);

/// Every request to the one backend `{b}`, with a short response timeout so that a request
/// the backend cannot frame ends quickly.
const POOL: &str = r#"
listeners: [{name: web, bind: "{listen}"}]
access_log: off
pools: {p: {timeouts: {response: 2s}, backends: [{addr: "{b}"}]}}
routes: [{name: all, pool: p}]
"#;

async fn proxy_to(b: &BodyBackend) -> Proxy {
    Proxy::start(POOL, &[("b", b.addr)]).await
}

/// Write `req` on a new connection; the answer must be `status`, then the connection must
/// close. Err describes what happened instead.
async fn answered_then_closed(
    addr: std::net::SocketAddr,
    req: &[u8],
    status: u16,
) -> Result<(), String> {
    let mut c = RawConn::open(addr).await;
    c.write(req).await;
    let resp = c
        .response(LIMIT)
        .await
        .map_err(|e| format!("no response: {e:?}"))?;
    if resp.status != status {
        return Err(format!("got {} instead of {status}", resp.status));
    }
    if c.closed_within(Duration::from_secs(2)).await.is_none() {
        return Err(format!("{status} but the connection stayed open"));
    }
    Ok(())
}

#[tokio::test]
async fn a_long_header_before_content_length_and_transfer_encoding_is_still_400_and_closes() {
    let b = BodyBackend::start().await;
    let p = proxy_to(&b).await;
    let req = format!(
        "POST / HTTP/1.1\r\nHost: a\r\nX-Pad: {}\r\nContent-Length: 5\r\n\
         Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "a".repeat(16_400)
    );
    let r = answered_then_closed(p.addr, req.as_bytes(), 400).await;
    assert!(r.is_ok(), "{r:?}");
    assert!(b.received().is_empty(), "{:?}", b.received());
}

#[tokio::test]
async fn a_pipelined_post_with_both_lengths_after_another_request_is_400_and_closes() {
    let b = BodyBackend::start().await;
    let p = proxy_to(&b).await;
    let bad = "POST /second HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\
               Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    // The first request takes each of the proxy's paths in turn.
    let firsts = [
        ("HTTP/1.1 GET", "GET /first HTTP/1.1\r\nHost: a\r\n\r\n"),
        (
            "HTTP/1.0 GET",
            "GET /first HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
        ),
        (
            "POST with a chunked body",
            "POST /first HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
             5\r\nhello\r\n0\r\n\r\n",
        ),
    ];
    let mut results = Vec::new();
    for (case, first) in firsts {
        let r = async {
            let mut c = RawConn::open(p.addr).await;
            // Both requests in one write.
            c.write(format!("{first}{bad}")).await;
            let one = c
                .response(LIMIT)
                .await
                .map_err(|e| format!("no response to the first: {e:?}"))?;
            if one.status != 200 {
                return Err(format!("the first got {}", one.status));
            }
            let two = c
                .response(LIMIT)
                .await
                .map_err(|e| format!("no response to the second: {e:?}"))?;
            if two.status != 400 {
                return Err(format!("the second got {} instead of 400", two.status));
            }
            if c.closed_within(Duration::from_secs(2)).await.is_none() {
                return Err("the connection stayed open after the 400".to_string());
            }
            Ok(())
        }
        .await;
        results.push((case.to_string(), r));
    }
    let heads: Vec<String> = b.received().into_iter().map(|r| r.head).collect();
    all_ok(results);
    assert_eq!(heads.len(), 3, "{heads:?}");
    assert!(
        heads.iter().all(|h| h.contains(" /first HTTP/1.")),
        "{heads:?}"
    );
}

#[tokio::test]
async fn a_content_length_post_then_a_chunked_post_on_one_connection_are_both_200() {
    let b = BodyBackend::start().await;
    let p = proxy_to(&b).await;
    let first = "POST /cl HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
    let second = "POST /te HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
                  5\r\nhello\r\n0\r\n\r\n";
    let mut results = Vec::new();
    for pipelined in [false, true] {
        let r = async {
            let mut c = RawConn::open(p.addr).await;
            if pipelined {
                c.write(format!("{first}{second}")).await;
            } else {
                c.write(first).await;
            }
            let one = c
                .response(LIMIT)
                .await
                .map_err(|e| format!("no response to the first: {e:?}"))?;
            if (one.status, one.text().as_str()) != (200, "hello") {
                return Err(format!("the first got {} {:?}", one.status, one.text()));
            }
            if !pipelined {
                c.write(second).await;
            }
            let two = c
                .response(LIMIT)
                .await
                .map_err(|e| format!("no response to the second: {e:?}"))?;
            if (two.status, two.text().as_str()) != (200, "hello") {
                return Err(format!("the second got {} {:?}", two.status, two.text()));
            }
            Ok(())
        }
        .await;
        let case = if pipelined {
            "in one write"
        } else {
            "one after the other"
        };
        results.push((case.to_string(), r));
    }
    all_ok(results);
    let got = b.received();
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(got.iter().all(|r| r.body == b"hello"), "{got:?}");
}

#[tokio::test]
async fn a_host_with_a_space_or_an_at_sign_is_400_and_reaches_no_backend() {
    let b = BodyBackend::start().await;
    let p = proxy_to(&b).await;
    let mut cases = Vec::new();
    for host in ["a b", "a@b"] {
        for (path, req) in [
            ("GET", format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n")),
            (
                "POST with Content-Length",
                format!("POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\n\r\nhello"),
            ),
            (
                "HTTP/1.0 GET",
                format!("GET / HTTP/1.0\r\nHost: {host}\r\n\r\n"),
            ),
        ] {
            cases.push((format!("{path}, Host: {host}"), req));
        }
    }
    let results = join_all(cases.into_iter().map(|(case, req)| async move {
        (
            case,
            answered_then_closed(p.addr, req.as_bytes(), 400).await,
        )
    }))
    .await;
    let received = b.received();
    all_ok(results);
    assert!(received.is_empty(), "{received:?}");
}

#[tokio::test]
async fn a_chunked_body_on_get_head_or_delete_is_forwarded_and_the_connection_goes_on() {
    let b = BodyBackend::start().await;
    let p = proxy_to(&b).await;
    let mut results = Vec::new();
    for method in ["GET", "HEAD", "DELETE"] {
        let r = async {
            let mut c = RawConn::open(p.addr).await;
            c.write(format!(
                "{method} /body HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
                 5\r\nhello\r\n0\r\n\r\n"
            ))
            .await;
            let resp = c
                .response_to(method == "HEAD", LIMIT)
                .await
                .map_err(|e| format!("no response: {e:?}"))?;
            if resp.status != 200 || resp.header("x-got") != Some("5") {
                return Err(format!(
                    "the backend did not get the 5 bytes: {} x-got {:?}",
                    resp.status,
                    resp.header("x-got")
                ));
            }
            c.write("GET /next HTTP/1.1\r\nHost: a\r\n\r\n").await;
            let next = c
                .response(LIMIT)
                .await
                .map_err(|e| format!("no response to the next request: {e:?}"))?;
            if next.status != 200 {
                return Err(format!("next request got {}", next.status));
            }
            Ok(())
        }
        .await;
        results.push((method.to_string(), r));
    }
    let got = b.received();
    all_ok(results);
    for method in ["GET", "HEAD", "DELETE"] {
        assert!(
            got.iter()
                .any(|r| r.head.starts_with(&format!("{method} /body ")) && r.body == b"hello"),
            "{method}'s body did not reach the backend: {got:?}"
        );
    }
}

#[tokio::test]
async fn malformed_chunked_request_bodies_are_400_and_close_never_502() {
    let b = BodyBackend::start().await;
    let p = proxy_to(&b).await;
    let bodies: [&[u8]; 11] = [
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b"fffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        b"\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhello\n0\r\n\r\n",
        b"5\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloXX0\r\n\r\n",
        b"-5\r\nhello\r\n0\r\n\r\n",
        b"5 5\r\nhello\r\n0\r\n\r\n",
        b"g\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhello\r\n0\r\nbad trailer no colon\r\n\r\n",
        b"+5\r\nhello\r\n0\r\n\r\n",
    ];
    let results = join_all(bodies.iter().map(|body| async move {
        let mut req = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        req.extend_from_slice(body);
        (
            format!("{:?}", String::from_utf8_lossy(body)),
            answered_then_closed(p.addr, &req, 400).await,
        )
    }))
    .await;
    all_ok(results);
}

#[tokio::test]
async fn transfer_codings_the_proxy_does_not_decode_are_501_and_close() {
    let b = BodyBackend::start().await;
    let p = proxy_to(&b).await;
    let results = join_all(
        ["gzip, chunked", "deflate, chunked", "compress, chunked"]
            .into_iter()
            .map(|te| async move {
                let req = format!(
                    "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {te}\r\n\r\n\
                     5\r\nhello\r\n0\r\n\r\n"
                );
                (
                    format!("Transfer-Encoding: {te}"),
                    answered_then_closed(p.addr, req.as_bytes(), 501).await,
                )
            }),
    )
    .await;
    let received = b.received();
    all_ok(results);
    assert!(received.is_empty(), "{received:?}");
}

#[tokio::test]
async fn chunked_twice_is_400_and_closes() {
    let b = BodyBackend::start().await;
    let p = proxy_to(&b).await;
    let results = join_all(
        [
            "Transfer-Encoding: chunked, chunked\r\n",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        ]
        .into_iter()
        .map(|fields| async move {
            let req = format!("POST / HTTP/1.1\r\nHost: a\r\n{fields}\r\n5\r\nhello\r\n0\r\n\r\n");
            (
                format!("{fields:?}"),
                answered_then_closed(p.addr, req.as_bytes(), 400).await,
            )
        }),
    )
    .await;
    let received = b.received();
    all_ok(results);
    assert!(received.is_empty(), "{received:?}");
}

//! The inline HTTP/1.1 client (bodiless requests to plain HTTP/1.1 backends) against
//! backends that write exact bytes: every way RFC 9112 §6.3 frames a response, and the
//! ways a backend can break one.
mod support;

use http::{Method, Request};
use http_body_util::BodyExt;
use std::time::Duration;
use support::*;

async fn proxy_to(b: &RawBackend) -> Proxy {
    Proxy::start(ONE_POOL, &[("b", b.addr)]).await
}

fn req(method: Method, url: &str) -> Request<TestBody> {
    Request::builder()
        .method(method)
        .uri(url)
        .body(full(""))
        .unwrap()
}

/// The response to GET `url` fails, in its head or its body, rather than ending cleanly.
async fn assert_breaks(url: &str) {
    if let Ok(resp) = client().request(req(Method::GET, url)).await {
        assert!(
            resp.into_body().collect().await.is_err(),
            "{url} ended cleanly"
        );
    }
}

const OK_HELLO: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

#[tokio::test]
async fn a_response_head_and_body_in_pieces_arrive_whole_and_the_connection_is_reused() {
    let b = RawBackend::start(|_, _| {
        Reply::pieces(&[
            b"HTTP/1.1 200 OK\r\nConte",
            b"nt-Length: 11\r\nX-A: 1\r\n\r\nhello",
            b" world",
        ])
    })
    .await;
    let p = proxy_to(&b).await;
    for _ in 0..3 {
        let got = get(&p.url("/x")).await;
        assert_eq!((got.status, got.text().as_str()), (200, "hello world"));
        assert_eq!(got.header("x-a"), "1");
    }
    assert_eq!(
        b.conns(),
        1,
        "a cleanly ended response leaves the connection reusable"
    );
    let head = b.heads.lock().unwrap()[0].clone();
    assert!(head.starts_with("GET /x HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("x-forwarded-for: 127.0.0.1\r\n"), "{head}");
}

#[tokio::test]
async fn chunked_bodies_are_decoded_across_pieces_with_their_trailers() {
    let b = RawBackend::start(|_, _| {
        Reply::pieces(&[
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n5\r",
            b"\nhello\r\n6;ext=1\r\n world\r",
            b"\n0\r\nx-sum: 42\r",
            b"\n\r\n",
        ])
    })
    .await;
    let p = proxy_to(&b).await;
    for _ in 0..2 {
        let mut r = req(Method::GET, &p.url("/"));
        // HTTP/1.1 sends trailers only to a client that says it takes them.
        r.headers_mut().insert("te", "trailers".parse().unwrap());
        let resp = client().request(r).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap();
        assert_eq!(body.trailers().unwrap()["x-sum"], "42");
        assert_eq!(body.to_bytes(), "hello world");
    }
    assert_eq!(b.conns(), 1);
}

#[tokio::test]
async fn a_body_delimited_by_close_is_read_to_the_end_and_the_connection_not_reused() {
    let b = RawBackend::start(|_, _| {
        Reply::pieces(&[b"HTTP/1.1 200 OK\r\n\r\nuntil", b" close"]).then_close()
    })
    .await;
    let p = proxy_to(&b).await;
    for _ in 0..2 {
        assert_eq!(get(&p.url("/")).await.text(), "until close");
    }
    assert_eq!(b.conns(), 2);
}

#[tokio::test]
async fn head_204_and_304_have_no_body_whatever_their_headers_say() {
    let b = RawBackend::start(|_, head| {
        if head.starts_with("HEAD") {
            Reply::bytes("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        } else if head.contains("/nc") {
            Reply::bytes("HTTP/1.1 204 No Content\r\n\r\n")
        } else {
            Reply::bytes("HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n")
        }
    })
    .await;
    let p = proxy_to(&b).await;
    let head = send(req(Method::HEAD, &p.url("/"))).await;
    assert_eq!((head.status, head.header("content-length")), (200, "100"));
    assert_eq!(send(req(Method::GET, &p.url("/nc"))).await.status, 204);
    assert_eq!(send(req(Method::GET, &p.url("/nm"))).await.status, 304);
    assert_eq!(b.conns(), 1, "none of them left bytes behind");
}

#[tokio::test]
async fn informational_responses_are_skipped() {
    let b = RawBackend::start(|_, _| {
        Reply::pieces(&[
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
            OK_HELLO,
        ])
    })
    .await;
    let p = proxy_to(&b).await;
    let got = get(&p.url("/")).await;
    assert_eq!((got.status, got.text().as_str()), (200, "hello"));
}

#[tokio::test]
async fn transfer_encoding_overrides_content_length_and_retires_the_connection() {
    let b = RawBackend::start(|_, _| {
        Reply::bytes("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    })
    .await;
    let p = proxy_to(&b).await;
    for _ in 0..2 {
        let got = get(&p.url("/")).await;
        assert_eq!(got.text(), "hello");
        assert_eq!(
            got.header("content-length"),
            "",
            "the suspect length is not passed on"
        );
    }
    assert_eq!(b.conns(), 2);
}

#[tokio::test]
async fn stray_bytes_after_a_response_retire_its_connection() {
    let b = RawBackend::start(|_, _| {
        Reply::bytes(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA")
    })
    .await;
    let p = proxy_to(&b).await;
    for _ in 0..3 {
        assert_eq!(get(&p.url("/")).await.text(), "hello");
    }
    assert_eq!(b.conns(), 3);
}

#[tokio::test]
async fn malformed_responses_are_502_and_the_proxy_keeps_serving() {
    let b = RawBackend::start(|_, head| {
        if head.contains("/bad-length") {
            Reply::bytes("HTTP/1.1 200 OK\r\nContent-Length: 5x\r\n\r\nhello")
        } else if head.contains("/two-lengths") {
            Reply::bytes("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!")
        } else if head.contains("/garbage") {
            Reply::bytes("SSH-2.0-OpenSSH\r\n\r\n")
        } else if head.contains("/switch") {
            Reply::bytes("HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n")
        } else if head.contains("/bad-chunk") {
            Reply::bytes("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        } else {
            Reply::bytes(OK_HELLO)
        }
    })
    .await;
    let p = proxy_to(&b).await;
    // A chunk that breaks before anything reached the client still becomes a 502.
    for path in [
        "/bad-length",
        "/two-lengths",
        "/garbage",
        "/switch",
        "/bad-chunk",
    ] {
        assert_eq!(get(&p.url(path)).await.status, 502, "{path}");
    }
    assert_eq!(get(&p.url("/fine")).await.text(), "hello");
}

#[tokio::test]
async fn a_body_cut_short_breaks_the_client_response_instead_of_ending_it() {
    let b = RawBackend::start(|_, head| {
        if head.contains("/short-at-once") {
            Reply::bytes("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello").then_close()
        } else if head.contains("/short") {
            // The head and the first bytes reach the client before the backend closes.
            Reply::pieces(&[b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello", b"!"])
                .then_close()
        } else {
            Reply::bytes(OK_HELLO)
        }
    })
    .await;
    let p = proxy_to(&b).await;
    assert_breaks(&p.url("/short")).await;
    // Nothing had reached the client yet: it gets a 502 rather than a broken 200.
    assert_eq!(get(&p.url("/short-at-once")).await.status, 502);
    assert_eq!(get(&p.url("/fine")).await.text(), "hello");
}

#[tokio::test]
async fn http_1_0_responses_close_unless_kept_alive() {
    let b = RawBackend::start(|_, head| {
        if head.contains("/ka") {
            Reply::bytes("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nka")
        } else {
            Reply::bytes("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nno").then_close()
        }
    })
    .await;
    let p = proxy_to(&b).await;
    assert_eq!(get(&p.url("/ka")).await.text(), "ka");
    assert_eq!(get(&p.url("/ka")).await.text(), "ka");
    assert_eq!(b.conns(), 1);
    assert_eq!(get(&p.url("/no")).await.text(), "no");
    assert_eq!(get(&p.url("/ka")).await.text(), "ka");
    assert_eq!(b.conns(), 2);
}

#[tokio::test]
async fn keep_alive_connections_the_backend_closed_cost_no_request() {
    // The backend closes every connection right after its response, without saying so:
    // the proxy finds each pooled connection dead, by its readiness or on use, and goes
    // again on a new one.
    let b = RawBackend::start(|_, _| Reply::bytes(OK_HELLO).then_close()).await;
    let p = proxy_to(&b).await;
    for i in 0..30 {
        let got = get(&p.url("/")).await;
        assert_eq!(
            (got.status, got.text().as_str()),
            (200, "hello"),
            "request {i}"
        );
    }
    assert_eq!(b.conns(), 30);
}

#[tokio::test]
async fn a_large_body_streams_through_in_order() {
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let expected = body.clone();
    let b = RawBackend::start(move |_, _| {
        let mut bytes =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        bytes.extend_from_slice(&body);
        Reply::bytes(bytes)
    })
    .await;
    let p = proxy_to(&b).await;
    let got = tokio::time::timeout(Duration::from_secs(20), get(&p.url("/big")))
        .await
        .unwrap();
    assert_eq!(got.body.len(), expected.len());
    assert!(got.body == expected[..]);
}

#[tokio::test]
async fn a_close_met_on_the_wire_resends_idempotent_requests_only() {
    // Every connection answers its first request and silently drops the second: a pooled
    // connection that looks open when taken and closes once the request is on it.
    let b = RawBackend::start(|n, _| {
        if n == 0 {
            Reply::bytes(OK_HELLO)
        } else {
            Reply {
                writes: Vec::new(),
                close: true,
            }
        }
    })
    .await;
    let p = proxy_to(&b).await;
    for i in 0..5 {
        let got = get(&p.url("/")).await;
        assert_eq!((got.status, got.text().as_str()), (200, "hello"), "GET {i}");
    }
    // A POST may have been acted on before the close: it is not sent again.
    assert_eq!(send(req(Method::POST, &p.url("/"))).await.status, 502);
    let posts = b
        .heads
        .lock()
        .unwrap()
        .iter()
        .filter(|h| h.starts_with("POST"))
        .count();
    assert_eq!(posts, 1);
}

#[tokio::test]
async fn a_response_saying_connection_close_retires_its_connection() {
    let b = RawBackend::start(|_, _| {
        Reply::bytes("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello")
    })
    .await;
    let p = proxy_to(&b).await;
    for _ in 0..2 {
        let got = get(&p.url("/")).await;
        assert_eq!(got.text(), "hello");
        assert_eq!(got.header("connection"), "", "hop-by-hop: not passed on");
    }
    assert_eq!(b.conns(), 2);
}

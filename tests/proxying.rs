//! What the proxy does to requests and responses on the way through.
mod support;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use std::sync::Arc;
use std::time::Duration;
use support::*;
use tokio::sync::{Notify, mpsc};

/// A body fed from a channel, so a test decides when each frame goes out.
fn channel_body() -> (mpsc::Sender<Result<Frame<Bytes>, BoxError>>, TestBody) {
    let (tx, rx) = mpsc::channel(4);
    let stream = tokio_stream_from(rx);
    (tx, BodyExt::boxed(StreamBody::new(stream)))
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn fnv(data: &[u8], mut h: u64) -> u64 {
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

#[tokio::test]
async fn a_5mb_body_streams_both_ways_intact() {
    // The backend streams the request body straight back, frame by frame.
    let b = Backend::serve(|req| {
        Box::pin(async move {
            let body = req
                .into_body()
                .map_err(|e| -> BoxError { e.into() })
                .boxed();
            Response::new(body)
        })
    })
    .await;
    let p = Proxy::start(ONE_POOL, &[("b", b.addr)]).await;
    let data: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let sent = fnv(&data, 0xcbf29ce484222325);
    let (tx, body) = channel_body();
    let feeder = tokio::spawn(async move {
        for chunk in data.chunks(64 * 1024) {
            tx.send(Ok(Frame::data(Bytes::copy_from_slice(chunk))))
                .await
                .unwrap();
        }
    });
    let resp = client()
        .request(Request::post(p.url("/upload")).body(body).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let (mut n, mut h) = (0usize, 0xcbf29ce484222325);
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.unwrap().into_data() {
            n += d.len();
            h = fnv(&d, h);
        }
    }
    feeder.await.unwrap();
    assert_eq!(n, 5 * 1024 * 1024);
    assert_eq!(h, sent);
}

#[tokio::test]
async fn response_streams_before_the_backend_finishes() {
    let go_on = Arc::new(Notify::new());
    let g = go_on.clone();
    let b = Backend::serve(move |_req| {
        let g = g.clone();
        Box::pin(async move {
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                tx.send(Ok(Frame::data(Bytes::from_static(b"first,"))))
                    .await
                    .unwrap();
                g.notified().await;
                tx.send(Ok(Frame::data(Bytes::from_static(b"second"))))
                    .await
                    .unwrap();
            });
            Response::new(body)
        })
    })
    .await;
    let p = Proxy::start(ONE_POOL, &[("b", b.addr)]).await;
    let resp = client()
        .request(Request::get(p.url("/")).body(full("")).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.headers()["transfer-encoding"], "chunked");
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "first,");
    go_on.notify_one();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "second");
}

#[tokio::test]
async fn request_body_reaches_the_backend_before_the_client_finishes() {
    let (seen_tx, mut seen_rx) = mpsc::channel::<Bytes>(1);
    let b = Backend::serve(move |req| {
        let seen = seen_tx.clone();
        Box::pin(async move {
            let mut body = req.into_body();
            let mut all = Vec::new();
            while let Some(f) = body.frame().await {
                if let Ok(d) = f.unwrap().into_data() {
                    let _ = seen.try_send(d.clone());
                    all.extend_from_slice(&d);
                }
            }
            Response::new(full(all))
        })
    })
    .await;
    let p = Proxy::start(ONE_POOL, &[("b", b.addr)]).await;
    let (tx, body) = channel_body();
    let req = tokio::spawn(send(Request::post(p.url("/")).body(body).unwrap()));
    tx.send(Ok(Frame::data(Bytes::from_static(b"part1;"))))
        .await
        .unwrap();
    assert_eq!(seen_rx.recv().await.unwrap(), "part1;");
    tx.send(Ok(Frame::data(Bytes::from_static(b"part2"))))
        .await
        .unwrap();
    drop(tx);
    assert_eq!(req.await.unwrap().text(), "part1;part2");
}

#[tokio::test]
async fn chunked_responses_and_trailers_pass_through() {
    let b = Backend::serve(|req| {
        Box::pin(async move {
            let te = req.headers().get("te").cloned();
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                for part in ["a", "bb", "ccc"] {
                    tx.send(Ok(Frame::data(Bytes::from(part)))).await.unwrap();
                }
                let mut t = HeaderMap::new();
                t.insert("x-checksum", "abc123".parse().unwrap());
                tx.send(Ok(Frame::trailers(t))).await.unwrap();
            });
            Response::builder()
                .header("trailer", "x-checksum")
                .header(
                    "x-te-seen",
                    te.map_or("none".to_string(), |v| v.to_str().unwrap().to_string()),
                )
                .body(body)
                .unwrap()
        })
    })
    .await;
    let p = Proxy::start(ONE_POOL, &[("b", b.addr)]).await;
    let resp = client()
        .request(
            Request::get(p.url("/"))
                .header("te", "trailers")
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-te-seen"], "trailers");
    let collected = resp.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["x-checksum"], "abc123");
    assert_eq!(collected.to_bytes(), "abbccc");
}

#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded_either_way() {
    let b = Backend::serve(|req| {
        Box::pin(async move {
            let names: Vec<String> = req.headers().keys().map(|k| k.to_string()).collect();
            Response::builder()
                .header("connection", "x-internal, close")
                .header("x-internal", "secret")
                .header("keep-alive", "timeout=5")
                .header("proxy-connection", "keep-alive")
                .header("x-kept", "1")
                .body(full(names.join(",")))
                .unwrap()
        })
    })
    .await;
    let p = Proxy::start(ONE_POOL, &[("b", b.addr)]).await;
    let got = send(
        Request::get(p.url("/"))
            .header("connection", "keep-alive, x-a")
            .header("connection", "X-B")
            .header("x-a", "1")
            .header("x-b", "2")
            .header("keep-alive", "timeout=5")
            .header("proxy-connection", "keep-alive")
            .header("te", "gzip")
            .header("upgrade", "h2c")
            .header("x-end-to-end", "yes")
            .body(full(""))
            .unwrap(),
    )
    .await;
    let seen: Vec<String> = got.text().split(',').map(str::to_string).collect();
    for gone in [
        "connection",
        "x-a",
        "x-b",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
    ] {
        assert!(
            !seen.iter().any(|s| s == gone),
            "{gone} was forwarded: {seen:?}"
        );
    }
    assert!(seen.iter().any(|s| s == "x-end-to-end"), "{seen:?}");
    assert_eq!(got.header("x-kept"), "1");
    assert_eq!(got.header("x-internal"), "");
    assert_eq!(got.header("keep-alive"), "");
    assert_eq!(got.header("proxy-connection"), "");
}

#[tokio::test]
async fn forwarded_headers_and_request_ids() {
    let b = Backend::echo("b").await;
    let p = Proxy::start(ONE_POOL, &[("b", b.addr)]).await;
    let got = send(
        Request::get(p.url("/x"))
            .header("host", "shop.test:8080")
            .header("x-forwarded-for", "10.0.0.1")
            .header("x-request-id", "req-42")
            .body(full(""))
            .unwrap(),
    )
    .await;
    let h = &got.json()["headers"];
    assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "shop.test:8080");
    assert_eq!(h["host"], "shop.test:8080");
    assert_eq!(h["x-request-id"], "req-42");
    assert_eq!(got.header("x-request-id"), "req-42");

    let fresh = get(&p.url("/y")).await;
    let id = fresh.header("x-request-id").to_string();
    assert_eq!(id.len(), 32);
    assert_eq!(fresh.json()["headers"]["x-request-id"], id.as_str());
    assert_eq!(fresh.json()["headers"]["x-forwarded-for"], "127.0.0.1");
}

#[tokio::test]
async fn websocket_echo_through_the_proxy() {
    let (addr, server) = websocket_echo().await;
    let p = Proxy::start(ONE_POOL, &[("b", addr)]).await;
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/chat", p.addr))
        .await
        .expect("websocket handshake through the proxy");
    assert_eq!(resp.status(), 101);
    for text in ["hello", "through", "the proxy"] {
        ws.send(tokio_tungstenite::tungstenite::Message::text(text))
            .await
            .unwrap();
        let back = ws.next().await.unwrap().unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), text);
    }
    ws.close(None).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    let b = Backend::echo("b").await;
    let p = Proxy::start(ONE_POOL, &[("b", b.addr)]).await;
    for _ in 0..20 {
        assert_eq!(get(&p.url("/")).await.status, 200);
    }
    assert_eq!(b.hits(), 20);
    assert_eq!(b.conns.load(std::sync::atomic::Ordering::SeqCst), 1);
}

//! Behaviours that must hold on every internal path: each test runs over every request
//! shape of `support::matrix` (HTTP/1.1 GET, POST with Content-Length, POST chunked,
//! HTTP/1.0, HTTP/2 over TLS, a TLS pool, an h2c pool) and reports every failing shape.
mod support;

use bytes::Bytes;
use http::Response;
use http_body::Frame;
use http_body_util::BodyExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use support::matrix::*;
use support::{BoxError, full};

fn fnv(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// `n` bytes of a fixed pseudo-random pattern (not UTF-8, no repeating short period).
fn pattern(n: usize) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

fn is_fresh_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// A backend that answers with the request body it received, and describes the request
/// in `x-method`, `x-path` (with query), `x-version`, `x-len` and `x-hash` (FNV-1a).
fn mirror() -> Kind {
    Kind::serve(|req| {
        Box::pin(async move {
            let method = req.method().to_string();
            let path = req
                .uri()
                .path_and_query()
                .map_or("/".to_string(), |p| p.to_string());
            let version = format!("{:?}", req.version());
            let body = req
                .into_body()
                .collect()
                .await
                .expect("the request body")
                .to_bytes();
            Response::builder()
                .header("x-method", method)
                .header("x-path", path)
                .header("x-version", version)
                .header("x-len", body.len())
                .header("x-hash", format!("{:016x}", fnv(&body)))
                .body(full(body))
                .unwrap()
        })
    })
}

/// A backend that answers with JSON `{"host", "version", "headers": {name: [values]}}`
/// (each field line a value of its own, so folding shows), and adds hop-by-hop fields of
/// its own to the response.
fn inspector() -> Kind {
    Kind::serve(|req| {
        Box::pin(async move {
            let mut headers = serde_json::Map::new();
            for (k, v) in req.headers() {
                let list = headers
                    .entry(k.as_str())
                    .or_insert_with(|| serde_json::Value::Array(Vec::new()));
                if let serde_json::Value::Array(l) = list {
                    l.push(String::from_utf8_lossy(v.as_bytes()).into());
                }
            }
            // HTTP/2 carries the host as `:authority`, which hyper puts in the URI.
            let host = req
                .headers()
                .get("host")
                .map(|h| h.to_str().unwrap().to_string())
                .or_else(|| req.uri().authority().map(|a| a.to_string()))
                .unwrap_or_default();
            let body = serde_json::json!({
                "host": host,
                "version": format!("{:?}", req.version()),
                "headers": headers,
            });
            let _ = req.into_body().collect().await;
            Response::builder()
                .header("connection", "x-secret")
                .header("x-secret", "s")
                .header("keep-alive", "timeout=5")
                .header("proxy-connection", "keep-alive")
                .header("x-kept", "1")
                .body(full(body.to_string()))
                .unwrap()
        })
    })
}

/// The values the inspector saw for header `name`.
fn seen(json: &serde_json::Value, name: &str) -> Vec<String> {
    json["headers"][name]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// A short plain-text error body with a request id.
fn assert_error(got: &support::Got, status: u16) {
    assert_eq!(got.status, status, "body: {:?}", got.text());
    assert!(
        got.header("content-type").starts_with("text/plain"),
        "content-type {:?}",
        got.header("content-type")
    );
    assert!(
        got.text().starts_with(&format!("{status} ")),
        "body {:?}",
        got.text()
    );
    assert!(
        is_fresh_id(got.header("x-request-id")),
        "x-request-id {:?}",
        got.header("x-request-id")
    );
}

#[tokio::test]
async fn the_backend_gets_the_normalized_path_the_query_the_method_and_the_body_intact() {
    every_shape(|shape| async move {
        let m = Matrix::start(shape, Spec::new(vec![mirror()])).await;
        let body = pattern(70_000);
        // Unreserved escapes decoded, dot segments resolved; `//`, `%2F` and the query kept.
        let req = Req::post(
            "/app/%7Euser/./a/../b//c%2Fd?q=%2F&x=1&y=/../z",
            body.clone(),
        );
        let got = m.send(&req).await;
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(
            got.header("x-path"),
            "/app/~user/b//c%2Fd?q=%2F&x=1&y=/../z"
        );
        assert_eq!(got.header("x-method"), req.method_for(shape));
        assert_eq!(
            got.header("x-version"),
            format!("{:?}", shape.upstream_version())
        );
        let sent = req.body_for(shape).unwrap_or_default();
        assert_eq!(got.header("x-len"), sent.len().to_string());
        assert_eq!(got.header("x-hash"), format!("{:016x}", fnv(sent)));
        assert_eq!(got.body.len(), sent.len(), "response body length");
        assert!(got.body == sent, "response body differs");

        // Another method, and one without a body in every shape.
        let req = Req::get("/app/item/7?v=2").method("DELETE");
        let del = m.send(&req).await;
        assert_eq!(del.status, 200);
        assert_eq!(del.header("x-method"), "DELETE");
        assert_eq!(del.header("x-path"), "/app/item/7?v=2");
        let sent = req.body_for(shape).unwrap_or_default();
        assert_eq!(del.header("x-len"), sent.len().to_string());
        assert_eq!(m.backends[0].hits(), 2);
    })
    .await;
}

#[tokio::test]
async fn forwarded_fields_request_ids_and_hop_by_hop_fields() {
    every_shape(|shape| async move {
        let m = Matrix::start(shape, Spec::new(vec![inspector()])).await;
        let mut req = Req::get("/app/h")
            .header("X-Forwarded-For", "10.0.0.1")
            .header("X-Forwarded-For", "10.0.0.2, 10.0.0.3")
            .header("TE", "trailers")
            .header("X-Forwarded-Proto", "spoofed")
            .header("X-Forwarded-Host", "spoofed.test")
            .header("X-End", "yes");
        // HTTP/2 has no connection-specific fields (RFC 9113 §8.2.2): only `TE: trailers`
        // may be sent there. HTTP/1.0 gets no `keep-alive` token, so the exchange ends
        // with the close. `Upgrade` without `Connection: upgrade` is no upgrade request.
        if shape != Shape::H2Tls {
            req = req
                .header("Connection", "X-Hop")
                .header("Connection", "x-hop2")
                .header("X-Hop", "1")
                .header("X-Hop2", "2")
                .header("Keep-Alive", "timeout=5")
                .header("Proxy-Connection", "keep-alive")
                .header("Upgrade", "foo/1")
                .header("TE", "deflate");
        }
        let got = m.send(&req).await;
        assert_eq!(got.status, 200, "{}", got.text());
        let j = got.json();
        assert_eq!(
            seen(&j, "x-forwarded-for"),
            ["10.0.0.1, 10.0.0.2, 10.0.0.3, 127.0.0.1"],
            "one folded X-Forwarded-For"
        );
        assert_eq!(seen(&j, "x-forwarded-proto"), [shape.proto()]);
        assert_eq!(seen(&j, "x-forwarded-host"), [HOST]);
        assert_eq!(j["host"], HOST);
        let ids = seen(&j, "x-request-id");
        assert_eq!(ids.len(), 1, "x-request-id {ids:?}");
        assert!(is_fresh_id(&ids[0]), "x-request-id {ids:?}");
        assert_eq!(
            got.header("x-request-id"),
            ids[0],
            "the client gets the same id"
        );
        for gone in [
            "connection",
            "x-hop",
            "x-hop2",
            "keep-alive",
            "proxy-connection",
            "upgrade",
        ] {
            assert!(seen(&j, gone).is_empty(), "{gone} forwarded: {j}");
        }
        assert_eq!(
            seen(&j, "te"),
            ["trailers"],
            "TE other than trailers dropped"
        );
        assert_eq!(seen(&j, "x-end"), ["yes"]);
        // The backend's own hop-by-hop fields stay with the proxy.
        assert_eq!(got.header("x-kept"), "1");
        for gone in ["x-secret", "keep-alive", "proxy-connection"] {
            assert_eq!(got.header(gone), "", "{gone} reached the client");
        }
        for c in got.headers.get_all("connection") {
            let c = c.to_str().unwrap().to_ascii_lowercase();
            assert!(!c.contains("x-secret"), "the backend's connection: {c}");
        }

        // A client's own id is kept, both ways.
        let mine = m
            .send(&Req::get("/app/h").header("X-Request-Id", "client-id-7"))
            .await;
        assert_eq!(seen(&mine.json(), "x-request-id"), ["client-id-7"]);
        assert_eq!(mine.header("x-request-id"), "client-id-7");

        // An empty id is no id: both sides see the same fresh one.
        let empty = m.send(&Req::get("/app/h").header("X-Request-Id", "")).await;
        let ids = seen(&empty.json(), "x-request-id");
        assert!(
            ids.len() == 1 && is_fresh_id(&ids[0]),
            "x-request-id {ids:?}"
        );
        assert_eq!(empty.header("x-request-id"), ids[0]);

        // Fields the client names in `Connection` go before the proxy adds its own: a
        // named X-Forwarded-For cannot pass, a named X-Request-Id is replaced.
        if shape != Shape::H2Tls {
            let named = m
                .send(
                    &Req::get("/app/h")
                        .header("Connection", "x-forwarded-for, X-Request-Id")
                        .header("X-Forwarded-For", "6.6.6.6")
                        .header("X-Request-Id", "abc"),
                )
                .await;
            let j = named.json();
            assert_eq!(seen(&j, "x-forwarded-for"), ["127.0.0.1"]);
            let ids = seen(&j, "x-request-id");
            assert!(
                ids.len() == 1 && is_fresh_id(&ids[0]),
                "x-request-id {ids:?}"
            );
            assert_eq!(named.header("x-request-id"), ids[0]);
        }
    })
    .await;
}

#[tokio::test]
async fn a_retry_hides_a_refusing_backend_in_either_order() {
    every_shape(|shape| async move {
        // Weights 1:2 make the smooth round robin cycle live, refusing, live; the retry's
        // pick moves it on too, so from any starting point consecutive requests alternate
        // between picking the refusing backend first and the live one (with 1:1, one
        // refusing-first request would make every later one refusing-first). Two connect
        // failures stay below the five that would eject it.
        let m = Matrix::start(
            shape,
            Spec::new(vec![Kind::Refusing, mirror()])
                .weights(&[1, 2])
                .pool("retries: 1"),
        )
        .await;
        for i in 0..4 {
            let req = Req::post(&format!("/app/r/{i}"), format!("payload {i}"));
            let got = m.send(&req).await;
            assert_eq!(got.status, 200, "request {i}: {}", got.text());
            let sent = req.body_for(shape).unwrap_or_default();
            assert_eq!(got.header("x-len"), sent.len().to_string(), "request {i}");
            assert!(got.body == sent, "request {i}: body {:?}", got.text());
        }
        assert_eq!(
            m.backends[1].hits(),
            4,
            "each request served once, by the live one"
        );
    })
    .await;
}

#[tokio::test]
async fn without_retries_a_refusing_backend_is_502() {
    every_shape(|shape| async move {
        let m = Matrix::start(shape, Spec::new(vec![Kind::Refusing]).pool("retries: 0")).await;
        let got = m.send(&Req::post("/app/x", b"body".to_vec())).await;
        assert_error(&got, 502);
    })
    .await;
}

#[tokio::test]
async fn no_route_is_404_in_plain_text() {
    every_shape(|shape| async move {
        let m = Matrix::start(shape, Spec::default()).await;
        let got = m.send(&Req::post("/elsewhere?x=1", b"body".to_vec())).await;
        assert_error(&got, 404);
        assert_eq!(m.backends[0].hits(), 0);
    })
    .await;
}

#[tokio::test]
async fn a_bad_path_is_400() {
    every_shape(|shape| async move {
        let m = Matrix::start(shape, Spec::default()).await;
        // Every client here writes the target as given (hyper's h2 client included).
        for path in ["/app/%zz", "/app/../../x", "/%zz?q=1"] {
            let got = m.send(&Req::get(path)).await;
            assert_error(&got, 400);
        }
        assert_eq!(m.backends[0].hits(), 0);
    })
    .await;
}

#[tokio::test]
async fn an_unreachable_backend_is_502() {
    every_shape(|shape| async move {
        let m = Matrix::start(shape, Spec::new(vec![Kind::Refusing])).await;
        let got = m.send(&Req::post("/app/x", b"body".to_vec())).await;
        assert_error(&got, 502);
    })
    .await;
}

#[tokio::test]
async fn a_slow_backend_is_504() {
    every_shape(|shape| async move {
        // The behaviour under test is the delay itself: bounded, well past the timeout.
        let slow = Kind::serve(|req| {
            Box::pin(async move {
                let _ = req.into_body().collect().await;
                tokio::time::sleep(Duration::from_secs(3)).await;
                Response::new(full("late"))
            })
        });
        let m = Matrix::start(
            shape,
            Spec::new(vec![slow]).pool("timeouts: {response: 300ms}"),
        )
        .await;
        let got = m.send(&Req::post("/app/slow", b"body".to_vec())).await;
        assert_error(&got, 504);
        assert_eq!(m.backends[0].hits(), 1, "a response timeout is not retried");
    })
    .await;
}

#[tokio::test]
async fn a_backend_that_stalls_mid_body_is_cut_at_the_read_timeout() {
    every_shape(|shape| async move {
        // The backend sends ten bytes of a hundred, then nothing (for a bounded while: the
        // stall is the behaviour under test).
        let stalling = Kind::serve(|req| {
            Box::pin(async move {
                let _ = req.into_body().collect().await;
                let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
                tokio::spawn(async move {
                    let _ = tx
                        .send(Ok(Frame::data(Bytes::from_static(b"0123456789"))))
                        .await;
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    drop(tx);
                });
                let body = http_body_util::StreamBody::new(futures_util::stream::unfold(
                    rx,
                    |mut rx| async move { rx.recv().await.map(|f| (f, rx)) },
                ));
                Response::builder()
                    .header("content-length", "100")
                    .body(body.boxed())
                    .expect("a response")
            })
        });
        let m = Matrix::start(
            shape,
            Spec::new(vec![stalling]).pool("timeouts: {read: 300ms}"),
        )
        .await;
        let (took, whole) = m
            .send_until_end(&Req::get("/app/stall"), Duration::from_secs(4))
            .await;
        assert!(!whole, "a stalled response ended whole");
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(3),
            "cut after {took:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    every_shape(|shape| async move {
        if shape == Shape::Get {
            // This shape sends no body at all.
            skip(shape, "no body");
            return;
        }
        let got_bytes = Arc::new(AtomicUsize::new(0));
        let g = got_bytes.clone();
        let counter = Kind::serve(move |req| {
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
        });
        let m = Matrix::start(
            shape,
            Spec::new(vec![counter]).top("limits: {max_request_body_bytes: 10}"),
        )
        .await;
        let fits = m.send(&Req::post("/app/up", vec![b'x'; 10])).await;
        assert_eq!(fits.status, 200, "10 bytes fit: {}", fits.text());
        let over = m.send(&Req::post("/app/up", vec![b'y'; 11])).await;
        assert_error(&over, 413);
        if shape == Shape::PostChunked {
            // A chunked body is not declared: it is cut before the chunk that crosses the
            // limit, so the backend may have seen the request, but never more than 10
            // bytes of it (on top of the 10 of the request that fit).
            let n = got_bytes.load(Ordering::SeqCst);
            assert!(n <= 20, "the backend got {n} bytes");
        } else {
            // A declared body over the limit never reaches a backend.
            assert_eq!(m.backends[0].hits(), 1, "only the one that fits");
            assert_eq!(got_bytes.load(Ordering::SeqCst), 10);
        }
    })
    .await;
}

/// The fields every access log line must have for a request `req` answered by `got`.
fn assert_line(
    line: &serde_json::Value,
    m: &Matrix,
    req: &Req,
    got: &support::Got,
    client: std::net::SocketAddr,
) {
    let shape = m.shape;
    assert_eq!(line["status"], got.status, "{line}");
    assert_eq!(line["method"], req.method_for(shape), "{line}");
    assert_eq!(line["path"], req.path, "{line}");
    assert_eq!(line["bytes"], got.body.len(), "{line}");
    assert_eq!(line["request_id"], got.header("x-request-id"), "{line}");
    assert!(is_fresh_id(got.header("x-request-id")), "{line}");
    assert_eq!(line["host"], HOST, "{line}");
    assert_eq!(line["listener"], shape.listener(), "{line}");
    assert_eq!(line["client"], client.to_string(), "{line}");
    assert!(line["time"].is_string() && line["duration_ms"].is_number());
}

#[tokio::test]
async fn the_access_log_has_one_line_per_request_with_every_field() {
    every_shape(|shape| async move {
        let m = Matrix::start(shape, Spec::default().log()).await;
        let backend = m.backends[0].addr.to_string();
        let ok = Req::post("/app/logged?x=1&y=2", b"hello".to_vec());
        let miss = Req::post("/nowhere?z=3", b"hello".to_vec());
        // 200, 404, 200: each line is the next request's, so no request logs twice.
        for (req, status) in [(&ok, 200), (&miss, 404), (&ok, 200)] {
            let (got, client) = m.send_from(req).await;
            assert_eq!(got.status, status);
            let line = m.next_log().await;
            assert_line(&line, &m, req, &got, client);
            let (route, pool, b) = if status == 200 {
                (ROUTE, POOL, backend.as_str())
            } else {
                ("-", "-", "-")
            };
            assert_eq!(
                (&line["route"], &line["pool"], &line["backend"]),
                (&route.into(), &pool.into(), &b.into()),
                "{line}"
            );
        }

        // A 502: the backend is the one last tried.
        let dead = Matrix::start(shape, Spec::new(vec![Kind::Refusing]).log()).await;
        let req = Req::post("/app/dead", b"x".to_vec());
        let (got, client) = dead.send_from(&req).await;
        assert_eq!(got.status, 502);
        let line = dead.next_log().await;
        assert_line(&line, &dead, &req, &got, client);
        assert_eq!(line["route"], ROUTE, "{line}");
        assert_eq!(line["pool"], POOL, "{line}");
        assert_eq!(line["backend"], dead.backends[0].addr.to_string(), "{line}");
    })
    .await;
}

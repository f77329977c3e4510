//! Routing over the wire: which backend answers which request.
mod support;

use http::Request;
use std::time::Duration;
use support::*;

const TWO_POOLS: &str = r#"
listeners: [{name: web, bind: "{listen}"}]
access_log: off
pools:
  a: {backends: [{addr: "{a}"}]}
  b: {backends: [{addr: "{b}"}]}
  c: {backends: [{addr: "{c}"}]}
routes:
  - {name: root, match: {prefix: /}, pool: c}
  - {name: canary, match: {prefix: /api/a, headers: {x-canary: "1"}}, pool: b}
  - {name: api-a, match: {prefix: /api/a}, pool: a}
  - {name: api-b, match: {prefix: /api/b}, pool: b}
  - {name: item, match: {path: "/api/a/items/{id}", methods: [PUT]}, pool: c}
  - {name: shop, match: {host: shop.test, prefix: /api/a}, pool: c}
  - {name: wild, match: {host: "*.shop.test", prefix: /}, pool: b}
"#;

async fn setup() -> (Proxy, [Backend; 3]) {
    let (a, b, c) = (
        Backend::echo("a").await,
        Backend::echo("b").await,
        Backend::echo("c").await,
    );
    let p = Proxy::start(TWO_POOLS, &[("a", a.addr), ("b", b.addr), ("c", c.addr)]).await;
    (p, [a, b, c])
}

async fn backend_for(req: http::request::Builder) -> String {
    let got = send(req.body(full("")).unwrap()).await;
    assert_eq!(got.status, 200, "{}", got.text());
    got.header("x-backend").to_string()
}

#[tokio::test]
async fn routes_by_prefix_with_segment_boundaries() {
    let (p, _b) = setup().await;
    assert_eq!(backend_for(Request::get(p.url("/api/a"))).await, "a");
    assert_eq!(backend_for(Request::get(p.url("/api/a/x/y"))).await, "a");
    assert_eq!(backend_for(Request::get(p.url("/api/b/1"))).await, "b");
    // Not a segment of /api/a: falls to the root prefix.
    assert_eq!(backend_for(Request::get(p.url("/api/aX"))).await, "c");
}

#[tokio::test]
async fn conditions_fall_back_to_less_specific_routes() {
    let (p, _b) = setup().await;
    let canary = Request::get(p.url("/api/a/1")).header("x-canary", "1");
    assert_eq!(backend_for(canary).await, "b");
    let put = Request::put(p.url("/api/a/items/7"));
    assert_eq!(backend_for(put).await, "c");
    // Same path, method condition fails: the prefix route takes it.
    assert_eq!(
        backend_for(Request::get(p.url("/api/a/items/7"))).await,
        "a"
    );
}

#[tokio::test]
async fn host_tiers_exact_then_wildcard_then_any() {
    let (p, _b) = setup().await;
    let host = |h: &str, path: &str| Request::get(p.url(path)).header("host", h);
    assert_eq!(backend_for(host("SHOP.test:8080", "/api/a/1")).await, "c");
    assert_eq!(backend_for(host("shop.test", "/other")).await, "c");
    assert_eq!(backend_for(host("x.shop.test", "/api/a/1")).await, "b");
    assert_eq!(backend_for(host("y.x.shop.test", "/api/a/1")).await, "a");
}

#[tokio::test]
async fn the_normalized_path_and_the_query_are_forwarded() {
    let (p, _b) = setup().await;
    let got = send(
        Request::get(p.url("/api/b/./x/../%79%7E/%2F?q=%2E&x=1"))
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(got.header("x-backend"), "b");
    assert_eq!(got.json()["path"], "/api/b/y~/%2F?q=%2E&x=1");
}

#[tokio::test]
async fn dot_segments_cannot_escape_the_root() {
    let (p, b) = setup().await;
    let resp = raw(
        p.addr,
        b"GET /api/../../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(resp.contains("path climbs above the root"), "{resp}");
    let bad = raw(
        p.addr,
        b"GET /api/a/%zz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
    assert!(b.iter().all(|b| b.hits() == 0));
}

#[tokio::test]
async fn a_request_target_must_be_origin_or_absolute_form() {
    let (p, _b) = setup().await;
    for target in ["*", "shop.test:80"] {
        let req = format!("OPTIONS {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let resp = raw(p.addr, req.as_bytes(), Duration::from_secs(5)).await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{target}: {resp}");
    }
    let no_host = raw(
        p.addr,
        b"GET /api/a HTTP/1.1\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(no_host.starts_with("HTTP/1.1 400"), "{no_host}");
    let http10 = raw(
        p.addr,
        b"GET /api/a HTTP/1.0\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        http10.starts_with("HTTP/1.0 200") || http10.starts_with("HTTP/1.1 200"),
        "{http10}"
    );
}

#[tokio::test]
async fn absolute_form_routes_by_its_authority_and_forwards_origin_form() {
    let (p, _b) = setup().await;
    let resp = raw(
        p.addr,
        b"GET http://SHOP.test:8080/api/a/1?z=1 HTTP/1.1\r\nHost: ignored.test\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(resp.contains("x-backend: c"), "{resp}");
    let body = &resp[resp.find("\r\n\r\n").unwrap() + 4..];
    let v: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
    assert_eq!(v["path"], "/api/a/1?z=1");
    assert_eq!(v["headers"]["host"], "SHOP.test:8080");
}

#[tokio::test]
async fn no_route_is_a_plain_text_404() {
    let yaml = r#"
listeners: [{name: web, bind: "{listen}"}]
access_log: off
pools: {a: {backends: [{addr: "{a}"}]}}
routes: [{name: only, match: {prefix: /only}, pool: a}]
"#;
    let a = Backend::echo("a").await;
    let p = Proxy::start(yaml, &[("a", a.addr)]).await;
    let got = get(&p.url("/elsewhere")).await;
    assert_eq!(got.status, 404);
    assert_eq!(got.header("content-type"), "text/plain; charset=utf-8");
    assert_eq!(got.text(), "404 Not Found\n");
    assert_eq!(got.header("x-request-id").len(), 32);
    assert_eq!(a.hits(), 0);
}

#[tokio::test]
async fn h2c_prior_knowledge_gets_the_same_routing() {
    let (p, _b) = setup().await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<TestBody>();
    let resp = client
        .request(Request::get(p.url("/api/b/h2")).body(full("")).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.headers()["x-backend"], "b");
    let miss = client
        .request(
            Request::get(p.url("/api/a/1"))
                .header("host", "x.shop.test")
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap();
    // :authority wins over a Host header on HTTP/2, as it must (RFC 9113 §8.3.1).
    assert_eq!(miss.headers()["x-backend"], "a");
}

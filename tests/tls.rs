//! TLS termination, HTTP/2 on both sides, upstream TLS, redirects and the 421 guard.
mod support;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use support::tls::{Ca, connect, peer_cert};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Setup {
    _dir: tempfile::TempDir,
    ca: Ca,
    a: support::tls::Leaf,
    b: support::tls::Leaf,
    proxy: Proxy,
    _backend: Backend,
}

/// A TLS listener with certificates for a.test (+127.0.0.1, the default), b.test and
/// *.w.test, in front of an echo backend.
async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let a = ca.leaf(dir.path(), "a", &["a.test", "127.0.0.1"]);
    let b = ca.leaf(dir.path(), "b", &["b.test"]);
    let w = ca.leaf(dir.path(), "w", &["*.w.test"]);
    let backend = Backend::echo("b1").await;
    let yaml = format!(
        r#"
listeners:
  - name: websecure
    bind: "{{listen}}"
    tls:
      certificates:
        - {{cert: "{}", key: "{}"}}
        - {{cert: "{}", key: "{}"}}
        - {{cert: "{}", key: "{}"}}
access_log: off
pools: {{p: {{backends: [{{addr: "{{b}}"}}]}}}}
routes: [{{name: all, pool: p}}]
"#,
        a.cert.display(),
        a.key.display(),
        b.cert.display(),
        b.key.display(),
        w.cert.display(),
        w.key.display()
    );
    let proxy = Proxy::start(&yaml, &[("b", backend.addr)]).await;
    Setup {
        _dir: dir,
        ca,
        a,
        b,
        proxy,
        _backend: backend,
    }
}

async fn get_over(s: tokio_rustls::client::TlsStream<tokio::net::TcpStream>, host: &str) -> Got {
    let mut h = h1_over(s).await;
    let resp = h
        .send_request(
            Request::get("/x")
                .header("host", host)
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap();
    collect(resp).await
}

/// A TLS listener `s` with `leaf` as its only certificate (and `tls_extra`, like
/// `session_resumption: false, `, inside `tls:`) in front of backend `{b}`.
fn one_cert(leaf: &support::tls::Leaf, tls_extra: &str) -> String {
    format!(
        "listeners: [{{name: s, bind: \"{{listen}}\", tls: {{{tls_extra}certificates: [{{cert: \"{}\", key: \"{}\"}}]}}}}]\n\
         access_log: off\npools: {{p: {{backends: [{{addr: \"{{b}}\"}}]}}}}\nroutes: [{{name: all, pool: p}}]\n",
        leaf.cert.display(),
        leaf.key.display()
    )
}

#[tokio::test]
async fn sni_picks_the_certificate_and_no_sni_gets_the_default() {
    let s = setup().await;
    let cfg = s.ca.client(&[b"http/1.1"]);
    let to_b = connect(s.proxy.addr, "b.test", cfg.clone()).await;
    assert_eq!(peer_cert(&to_b), s.b.der);
    let got = get_over(to_b, "b.test").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["headers"]["x-forwarded-proto"], "https");
    // An IP address as the server name means no SNI at all.
    let no_sni = connect(s.proxy.addr, "127.0.0.1", cfg.clone()).await;
    assert_eq!(peer_cert(&no_sni), s.a.der);
    let to_w = connect(s.proxy.addr, "api.w.test", cfg).await;
    assert_eq!(get_over(to_w, "api.w.test").await.status, 200);
}

#[tokio::test]
async fn a_host_the_certificate_does_not_cover_is_421() {
    let s = setup().await;
    let cfg = s.ca.client(&[b"http/1.1"]);
    let got = get_over(connect(s.proxy.addr, "a.test", cfg.clone()).await, "b.test").await;
    assert_eq!(got.status, 421);
    assert_eq!(got.text(), "421 Misdirected Request\n");
    // The same name, or another one the negotiated certificate covers, is fine.
    let same = get_over(
        connect(s.proxy.addr, "a.test", cfg.clone()).await,
        "A.test:8443",
    )
    .await;
    assert_eq!(same.status, 200);
    let covered = get_over(
        connect(s.proxy.addr, "x.w.test", cfg.clone()).await,
        "y.w.test",
    )
    .await;
    assert_eq!(covered.status, 200);
    // Without SNI there is nothing to be misdirected from.
    let bare = get_over(connect(s.proxy.addr, "127.0.0.1", cfg).await, "b.test").await;
    assert_eq!(bare.status, 200);
}

#[tokio::test]
async fn alpn_h2_gets_http2_with_the_same_routing() {
    let s = setup().await;
    let tls = connect(s.proxy.addr, "a.test", s.ca.client(&[b"h2", b"http/1.1"])).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut h2 = h2_over(tls).await;
    let resp = h2
        .send_request(
            Request::get("https://a.test/api/1?q")
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let got = collect(resp).await;
    assert_eq!(got.header("x-backend"), "b1");
    assert_eq!(got.json()["path"], "/api/1?q");
    assert_eq!(got.json()["headers"]["host"], "a.test");
    let miss = h2
        .send_request(Request::get("https://b.test/").body(full("")).unwrap())
        .await
        .unwrap();
    assert_eq!(miss.status(), 421);
}

#[tokio::test]
async fn a_hundred_concurrent_streams_on_one_h2_connection() {
    // The backend answers only once all 100 requests are in flight at the same time.
    let barrier = Arc::new(tokio::sync::Barrier::new(100));
    let bar = barrier.clone();
    let backend = Backend::serve(move |_| {
        let bar = bar.clone();
        Box::pin(async move {
            bar.wait().await;
            Response::new(full("together"))
        })
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let a = ca.leaf(dir.path(), "a", &["a.test"]);
    let yaml = one_cert(&a, "");
    let proxy = Proxy::start(&yaml, &[("b", backend.addr)]).await;
    let h2 = h2_over(connect(proxy.addr, "a.test", ca.client(&[b"h2"])).await).await;
    let mut all = Vec::new();
    for i in 0..100 {
        let mut h2 = h2.clone();
        all.push(tokio::spawn(async move {
            let req = Request::get(format!("https://a.test/{i}"))
                .body(full(""))
                .unwrap();
            collect(h2.send_request(req).await.unwrap()).await
        }));
    }
    for r in all {
        let got = tokio::time::timeout(Duration::from_secs(10), r)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((got.status, got.text().as_str()), (200, "together"));
    }
}

/// An h2c backend answering like a gRPC server: body, then `grpc-status` in trailers.
async fn grpc_backend() -> Backend {
    Backend::serve(|req| {
        Box::pin(async move {
            assert_eq!(
                req.version(),
                http::Version::HTTP_2,
                "the backend must get HTTP/2"
            );
            let te = req.headers().get("te").cloned();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(2);
            tokio::spawn(async move {
                let mut reply = b"echo:".to_vec();
                reply.extend_from_slice(&body);
                tx.send(Ok(Frame::data(Bytes::from(reply)))).await.unwrap();
                let mut t = HeaderMap::new();
                t.insert("grpc-status", "0".parse().unwrap());
                t.insert("grpc-message", "ok".parse().unwrap());
                tx.send(Ok(Frame::trailers(t))).await.unwrap();
            });
            let mut rx = rx;
            let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
            Response::builder()
                .header("content-type", "application/grpc")
                .header(
                    "x-te",
                    te.map_or("none".into(), |v| v.to_str().unwrap().to_string()),
                )
                .body(BodyExt::boxed(StreamBody::new(stream)))
                .unwrap()
        })
    })
    .await
}

#[tokio::test]
async fn grpc_over_h2_keeps_trailers_end_to_end() {
    let backend = grpc_backend().await;
    let yaml = r#"
listeners: [{name: web, bind: "{listen}"}]
access_log: off
pools: {g: {protocol: h2, backends: [{addr: "{b}"}]}}
routes: [{name: grpc, pool: g}]
"#;
    let proxy = Proxy::start(yaml, &[("b", backend.addr)]).await;
    // h2c prior knowledge from the client too.
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut h2 = h2_over(tcp).await;
    let req = Request::post(format!("http://{}/pkg.Svc/Call", proxy.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(full("ping"))
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-te"], "trailers");
    let body = resp.into_body().collect().await.unwrap();
    assert_eq!(body.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(body.trailers().unwrap()["grpc-message"], "ok");
    assert_eq!(body.to_bytes(), "echo:ping");
    // One multiplexed connection carries every request to the backend.
    for _ in 0..5 {
        let req = Request::post(format!("http://{}/pkg.Svc/Call", proxy.addr))
            .header("te", "trailers")
            .body(full("x"))
            .unwrap();
        let r = h2.send_request(req).await.unwrap();
        assert!(r.into_body().collect().await.unwrap().trailers().is_some());
    }
    assert_eq!(backend.conns.load(Ordering::SeqCst), 1);
}

/// A TLS backend (ALPN h2 and http/1.1) with a certificate for `name` from `ca`.
async fn tls_backend(ca: &Ca, dir: &std::path::Path, name: &str) -> std::net::SocketAddr {
    let leaf = ca.leaf(dir, "backend", &[name]);
    let certs = vec![leaf.der.clone()];
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&leaf.key).unwrap();
    let mut cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let proto = match tls.get_ref().1.alpn_protocol() {
                    Some(b"h2") => "h2",
                    _ => "http/1.1",
                };
                let svc = hyper::service::service_fn(move |req| async move {
                    let name = format!("tls-{proto}");
                    switchyard::echo::answer(req, name.into()).await
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                .await;
            });
        }
    });
    addr
}

use rustls::pki_types::pem::PemObject;

#[tokio::test]
async fn upstream_tls_with_a_private_ca_over_http1_and_h2() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let ca_file = ca.write(dir.path());
    let backend = tls_backend(&ca, dir.path(), "backend.internal").await;
    let yaml = format!(
        r#"
listeners: [{{name: web, bind: "{{listen}}"}}]
access_log: off
pools:
  h1: {{tls: true, ca: "{ca}", sni: backend.internal, backends: [{{addr: "{{b}}"}}]}}
  h2: {{tls: true, protocol: h2, ca: "{ca}", sni: backend.internal, backends: [{{addr: "{{b}}"}}]}}
  public: {{tls: true, backends: [{{addr: "{{b}}"}}], retries: 0}}
routes:
  - {{name: h1, match: {{prefix: /h1}}, pool: h1}}
  - {{name: h2, match: {{prefix: /h2}}, pool: h2}}
  - {{name: public, match: {{prefix: /public}}, pool: public}}
"#,
        ca = ca_file.display()
    );
    let proxy = Proxy::start(&yaml, &[("b", backend)]).await;
    let h1 = get(&proxy.url("/h1/x")).await;
    assert_eq!((h1.status, h1.header("x-backend")), (200, "tls-http/1.1"));
    let h2 = get(&proxy.url("/h2/x")).await;
    assert_eq!((h2.status, h2.header("x-backend")), (200, "tls-h2"));
    assert_eq!(h2.json()["path"], "/h2/x");
    // The webpki roots do not trust the private CA: the connection is refused.
    assert_eq!(get(&proxy.url("/public/x")).await.status, 502);
}

#[tokio::test]
async fn plain_http_redirects_to_https() {
    let yaml = r#"
listeners: [{name: web, bind: "{listen}", redirect_https: 8443}, {name: std, bind: "{listen2}", redirect_https: 443}]
access_log: off
pools: {p: {backends: [{addr: "127.0.0.1:9"}]}}
routes: [{name: all, pool: p}]
"#;
    let proxy = Proxy::start(yaml, &[]).await;
    let got = send(
        Request::get(proxy.url("/a/b?c=1"))
            .header("host", "Shop.test:8080")
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(got.status, 308);
    assert_eq!(got.header("location"), "https://shop.test:8443/a/b?c=1");
    let std_port = proxy.addrs["std"];
    let got = send(
        Request::get(format!("http://{std_port}/x"))
            .header("host", "shop.test")
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(got.header("location"), "https://shop.test/x");
    let no_host = raw(
        proxy.addr,
        b"GET / HTTP/1.0\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(no_host.contains(" 400 "), "{no_host}");
}

#[tokio::test]
async fn failed_handshakes_are_counted_and_do_not_stall_the_listener() {
    let s = setup().await;
    let stats = s.proxy.shared.listener_stats(&"websecure".into());
    // A client that connects and never speaks must not hold up others.
    let _silent = tokio::net::TcpStream::connect(s.proxy.addr).await.unwrap();
    let plain = raw(
        s.proxy.addr,
        b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(plain.starts_with("HTTP/1.1 400"), "{plain}");
    let mut junk = tokio::net::TcpStream::connect(s.proxy.addr).await.unwrap();
    junk.write_all(b"\x16\x03\x01\x00\x05hello").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), junk.read_to_end(&mut buf)).await;
    eventually(Duration::from_secs(5), || async {
        stats.tls_handshake_errors.load(Ordering::Relaxed) >= 2
    })
    .await;
    let ok = get_over(
        connect(s.proxy.addr, "a.test", s.ca.client(&[])).await,
        "a.test",
    )
    .await;
    assert_eq!(ok.status, 200);
}

#[tokio::test]
async fn sessions_resume() {
    let s = setup().await;
    let cfg = s.ca.client(&[b"http/1.1"]);
    let first = connect(s.proxy.addr, "a.test", cfg.clone()).await;
    // TLS 1.3 tickets arrive after the handshake: exchange a request to receive them.
    assert_eq!(get_over(first, "a.test").await.status, 200);
    let second = connect(s.proxy.addr, "a.test", cfg).await;
    assert_eq!(
        second.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
}

#[test]
fn bad_certificates_fail_check_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    ca.leaf(dir.path(), "a", &["a.test"]);
    ca.leaf(dir.path(), "b", &["b.test"]);
    ca.leaf(dir.path(), "nameless", &[]);
    std::fs::write(dir.path().join("junk.crt"), "not a certificate").unwrap();
    let cfg = dir.path().join("routes.yaml");
    std::fs::write(
        &cfg,
        "listeners:\n\
         \x20 - name: s\n\
         \x20   bind: \"127.0.0.1:0\"\n\
         \x20   tls:\n\
         \x20     certificates:\n\
         \x20       - {cert: missing.crt, key: a.key}\n\
         \x20       - {cert: a.crt, key: b.key}\n\
         \x20       - {cert: nameless.crt, key: nameless.key}\n\
         \x20       - {cert: junk.crt, key: a.key}\n\
         pools: {p: {backends: [{addr: \"127.0.0.1:9\"}]}}\n\
         routes: [{name: r, pool: p}]\n",
    )
    .unwrap();
    let errors = switchyard::config::load(&cfg).unwrap_err();
    let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    let at = |line: usize, col: usize, needle: &str| {
        let prefix = format!("{}:{line}:{col}: ", cfg.display());
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&prefix) && l.contains(needle)),
            "no error at {line}:{col} containing {needle:?} in {lines:#?}"
        );
    };
    at(6, 18, "cannot read certificate");
    at(7, 30, "b.key does not match certificate");
    at(8, 18, "no DNS or IP subject alternative name");
    at(9, 18, "holds no PEM certificate");
    assert_eq!(lines.len(), 4, "{lines:#?}");
}

#[tokio::test]
async fn a_new_snapshot_brings_new_certificates_to_new_handshakes() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let old = ca.leaf(dir.path(), "old", &["a.test"]);
    let new = ca.leaf(dir.path(), "new", &["a.test"]);
    let backend = Backend::echo("b").await;
    let yaml = |leaf: &support::tls::Leaf| {
        one_cert(leaf, "")
            .replace("{listen}", "127.0.0.1:0")
            .replace("{b}", &backend.addr.to_string())
    };
    let proxy = Proxy::start(&yaml(&old), &[]).await;
    let before = connect(proxy.addr, "a.test", ca.client(&[b"http/1.1"])).await;
    assert_eq!(peer_cert(&before), old.der);
    let next = switchyard::config::parse(std::path::Path::new("t.yaml"), &yaml(&new)).unwrap();
    proxy.shared.swap(next.config);
    // A fresh client, so no resumed session stands in for a full handshake.
    let after = connect(proxy.addr, "a.test", ca.client(&[b"http/1.1"])).await;
    assert_eq!(peer_cert(&after), new.der);
    // The connection opened before keeps working.
    assert_eq!(get_over(before, "a.test").await.status, 200);
}

#[tokio::test]
async fn session_resumption_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let a = ca.leaf(dir.path(), "a", &["a.test"]);
    let backend = Backend::echo("b").await;
    let yaml = one_cert(&a, "session_resumption: false, ");
    let proxy = Proxy::start(&yaml, &[("b", backend.addr)]).await;
    let cfg = ca.client(&[b"http/1.1"]);
    let first = connect(proxy.addr, "a.test", cfg.clone()).await;
    assert_eq!(get_over(first, "a.test").await.status, 200);
    let second = connect(proxy.addr, "a.test", cfg).await;
    assert_eq!(
        second.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Full)
    );
}

#[tokio::test]
async fn the_whole_chain_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let root = Ca::new();
    let mid = root.intermediate();
    let leaf = mid.leaf(dir.path(), "leaf", &["chain.test"]);
    // The certificate file holds the leaf, then the intermediate.
    let mut chain = std::fs::read_to_string(&leaf.cert).unwrap();
    chain.push_str(&mid.pem);
    std::fs::write(&leaf.cert, chain).unwrap();
    let backend = Backend::echo("b").await;
    let yaml = one_cert(&leaf, "");
    let proxy = Proxy::start(&yaml, &[("b", backend.addr)]).await;
    // The client trusts only the root: the handshake works only with the intermediate sent.
    let s = connect(proxy.addr, "chain.test", root.client(&[])).await;
    assert_eq!(s.get_ref().1.peer_certificates().unwrap().len(), 2);
    assert_eq!(get_over(s, "chain.test").await.status, 200);
}

/// Run openssl (a CI dependency, see .ci/run) in `dir`.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed (.ci/run installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn rsa_pkcs1_sec1_and_pkcs8_keys_all_load() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(d, &["genrsa", "-traditional", "-out", "rsa.key", "2048"]);
    openssl(
        d,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "sec1.key",
        ],
    );
    openssl(
        d,
        &["genpkey", "-algorithm", "ed25519", "-out", "pkcs8.key"],
    );
    for (key, header) in [
        ("rsa.key", "BEGIN RSA PRIVATE KEY"),
        ("sec1.key", "BEGIN EC PRIVATE KEY"),
        ("pkcs8.key", "BEGIN PRIVATE KEY"),
    ] {
        let pem = std::fs::read_to_string(d.join(key)).unwrap();
        assert!(
            pem.contains(header),
            "{key} is not in the format under test"
        );
        let cert = format!("{key}.crt");
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-key",
                key,
                "-subj",
                "/CN=x",
                "-addext",
                "subjectAltName=DNS:x.test",
                "-days",
                "1",
                "-out",
                &cert,
            ],
        );
        let entry = switchyard::tls::certs::load_pair(&d.join(&cert), &d.join(key));
        assert!(entry.is_ok(), "{key}: {:?}", entry.err());
    }
}

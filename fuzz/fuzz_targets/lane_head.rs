//! The lane's head handling on hostile bytes: parse, decide, and the backend's head written
//! from them. Whatever arrives, the proxy does not panic, and what it would send a backend
//! is one well-formed request head whose framing says exactly what the proxy decided.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use std::sync::{Arc, LazyLock};
use switchyard::proxy::ConnInfo;
use switchyard::proxy::decide::{self, Decision};
use switchyard::proxy::edit::{Scan, To};
use switchyard::server::h1::head::{self, Framing, Slots};
use switchyard::snapshot::Snapshot;

const CONFIG: &str = r#"
listeners: [{name: web, bind: "127.0.0.1:0"}]
access_log: off
pools:
  p: {backends: [{addr: "127.0.0.1:9"}, {addr: "127.0.0.1:11"}], sticky: {cookie: sy}}
  q: {backends: [{addr: "127.0.0.1:10"}], balance: cookie_hash, hash_key: k}
routes:
  - {name: api, match: {host: shop.test, prefix: /api, methods: [GET, POST]}, pool: p}
  - {name: canary, match: {prefix: /c, headers: {x-canary: "1"}, cookies: {b: "y"}}, pool: q}
  - {name: user, match: {path: "/users/{id}"}, pool: q}
  - {name: ab, match: {prefix: /ab}, split: {cookie: sy_ab, pools: [{pool: p, weight: 9}, {pool: q, weight: 1}]}}
  - {name: all, pool: p}
"#;

static SNAP: LazyLock<Snapshot> = LazyLock::new(|| {
    let loaded = switchyard::config::parse(Path::new("fuzz.yaml"), CONFIG).expect("config");
    Snapshot::compile(loaded.config, None, &Default::default())
});

static CONN: LazyLock<ConnInfo> = LazyLock::new(|| ConnInfo {
    listener: "web".into(),
    redirect_https: None,
    peer: "127.0.0.1:1".parse().expect("addr"),
    local: "127.0.0.1:8080".parse().expect("addr"),
    tls: None,
    clock: Arc::default(),
    client_ip: http::HeaderValue::from_static("127.0.0.1"),
    forwarded: switchyard::proxy::Forwarded::Append,
    log: switchyard::access_log::AccessLog::start(switchyard::config::AccessLogFormat::Off),
    stats: std::sync::Arc::default(),
});

fuzz_target!(|data: &[u8]| {
    let mut slots = Slots::default();
    let Ok(Some(h)) = head::parse(data, 64 * 1024, &mut slots) else {
        return;
    };
    assert!(h.len <= data.len());
    let Ok(Decision::Forward(d)) = decide::decide(&SNAP, &CONN, &h, &mut ()) else {
        return;
    };
    let scan = Scan::request(h.fields());
    let chunked = h.framing == Framing::Chunked;
    let edits = scan.edits(To {
        client_ip: b"127.0.0.1",
        tls: false,
        forwarded_host: d.raw_host,
        host: d.authority.map(str::as_bytes),
        request_id: scan.client_id.is_none().then_some(&b"0123456789abcdef0123456789abcdef"[..]),
        chunked,
        length: h.length,
        upgrade: !h.has_body(),
        keep_forwarded_for: true,
        strip: d.strip(&SNAP),
        join_cookies: false,
    });
    let mut up = Vec::new();
    d.request_line(&h.method, &mut up);
    edits.write(|| h.fields(), Some(&data[..h.len]), &mut up);

    let mut back = [httparse::EMPTY_HEADER; 256];
    let mut r = httparse::Request::new(&mut back);
    match r.parse(&up) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, up.len(), "one head, nothing after"),
        other => panic!("the backend's head does not parse ({other:?}): {:?}", String::from_utf8_lossy(&up)),
    }
    let count = |name: &str| r.headers.iter().filter(|f| f.name.eq_ignore_ascii_case(name)).count();
    let (lengths, codings) = (count("content-length"), count("transfer-encoding"));
    assert!(lengths <= 1 && codings <= 1 && lengths + codings <= 1, "{:?}", String::from_utf8_lossy(&up));
    assert_eq!(codings == 1, chunked);
    assert_eq!(lengths == 1, !chunked && h.length.is_some());
    assert_eq!(count("host") <= 1, true);
    // The proxy's own cookies never reach a backend.
    for f in r.headers.iter().filter(|f| f.name.eq_ignore_ascii_case("cookie")) {
        for pair in switchyard::proxy::choose::pairs(f.value) {
            assert!(pair.name != b"sy" && pair.name != b"sy_ab", "{:?}", String::from_utf8_lossy(&up));
        }
    }
});

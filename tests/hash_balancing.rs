//! Hash balancing and P2C over the wire: one key always on one backend (cookie, header,
//! client address), round robin without a key, the client address taken from a trusted
//! proxy's `X-Forwarded-For` only, bounded load under one hot key, P2C-EWMA avoiding a slow
//! backend; and `explain` naming the backend a key maps to, as the proxy does. (The ring's
//! own properties, stability over many keys and movement on removal, are unit tests in
//! `src/balance.rs`.)
mod support;

use http::Response;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use support::matrix::*;
use support::{Backend, Got, HttpClient, Proxy, full, get_with};

/// Four echo backends `a`..`d` behind a pool with `keys`.
fn four(keys: &str) -> Spec {
    Spec::new(vec![
        Kind::Echo("a"),
        Kind::Echo("b"),
        Kind::Echo("c"),
        Kind::Echo("d"),
    ])
    .pool(keys)
}

#[tokio::test]
async fn a_cookie_or_header_key_always_lands_on_one_backend() {
    every_shape(|shape| async move {
        for (mode, field) in [
            ("cookie_hash\nhash_key: session_id", "cookie"),
            ("header_hash\nhash_key: x-user", "x-user"),
        ] {
            let m = Matrix::start(shape, four(&format!("balance: {mode}"))).await;
            let mut owners = BTreeSet::new();
            for k in 0..8 {
                let value = match field {
                    "cookie" => format!("theme=dark; session_id=user-{k}"),
                    _ => format!("user-{k}"),
                };
                let req = Req::get("/app/h").header(field, &value);
                let first = m.send(&req).await;
                assert_eq!(first.status, 200, "{}", first.text());
                let owner = first.header("x-backend").to_string();
                // The key is the application's: it reaches the backend as sent.
                assert_eq!(first.json()["headers"][field], value.as_str());
                for i in 0..5 {
                    let got = m.send(&req).await;
                    assert_eq!(
                        got.header("x-backend"),
                        owner,
                        "{mode}: key {k}, request {i}"
                    );
                }
                owners.insert(owner);
            }
            assert!(owners.len() >= 2, "{mode}: eight keys on {owners:?}");
        }
    })
    .await;
}

/// A plain listener (trusting `trusted`, unless empty) and a pool `p` of echo backends
/// `a`..`d` balanced by `balance`.
fn pool_yaml(balance: &str, trusted: &str) -> String {
    let trusted = if trusted.is_empty() {
        String::new()
    } else {
        format!(", trusted_proxies: [{trusted}]")
    };
    format!(
        r#"
listeners: [{{name: web, bind: "{{listen}}"{trusted}}}]
access_log: off
pools:
  p:
    balance: {balance}
    backends: [{{addr: "{{a}}"}}, {{addr: "{{b}}"}}, {{addr: "{{c}}"}}, {{addr: "{{d}}"}}]
routes: [{{name: all, pool: p}}]
"#
    )
}

/// Four echo backends `a`..`d`, and their names and addresses for [`pool_yaml`].
async fn backends() -> (Vec<Backend>, Vec<(&'static str, SocketAddr)>) {
    let mut bs = Vec::new();
    let mut at = Vec::new();
    for name in ["a", "b", "c", "d"] {
        let b = Backend::echo(name).await;
        at.push((name, b.addr));
        bs.push(b);
    }
    (bs, at)
}

/// GET `/` on `p` with `headers`: the response, checked 200.
async fn ask(c: &HttpClient, p: &Proxy, headers: &[(&str, &str)]) -> Got {
    let got = get_with(c, &p.url("/"), headers).await;
    assert_eq!(got.status, 200, "{}", got.text());
    got
}

#[tokio::test]
async fn a_request_without_the_hash_key_is_round_robin() {
    let (_bs, at) = backends().await;
    for balance in [
        "cookie_hash\n    hash_key: sid",
        "header_hash\n    hash_key: x-user",
    ] {
        let p = Proxy::start(&pool_yaml(balance, ""), &at).await;
        let c = support::client();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for i in 0..40 {
            // Other cookies and headers are no key.
            let headers: &[(&str, &str)] = if i % 2 == 0 {
                &[]
            } else {
                &[("cookie", "sidx=1; other=2"), ("x-userx", "u")]
            };
            let got = ask(&c, &p, headers).await;
            *seen.entry(got.header("x-backend").to_string()).or_default() += 1;
        }
        assert_eq!(seen.len(), 4, "{balance}: {seen:?}");
        assert!(seen.values().all(|&n| n == 10), "{balance}: {seen:?}");
    }
}

/// The backend `ip_hash` sends a request with these `X-Forwarded-For` fields to, the same
/// for three requests in a row; and the `X-Forwarded-For` the backend received.
async fn owner(c: &HttpClient, p: &Proxy, xff: &[&str]) -> (String, String) {
    let headers: Vec<(&str, &str)> = xff.iter().map(|v| ("x-forwarded-for", *v)).collect();
    let got = ask(c, p, &headers).await;
    let backend = got.header("x-backend").to_string();
    for _ in 0..2 {
        assert_eq!(
            ask(c, p, &headers).await.header("x-backend"),
            backend,
            "{xff:?}"
        );
    }
    let seen = got.json()["headers"]["x-forwarded-for"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (backend, seen)
}

#[tokio::test]
async fn ip_hash_behind_a_trusted_proxy_hashes_the_last_untrusted_forwarded_for_entry() {
    let (_bs, at) = backends().await;
    let p = Proxy::start(&pool_yaml("ip_hash", "127.0.0.0/8"), &at).await;
    let c = support::client();
    let a = "203.0.113.1";
    let (owner_a, seen) = owner(&c, &p, &[a]).await;
    assert_eq!(
        seen,
        format!("{a}, 127.0.0.1"),
        "a trusted peer's list goes on"
    );
    // Another client address that maps elsewhere (four backends: one of a few will).
    let mut other = None;
    for n in 2..=40 {
        let ip = format!("203.0.113.{n}");
        let (o, _) = owner(&c, &p, &[&ip]).await;
        if o != owner_a {
            other = Some((ip, o));
            break;
        }
    }
    let (b, owner_b) = other.expect("39 client addresses all on the backend of one");
    // The last entry that is not a trusted proxy is the client: an earlier (forgeable)
    // entry does not move it, nor do trusted hops after it, in one field or several.
    for xff in [
        vec![b.as_str(), a],
        vec![&format!("{b}, {a}")],
        vec![&format!("{a}, 127.0.0.9")],
        vec![&format!("{b}, {a}, 127.0.0.2, 127.0.0.3")],
        vec![b.as_str(), &format!("{a}, 127.1.2.3")],
    ] {
        assert_eq!(owner(&c, &p, &xff).await.0, owner_a, "{xff:?}");
    }
    assert_eq!(owner(&c, &p, &[&format!("{a}, {b}")]).await.0, owner_b);
}

#[tokio::test]
async fn ip_hash_ignores_an_untrusted_peers_forwarded_for_and_replaces_it() {
    let (_bs, at) = backends().await;
    let p = Proxy::start(&pool_yaml("ip_hash", "10.0.0.0/8"), &at).await;
    let c = support::client();
    let mut owners = BTreeSet::new();
    for n in 1..=20 {
        let (o, seen) = owner(&c, &p, &[&format!("203.0.113.{n}")]).await;
        assert_eq!(seen, "127.0.0.1", "the backend sees only the peer");
        owners.insert(o);
    }
    assert_eq!(owners.len(), 1, "the peer is the client: {owners:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hot_key_spreads_over_backends_within_the_load_bound() {
    const TOTAL: usize = 40;
    let (open, gate) = tokio::sync::watch::channel(false);
    let mut bs = Vec::new();
    let mut at = Vec::new();
    let mut held = Vec::new();
    for name in ["a", "b", "c", "d"] {
        // Holds every request until the gate opens, counting those it holds.
        let count = Arc::new(AtomicUsize::new(0));
        let (n, gate) = (count.clone(), gate.clone());
        let b = Backend::serve(move |_| {
            let (n, mut gate) = (n.clone(), gate.clone());
            Box::pin(async move {
                n.fetch_add(1, Ordering::SeqCst);
                let _ = gate.wait_for(|open| *open).await;
                Response::builder()
                    .header("x-backend", name)
                    .body(full("held"))
                    .expect("a response")
            })
        })
        .await;
        at.push((name, b.addr));
        bs.push(b);
        held.push(count);
    }
    let yaml = pool_yaml("cookie_hash\n    hash_key: session_id", "");
    let p = Proxy::start(&yaml, &at).await;
    let mut requests = Vec::new();
    for _ in 0..TOTAL {
        let url = p.url("/hot");
        requests.push(tokio::spawn(async move {
            // A connection each, so the requests are in flight together.
            let c = support::client();
            get_with(&c, &url, &[("cookie", "session_id=celebrity")]).await
        }));
    }
    let in_backends = || held.iter().map(|n| n.load(Ordering::SeqCst)).sum::<usize>();
    support::eventually(Duration::from_secs(10), || {
        let all = in_backends() == TOTAL;
        async move { all }
    })
    .await;
    let counts: Vec<usize> = held.iter().map(|n| n.load(Ordering::SeqCst)).collect();
    // At most 1.25 x the average of the load at any pick, plus two picks' worth of race.
    let bound = (5 * (TOTAL + 1)).div_ceil(4 * 4) + 2;
    assert!(
        counts.iter().all(|&n| n <= bound),
        "{counts:?} over {bound}"
    );
    assert!(
        counts.iter().filter(|&&n| n > 0).count() > 1,
        "one backend took them all: {counts:?}"
    );
    open.send(true).expect("the backends are waiting");
    for r in requests {
        let got = r.await.expect("the request task");
        assert_eq!(got.status, 200);
        assert_eq!(got.text(), "held");
    }
}

#[tokio::test]
async fn p2c_ewma_sends_little_to_a_slow_backend() {
    let mut bs = Vec::new();
    let mut at = Vec::new();
    for name in ["a", "b", "c"] {
        let b = if name == "a" {
            // The slowness is what is under test: 40 ms for every answer.
            Backend::serve(move |_| {
                Box::pin(async move {
                    tokio::time::sleep(Duration::from_millis(40)).await;
                    Response::builder()
                        .header("x-backend", name)
                        .body(full("slow"))
                        .expect("a response")
                })
            })
            .await
        } else {
            Backend::echo(name).await
        };
        at.push((name, b.addr));
        bs.push(b);
    }
    let yaml = r#"
listeners: [{name: web, bind: "{listen}"}]
access_log: off
pools: {p: {balance: p2c_ewma, backends: [{addr: "{a}"}, {addr: "{b}"}, {addr: "{c}"}]}}
routes: [{name: all, pool: p}]
"#;
    let p = Proxy::start(yaml, &at).await;
    let c = support::client();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..200 {
        let got = ask(&c, &p, &[]).await;
        *seen.entry(got.header("x-backend").to_string()).or_default() += 1;
    }
    let slow = seen.get("a").copied().unwrap_or(0);
    assert!(slow < 30, "the slow backend took {slow} of 200: {seen:?}");
    assert!(
        seen.get("b").copied().unwrap_or(0) > 20 && seen.get("c").copied().unwrap_or(0) > 20,
        "{seen:?}"
    );
}

#[tokio::test]
async fn explain_names_the_backend_a_key_maps_to_as_the_proxy_picks_it() {
    let (_bs, at) = backends().await;
    let addr_of: HashMap<&str, String> = at.iter().map(|(n, a)| (*n, a.to_string())).collect();
    let backends = r#"[{addr: "{a}"}, {addr: "{b}"}, {addr: "{c}"}, {addr: "{d}"}]"#;
    let mut yaml = format!(
        r#"
listeners: [{{name: web, bind: "{{listen}}", trusted_proxies: [127.0.0.0/8]}}]
access_log: off
pools:
  ck: {{balance: cookie_hash, hash_key: session_id, backends: {backends}}}
  hd: {{balance: header_hash, hash_key: x-user, backends: {backends}}}
  ip: {{balance: ip_hash, backends: {backends}}}
routes:
  - {{name: c, match: {{prefix: /c}}, pool: ck}}
  - {{name: h, match: {{prefix: /h}}, pool: hd}}
  - {{name: i, match: {{prefix: /i}}, pool: ip}}
"#
    );
    let p = Proxy::start(&yaml, &at).await;
    yaml = yaml.replace("{listen}", "127.0.0.1:0");
    for (name, addr) in &at {
        yaml = yaml.replace(&format!("{{{name}}}"), &addr.to_string());
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("routes.yaml");
    std::fs::write(&config, yaml).unwrap();
    let explain = |args: &[&str]| {
        let (code, json) = support::explain_json(&config, &[], args);
        assert_eq!(code, Some(0), "{json}");
        json
    };
    let c = support::client();
    let mut owners = BTreeSet::new();
    for k in 0..4 {
        let sid = format!("session_id=s{k}");
        let user = format!("x-user: u{k}");
        let client = format!("203.0.113.{}", k + 1);
        for (path, args, on_the_wire) in [
            (
                "/c",
                vec!["--cookie", sid.as_str()],
                ("cookie", sid.clone()),
            ),
            ("/h", vec!["-H", user.as_str()], ("x-user", format!("u{k}"))),
            (
                "/i",
                vec!["--client", client.as_str()],
                ("x-forwarded-for", client.clone()),
            ),
        ] {
            let url = format!("http://shop.test{path}");
            let mut all = vec!["GET", url.as_str()];
            all.extend(&args);
            let e = explain(&all);
            let backend = e["backend"].as_str().unwrap_or_else(|| panic!("{e}"));
            assert_eq!(explain(&all)["backend"], backend, "the same each run");
            let got = get_with(&c, &p.url(path), &[(on_the_wire.0, on_the_wire.1.as_str())]).await;
            assert_eq!(
                addr_of[got.header("x-backend")],
                backend,
                "{path} {args:?}: explain and the proxy differ"
            );
            owners.insert(backend.to_string());
        }
    }
    assert!(owners.len() >= 2, "twelve keys on {owners:?}");
    // Without the key, the balancer decides at request time.
    for path in ["/c", "/h"] {
        let e = explain(&["GET", &format!("http://shop.test{path}")]);
        assert_eq!(e["backend"], serde_json::Value::Null, "{e}");
        assert!(e["balance"].as_str().unwrap().ends_with("_hash"), "{e}");
    }
}

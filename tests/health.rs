//! Health: active checks, passive ejection (connect failures, 5xx) and its cap,
//! `when_all_down`, drain, and health across a reload.
mod support;

use http::Response;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::matrix::{self, Kind, Matrix, Req, Spec};
use support::*;

/// Who answered `n` GETs of `url`, in order; panics on any status but `want`.
async fn who(url: &str, n: usize, want: u16) -> Vec<String> {
    let c = client();
    let mut out = Vec::new();
    for _ in 0..n {
        let got = get_with(&c, url, &[]).await;
        assert_eq!(got.status, want, "{}", got.text());
        out.push(got.header("x-backend").to_string());
    }
    out
}

const CHECKED: &str = r#"
listeners: [{name: web, bind: "{listen}"}]
access_log: off
pools:
  p:
    health_check: {path: /healthz, interval: 100ms, timeout: 100ms, unhealthy_threshold: 2, healthy_threshold: 2}
    backends: [{addr: "{a}"}, {addr: "{b}"}]
routes: [{name: all, pool: p}]
"#;

/// Who answered `n` requests of this matrix's shape, in order; panics on any status but 200.
async fn who_on(m: &Matrix, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..n {
        let got = m.send(&Req::get(&format!("{}/{i}", matrix::PREFIX))).await;
        assert_eq!(got.status, 200, "{}: {}", m.shape.name(), got.text());
        out.push(got.header("x-backend").to_string());
    }
    out
}

/// The state of backend `i` of the matrix's pool, in the current snapshot.
fn pool_backend(m: &Matrix, i: usize) -> Arc<switchyard::pool::BackendState> {
    let snap = m.proxy.shared.load();
    let pool = snap
        .pools
        .iter()
        .find(|p| &*p.name == matrix::POOL)
        .unwrap();
    pool.backends[i].state.clone()
}

#[tokio::test]
async fn a_backend_failing_its_check_gets_no_traffic_and_gets_it_back_after_recovery() {
    // Checks reach the backend the way the pool does (TLS, h2c), and every request path
    // skips a backend they took out.
    matrix::every_shape(|shape| async move {
        let a_health = Arc::new(std::sync::atomic::AtomicU16::new(200));
        let b_health = Arc::new(std::sync::atomic::AtomicU16::new(200));
        let spec = Spec::new(vec![
            Kind::Serve(checked_handler("a", 200, a_health.clone())),
            Kind::Serve(checked_handler("b", 200, b_health)),
        ])
        .pool("health_check: {path: /healthz, interval: 100ms, timeout: 100ms, unhealthy_threshold: 2, healthy_threshold: 2}");
        let m = Matrix::start(shape, spec).await;
        assert!(who_on(&m, 10).await.contains(&"a".to_string()));

        a_health.store(500, Ordering::SeqCst);
        let flipped = Instant::now();
        eventually(Duration::from_secs(3), || async {
            pool_backend(&m, 0).active.is_down()
        })
        .await;
        // Two failed checks 100 ms (+-10 %) apart, after the one in flight.
        let took = flipped.elapsed();
        // Loose for a loaded machine; what is held is "seconds, not a TTL".
        assert!(took < Duration::from_secs(2), "took {took:?}");
        assert_eq!(
            pool_backend(&m, 0).active.reason().as_deref(),
            Some("status 500")
        );
        let served = who_on(&m, 20).await;
        assert!(served.iter().all(|s| s == "b"), "{}: {served:?}", shape.name());

        a_health.store(200, Ordering::SeqCst);
        eventually(Duration::from_secs(3), || async {
            !pool_backend(&m, 0).active.is_down()
        })
        .await;
        assert!(who_on(&m, 10).await.contains(&"a".to_string()));
    })
    .await;
}

#[tokio::test]
async fn a_backend_whose_check_answer_is_not_http_is_down_with_the_reason() {
    let garbage =
        RawBackend::start(|_, _| Reply::bytes("SSH-2.0-OpenSSH_9.2\r\n").then_close()).await;
    let (b, _) = Backend::checked("b", 200).await;
    let p = Proxy::start(CHECKED, &[("a", garbage.addr), ("b", b.addr)]).await;
    let state = || p.shared.load().pools[0].backends[0].state.clone();
    eventually(Duration::from_secs(3), || async {
        state().active.is_down()
    })
    .await;
    let reason = state().active.reason().unwrap();
    assert!(reason.starts_with("bad response"), "{reason}");
    let served = who(&p.url("/x"), 10, 200).await;
    assert!(served.iter().all(|s| s == "b"), "{served:?}");
}

#[tokio::test]
async fn checks_of_an_h2_pool_speak_http2_and_tcp_checks_only_connect() {
    // The h2 pool's backend only speaks h2c (hyper's auto builder takes both, so a GET of a
    // plain HTTP/1.1 check would pass too: the backend counts the versions it saw).
    let versions = Arc::new(std::sync::Mutex::new(Vec::new()));
    let v = versions.clone();
    let h2 = Backend::serve(move |req| {
        v.lock().unwrap().push(req.version());
        Box::pin(async move { Response::builder().status(503).body(full("")).unwrap() })
    })
    .await;
    let dead = refusing_addr().await;
    let yaml = r#"
listeners: [{name: web, bind: "{listen}"}]
access_log: off
pools:
  grpc:
    protocol: h2
    health_check: {interval: 100ms, timeout: 100ms, unhealthy_threshold: 1}
    backends: [{addr: "{h2}"}]
  tcp:
    health_check: {kind: tcp, interval: 100ms, timeout: 100ms, unhealthy_threshold: 1}
    backends: [{addr: "{dead}"}, {addr: "{live}"}]
routes: [{name: all, pool: grpc}, {name: t, match: {prefix: /t}, pool: tcp}]
"#;
    let live = Backend::echo("live").await;
    // Two workers, and still one checker per backend.
    let p = Proxy::start_workers(
        yaml,
        &[("h2", h2.addr), ("dead", dead), ("live", live.addr)],
        2,
    )
    .await;
    let snap = || p.shared.load();
    eventually(Duration::from_secs(3), || async {
        snap().pools[0].backends[0].state.active.is_down()
            && snap().pools[1].backends[0].state.active.is_down()
    })
    .await;
    assert!(!snap().pools[1].backends[1].state.active.is_down());
    assert_eq!(
        snap().pools[1].backends[0].state.active.reason().as_deref(),
        Some("connection refused")
    );
    let seen = versions.lock().unwrap().clone();
    assert!(!seen.is_empty(), "the h2 backend was checked");
    assert!(seen.iter().all(|v| *v == http::Version::HTTP_2), "{seen:?}");
    assert_eq!(
        snap().pools[0].backends[0].state.active.reason().as_deref(),
        Some("status 503")
    );
    assert_eq!(live.hits(), 0, "a tcp check sends no request");
    assert_eq!(p.shared.checks.len(), 3);
}

#[tokio::test]
async fn a_killed_backend_is_ejected_passively_without_active_checks() {
    // `a` closes every connection after its answer: once killed, nothing of it is left in
    // the proxy's idle pool, and every try at it is a refused connect.
    let a = RawBackend::start(|_, _| {
        Reply::bytes(
            "HTTP/1.1 200 OK\r\ncontent-length: 1\r\nx-backend: a\r\nconnection: close\r\n\r\na",
        )
        .then_close()
    })
    .await;
    let b = Backend::echo("b").await;
    let yaml = r#"
listeners: [{name: web, bind: "{listen}"}]
access_log: off
pools: {p: {backends: [{addr: "{a}"}, {addr: "{b}"}]}}
routes: [{name: all, pool: p}]
"#;
    let p = Proxy::start(yaml, &[("a", a.addr), ("b", b.addr)]).await;
    let url = p.url("/x");
    let first = who(&url, 4, 200).await;
    assert!(first.contains(&"a".to_string()), "{first:?}");
    drop(a);
    // Every request still succeeds (retried on `b`), and the fifth refused connect in a
    // row ejects `a`: from then on nobody tries it.
    let served = who(&url, 20, 200).await;
    assert!(served.iter().all(|s| s == "b"), "{served:?}");
    let state = p.shared.load().pools[0].backends[0].state.clone();
    assert!(!state.passive.available(), "ejected");
    assert!(!state.active.is_down(), "no active checks ran");
    assert!(p.shared.checks.is_empty());
}

#[tokio::test]
async fn passive_ejection_never_takes_out_more_than_max_ejection_percent() {
    let dead = [
        refusing_addr().await,
        refusing_addr().await,
        refusing_addr().await,
        refusing_addr().await,
    ];
    let yaml = r#"
listeners: [{name: web, bind: "{listen}"}]
access_log: off
pools:
  p:
    retries: 3
    max_ejection_percent: 50
    timeouts: {connect: 200ms}
    backends: [{addr: "{d0}"}, {addr: "{d1}"}, {addr: "{d2}"}, {addr: "{d3}"}]
routes: [{name: all, pool: p}]
"#;
    let p = Proxy::start(
        yaml,
        &[
            ("d0", dead[0]),
            ("d1", dead[1]),
            ("d2", dead[2]),
            ("d3", dead[3]),
        ],
    )
    .await;
    let c = client();
    for _ in 0..30 {
        assert_eq!(get_with(&c, &p.url("/"), &[]).await.status, 502);
    }
    let snap = p.shared.load();
    let out = snap.pools[0]
        .backends
        .iter()
        .filter(|b| !b.state.passive.available())
        .count();
    assert_eq!(out, 2, "half of four");
}

#[tokio::test]
async fn consecutive_5xx_eject_a_backend_when_eject_on_5xx_is_set() {
    // Both upstream clients (the lane's HTTP/1.1 one and hyper's h2) report the status.
    matrix::every_shape(|shape| async move {
        let spec = Spec::new(vec![
            Kind::Serve(checked_handler("bad", 500, Arc::default())),
            Kind::Echo("good"),
        ])
        .pool("eject_on_5xx: 3");
        let m = Matrix::start(shape, spec).await;
        let mut fives = 0;
        for i in 0..40 {
            let got = m.send(&Req::get(&format!("{}/{i}", matrix::PREFIX))).await;
            if got.status == 500 {
                fives += 1;
            }
        }
        // Round robin: every other request goes to `bad` until its third 500 in a row.
        assert_eq!(fives, 3, "{}", shape.name());
        assert!(!pool_backend(&m, 0).passive.available());
    })
    .await;
}

fn all_down(when: &str) -> String {
    format!(
        r#"
listeners: [{{name: web, bind: "{{listen}}"}}]
access_log: off
pools:
  p:
    when_all_down: {when}
    timeouts: {{connect: 200ms}}
    health_check: {{kind: tcp, interval: 100ms, timeout: 100ms, unhealthy_threshold: 1}}
    backends: [{{addr: "{{a}}"}}, {{addr: "{{b}}"}}]
routes: [{{name: all, pool: p}}]
"#
    )
}

#[tokio::test]
async fn all_down_is_503_at_once_under_reject_and_502_once_every_try_fails_under_fail_open() {
    let (a, b) = (refusing_addr().await, refusing_addr().await);
    for (when, status) in [("reject", 503), ("fail_open", 502)] {
        let p = Proxy::start(&all_down(when), &[("a", a), ("b", b)]).await;
        let snap = || p.shared.load();
        eventually(Duration::from_secs(3), || async {
            snap().pools[0].backends.iter().all(|b| !b.up())
        })
        .await;
        let started = Instant::now();
        let got = get(&p.url("/")).await;
        assert_eq!(got.status, status, "{when}: {}", got.text());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{when}: no hang"
        );
        if when == "reject" {
            assert_eq!(got.header("retry-after"), "5");
        }
    }
}

const DRAIN: &str = r#"
listeners: [{name: web, bind: "{listen}"}]
access_log: off
pools:
  p:
    sticky: {cookie: sy}
    backends: [{addr: "{a}"@DRAIN@}, {addr: "{b}"}]
routes: [{name: all, pool: p}]
"#;

#[tokio::test]
async fn a_draining_backend_keeps_its_sticky_users_and_gets_no_new_ones() {
    let (a, _) = Backend::checked("a", 200).await;
    let (b, _) = Backend::checked("b", 200).await;
    let addrs = [("a", a.addr), ("b", b.addr)];
    let p = Proxy::start(&DRAIN.replace("@DRAIN@", ""), &addrs).await;
    let c = client();
    // A user stuck to `a`.
    let mut token = None;
    for _ in 0..10 {
        let got = get_with(&c, &p.url("/"), &[]).await;
        if got.header("x-backend") == "a" {
            token = got.cookie("sy").map(str::to_string);
            break;
        }
    }
    let token = token.expect("round robin reaches a");
    p.reload(&DRAIN.replace("@DRAIN@", ", drain: true"), &addrs)
        .await
        .unwrap();
    let cookie = format!("sy={token}");
    for _ in 0..10 {
        let got = get_with(&c, &p.url("/"), &[("cookie", &cookie)]).await;
        assert_eq!(got.header("x-backend"), "a", "the sticky user stays");
        assert!(got.set_cookie("sy").is_none());
    }
    for _ in 0..10 {
        let got = get_with(&c, &p.url("/"), &[]).await;
        assert_eq!(got.header("x-backend"), "b", "new users go elsewhere");
    }
    let state = p.shared.load().pools[0].backends[0].state.clone();
    let quiet = state
        .quiet_for()
        .expect("requests on a draining backend are noted");
    assert!(quiet < Duration::from_secs(5));
}

#[tokio::test]
async fn health_of_a_backend_that_stays_survives_a_reload() {
    let (a, a_health) = Backend::checked("a", 200).await;
    let (b, _) = Backend::checked("b", 200).await;
    let addrs = [("a", a.addr), ("b", b.addr)];
    let p = Proxy::start(CHECKED, &addrs).await;
    a_health.store(500, Ordering::SeqCst);
    let state = || p.shared.load().pools[0].backends[0].state.clone();
    eventually(Duration::from_secs(3), || async {
        state().active.is_down()
    })
    .await;
    let with_route = CHECKED.replace(
        "routes: [{name: all, pool: p}]",
        "routes: [{name: new, match: {prefix: /new}, pool: p}, {name: all, pool: p}]",
    );
    let started = p.shared.checks.started();
    assert_eq!(started, 2);
    p.reload(&with_route, &addrs).await.unwrap();
    assert!(state().active.is_down(), "still down on the new snapshot");
    assert_eq!(p.shared.checks.len(), 2);
    assert_eq!(p.shared.checks.started(), started, "the same two checkers");
    let served = who(&p.url("/new"), 10, 200).await;
    assert!(served.iter().all(|s| s == "b"), "{served:?}");
}

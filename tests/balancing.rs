//! Load balancing over the wire, observed through the `x-backend` header.
mod support;

use std::collections::HashMap;
use std::time::Duration;
use support::*;

async fn spread(p: &Proxy, n: usize) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let got = get(&p.url("/")).await;
        assert_eq!(got.status, 200);
        *seen.entry(got.header("x-backend").to_string()).or_default() += 1;
    }
    seen
}

#[tokio::test]
async fn round_robin_follows_weights_one_to_two() {
    let (a, b) = (Backend::echo("a").await, Backend::echo("b").await);
    let yaml = r#"
listeners: [{name: web, bind: "{listen}"}]
access_log: off
pools:
  p:
    balance: round_robin
    backends: [{addr: "{a}", weight: 1}, {addr: "{b}", weight: 2}]
routes: [{name: all, pool: p}]
"#;
    let p = Proxy::start(yaml, &[("a", a.addr), ("b", b.addr)]).await;
    let seen = spread(&p, 300).await;
    assert_eq!(seen["a"], 100, "{seen:?}");
    assert_eq!(seen["b"], 200, "{seen:?}");
}

#[tokio::test]
async fn random_uses_every_backend() {
    let (a, b) = (Backend::echo("a").await, Backend::echo("b").await);
    let yaml = r#"
listeners: [{name: web, bind: "{listen}"}]
access_log: off
pools: {p: {balance: random, backends: [{addr: "{a}"}, {addr: "{b}"}]}}
routes: [{name: all, pool: p}]
"#;
    let p = Proxy::start(yaml, &[("a", a.addr), ("b", b.addr)]).await;
    let seen = spread(&p, 200).await;
    assert!(seen["a"] > 50 && seen["b"] > 50, "{seen:?}");
}

#[tokio::test]
async fn draining_backends_get_no_new_requests() {
    let (a, b) = (Backend::echo("a").await, Backend::echo("b").await);
    let yaml = r#"
listeners: [{name: web, bind: "{listen}"}]
access_log: off
pools: {p: {backends: [{addr: "{a}"}, {addr: "{b}", drain: true}]}}
routes: [{name: all, pool: p}]
"#;
    let p = Proxy::start(yaml, &[("a", a.addr), ("b", b.addr)]).await;
    assert_eq!(spread(&p, 20).await["a"], 20);
}

#[tokio::test]
async fn least_connections_steers_away_from_a_slow_backend() {
    let (slow, release) = Backend::held("late").await;
    let fast = Backend::echo("fast").await;
    let yaml = r#"
listeners: [{name: web, bind: "{listen}"}]
access_log: off
pools: {p: {balance: least_connections, backends: [{addr: "{slow}"}, {addr: "{fast}"}]}}
routes: [{name: all, pool: p}]
"#;
    let p = Proxy::start(yaml, &[("slow", slow.addr), ("fast", fast.addr)]).await;
    let mut stuck = Vec::new();
    for i in 0..10 {
        let url = p.url("/");
        let req = tokio::spawn(async move { get(&url).await });
        // Each request either completes on `fast` or is held by `slow`.
        let before = fast.hits();
        eventually(Duration::from_secs(5), || {
            let done = req.is_finished() || slow.hits() + fast.hits() > i;
            async move { done }
        })
        .await;
        if fast.hits() > before {
            let got = req.await.unwrap();
            assert_eq!(got.header("x-backend"), "fast");
        } else {
            stuck.push(req);
        }
    }
    assert_eq!(
        slow.hits(),
        1,
        "only the first tie may go to the slow backend"
    );
    assert_eq!(fast.hits(), 9);
    release.notify_waiters();
    for r in stuck {
        assert_eq!(r.await.unwrap().text(), "late");
    }
}

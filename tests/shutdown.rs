//! Graceful shutdown and the admin listener.
mod support;

use std::time::Duration;
use support::*;
use tokio::net::TcpStream;

const YAML: &str = r#"
listeners: [{name: web, bind: "{listen}"}]
admin: {bind: "{admin}"}
access_log: off
shutdown_timeout: 10s
pools: {p: {backends: [{addr: "{b}"}]}}
routes: [{name: all, pool: p}]
"#;

#[tokio::test]
async fn admin_answers_healthz_and_ready() {
    let b = Backend::echo("b").await;
    let p = Proxy::start(YAML, &[("b", b.addr)]).await;
    let admin = p.admin.unwrap();
    let h = get(&format!("http://{admin}/healthz")).await;
    assert_eq!((h.status, h.text().as_str()), (200, "ok\n"));
    eventually(Duration::from_secs(5), || async {
        get(&format!("http://{admin}/ready")).await.status == 200
    })
    .await;
    assert_eq!(get(&format!("http://{admin}/nope")).await.status, 404);
}

#[tokio::test]
async fn shutdown_refuses_new_connections_and_finishes_requests_in_flight() {
    let (b, release) = Backend::held("finished").await;
    let mut p = Proxy::start(YAML, &[("b", b.addr)]).await;
    let admin = p.admin.unwrap();
    let url = p.url("/slow");
    let in_flight = tokio::spawn(async move { get(&url).await });
    eventually(Duration::from_secs(5), || async { b.hits() == 1 }).await;

    let done = p.shutdown();
    let addr = p.addr;
    eventually(Duration::from_secs(5), || async move {
        TcpStream::connect(addr).await.is_err()
    })
    .await;
    // The admin listener stays up while draining, and says so.
    assert_eq!(get(&format!("http://{admin}/ready")).await.status, 503);
    assert!(!done.is_finished());

    release.notify_one();
    let got = in_flight.await.unwrap();
    assert_eq!((got.status, got.text().as_str()), (200, "finished"));
    tokio::time::timeout(Duration::from_secs(5), done)
        .await
        .expect("run returns once the last request is done")
        .unwrap();
}

#[tokio::test]
async fn shutdown_timeout_cuts_requests_that_take_too_long() {
    let b = Backend::serve(|_| {
        Box::pin(async {
            std::future::pending::<()>().await;
            unreachable!()
        })
    })
    .await;
    let yaml = YAML.replace("shutdown_timeout: 10s", "shutdown_timeout: 200ms");
    let mut p = Proxy::start(&yaml, &[("b", b.addr)]).await;
    let url = p.url("/stuck");
    let stuck = tokio::spawn(async move {
        support::client()
            .request(http::Request::get(url).body(full("")).unwrap())
            .await
    });
    eventually(Duration::from_secs(5), || async { b.hits() == 1 }).await;
    let done = p.shutdown();
    tokio::time::timeout(Duration::from_secs(5), done)
        .await
        .expect("run returns after shutdown_timeout")
        .unwrap();
    assert!(
        stuck.await.unwrap().is_err(),
        "the cut request fails instead of hanging"
    );
}

#[tokio::test]
async fn several_workers_share_a_listener_and_drain_together() {
    let b = Backend::echo("b").await;
    let yaml = YAML
        .replace("{b}", &b.addr.to_string())
        .replace("{listen}", "127.0.0.1:0")
        .replace("{admin}", "127.0.0.1:0");
    let config = switchyard::config::parse(std::path::Path::new("t.yaml"), &yaml)
        .unwrap()
        .config;
    let server = switchyard::server::Server::bind_workers(config, 3)
        .await
        .unwrap();
    let addr = server.listener_addr("web").unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(server.run(async {
        let _ = rx.await;
    }));
    // Separate connections, spread by the kernel over the workers' sockets.
    for _ in 0..30 {
        let got = raw(
            addr,
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            Duration::from_secs(5),
        )
        .await;
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    }
    assert_eq!(b.hits(), 30);
    tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), done)
        .await
        .expect("every worker drains and stops")
        .unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "all the workers' sockets are closed"
    );
}

#[tokio::test]
async fn shutdown_lets_an_open_websocket_echo_until_shutdown_timeout_then_cuts_it() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (addr, _echo) = websocket_echo().await;
    let yaml = YAML.replace("shutdown_timeout: 10s", "shutdown_timeout: 1s");
    let mut p = Proxy::start(&yaml, &[("b", addr)]).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/chat", p.addr))
        .await
        .unwrap();
    let done = p.shutdown();
    let started = std::time::Instant::now();
    let addr = p.addr;
    eventually(Duration::from_secs(5), || async move {
        TcpStream::connect(addr).await.is_err()
    })
    .await;
    ws.send(Message::text("draining")).await.unwrap();
    let back = ws.next().await.unwrap().unwrap();
    assert_eq!(back.into_text().unwrap().as_str(), "draining");
    assert!(!done.is_finished(), "an open tunnel holds the shutdown");
    tokio::time::timeout(Duration::from_secs(5), done)
        .await
        .expect("cut at shutdown_timeout")
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn ready_is_503_until_every_listener_is_bound_and_serving_then_200() {
    let b = Backend::echo("b").await;
    let text = render(YAML, &[("b", b.addr)]);
    let config = switchyard::config::parse(std::path::Path::new("t.yaml"), &text)
        .unwrap()
        .config;
    let server = switchyard::server::Server::bind(config).await.unwrap();
    let admin = server.admin_addr().unwrap();
    // Bound, not yet serving: the admin listener already answers, and says not ready.
    let got = get(&format!("http://{admin}/ready")).await;
    assert_eq!((got.status, got.text().as_str()), (503, "not ready\n"));
    assert_eq!(get(&format!("http://{admin}/healthz")).await.status, 200);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(server.run(async {
        let _ = rx.await;
    }));
    eventually(Duration::from_secs(5), || async {
        get(&format!("http://{admin}/ready")).await.status == 200
    })
    .await;
    let _ = tx.send(());
    done.await.unwrap();
}

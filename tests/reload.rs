//! Hot reload: by SIGHUP and by file change (rename and in-place write), a broken config
//! that changes nothing, no request lost under load on any request path, WebSockets and
//! in-flight requests across a reload, listeners added and removed.
mod support;

use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::matrix::{self, Matrix, Req, Spec};
use support::*;
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

/// A config with one listener on `bind` and the routes `routes` (a YAML list body), all to
/// pool p at `backend`.
fn config(bind: &str, backend: std::net::SocketAddr, routes: &str) -> String {
    format!(
        "listeners: [{{name: web, bind: \"{bind}\"}}]\n\
         access_log: off\n\
         pools: {{p: {{backends: [{{addr: \"{backend}\"}}]}}}}\n\
         routes: [{routes}]\n"
    )
}

/// A free loopback port (bound, then released), for a config file the binary reads.
async fn free_port() -> String {
    refusing_addr().await.to_string()
}

#[tokio::test]
async fn sighup_reloads_the_config() {
    let b = Backend::echo("b").await;
    let dir = tempfile::tempdir().unwrap();
    // The config is a link to a file in another folder: editing that file is invisible to
    // the folder watch, so only the signal can bring the change in.
    let real = tempfile::tempdir().unwrap();
    let file = real.path().join("real.yaml");
    let bind = free_port().await;
    let only = "{name: old, match: {prefix: /old}, pool: p}";
    std::fs::write(&file, config(&bind, b.addr, only)).unwrap();
    let link = dir.path().join("routes.yaml");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let bin = Binary::start(&link, &[], 1);
    assert_eq!(get(&bin.url("/new")).await.status, 404);

    let both = format!("{only}, {{name: new, match: {{prefix: /new}}, pool: p}}");
    std::fs::write(&file, config(&bind, b.addr, &both)).unwrap();
    bin.signal("HUP");
    bin.logged("config reloaded", 1, WAIT).await;
    assert_eq!(get(&bin.url("/new")).await.status, 200);
    assert_eq!(get(&bin.url("/old")).await.status, 200);
}

#[tokio::test]
async fn a_file_change_reloads_whether_renamed_over_or_written_in_place() {
    let b = Backend::echo("b").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    let bind = free_port().await;
    let route = |name: &str| format!("{{name: {name}, match: {{prefix: /{name}}}, pool: p}}");
    std::fs::write(&path, config(&bind, b.addr, &route("zero"))).unwrap();
    let bin = Binary::start(&path, &[], 1);
    assert_eq!(get(&bin.url("/one")).await.status, 404);

    // An editor's save: a new file renamed over the old one.
    let tmp = dir.path().join(".routes.yaml.swp");
    std::fs::write(&tmp, config(&bind, b.addr, &route("one"))).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    bin.logged("config reloaded", 1, WAIT).await;
    assert_eq!(get(&bin.url("/one")).await.status, 200);
    assert_eq!(get(&bin.url("/zero")).await.status, 404);

    // `>` in a shell: truncated and written in place.
    std::fs::write(&path, config(&bind, b.addr, &route("two"))).unwrap();
    bin.logged("config reloaded", 2, WAIT).await;
    assert_eq!(get(&bin.url("/two")).await.status, 200);
}

#[tokio::test]
async fn a_broken_config_keeps_the_running_one_and_every_error_is_logged_with_its_place() {
    let b = Backend::echo("b").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    let bind = free_port().await;
    let good = config(&bind, b.addr, "{name: all, pool: p}");
    std::fs::write(&path, &good).unwrap();
    let bin = Binary::start(&path, &[], 1);
    assert_eq!(get(&bin.url("/x")).await.status, 200);

    // Two mistakes: an unknown key and a route to a missing pool.
    let bad = good
        .replace("access_log: off", "access_log: off\nshutdown_timout: 1s")
        .replace("{name: all, pool: p}", "{name: all, pool: nope}");
    std::fs::write(&path, &bad).unwrap();
    let log = bin.logged("config reload failed", 1, WAIT).await;
    let place = format!("{}:", path.display());
    assert!(log.contains(&place), "{log}");
    assert!(log.contains("shutdown_timout"), "{log}");
    assert_eq!(get(&bin.url("/x")).await.status, 200, "still serving");

    // Broken YAML too.
    std::fs::write(&path, "listeners: [\n").unwrap();
    bin.logged("config reload failed", 2, WAIT).await;
    assert_eq!(get(&bin.url("/x")).await.status, 200, "still serving");

    std::fs::write(
        &path,
        config(&bind, b.addr, "{name: y, match: {prefix: /y}, pool: p}"),
    )
    .unwrap();
    bin.logged("config reloaded", 1, WAIT).await;
    assert_eq!(get(&bin.url("/x")).await.status, 404);
    assert_eq!(get(&bin.url("/y")).await.status, 200);
}

#[tokio::test]
async fn reloads_are_counted_and_the_last_outcome_is_kept() {
    let b = Backend::echo("b").await;
    let yaml = config("127.0.0.1:0", b.addr, "{name: all, pool: p}");
    let w = Watched::start(&yaml).await;
    let (p, path) = (&w.proxy, &w.path);
    let reloads = &p.shared.reloads;

    std::fs::write(path, yaml.replace("pool: p}", "pool: q}")).unwrap();
    eventually(WAIT, || async {
        reloads.failed.load(Ordering::SeqCst) == 1
    })
    .await;
    let last = reloads.last().unwrap();
    let error = last.error.unwrap();
    assert!(
        error.starts_with(&format!("{}:", path.display())) && error.contains("`q`"),
        "{error}"
    );

    let routed = yaml.replace(
        "{name: all, pool: p}",
        "{name: z, match: {prefix: /z}, pool: p}",
    );
    std::fs::write(path, routed).unwrap();
    eventually(WAIT, || async { reloads.ok.load(Ordering::SeqCst) == 1 }).await;
    assert!(reloads.last().unwrap().error.is_none());
    assert_eq!(get(&p.url("/z")).await.status, 200);
    assert_eq!(reloads.failed.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn no_request_fails_across_three_reloads_under_load_on_any_request_path() {
    matrix::every_shape(|shape| async move {
        let m = Arc::new(
            Matrix::start(
                shape,
                Spec::new(vec![matrix::Kind::Echo("a"), matrix::Kind::Echo("b")]),
            )
            .await,
        );
        let stop_at = Instant::now() + Duration::from_secs(3);
        let sent = Arc::new(AtomicUsize::new(0));
        let mut clients = Vec::new();
        for c in 0..4 {
            let (m, sent) = (m.clone(), sent.clone());
            clients.push(tokio::spawn(async move {
                let mut session = m.session().await;
                // Bounded in time and in count.
                for i in 0..20_000 {
                    if Instant::now() >= stop_at {
                        break;
                    }
                    let req = Req::get(&format!("{}/c{c}/{i}", matrix::PREFIX));
                    let got = m.send_on(&mut session, &req).await;
                    assert_eq!(got.status, 200, "{}: client {c} request {i}", shape.name());
                    sent.fetch_add(1, Ordering::SeqCst);
                }
            }));
        }
        for n in 0..3 {
            tokio::time::sleep(Duration::from_millis(700)).await;
            // Each reload adds a route (and keeps the one under load).
            m.reload(|yaml| {
                yaml.replace(
                    "routes: [",
                    &format!(
                        "routes: [{{name: extra{n}, match: {{prefix: /extra{n}}}, pool: {}}}, ",
                        matrix::POOL
                    ),
                )
            })
            .await
            .unwrap();
        }
        for c in clients {
            c.await.unwrap();
        }
        assert!(
            sent.load(Ordering::SeqCst) > 100,
            "{}: load ran",
            shape.name()
        );
        assert_eq!(m.send(&Req::get("/extra2")).await.status, 200);
    })
    .await;
}

#[tokio::test]
async fn a_websocket_opened_before_a_reload_keeps_echoing_after_it() {
    let (addr, _echo) = websocket_echo().await;
    let other = Backend::echo("other").await;
    let p = Proxy::start(ONE_POOL, &[("b", addr)]).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/chat", p.addr))
        .await
        .unwrap();
    let echo = async |ws: &mut tokio_tungstenite::WebSocketStream<_>, text: &str| {
        ws.send(tokio_tungstenite::tungstenite::Message::text(text))
            .await
            .unwrap();
        let back = ws.next().await.unwrap().unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), text);
    };
    echo(&mut ws, "before").await;
    // The new config sends everything elsewhere: the open tunnel stays where it is.
    p.reload(ONE_POOL, &[("b", other.addr)]).await.unwrap();
    assert_eq!(get(&p.url("/x")).await.header("x-backend"), "other");
    for text in ["after", "still"] {
        echo(&mut ws, text).await;
    }
}

const TWO: &str = r#"
listeners: [{name: web, bind: "{listen}"}, {name: extra, bind: "{listen2}"}]
access_log: off
shutdown_timeout: 10s
pools: {p: {backends: [{addr: "{b}"}]}}
routes: [{name: all, pool: p}]
"#;

#[tokio::test]
async fn a_listener_added_by_reload_accepts_and_a_removed_one_stops_after_its_requests() {
    let (b, release) = Backend::held("finished").await;
    let addrs = [("b", b.addr)];
    let p = Proxy::start(ONE_POOL, &addrs).await;
    assert!(p.shared.listener_addr("extra").is_none());
    p.reload(TWO, &addrs).await.unwrap();
    let extra = p
        .shared
        .listener_addr("extra")
        .expect("bound by the reload");
    let kept = p.shared.listener_addr("web").unwrap();
    assert_eq!(kept, p.addr, "a listener that stays is not re-bound");

    // A request in flight on the listener about to go.
    let url = format!("http://{extra}/slow");
    let in_flight = tokio::spawn(async move { get(&url).await });
    eventually(WAIT, || async { b.hits() == 1 }).await;
    p.reload(ONE_POOL, &addrs).await.unwrap();
    eventually(
        WAIT,
        || async move { TcpStream::connect(extra).await.is_err() },
    )
    .await;
    assert!(p.shared.listener_addr("extra").is_none());
    release.notify_one();
    let got = in_flight.await.unwrap();
    assert_eq!((got.status, got.text().as_str()), (200, "finished"));
    // The one that stays serves on.
    let next = tokio::spawn({
        let url = p.url("/y");
        async move { get(&url).await }
    });
    eventually(WAIT, || async { b.hits() == 2 }).await;
    release.notify_one();
    assert_eq!(next.await.unwrap().status, 200);
}

#[tokio::test]
async fn a_reload_whose_listener_cannot_bind_changes_nothing() {
    let b = Backend::echo("b").await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap();
    let p = Proxy::start(ONE_POOL, &[("b", b.addr)]).await;
    let yaml = TWO.replace("{listen2}", &busy.to_string()).replace(
        "{name: all, pool: p}",
        "{name: z, match: {prefix: /z}, pool: p}",
    );
    let err = p.reload(&yaml, &[("b", b.addr)]).await.unwrap_err();
    assert!(err.contains("cannot bind listener extra"), "{err}");
    assert_eq!(get(&p.url("/x")).await.status, 200, "the old routes stay");
    assert!(p.shared.listener_addr("extra").is_none());
}

#[tokio::test]
async fn a_websocket_on_a_removed_listener_echoes_on_until_shutdown_timeout_then_is_cut() {
    let (addr, _echo) = websocket_echo().await;
    let two = TWO.replace("shutdown_timeout: 10s", "shutdown_timeout: 1s");
    let one = ONE_POOL.replace("access_log: off", "access_log: off\nshutdown_timeout: 1s");
    let addrs = [("b", addr)];
    let p = Proxy::start(&two, &addrs).await;
    let extra = p.shared.listener_addr("extra").unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{extra}/chat"))
        .await
        .unwrap();
    p.reload(&one, &addrs).await.unwrap();
    let removed = Instant::now();
    // Still a tunnel after the listener went: drained, not cut.
    ws.send(tokio_tungstenite::tungstenite::Message::text("hi"))
        .await
        .unwrap();
    assert_eq!(
        ws.next()
            .await
            .unwrap()
            .unwrap()
            .into_text()
            .unwrap()
            .as_str(),
        "hi"
    );
    // Then cut at the shutdown timeout.
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(m)) if !m.is_close() => continue,
                _ => break,
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the tunnel was never cut");
    let took = removed.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "cut after {took:?}"
    );
}

#[tokio::test]
async fn new_limits_apply_to_the_next_request_of_a_kept_alive_connection() {
    let b = Backend::echo("b").await;
    let addrs = [("b", b.addr)];
    let p = Proxy::start(ONE_POOL, &addrs).await;
    let mut c = RawConn::open(p.addr).await;
    let req = format!(
        "GET /x HTTP/1.1\r\nhost: a\r\nx-pad: {}\r\n\r\n",
        "p".repeat(2000)
    );
    assert!(c.write(&req).await);
    assert_eq!(c.response_to(false, WAIT).await.unwrap().status, 200);
    let small = ONE_POOL.replace(
        "access_log: off",
        "access_log: off\nlimits: {max_request_header_bytes: 1024}",
    );
    p.reload(&small, &addrs).await.unwrap();
    assert!(c.write(&req).await);
    assert_eq!(c.response_to(false, WAIT).await.unwrap().status, 431);
}

#[tokio::test]
async fn renaming_a_listener_keeps_its_sockets_and_its_connections() {
    let b = Backend::echo("b").await;
    let bind = free_port().await;
    let named = |name: &str| {
        ONE_POOL.replace(
            r#"[{name: web, bind: "{listen}"}]"#,
            &format!(r#"[{{name: {name}, bind: "{bind}"}}]"#),
        )
    };
    let addrs = [("b", b.addr)];
    let p = Proxy::start(&named("web"), &addrs).await;
    let mut c = RawConn::open(p.addr).await;
    let req = "GET /x HTTP/1.1\r\nhost: a\r\n\r\n";
    assert!(c.write(req).await);
    assert_eq!(c.response_to(false, WAIT).await.unwrap().status, 200);

    p.reload(&named("front"), &addrs).await.unwrap();
    assert_eq!(p.shared.listener_addr("front"), Some(p.addr));
    assert_eq!(p.shared.listener_addr("web"), None);
    // The connection opened before goes on (nothing was drained), and new ones come in.
    assert!(c.write(req).await);
    assert_eq!(c.response_to(false, WAIT).await.unwrap().status, 200);
    assert_eq!(get(&p.url("/y")).await.status, 200);
}

#[tokio::test]
async fn no_request_fails_across_reloads_that_resize_limits_and_move_listeners_with_two_workers() {
    let b = Backend::echo("b").await;
    let addrs = [("b", b.addr)];
    let with = |max: usize, extra: bool| {
        let listeners = if extra {
            r#"[{name: web, bind: "{listen}"}, {name: extra, bind: "{listen2}"}]"#
        } else {
            r#"[{name: web, bind: "{listen}"}]"#
        };
        ONE_POOL
            .replace(r#"[{name: web, bind: "{listen}"}]"#, listeners)
            .replace(
                "access_log: off",
                &format!("access_log: off\nlimits: {{max_connections: {max}}}"),
            )
    };
    let p = Proxy::start_workers(&with(1000, false), &addrs, 2).await;
    let stop_at = Instant::now() + Duration::from_secs(2);
    let mut clients = Vec::new();
    for c in 0..4 {
        let url = p.url(&format!("/c{c}"));
        clients.push(tokio::spawn(async move {
            let keep = client();
            let mut n = 0;
            while Instant::now() < stop_at && n < 20_000 {
                // Half the clients open a connection per request: accepts across reloads.
                let got = if c % 2 == 0 {
                    get_with(&keep, &url, &[]).await
                } else {
                    get(&url).await
                };
                assert_eq!(got.status, 200, "client {c} request {n}");
                n += 1;
            }
            n
        }));
    }
    for i in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let (max, extra) = [(64, true), (2000, false), (100, true), (1000, false)][i];
        p.reload(&with(max, extra), &addrs).await.unwrap();
    }
    let mut total = 0;
    for c in clients {
        total += c.await.unwrap();
    }
    assert!(total > 100, "load ran: {total}");
}

#[tokio::test]
async fn a_reload_raises_and_lowers_max_connections_on_a_running_listener() {
    let b = Backend::echo("b").await;
    let addrs = [("b", b.addr)];
    let max = |n: usize| {
        ONE_POOL.replace(
            "access_log: off",
            &format!("access_log: off\nlimits: {{max_connections: {n}}}"),
        )
    };
    let p = Proxy::start(&max(1), &addrs).await;
    let req = "GET /x HTTP/1.1\r\nhost: a\r\n\r\n";
    let mut a = RawConn::open(p.addr).await;
    assert!(a.write(req).await);
    assert_eq!(a.response_to(false, WAIT).await.unwrap().status, 200);
    // Over the limit: connected (the kernel's backlog), not served.
    let mut second = RawConn::open(p.addr).await;
    assert!(second.write(req).await);
    assert!(
        second
            .response_to(false, Duration::from_millis(300))
            .await
            .is_err()
    );
    p.reload(&max(2), &addrs).await.unwrap();
    assert_eq!(second.response_to(false, WAIT).await.unwrap().status, 200);

    // Lowered while two are open: neither is cut, and a third waits for both to go.
    p.reload(&max(1), &addrs).await.unwrap();
    assert!(a.write(req).await);
    assert_eq!(a.response_to(false, WAIT).await.unwrap().status, 200);
    let mut third = RawConn::open(p.addr).await;
    assert!(third.write(req).await);
    drop(second);
    assert!(
        third
            .response_to(false, Duration::from_millis(300))
            .await
            .is_err()
    );
    drop(a);
    assert_eq!(third.response_to(false, WAIT).await.unwrap().status, 200);
}

#[tokio::test]
async fn the_access_log_format_follows_a_reload_on_every_request_path() {
    matrix::every_shape(|shape| async move {
        let m = Matrix::start(shape, Spec::new(vec![matrix::Kind::Echo("a")]).log()).await;
        let path = |name: &str| format!("{}/{name}", matrix::PREFIX);
        assert_eq!(m.send(&Req::get(&path("one"))).await.status, 200);
        assert_eq!(m.next_log().await["path"], path("one"));
        m.reload(|y| y.replace("access_log: json", "access_log: off"))
            .await
            .unwrap();
        assert_eq!(m.send(&Req::get(&path("unlogged"))).await.status, 200);
        m.reload(|y| y.to_string()).await.unwrap();
        assert_eq!(m.send(&Req::get(&path("two"))).await.status, 200);
        // The next line is the second logged request's: the one sent while off left none.
        assert_eq!(m.next_log().await["path"], path("two"), "{}", shape.name());
    })
    .await;
}

#[tokio::test]
async fn a_lowered_body_limit_applies_to_the_next_request_of_a_kept_connection_on_every_path() {
    matrix::every_shape(|shape| async move {
        if shape == matrix::Shape::Get {
            matrix::skip(shape, "no body");
            return;
        }
        let m = Matrix::start(shape, Spec::new(vec![matrix::Kind::Echo("a")])).await;
        let mut session = m.session().await;
        let body = || Req::post(&format!("{}/up", matrix::PREFIX), vec![b'x'; 20]);
        assert_eq!(m.send_on(&mut session, &body()).await.status, 200);
        m.reload(|y| y.replace("pools:\n", "limits: {max_request_body_bytes: 10}\npools:\n"))
            .await
            .unwrap();
        // The same connection (one HTTP/2 connection, one keep-alive HTTP/1.1 one).
        let over = m.send_on(&mut session, &body()).await;
        assert_eq!(over.status, 413, "{}: {}", shape.name(), over.text());
    })
    .await;
}

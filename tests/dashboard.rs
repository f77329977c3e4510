//! The admin page at `/`, in a real headless Chromium (Debian's `chromium`; `.ci/run`
//! installs it): the DOM after its scripts ran shows the configured names and a count
//! that rises with traffic, a tcp listener's relays, and a screenshot of it is not blank.
mod support;

use std::path::Path;
use std::time::Duration;
use support::*;

const YAML: &str = r#"
listeners: [{name: web, bind: "{listen}"}, {name: edge, bind: "{listen2}", mode: tcp, pool: game}]
admin: {bind: "{admin}"}
access_log: off
pools:
  shop: {sticky: {cookie: sy}, backends: [{addr: "{a}"}, {addr: "{b}", drain: true}]}
  game: {backends: [{addr: "{a}"}]}
routes: [{name: storefront, match: {prefix: /api}, pool: shop}]
"#;

/// Run headless Chromium on `url` with `args` (a profile of its own in `dir`), bounded.
fn chromium(dir: &Path, url: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new("chromium");
    cmd.args([
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
    ])
    .arg(format!("--user-data-dir={}", dir.display()))
    // Virtual time: the page's first polls of /status run before the dump.
    .arg("--virtual-time-budget=4000")
    .args(args)
    .arg(url)
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::null());
    let child = cmd
        .spawn()
        .expect("chromium (Debian package chromium; .ci/run installs it)");
    let id = child.id();
    // Bounded: a browser still running after a minute is killed by its PID; once it has
    // exited, the dropped sender tells the watchdog to stand down (the PID is not ours).
    let (done, watch) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
            watch.recv_timeout(Duration::from_secs(60))
        {
            let _ = std::process::Command::new("kill")
                .arg(id.to_string())
                .status();
        }
    });
    let out = child.wait_with_output().expect("chromium ran");
    drop(done);
    out
}

/// The DOM of `url` after its scripts ran.
fn dom(dir: &Path, url: &str) -> String {
    let out = chromium(dir, url, &["--dump-dom"]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The request count the page shows for route `name`.
fn route_requests(dom: &str, name: &str) -> Option<u64> {
    let row = dom.split(&format!("data-route=\"{name}\"")).nth(1)?;
    let cell = row.split("class=\"num requests\">").nth(1)?;
    cell.split('<').next()?.parse().ok()
}

#[tokio::test]
async fn the_dashboard_shows_the_config_and_counts_that_rise_with_traffic() {
    let a = Backend::echo("a").await;
    let b = Backend::echo("b").await;
    let p = Proxy::start(YAML, &[("a", a.addr), ("b", b.addr)]).await;
    let page = format!("http://{}/", p.admin.unwrap());
    let served = get(&page).await;
    assert_eq!(served.status, 200);
    assert_eq!(served.header("content-type"), "text/html; charset=utf-8");
    assert!(
        !served.text().contains("http://") && !served.text().contains("https://"),
        "self-contained: no external assets"
    );
    for _ in 0..3 {
        assert_eq!(get(&p.url("/api/x")).await.status, 200);
    }
    // A connection held open through the tcp listener, relayed when the page is read.
    let _relayed = tokio::net::TcpStream::connect(p.addrs["edge"])
        .await
        .unwrap();
    let st = p.shared.listener_stats(&"edge".into());
    eventually(Duration::from_secs(5), || async {
        st.tcp.active.load(std::sync::atomic::Ordering::Relaxed) == 1
    })
    .await;
    let profile = tempfile::tempdir().unwrap();
    let dir = profile.path().to_path_buf();
    let first = tokio::task::spawn_blocking({
        let (dir, page) = (dir.clone(), page.clone());
        move || dom(&dir, &page)
    })
    .await
    .unwrap();
    for name in [
        "storefront",
        "shop",
        "web",
        &a.addr.to_string(),
        &b.addr.to_string(),
    ] {
        assert!(first.contains(name), "{name} not on the page:\n{first}");
    }
    assert!(first.contains("draining"), "the draining backend says so");
    let tcp_row = first
        .split("data-tcp=\"edge\"")
        .nth(1)
        .expect("a TCP relays row for the tcp listener");
    assert!(
        tcp_row.contains(&format!("game/{} 1", a.addr)),
        "its connection by backend: {tcp_row}"
    );
    let before = route_requests(&first, "storefront").expect("a request count for the route");
    assert!(before >= 3, "{before}");

    for _ in 0..5 {
        assert_eq!(get(&p.url("/api/y")).await.status, 200);
    }
    // The last record is counted just after its response went.
    let status = format!("http://{}/status", p.admin.unwrap());
    eventually(Duration::from_secs(10), || async {
        get(&status).await.json()["routes"][0]["requests"] == before + 5
    })
    .await;
    let second = tokio::task::spawn_blocking({
        let (dir, page) = (dir.clone(), page.clone());
        move || dom(&dir, &page)
    })
    .await
    .unwrap();
    assert_eq!(route_requests(&second, "storefront"), Some(before + 5));
}

#[tokio::test]
async fn a_screenshot_of_the_dashboard_is_not_blank() {
    let a = Backend::echo("a").await;
    let b = Backend::echo("b").await;
    let p = Proxy::start(YAML, &[("a", a.addr), ("b", b.addr)]).await;
    let page = format!("http://{}/", p.admin.unwrap());
    let profile = tempfile::tempdir().unwrap();
    let shots = tempfile::tempdir().unwrap();
    let (dir, out) = (profile.path().to_path_buf(), shots.path().to_path_buf());
    let sizes = tokio::task::spawn_blocking(move || {
        let mut sizes = Vec::new();
        for (name, url) in [("blank", "about:blank"), ("dashboard", page.as_str())] {
            let file = out.join(format!("{name}.png"));
            chromium(
                &dir,
                url,
                &[
                    "--window-size=1200,800",
                    &format!("--screenshot={}", file.display()),
                ],
            );
            let png = std::fs::read(&file).expect("a screenshot was written");
            assert!(png.starts_with(b"\x89PNG"), "{name} is a PNG");
            sizes.push(png.len());
        }
        sizes
    })
    .await
    .unwrap();
    // A blank page compresses to almost nothing; tables of text do not.
    assert!(
        sizes[1] > 4 * sizes[0],
        "dashboard {} bytes against blank {}",
        sizes[1],
        sizes[0]
    );
}

//! `/metrics` on the admin listener: the families read from the proxy's state, valid for
//! `promtool check metrics`.
mod support;

use http::Response;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;
use support::*;
use switchyard::reload::Reloader;

const WAIT: Duration = Duration::from_secs(10);

const YAML: &str = r#"
listeners: [{name: web, bind: "{listen}"}]
admin: {bind: "{admin}"}
access_log: off
pools:
  p:
    health_check: {interval: 100ms, timeout: 100ms, unhealthy_threshold: 1, healthy_threshold: 1}
    backends: [{addr: "{a}"}, {addr: "{b}", drain: true}]
routes: [{name: all, pool: p}]
"#;

async fn scrape(p: &Proxy) -> String {
    let got = get(&format!("http://{}/metrics", p.admin.unwrap())).await;
    assert_eq!(got.status, 200);
    assert!(
        got.header("content-type")
            .starts_with("text/plain; version=0.0.4"),
        "{}",
        got.header("content-type")
    );
    got.text()
}

/// The value of the series `line_start` (name and labels, as rendered) in `text`.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().expect("a number"))
}

#[tokio::test]
async fn backend_up_exists_for_every_backend_from_start_and_flips_with_health() {
    let health = Arc::new(AtomicU16::new(200));
    let h = health.clone();
    let a = Backend::serve(move |_| {
        let status = h.load(Ordering::SeqCst);
        Box::pin(async move { Response::builder().status(status).body(full("")).unwrap() })
    })
    .await;
    let b = Backend::echo("b").await;
    let p = Proxy::start(YAML, &[("a", a.addr), ("b", b.addr)]).await;
    let up_a = format!("switchyard_backend_up{{pool=\"p\",backend=\"{}\"}}", a.addr);
    let up_b = format!("switchyard_backend_up{{pool=\"p\",backend=\"{}\"}}", b.addr);
    let text = scrape(&p).await;
    assert_eq!(value(&text, &up_a), Some(1.0), "{text}");
    assert_eq!(value(&text, &up_b), Some(1.0), "{text}");
    let draining = format!(
        "switchyard_backend_draining{{pool=\"p\",backend=\"{}\"}}",
        b.addr
    );
    assert_eq!(value(&text, &draining), Some(1.0));
    assert!(text.contains("# TYPE switchyard_backend_active_requests gauge"));
    assert!(text.contains("process_resident_memory_bytes"));
    // Counters appear at their first event.
    assert!(!text.contains("switchyard_config_reloads_total"), "{text}");

    health.store(500, Ordering::SeqCst);
    eventually(WAIT, || async {
        value(&scrape(&p).await, &up_a) == Some(0.0)
    })
    .await;
    health.store(200, Ordering::SeqCst);
    eventually(WAIT, || async {
        value(&scrape(&p).await, &up_a) == Some(1.0)
    })
    .await;
}

#[tokio::test]
async fn reloads_are_counted_by_result_and_removed_backends_leave_the_scrape() {
    let a = Backend::echo("a").await;
    let b = Backend::echo("b").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    let yaml = render(YAML, &[("a", a.addr), ("b", b.addr)]);
    std::fs::write(&path, &yaml).unwrap();
    let p = Proxy::start(&yaml, &[]).await;
    let reloader = Reloader::new(
        path.clone(),
        yaml.clone(),
        p.control.clone(),
        p.shared.clone(),
    );
    tokio::spawn(reloader.run());

    std::fs::write(&path, yaml.replace("pool: p}", "pool: nope}")).unwrap();
    let failure = "switchyard_config_reloads_total{result=\"failure\"}";
    eventually(WAIT, || async {
        value(&scrape(&p).await, failure) == Some(1.0)
    })
    .await;

    // Keep only `a`; the admin listener stays where it is.
    let one = yaml.replace(&format!(", {{addr: \"{}\", drain: true}}", b.addr), "");
    assert_ne!(one, yaml);
    std::fs::write(&path, &one).unwrap();
    let success = "switchyard_config_reloads_total{result=\"success\"}";
    eventually(WAIT, || async {
        value(&scrape(&p).await, success) == Some(1.0)
    })
    .await;
    let text = scrape(&p).await;
    assert!(text.contains(&a.addr.to_string()));
    assert!(!text.contains(&b.addr.to_string()), "{text}");
    assert_eq!(value(&text, failure), Some(1.0));
}

#[tokio::test]
async fn a_live_scrape_passes_promtool_check_metrics() {
    let a = Backend::echo("a").await;
    let b = Backend::echo("b").await;
    let p = Proxy::start(YAML, &[("a", a.addr), ("b", b.addr)]).await;
    let _ = get(&p.url("/x")).await;
    let text = scrape(&p).await;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; .ci/run installs it)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

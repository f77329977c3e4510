//! The `switchyard` binary: `check` golden output, exit codes, and a real run.
mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::*;

fn switchyard(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_LOG")
        .output()
        .expect("run switchyard")
}

/// `check` on `tests/fixtures/NAME.yaml` prints exactly NAME.stderr and NAME.stdout.
fn golden(name: &str, code: i32) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let out = switchyard(&["check", "--config", &format!("tests/fixtures/{name}.yaml")]);
    let expected =
        |ext: &str| std::fs::read_to_string(dir.join(format!("{name}.{ext}"))).unwrap_or_default();
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        expected("stderr"),
        "stderr of {name}"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        expected("stdout"),
        "stdout of {name}"
    );
    assert_eq!(out.status.code(), Some(code), "exit code of {name}");
}

#[test]
fn check_reports_every_semantic_error_with_its_position() {
    golden("bad_semantics", 1);
}

#[test]
fn check_reports_every_health_setting_that_makes_no_sense() {
    golden("bad_health", 1);
}

#[test]
fn check_takes_backend_names_without_resolving_them() {
    golden("dns_names", 0);
}

#[test]
fn check_reports_bad_names_resolvers_and_refresh_intervals() {
    golden("bad_dns", 1);
}

#[test]
fn check_reports_an_unknown_key_where_it_is() {
    golden("bad_typo", 1);
}

#[test]
fn check_reports_yaml_syntax_errors() {
    golden("bad_yaml", 1);
}

#[test]
fn check_warns_about_shadowed_routes_but_passes() {
    golden("warn_shadowed", 0);
}

#[test]
fn the_demo_config_checks_clean() {
    // As after `switchyard demo` generated its certificate: a copy with one of its own.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("routes.yaml");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("routes.yaml"),
        &config,
    )
    .unwrap();
    switchyard::tls::certs::generate_self_signed(
        &dir.path().join("certs/localhost.crt"),
        &dir.path().join("certs/localhost.key"),
        &["localhost"],
    )
    .unwrap();
    let out = switchyard(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    for want in [
        "routes.yaml: ok",
        "payment",
        "product",
        "user",
        "/api/products",
    ] {
        assert!(summary.contains(want), "{want} missing from:\n{summary}");
    }
    // The one warning: the demo signs sticky tokens without a secret of its own.
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(
            "warning: pool `payment`'s sticky tokens are signed with a key derived from its name"
        ),
        "{err}"
    );
}

#[test]
fn usage_errors_exit_2_and_help_exits_0() {
    assert_eq!(switchyard(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(switchyard(&["echo"]).status.code(), Some(2));
    assert_eq!(
        switchyard(&["run", "--workers", "0"]).status.code(),
        Some(2)
    );
    let help = switchyard(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    for cmd in ["run", "check", "demo", "echo", "explain", "healthcheck"] {
        assert!(text.contains(cmd), "{cmd} missing from --help");
    }
}

#[test]
fn run_refuses_a_bad_config() {
    let out = switchyard(&["run", "--config", "tests/fixtures/bad_typo.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tests/fixtures/bad_typo.yaml:6:5: "), "{err}");
}

#[tokio::test]
async fn the_binary_proxies_logs_json_and_stops_cleanly_on_sigterm() {
    let backend = Backend::echo("b").await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("routes.yaml");
    std::fs::write(
        &config,
        format!(
            "listeners: [{{name: web, bind: \"127.0.0.1:0\"}}]\n\
             access_log: json\n\
             pools: {{p: {{backends: [{{addr: \"{}\"}}]}}}}\n\
             routes: [{{name: all, pool: p}}]\n",
            backend.addr
        ),
    )
    .unwrap();
    // Three workers, each with its own SO_REUSEPORT socket on the same port.
    let (mut child, guard, addr) = start_binary(&config, 3);
    let got = get(&format!("http://{addr}/hello?x=1")).await;
    assert_eq!(got.status, 200);
    // A thread takes its name once it runs, which may be after worker 0 is listening.
    let pid = child.id();
    let worker_threads = move || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|name| name.starts_with("switchyard-"))
            .count()
    };
    eventually(Duration::from_secs(5), || async { worker_threads() >= 2 }).await;
    assert_eq!(worker_threads(), 2, "worker 0 runs on the main thread");

    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let log: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(log["path"], "/hello?x=1");
    assert_eq!(log["host"], addr.as_str());
    assert_eq!(log["method"], "GET");
    assert_eq!(log["status"], 200);
    assert_eq!(log["bytes"], got.body.len());
    assert_eq!(log["route"], "all");
    assert_eq!(log["pool"], "p");
    assert_eq!(log["backend"], backend.addr.to_string());
    assert_eq!(log["request_id"], got.header("x-request-id"));

    stop_binary(child, guard).await;
}

#[tokio::test]
async fn the_common_log_carries_referer_and_user_agent() {
    let backend = Backend::echo("b").await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("routes.yaml");
    std::fs::write(
        &config,
        format!(
            "listeners: [{{name: web, bind: \"127.0.0.1:0\"}}]\n\
             access_log: common\n\
             pools: {{p: {{backends: [{{addr: \"{}\"}}]}}}}\n\
             routes: [{{name: all, pool: p}}]\n",
            backend.addr
        ),
    )
    .unwrap();
    let (mut child, guard, addr) = start_binary(&config, 1);
    let got = send(
        http::Request::get(format!("http://{addr}/page?q=1"))
            .header("referer", "https://ref.test/a")
            .header("user-agent", "probe/1.0")
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(got.status, 200);
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let tail = format!(
        "\"GET /page?q=1 HTTP/1.1\" 200 {} \"https://ref.test/a\" \"probe/1.0\"\n",
        got.body.len()
    );
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    assert!(line.ends_with(&tail), "{line}");
    stop_binary(child, guard).await;
}

#[tokio::test]
async fn the_proxys_own_400s_are_access_logged() {
    let backend = Backend::echo("b").await;
    let dir = tempfile::tempdir().unwrap();
    let leaf = support::tls::Ca::new().leaf(dir.path(), "a", &["a.test", "127.0.0.1"]);
    let config = dir.path().join("routes.yaml");
    std::fs::write(
        &config,
        format!(
            "listeners:\n\
             \x20 - {{name: web, bind: \"127.0.0.1:0\"}}\n\
             \x20 - {{name: websecure, bind: \"127.0.0.1:0\", tls: {{certificates: [{{cert: \"{}\", key: \"{}\"}}]}}}}\n\
             access_log: json\n\
             pools: {{p: {{backends: [{{addr: \"{}\"}}]}}}}\n\
             routes: [{{name: all, pool: p}}]\n",
            leaf.cert.display(),
            leaf.key.display(),
            backend.addr
        ),
    )
    .unwrap();
    let (mut child, guard, addrs) = start_binary_listening(&config, 1, 2);
    let (plain, tls) = (addrs[0].parse().unwrap(), addrs[1].parse().unwrap());
    // A request line that does not parse, on the plain listener.
    let garbage = raw(
        plain,
        b"GET /a b c HTTP/1.1\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");
    // Plain HTTP on the TLS listener.
    let plain_on_tls = raw(
        tls,
        b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(plain_on_tls.starts_with("HTTP/1.1 400"), "{plain_on_tls}");
    // A proxied request after them: its line shows the log is being read.
    assert_eq!(get(&format!("http://{plain}/after")).await.status, 200);
    // The access log: read on a thread, so that a missing line is a bounded wait.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let (mut logged_400, mut after) = (Vec::new(), false);
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while logged_400.len() < 2 || !after {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            break;
        };
        let log: serde_json::Value = serde_json::from_str(&line).unwrap();
        if log["status"] == 400 {
            logged_400.push(log["listener"].as_str().unwrap_or_default().to_string());
        }
        after |= log["path"] == "/after";
    }
    assert!(after, "the proxied request was not logged");
    logged_400.sort();
    assert_eq!(
        logged_400,
        ["web", "websecure"],
        "listeners with an access log line for their 400"
    );
    stop_binary(child, guard).await;
}

/// The binary on `config` with `workers` workers, once it is listening: the child, a guard
/// that kills it if the test fails before [`stop_binary`], and the listener's address.
fn start_binary(config: &Path, workers: u16) -> (Child, KillOnDrop, String) {
    let (child, guard, mut addrs) = start_binary_listening(config, workers, 1);
    (child, guard, addrs.remove(0))
}

/// As [`start_binary`], once `listeners` listeners are listening: their addresses in the
/// order they were logged (the config's).
fn start_binary_listening(
    config: &Path,
    workers: u16,
    listeners: usize,
) -> (Child, KillOnDrop, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["--config", config.to_str().unwrap()])
        .args(["--workers", &workers.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let guard = KillOnDrop(Some(child.id()));
    // Readiness: the "listening" log line carries the bound address.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut addrs = Vec::new();
    while addrs.len() < listeners {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "exited before listening"
        );
        if let Some(i) = line.find("addr=") {
            addrs.push(line[i + 5..].trim().to_string());
        }
    }
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    (child, guard, addrs)
}

/// SIGTERM, and the binary exits 0.
async fn stop_binary(mut child: Child, mut guard: KillOnDrop) {
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    guard.0 = None;
    assert_eq!(status.code(), Some(0));
}

/// Kills a child process on drop unless disarmed, so a failed assertion does not leave
/// the proxy running (the child is not reaped until then, so its PID cannot be reused).
struct KillOnDrop(Option<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// `switchyard healthcheck ARGS...`, run off the test's runtime (which keeps serving the
/// proxy and backends it probes): exit code and stderr.
async fn healthcheck(args: &[&str]) -> (Option<i32>, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        switchyard(&[&["healthcheck"], &args[..]].concat())
    })
    .await
    .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn healthcheck_passes_on_a_running_proxys_admin_healthz() {
    let backend = Backend::echo("b").await;
    let proxy = Proxy::start(
        "listeners: [{name: web, bind: \"{listen}\"}]\n\
         admin: {bind: \"{admin}\"}\n\
         access_log: off\n\
         pools: {p: {backends: [{addr: \"{b}\"}]}}\n\
         routes: [{name: all, pool: p}]\n",
        &[("b", backend.addr)],
    )
    .await;
    let admin = proxy.admin.expect("an admin listener");
    let (code, err) = healthcheck(&[&format!("http://{admin}/healthz")]).await;
    assert_eq!(code, Some(0), "{err}");
    // localhost names 127.0.0.1; /ready is a 2xx once every listener is bound.
    let (code, err) = healthcheck(&[&format!("http://localhost:{}/ready", admin.port())]).await;
    assert_eq!(code, Some(0), "{err}");
    // Not a 2xx: the admin's 404 for a path it does not serve.
    let (code, err) = healthcheck(&[&format!("http://{admin}/nope")]).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("status 404"), "{err}");
}

#[tokio::test]
async fn healthcheck_fails_on_a_closed_port() {
    let closed = refusing_addr().await;
    let (code, err) = healthcheck(&[&format!("http://{closed}/healthz")]).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("connection refused"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
}

#[tokio::test]
async fn healthcheck_fails_on_a_503_and_on_silence() {
    // A backend whose /healthz answers 503, as a failing service's does.
    let (backend, health) = Backend::checked("sick", 200).await;
    health.store(503, std::sync::atomic::Ordering::SeqCst);
    let (code, err) = healthcheck(&[&format!("http://{}/healthz", backend.addr)]).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("status 503 Service Unavailable"), "{err}");
    health.store(200, std::sync::atomic::Ordering::SeqCst);
    let (code, err) = healthcheck(&[&format!("http://{}/healthz", backend.addr)]).await;
    assert_eq!(code, Some(0), "{err}");
    // A port that accepts and never answers: the timeout decides.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let start = std::time::Instant::now();
    let (code, err) = healthcheck(&["--timeout", "300ms", &format!("http://{addr}/healthz")]).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no answer within 300ms"), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    drop(silent);
}

#[test]
fn healthcheck_refuses_urls_it_cannot_probe_as_usage_errors() {
    for bad in [
        "https://127.0.0.1:9901/healthz",
        "http://example.com/healthz",
    ] {
        let out = switchyard(&["healthcheck", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
    }
    assert_eq!(
        switchyard(&["healthcheck", "--timeout", "soon"])
            .status
            .code(),
        Some(2)
    );
    let help = switchyard(&["healthcheck", "--help"]);
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("http://127.0.0.1:9901/healthz"), "{text}");
    assert!(text.contains("--timeout"), "{text}");
}

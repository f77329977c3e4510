//! `switchyard explain` answers what the running proxy does: for a set of requests, its
//! decision (route and pool, or the status the proxy answers itself) is compared with what
//! the same config, running, does with the same request on the wire.
mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::tls::Ca;
use support::*;
use switchyard::explain::{self, Ask, Explanation};

const CONFIG: &str = r#"
listeners:
  - {name: web, bind: "{listen}"}
  - {name: secure, bind: "{listen2}", tls: {certificates: [{cert: "@CERT@", key: "@KEY@"}]}}
access_log: json
pools:
  payment: {backends: [{addr: "{payment}"}]}
  product: {backends: [{addr: "{product}"}]}
  beta: {backends: [{addr: "{beta}"}]}
  user: {backends: [{addr: "{user}"}]}
  tenant: {backends: [{addr: "{tenant}"}]}
routes:
  - {name: payments, match: {host: shop.example.com, prefix: /api/payments, methods: [GET, POST]}, pool: payment}
  - {name: tenants, match: {host: "*.example.com", prefix: /api}, pool: tenant}
  - {name: canary, match: {prefix: /api/products, headers: {x-canary: "1"}}, pool: beta}
  - {name: beta-users, match: {prefix: /api/products, cookies: {beta: "yes"}}, pool: beta}
  - {name: products, match: {prefix: /api/products}, pool: product}
  - {name: user, match: {path: "/users/{id}"}, pool: user}
  - {name: users, match: {prefix: /users, methods: [POST]}, pool: user}
"#;

/// Requests to put to both: (method, URL, headers, cookies).
fn asks() -> Vec<(
    &'static str,
    &'static str,
    Vec<&'static str>,
    Vec<&'static str>,
)> {
    vec![
        (
            "GET",
            "http://shop.example.com/api/payments/1",
            vec![],
            vec![],
        ),
        (
            "POST",
            "http://SHOP.example.com:80/api/payments/./x?y=1",
            vec![],
            vec![],
        ),
        (
            "DELETE",
            "http://shop.example.com/api/payments/1",
            vec![],
            vec![],
        ),
        (
            "GET",
            "http://acme.example.com/api/anything",
            vec![],
            vec![],
        ),
        ("GET", "http://a.b.example.com/api/anything", vec![], vec![]),
        (
            "GET",
            "http://any.test/api/products/1",
            vec!["x-canary: 1"],
            vec![],
        ),
        (
            "GET",
            "http://any.test/api/products/1",
            vec!["x-canary: 2"],
            vec![],
        ),
        (
            "GET",
            "http://any.test/api/products/1",
            vec![],
            vec!["beta=yes"],
        ),
        (
            "GET",
            "http://any.test/api/products/1",
            vec![],
            vec!["beta=no", "x=1"],
        ),
        ("GET", "http://any.test/users/7", vec![], vec![]),
        ("POST", "http://any.test/users/7/orders", vec![], vec![]),
        ("GET", "http://any.test/users/7/orders", vec![], vec![]),
        (
            "GET",
            "http://any.test/api/%2e%2e/%2e%2e/etc",
            vec![],
            vec![],
        ),
        ("GET", "http://any.test/nope", vec![], vec![]),
        ("GET", "https://localhost/api/products/1", vec![], vec![]),
        (
            "GET",
            "https://localhost/api/products/1",
            vec!["Host: other.test"],
            vec![],
        ),
    ]
}

/// An access log written to memory.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    /// The `n`th line, once it is written.
    async fn line(&self, n: usize) -> serde_json::Value {
        let mut found = None;
        eventually(Duration::from_secs(5), || {
            let text = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
            found = text.lines().nth(n).map(str::to_string);
            let ready = found.is_some();
            async move { ready }
        })
        .await;
        serde_json::from_str(&found.unwrap()).unwrap()
    }
}

struct Running {
    web: SocketAddr,
    secure: SocketAddr,
    ca: Ca,
    log: Log,
    _backends: Vec<Backend>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// The config's text with real addresses, and the proxy running it.
async fn start(dir: &Path) -> (String, Running) {
    let ca = Ca::new();
    let leaf = ca.leaf(dir, "localhost", &["localhost"]);
    let mut backends = Vec::new();
    let mut text = CONFIG
        .replace("@CERT@", &leaf.cert.display().to_string())
        .replace("@KEY@", &leaf.key.display().to_string())
        .replace("{listen}", "127.0.0.1:0")
        .replace("{listen2}", "127.0.0.1:0");
    for pool in ["payment", "product", "beta", "user", "tenant"] {
        let b = Backend::echo(pool).await;
        text = text.replace(&format!("{{{pool}}}"), &b.addr.to_string());
        backends.push(b);
    }
    let config = switchyard::config::parse(Path::new("test.yaml"), &text)
        .unwrap()
        .config;
    let log = Log::default();
    let sink =
        switchyard::access_log::AccessLog::start_to(config.access_log, Box::new(log.clone()));
    let server = switchyard::server::Server::bind_with(config, 1, sink)
        .await
        .unwrap();
    let (web, secure) = (
        server.listener_addr("web").unwrap(),
        server.listener_addr("secure").unwrap(),
    );
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(server.run(async {
        let _ = rx.await;
    }));
    let running = Running {
        web,
        secure,
        ca,
        log,
        _backends: backends,
        _stop: tx,
    };
    (text, running)
}

/// What the running proxy did with the request: its status, and for a forwarded request
/// the pool that answered (the echo backends are named after their pools).
async fn on_the_wire(
    r: &Running,
    method: &str,
    url: &str,
    headers: &[&str],
    cookies: &[&str],
) -> (u16, String) {
    let uri: http::Uri = url.parse().unwrap();
    let target = uri.path_and_query().unwrap().as_str();
    let mut head = format!("{method} {target} HTTP/1.1\r\n");
    if !headers
        .iter()
        .any(|h| h.to_ascii_lowercase().starts_with("host:"))
    {
        head += &format!("Host: {}\r\n", uri.authority().unwrap());
    }
    for h in headers {
        head += &format!("{h}\r\n");
    }
    if !cookies.is_empty() {
        head += &format!("Cookie: {}\r\n", cookies.join("; "));
    }
    head += "Connection: close\r\n\r\n";
    let got = if uri.scheme_str() == Some("https") {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let cfg = r.ca.client(&[b"http/1.1"]);
        let mut s = support::tls::connect(r.secure, uri.host().unwrap(), cfg).await;
        s.write_all(head.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    } else {
        raw(r.web, head.as_bytes(), Duration::from_secs(5)).await
    };
    let status = got[9..12].parse().unwrap();
    let backend = got
        .lines()
        .find_map(|l| l.strip_prefix("x-backend: "))
        .unwrap_or("")
        .to_string();
    (status, backend)
}

#[tokio::test]
async fn explain_answers_what_the_running_proxy_does() {
    let dir = tempfile::tempdir().unwrap();
    let (text, running) = start(dir.path()).await;
    let mut failures = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (n, (method, url, headers, cookies)) in asks().into_iter().enumerate() {
        let config = switchyard::config::parse(Path::new("test.yaml"), &text)
            .unwrap()
            .config;
        let ask = Ask {
            method: method.parse().unwrap(),
            url: url.to_string(),
            headers: headers.iter().map(|h| h.to_string()).collect(),
            cookies: cookies.iter().map(|c| c.to_string()).collect(),
            client: "127.0.0.1".parse().unwrap(),
        };
        let e: Explanation = explain::explain(config, &ask, &Default::default()).unwrap();
        let (status, backend) = on_the_wire(&running, method, url, &headers, &cookies).await;
        let logged = running.log.line(n).await;
        let explained_status = e.status.unwrap_or(200);
        let explained_route = e.route.clone().unwrap_or_else(|| "-".into());
        seen.insert((status, backend.clone()));
        if explained_status != status
            || e.pool.as_deref().unwrap_or("") != backend
            || logged["route"] != explained_route.as_str()
        {
            failures.push(format!(
                "{method} {url} {headers:?} {cookies:?}: explain said {explained_status} route {explained_route} pool {:?}; \
                 the proxy answered {status} from {backend:?}, logged route {}",
                e.pool, logged["route"]
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The set covers every kind of answer, so agreement is not agreement on one outcome.
    let statuses: std::collections::BTreeSet<u16> = seen.iter().map(|(s, _)| *s).collect();
    assert_eq!(statuses, [200, 400, 404, 421].into());
    assert_eq!(
        seen.iter().filter(|(s, _)| *s == 200).count(),
        5,
        "{seen:?}"
    );
}

#[test]
fn explain_traces_every_candidate_in_order_with_its_reason() {
    let text = CONFIG
        .replace("@CERT@", "unused.crt")
        .replace("@KEY@", "unused.key");
    // The TLS listener's files do not exist here: explain needs a loadable config.
    let text: String = text
        .lines()
        .filter(|l| !l.contains("secure"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("{listen}", "127.0.0.1:0")
        .replace("{payment}", "127.0.0.1:1")
        .replace("{product}", "127.0.0.1:2")
        .replace("{beta}", "127.0.0.1:3")
        .replace("{user}", "127.0.0.1:4")
        .replace("{tenant}", "127.0.0.1:5");
    let config = switchyard::config::parse(Path::new("t.yaml"), &text)
        .unwrap()
        .config;
    let ask = Ask {
        method: http::Method::GET,
        url: "http://any.test/api/products/1".into(),
        headers: vec!["x-canary: 0".into()],
        cookies: vec!["beta=no".into()],
        client: "127.0.0.1".parse().unwrap(),
    };
    let e = explain::explain(config, &ask, &Default::default()).unwrap();
    let tried: Vec<(&str, bool)> = e
        .candidates
        .iter()
        .map(|c| (c.route.as_str(), c.matched))
        .collect();
    assert_eq!(
        tried,
        [("canary", false), ("beta-users", false), ("products", true)]
    );
    assert!(
        e.candidates[0].reason.contains("header x-canary"),
        "{:?}",
        e.candidates[0]
    );
    assert!(
        e.candidates[1].reason.contains("cookie beta"),
        "{:?}",
        e.candidates[1]
    );
    assert_eq!(
        (e.status, e.route.as_deref(), e.pool.as_deref()),
        (None, Some("products"), Some("product"))
    );
    let json = serde_json::to_value(&e).unwrap();
    for key in [
        "host",
        "path",
        "status",
        "route",
        "pool",
        "split",
        "backend",
        "candidates",
    ] {
        assert!(json.get(key).is_some(), "{key} missing from {json}");
    }
}

/// The command line: text and `--json`, exit 0 for any decision, 1 for a bad config, 2 for
/// a bad request description.
#[test]
fn the_explain_command_prints_the_decision_and_exits_by_the_spec() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("routes.yaml");
    std::fs::write(
        &config,
        "listeners: [{name: web, bind: \"127.0.0.1:0\", redirect_https: 8443}]\n\
         pools: {p: {backends: [{addr: \"127.0.0.1:9\"}]}}\n\
         routes: [{name: all, pool: p}]\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .arg("explain")
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["--json", "GET", "http://shop.test/a?b=1"]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], 308);
    assert_eq!(v["location"], "https://shop.test:8443/a?b=1");
    let out = run(&["GET", "http://shop.test/a"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("308"));
    assert_eq!(run(&["GET", "/relative"]).status.code(), Some(2));
    assert_eq!(
        run(&["GET", "http://a/", "-H", "no colon"]).status.code(),
        Some(2)
    );
    std::fs::write(&config, "listeners: []\nbogus: 1\n").unwrap();
    let out = run(&["GET", "http://a/"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("routes.yaml:2:1"), "{stderr}");
}

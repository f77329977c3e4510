//! `/metrics` on the admin listener: the families read from the proxy's state, valid for
//! `promtool check metrics`.
mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;
use support::*;

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
    let (a, health) = Backend::checked("a", 200).await;
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
    let yaml = render(YAML, &[("a", a.addr), ("b", b.addr)]);
    let w = Watched::start(&yaml).await;
    let (p, path) = (&w.proxy, &w.path);

    std::fs::write(path, yaml.replace("pool: p}", "pool: nope}")).unwrap();
    let failure = "switchyard_config_reloads_total{result=\"failure\"}";
    eventually(WAIT, || async {
        value(&scrape(p).await, failure) == Some(1.0)
    })
    .await;

    // Keep only `a`; the admin listener stays where it is.
    let one = yaml.replace(&format!(", {{addr: \"{}\", drain: true}}", b.addr), "");
    assert_ne!(one, yaml);
    std::fs::write(path, &one).unwrap();
    let success = "switchyard_config_reloads_total{result=\"success\"}";
    eventually(WAIT, || async {
        value(&scrape(p).await, success) == Some(1.0)
    })
    .await;
    let text = scrape(p).await;
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

/// The `/metrics` text of a matrix's proxy (matrices have no admin listener: the same
/// registry, rendered directly).
fn scrape_matrix(m: &support::matrix::Matrix) -> String {
    let log = switchyard::access_log::AccessLog::start(switchyard::config::AccessLogFormat::Off);
    switchyard::metrics::Metrics::new(&m.proxy.shared, log).render()
}

/// The sum of every series of `name` whose labels include all of `labels`.
fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

#[tokio::test]
async fn request_counters_move_by_exactly_what_was_sent_on_every_request_path() {
    use support::matrix::{self, Kind, Matrix, Req, Spec};
    matrix::every_shape(|shape| async move {
        let m = Matrix::start(shape, Spec::new(vec![Kind::Echo("a"), Kind::Echo("b")])).await;
        let method = Req::get("/").method_for(shape);
        for i in 0..5 {
            let got = m.send(&Req::get(&format!("{}/{i}", matrix::PREFIX))).await;
            assert_eq!(got.status, 200);
        }
        for _ in 0..2 {
            assert_eq!(m.send(&Req::get("/nowhere")).await.status, 404);
        }
        // A record is counted when it is done, after its response's last byte.
        let listener = shape.listener();
        let routed = [
            ("listener", listener),
            ("route", matrix::ROUTE),
            ("pool", matrix::POOL),
            ("method", method.as_str()),
            ("status", "200"),
        ];
        eventually(WAIT, || async {
            sum(
                &scrape_matrix(&m),
                "switchyard_http_requests_total",
                &routed,
            ) == 5.0
        })
        .await;
        let unrouted = [
            ("listener", listener),
            ("route", "none"),
            ("pool", "none"),
            ("status", "404"),
        ];
        eventually(WAIT, || async {
            sum(
                &scrape_matrix(&m),
                "switchyard_http_requests_total",
                &unrouted,
            ) == 2.0
        })
        .await;
        let text = scrape_matrix(&m);
        assert_eq!(
            sum(
                &text,
                "switchyard_http_request_duration_seconds_count",
                &routed[..3]
            ),
            5.0,
            "{}",
            shape.name()
        );
        let pool = [("pool", matrix::POOL), ("status", "200")];
        assert_eq!(sum(&text, "switchyard_upstream_requests_total", &pool), 5.0);
        assert_eq!(
            sum(
                &text,
                "switchyard_upstream_response_duration_seconds_count",
                &pool[..1]
            ),
            5.0
        );
    })
    .await;
}

#[tokio::test]
async fn connection_gauges_return_to_zero_and_labels_stay_bounded_under_random_methods_and_paths() {
    let b = Backend::echo("b").await;
    let p = Proxy::start(YAML, &[("a", b.addr), ("b", refusing_addr().await)]).await;
    let req = "GET /x HTTP/1.1\r\nhost: a\r\n\r\n";
    let mut conns = Vec::new();
    for _ in 0..3 {
        let mut c = RawConn::open(p.addr).await;
        assert!(c.write(req).await);
        assert_eq!(c.response_to(false, WAIT).await.unwrap().status, 200);
        conns.push(c);
    }
    let open = "switchyard_downstream_connections_active{listener=\"web\"}";
    let total = "switchyard_downstream_connections_total{listener=\"web\"}";
    eventually(WAIT, || async {
        value(&scrape(&p).await, open) == Some(3.0)
    })
    .await;
    drop(conns);
    eventually(WAIT, || async {
        value(&scrape(&p).await, open) == Some(0.0)
    })
    .await;
    assert_eq!(value(&scrape(&p).await, total), Some(3.0));

    // Methods nobody standardized are one label value, however many there are.
    for i in 0..20 {
        let raw = format!("BREW{i} /x HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n");
        let _ = support::raw(p.addr, raw.as_bytes(), WAIT).await;
    }
    // Nor do paths become labels: fifty distinct paths are one series (with the first 3).
    for i in 0..50 {
        assert_eq!(
            get(&p.url(&format!("/random/{i}/{}", i * 7919)))
                .await
                .status,
            200
        );
    }
    let all = "switchyard_http_requests_total{listener=\"web\",route=\"all\",pool=\"p\",method=\"GET\",status=\"200\"}";
    eventually(WAIT, || async {
        value(&scrape(&p).await, all) == Some(53.0)
    })
    .await;
    let text = scrape(&p).await;
    assert!(!text.contains("random"), "a path in a label:\n{text}");
    let mut methods: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("switchyard_http_requests_total{"))
        .filter_map(|l| l.split("method=\"").nth(1)?.split('"').next())
        .collect();
    methods.sort();
    methods.dedup();
    assert_eq!(methods, ["GET", "OTHER"], "{text}");
    assert_eq!(
        sum(
            &text,
            "switchyard_http_requests_total",
            &[("method", "OTHER")]
        ),
        20.0
    );
}

#[tokio::test]
async fn sticky_decisions_split_choices_and_fail_open_are_counted() {
    let a = Backend::echo("a").await;
    let b = Backend::echo("b").await;
    let dead = refusing_addr().await;
    let yaml = r#"
listeners: [{name: web, bind: "{listen}"}]
admin: {bind: "{admin}"}
access_log: off
pools:
  s: {sticky: {cookie: sy}, backends: [{addr: "{a}"}]}
  v1: {backends: [{addr: "{a}"}]}
  v2: {backends: [{addr: "{b}"}]}
  down:
    timeouts: {connect: 200ms}
    health_check: {kind: tcp, interval: 100ms, timeout: 100ms, unhealthy_threshold: 1}
    backends: [{addr: "{dead}"}]
routes:
  - {name: sticky, match: {prefix: /s}, pool: s}
  - {name: down, match: {prefix: /down}, pool: down}
  - {name: ab, match: {prefix: /ab}, split: {cookie: sy_ab, pools: [{pool: v1, weight: 1}, {pool: v2, weight: 1}]}}
"#;
    let p = Proxy::start(yaml, &[("a", a.addr), ("b", b.addr), ("dead", dead)]).await;
    let c = client();
    let mut token = String::new();
    for _ in 0..3 {
        let got = get_with(&c, &p.url("/s"), &[]).await;
        token = got.cookie("sy").unwrap().to_string();
    }
    let cookie = format!("sy={token}");
    for _ in 0..2 {
        get_with(&c, &p.url("/s"), &[("cookie", &cookie)]).await;
    }
    get_with(&c, &p.url("/s"), &[("cookie", "sy=forged")]).await;
    for _ in 0..4 {
        get_with(&c, &p.url("/ab"), &[("cookie", "sy_ab=v2")]).await;
    }
    get_with(&c, &p.url("/ab"), &[]).await;
    eventually(WAIT, || async {
        p.shared.load().pools[3].backends.iter().all(|b| !b.up())
    })
    .await;
    assert_eq!(get_with(&c, &p.url("/down"), &[]).await.status, 502);
    // Each request is counted when its record is done, just after its last byte went.
    let fail_open = "switchyard_pool_fail_open_total{pool=\"down\"}";
    eventually(WAIT, || async {
        value(&scrape(&p).await, fail_open) == Some(1.0)
    })
    .await;
    let text = scrape(&p).await;
    let sticky = |r: &str| {
        sum(
            &text,
            "switchyard_sticky_decisions_total",
            &[("pool", "s"), ("result", r)],
        )
    };
    assert_eq!(
        (sticky("new"), sticky("hit"), sticky("invalid")),
        (3.0, 2.0, 1.0),
        "{text}"
    );
    let split = |by: &str| {
        sum(
            &text,
            "switchyard_split_decisions_total",
            &[("route", "ab"), ("by", by)],
        )
    };
    assert_eq!((split("cookie"), split("weight")), (4.0, 1.0), "{text}");
    assert_eq!(
        sum(
            &text,
            "switchyard_split_decisions_total",
            &[("pool", "v2"), ("by", "cookie")]
        ),
        4.0
    );
    assert_eq!(
        sum(
            &text,
            "switchyard_upstream_connect_errors_total",
            &[("pool", "down")]
        ),
        1.0
    );
}

#[tokio::test]
async fn status_is_the_running_proxy_as_json() {
    let (down, health) = Backend::checked("down", 200).await;
    health.store(500, Ordering::SeqCst);
    let up = Backend::echo("up").await;
    let drained = Backend::echo("drained").await;
    let yaml = r#"
listeners: [{name: web, bind: "{listen}"}]
admin: {bind: "{admin}"}
access_log: off
pools:
  p:
    sticky: {cookie: sy}
    health_check: {interval: 100ms, timeout: 100ms, unhealthy_threshold: 1}
    backends: [{addr: "{down}"}, {addr: "{up}"}, {addr: "{drained}", drain: true}]
routes: [{name: all, pool: p}]
"#;
    let p = Proxy::start(
        yaml,
        &[
            ("down", down.addr),
            ("up", up.addr),
            ("drained", drained.addr),
        ],
    )
    .await;
    let url = format!("http://{}/status", p.admin.unwrap());
    let status = || async {
        let got = get(&url).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.header("content-type"), "application/json");
        got.json()
    };
    eventually(WAIT, || async {
        status().await["pools"][0]["backends"][0]["health"] == "down"
    })
    .await;
    for _ in 0..3 {
        assert_eq!(get(&p.url("/x")).await.status, 200);
    }
    eventually(WAIT, || async {
        status().await["routes"][0]["requests"] == 3
    })
    .await;
    let s = status().await;
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert!(s["config"]["loaded_at"].as_str().unwrap().ends_with('Z'));
    assert!(s["config"]["last_reload"].is_null());
    assert_eq!(s["listeners"][0]["name"], "web");
    assert_eq!(s["listeners"][0]["addr"], p.addr.to_string());
    let route = &s["routes"][0];
    assert_eq!(
        (route["name"].as_str(), route["to"].as_str()),
        (Some("all"), Some("p"))
    );
    assert_eq!(route["errors"], 0);
    let counts = route["latency"]["counts"].as_array().unwrap();
    assert_eq!(counts.last().unwrap(), 3, "+Inf holds every request");
    assert_eq!(
        route["latency"]["le"].as_array().unwrap().len(),
        counts.len()
    );
    let pool = &s["pools"][0];
    assert_eq!(
        (pool["name"].as_str(), pool["balance"].as_str()),
        (Some("p"), Some("round_robin"))
    );
    assert_eq!(pool["sticky"]["new"], 3);
    let b = pool["backends"].as_array().unwrap();
    assert_eq!(b[0]["addr"], down.addr.to_string());
    assert_eq!(b[0]["reason"], "status 500");
    assert_eq!(b[1]["health"], "up");
    assert_eq!(b[1]["requests"], 3);
    assert_eq!(b[1]["in_flight"], 0);
    assert_eq!(
        (b[2]["health"].as_str(), b[2]["draining"].as_bool()),
        (Some("draining"), Some(true))
    );
    assert!(
        b[2]["last_request_age_s"].is_null(),
        "no request reached it"
    );
}

/// Every `switchyard_*` or `process_*` metric name in `text`, histogram suffixes taken off.
fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("switchyard_").or_else(|| rest.find("process_")) {
        let s = &rest[i..];
        let end = s
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(s.len());
        let mut name = &s[..end];
        for suffix in ["_bucket", "_count", "_sum"] {
            if let Some(n) = name.strip_suffix(suffix)
                && n.ends_with("_seconds")
            {
                name = n;
            }
        }
        names.push(name.to_string());
        rest = &s[end..];
    }
    names.sort();
    names.dedup();
    names
}

#[tokio::test]
async fn the_grafana_dashboard_and_the_docs_name_only_metrics_that_exist_and_every_one_is_documented()
 {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana/switchyard.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let exprs: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap())
        .map(|t| t["expr"].as_str().unwrap())
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");
    let docs = std::fs::read_to_string(root.join("docs/metrics.md")).unwrap();
    let exported: Vec<&str> = switchyard::metrics::names().collect();
    // The process collector's, from a live scrape.
    let (a, b) = (Backend::echo("a").await, Backend::echo("b").await);
    let p = Proxy::start(YAML, &[("a", a.addr), ("b", b.addr)]).await;
    let live = scrape(&p).await;
    let known = |n: &str| exported.contains(&n) || (n.starts_with("process_") && live.contains(n));
    for name in metric_names(&exprs.join("\n"))
        .iter()
        .chain(&metric_names(&docs))
    {
        assert!(known(name), "{name} is not a metric the proxy exports");
    }
    for name in &exported {
        assert!(
            docs.contains(&format!("`{name}`")),
            "{name} is not in docs/metrics.md"
        );
    }
}

#[tokio::test]
async fn refusals_after_routing_count_under_their_route_and_pool_and_kept_routes_keep_counting() {
    let a = Backend::echo("a").await;
    let dead = refusing_addr().await;
    let yaml = r#"
listeners: [{name: web, bind: "{listen}"}]
admin: {bind: "{admin}"}
access_log: off
pools:
  p: {backends: [{addr: "{a}"}]}
  gone:
    when_all_down: reject
    health_check: {kind: tcp, interval: 100ms, timeout: 100ms, unhealthy_threshold: 1}
    backends: [{addr: "{dead}"}]
routes:
  - {name: small, match: {prefix: /small}, pool: p, limits: {max_request_body_bytes: 10}}
  - {name: rejected, match: {prefix: /rejected}, pool: gone}
  - {name: old, match: {prefix: /old}, pool: p}
"#;
    let addrs = [("a", a.addr), ("dead", dead)];
    let p = Proxy::start(yaml, &addrs).await;
    eventually(WAIT, || async {
        !p.shared.load().pools[1].backends[0].up()
    })
    .await;
    let big = http::Request::post(p.url("/small"))
        .body(full("more than ten bytes"))
        .unwrap();
    assert_eq!(send(big).await.status, 413);
    assert_eq!(get(&p.url("/rejected")).await.status, 503);
    for _ in 0..2 {
        assert_eq!(get(&p.url("/old")).await.status, 200);
    }
    let count = |text: &str, route: &str, pool: &str, status: &str| {
        sum(
            text,
            "switchyard_http_requests_total",
            &[("route", route), ("pool", pool), ("status", status)],
        )
    };
    eventually(WAIT, || async {
        count(&scrape(&p).await, "old", "p", "200") == 2.0
    })
    .await;
    let text = scrape(&p).await;
    assert_eq!(count(&text, "small", "p", "413"), 1.0, "{text}");
    assert_eq!(count(&text, "rejected", "gone", "503"), 1.0, "{text}");
    assert_eq!(count(&text, "none", "none", "413"), 0.0);

    // A reload that keeps `old` and drops `small`: old counts on, small leaves the scrape.
    let next = yaml.replace(
        "  - {name: small, match: {prefix: /small}, pool: p, limits: {max_request_body_bytes: 10}}\n",
        "",
    );
    assert_ne!(next, yaml);
    p.reload(&next, &addrs).await.unwrap();
    assert_eq!(get(&p.url("/old")).await.status, 200);
    eventually(WAIT, || async {
        count(&scrape(&p).await, "old", "p", "200") == 3.0
    })
    .await;
    assert!(!scrape(&p).await.contains("route=\"small\""));
}

#[test]
fn none_is_not_a_route_or_pool_name() {
    let yaml = r#"
listeners: [{name: web, bind: "127.0.0.1:0"}]
pools: {none: {backends: [{addr: "127.0.0.1:9"}]}}
routes: [{name: none, pool: none}]
"#;
    let errors = switchyard::config::parse(std::path::Path::new("t.yaml"), yaml).unwrap_err();
    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        text.iter().filter(|e| e.contains("`none`")).count(),
        2,
        "{text:?}"
    );
}

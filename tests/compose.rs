//! The container files, checked without a Docker engine: `docker-compose.yml` (every
//! service the issue names, every file it mounts or builds from, every service it depends
//! on, the ports it publishes against the routes file's, the routes file's backends
//! against the services, Prometheus' target, Grafana's provisioning) and the `Dockerfile`
//! (stages, user, ports, health check, COPY sources against the build context and
//! `.dockerignore`, the default config). Each checker returns every problem it finds, so
//! the negative tests can show it fails on a broken input.

use serde_yaml::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn yaml(text: &str, what: &str) -> Value {
    serde_yaml::from_str(text).unwrap_or_else(|e| panic!("{what} is not YAML: {e}"))
}

/// `switchyard check --config PATH` (relative to the repository) with `env` set: exit code,
/// stdout and stderr.
fn check_config(path: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    cmd.args(["check", "--config", path])
        .current_dir(root())
        .env_remove("RUST_LOG")
        .env_remove("SWITCHYARD_STICKY_SECRET");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run switchyard check");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn panic_on(problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

// === docker-compose.yml ================================================================

/// The services the issue names, and the replicas of those that must have them.
const SERVICES: &[(&str, Option<u64>)] = &[
    ("switchyard", None),
    ("payment", Some(2)),
    ("product", Some(2)),
    ("user", Some(2)),
    ("prometheus", None),
    ("grafana", None),
];

/// The stand-in services, each running `switchyard echo` on the proxy's image.
const ECHOES: &[&str] = &["payment", "product", "user"];

fn str_list(v: &Value) -> Vec<String> {
    match v {
        Value::Sequence(s) => s
            .iter()
            .filter_map(|x| match x {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .collect(),
        // The shell form of a command: split on blanks (good enough for the checks).
        Value::String(s) => s.split_whitespace().map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

fn get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.as_mapping()?.get(key)
}

fn get_str<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    get(v, key)?.as_str()
}

/// The value after `flag` (`--flag VALUE` or `--flag=VALUE`) in `args`.
fn flag(args: &[String], flag: &str) -> Option<String> {
    let eq = format!("{flag}=");
    args.iter().enumerate().find_map(|(i, a)| {
        if a == flag {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix(&eq).map(str::to_string)
        }
    })
}

/// The port of `host:port` (`[v6]:port` too).
fn port_of(addr: &str) -> Option<u16> {
    addr.rsplit_once(':')?.1.parse().ok()
}

/// A bind mount: host path (relative to the compose file's folder) -> container path.
#[derive(Debug, Clone)]
struct Mount {
    host: PathBuf,
    container: String,
}

/// The bind mounts of `service` (short `./host:/container[:ro]` and long
/// `{type: bind, source, target}` syntax); named volumes are not host paths.
fn mounts(service: &Value) -> Vec<Mount> {
    let Some(Value::Sequence(vols)) = get(service, "volumes") else {
        return Vec::new();
    };
    vols.iter()
        .filter_map(|v| match v {
            Value::String(s) => {
                let mut parts = s.splitn(3, ':');
                let (host, container) = (parts.next()?, parts.next()?);
                (host.starts_with('.') || host.starts_with('/')).then(|| Mount {
                    host: PathBuf::from(host),
                    container: container.to_string(),
                })
            }
            Value::Mapping(_) if get_str(v, "type") == Some("bind") => Some(Mount {
                host: PathBuf::from(get_str(v, "source")?),
                container: get_str(v, "target")?.to_string(),
            }),
            _ => None,
        })
        .collect()
}

/// The host path (relative to `root`) that `container_path` comes from in `mounts`: the
/// longest mount target that is it or a folder above it.
fn host_path(mounts: &[Mount], container_path: &str) -> Option<PathBuf> {
    mounts
        .iter()
        .filter_map(|m| {
            let target = m.container.trim_end_matches('/');
            let rest = container_path.strip_prefix(target)?;
            (rest.is_empty() || rest.starts_with('/')).then(|| {
                let rest = rest.trim_start_matches('/');
                let host = normalize(&m.host);
                (
                    target.len(),
                    if rest.is_empty() {
                        host
                    } else {
                        host.join(rest)
                    },
                )
            })
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, p)| p)
}

/// `./a/b` -> `a/b`.
fn normalize(p: &Path) -> PathBuf {
    p.components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}

/// The container ports `service` publishes (`"HOST:CONTAINER"`, `"IP:HOST:CONTAINER"`,
/// `"CONTAINER"`, or `{target, published}`).
fn published(service: &Value) -> Vec<u16> {
    let Some(Value::Sequence(ports)) = get(service, "ports") else {
        return Vec::new();
    };
    ports
        .iter()
        .filter_map(|p| match p {
            Value::String(s) => s.rsplit(':').next()?.split('/').next()?.parse().ok(),
            Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
            Value::Mapping(_) => get(p, "target")?
                .as_u64()
                .and_then(|n| u16::try_from(n).ok()),
            _ => None,
        })
        .collect()
}

/// The services `service` depends on, with the condition of each.
fn depends_on(service: &Value) -> Vec<(String, String)> {
    match get(service, "depends_on") {
        Some(Value::Sequence(s)) => s
            .iter()
            .filter_map(|d| Some((d.as_str()?.to_string(), "service_started".to_string())))
            .collect(),
        Some(Value::Mapping(m)) => m
            .iter()
            .filter_map(|(k, v)| {
                Some((
                    k.as_str()?.to_string(),
                    get_str(v, "condition")
                        .unwrap_or("service_started")
                        .to_string(),
                ))
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// What the image built from `Dockerfile` sets that compose services inherit.
struct ImageDefaults {
    has_healthcheck: bool,
    /// CMD's `--config` path.
    config: Option<String>,
}

fn image_defaults(root: &Path) -> ImageDefaults {
    let text = std::fs::read_to_string(root.join("Dockerfile")).unwrap_or_default();
    let last = final_stage(&instructions(&text));
    ImageDefaults {
        has_healthcheck: last.iter().any(|i| i.op == "HEALTHCHECK"),
        config: last
            .iter()
            .rfind(|i| i.op == "CMD")
            .and_then(|i| flag(&exec_form(&i.args)?, "--config")),
    }
}

/// Every problem with `compose` (the text of a docker-compose.yml at `root`), or none.
fn check_compose(root: &Path, compose: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let doc: Value = match serde_yaml::from_str(compose) {
        Ok(d) => d,
        Err(e) => return vec![format!("not YAML: {e}")],
    };
    let Some(services) = get(&doc, "services").and_then(Value::as_mapping) else {
        return vec!["no services".into()];
    };
    let service = |name: &str| services.get(name);
    let names: BTreeSet<String> = services
        .keys()
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect();

    for (name, replicas) in SERVICES {
        let Some(s) = service(name) else {
            problems.push(format!("service {name} is missing"));
            continue;
        };
        if let Some(want) = replicas {
            let got = get(s, "deploy")
                .and_then(|d| get(d, "replicas"))
                .and_then(Value::as_u64);
            if got != Some(*want) {
                problems.push(format!("{name}: deploy.replicas is {got:?}, not {want}"));
            }
        }
    }

    let defaults = image_defaults(root);
    let builds_ours = |s: &Value| match get(s, "build") {
        Some(Value::String(c)) => normalize(Path::new(c)) == Path::new(""),
        Some(b @ Value::Mapping(_)) => {
            get_str(b, "context").is_some_and(|c| normalize(Path::new(c)) == Path::new(""))
                && get_str(b, "dockerfile").unwrap_or("Dockerfile") == "Dockerfile"
        }
        _ => false,
    };
    for (name, s) in services {
        let name = name.as_str().unwrap_or("?");
        // Build context and Dockerfile.
        match get(s, "build") {
            None => {}
            Some(b) => {
                let (context, dockerfile) = match b {
                    Value::String(c) => (c.as_str(), "Dockerfile"),
                    _ => (
                        get_str(b, "context").unwrap_or("."),
                        get_str(b, "dockerfile").unwrap_or("Dockerfile"),
                    ),
                };
                let dir = root.join(context);
                if !dir.is_dir() {
                    problems.push(format!("{name}: build context {context} is not a folder"));
                } else if !dir.join(dockerfile).is_file() {
                    problems.push(format!("{name}: {context}/{dockerfile} does not exist"));
                }
            }
        }
        // Bind-mounted host paths.
        for m in mounts(s) {
            if !root.join(&m.host).exists() {
                problems.push(format!(
                    "{name}: mounts {} (at {}), which does not exist",
                    m.host.display(),
                    m.container
                ));
            }
        }
        // depends_on names a service, with a condition it can meet.
        for (dep, condition) in depends_on(s) {
            let Some(d) = service(&dep) else {
                problems.push(format!("{name}: depends on {dep}, which is not a service"));
                continue;
            };
            match condition.as_str() {
                "service_started" | "service_completed_successfully" => {}
                "service_healthy" => {
                    let checked = get(d, "healthcheck").is_some()
                        || (builds_ours(d) && defaults.has_healthcheck);
                    if !checked {
                        problems.push(format!(
                            "{name}: waits for {dep} to be healthy, but {dep} has no health check"
                        ));
                    }
                }
                other => problems.push(format!("{name}: unknown depends_on condition {other}")),
            }
        }
    }

    // The proxy: its config through its mounts, and the ports it publishes.
    let Some(proxy) = service("switchyard") else {
        return problems;
    };
    if !builds_ours(proxy) {
        problems.push("switchyard: not built from this repository's Dockerfile".into());
    }
    let command = get(proxy, "command").map(str_list).unwrap_or_default();
    let config_in_container = flag(&command, "--config").or(defaults.config);
    let proxy_mounts = mounts(proxy);
    let routes_path = config_in_container
        .as_deref()
        .and_then(|c| host_path(&proxy_mounts, c));
    let Some(routes_path) = routes_path else {
        problems.push(format!(
            "switchyard: its config {config_in_container:?} does not come from a mount"
        ));
        return problems;
    };
    if routes_path != Path::new("deploy/routes.compose.yaml") {
        problems.push(format!(
            "switchyard: reads {}, not deploy/routes.compose.yaml",
            routes_path.display()
        ));
    }
    let Ok(routes_text) = std::fs::read_to_string(root.join(&routes_path)) else {
        problems.push(format!("{} cannot be read", routes_path.display()));
        return problems;
    };
    let routes: Value = match serde_yaml::from_str(&routes_text) {
        Ok(r) => r,
        Err(e) => {
            problems.push(format!("{}: {e}", routes_path.display()));
            return problems;
        }
    };
    let mut listening = BTreeSet::new();
    let binds = get(&routes, "listeners")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .filter_map(|l| get_str(l, "bind"))
        .chain(get(&routes, "admin").and_then(|a| get_str(a, "bind")));
    for bind in binds {
        if !(bind.starts_with("0.0.0.0:") || bind.starts_with("[::]:")) {
            problems.push(format!(
                "{}: binds {bind}, which a published port cannot reach",
                routes_path.display()
            ));
        }
        listening.extend(port_of(bind));
    }
    let admin_port = get(&routes, "admin")
        .and_then(|a| get_str(a, "bind"))
        .and_then(port_of);
    let published: BTreeSet<u16> = published(proxy).into_iter().collect();
    if published != listening {
        problems.push(format!(
            "switchyard publishes container ports {published:?}, the config listens on {listening:?}"
        ));
    }
    // A sticky_secret_env is passed in (a placeholder at most: the checks cannot tell a
    // real key, so they ask for the variable only).
    if let Some(var) = get_str(&routes, "sticky_secret_env") {
        let env = get(proxy, "environment");
        let passed = match env {
            Some(Value::Mapping(m)) => m.contains_key(var),
            Some(Value::Sequence(s)) => s
                .iter()
                .filter_map(Value::as_str)
                .any(|e| e == var || e.starts_with(&format!("{var}="))),
            _ => false,
        };
        if !passed {
            problems.push(format!(
                "switchyard: the config reads {var}, which the service does not set"
            ));
        }
    }

    // Backends: a compose service's name, and the port its echo listens on.
    let mut listen_of: BTreeMap<String, String> = BTreeMap::new();
    for name in ECHOES {
        let Some(s) = service(name) else { continue };
        let cmd = get(s, "command").map(str_list).unwrap_or_default();
        if cmd.first().map(String::as_str) != Some("echo") {
            problems.push(format!("{name}: does not run `switchyard echo`: {cmd:?}"));
        }
        if flag(&cmd, "--name").as_deref() != Some(name) {
            problems.push(format!("{name}: echo --name is not {name}: {cmd:?}"));
        }
        if get(s, "image") != get(proxy, "image") || !builds_ours(s) {
            problems.push(format!("{name}: does not run the proxy's image"));
        }
        match flag(&cmd, "--listen") {
            Some(l) => {
                if !(l.starts_with("0.0.0.0:") || l.starts_with("[::]:")) {
                    problems.push(format!("{name}: listens on {l}, out of the proxy's reach"));
                }
                listen_of.insert(name.to_string(), l);
            }
            None => problems.push(format!("{name}: echo has no --listen")),
        }
    }
    let pools = get(&routes, "pools").and_then(Value::as_mapping);
    for (pool, p) in pools.into_iter().flatten() {
        let pool = pool.as_str().unwrap_or("?");
        if get(p, "dns_refresh").is_none() {
            problems.push(format!(
                "pool {pool}: no dns_refresh, so new replicas are not seen"
            ));
        }
        if get(p, "health_check").is_none() {
            problems.push(format!("pool {pool}: no health_check"));
        }
        let backends = get(p, "backends").and_then(Value::as_sequence);
        for b in backends.into_iter().flatten() {
            let Some(addr) = get_str(b, "addr") else {
                continue;
            };
            let Some((host, port)) = addr.rsplit_once(':') else {
                problems.push(format!("pool {pool}: backend {addr} has no port"));
                continue;
            };
            if !names.contains(host) {
                problems.push(format!(
                    "pool {pool}: backend {addr}: {host} is not a compose service"
                ));
            } else if listen_of.get(host).and_then(|l| port_of(l)) != port.parse().ok() {
                problems.push(format!(
                    "pool {pool}: backend {addr}, but {host} listens on {:?}",
                    listen_of.get(host)
                ));
            }
        }
    }

    // Prometheus scrapes the proxy's admin port by its service name.
    if let Some(prom) = service("prometheus") {
        let args = get(prom, "command").map(str_list).unwrap_or_default();
        let file = flag(&args, "--config.file")
            .unwrap_or_else(|| "/etc/prometheus/prometheus.yml".to_string());
        match host_path(&mounts(prom), &file) {
            None => problems.push(format!("prometheus: {file} is not mounted")),
            Some(host) => match std::fs::read_to_string(root.join(&host)) {
                Err(e) => problems.push(format!("prometheus: {}: {e}", host.display())),
                Ok(text) => {
                    let want = format!("switchyard:{}", admin_port.unwrap_or(0));
                    let cfg: Value = serde_yaml::from_str(&text).unwrap_or(Value::Null);
                    let jobs = get(&cfg, "scrape_configs").and_then(Value::as_sequence);
                    let scraped = jobs.into_iter().flatten().any(|job| {
                        get_str(job, "metrics_path").unwrap_or("/metrics") == "/metrics"
                            && get(job, "static_configs")
                                .and_then(Value::as_sequence)
                                .into_iter()
                                .flatten()
                                .any(|sc| {
                                    get(sc, "targets")
                                        .map(str_list)
                                        .unwrap_or_default()
                                        .contains(&want)
                                })
                    });
                    if !scraped {
                        problems.push(format!(
                            "prometheus: {} does not scrape {want}/metrics",
                            host.display()
                        ));
                    }
                }
            },
        }
    }

    // Grafana: a data source the dashboard can use, and a provider that loads it.
    if let Some(g) = service("grafana") {
        problems.extend(check_grafana(root, g, &names));
    }
    problems
}

/// The `*.yaml` / `*.yml` files in `dir`, parsed.
fn yaml_files(dir: &Path) -> Vec<(PathBuf, Value)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if matches!(p.extension().and_then(|x| x.to_str()), Some("yaml" | "yml"))
            && let Ok(text) = std::fs::read_to_string(&p)
        {
            out.push((p, serde_yaml::from_str(&text).unwrap_or(Value::Null)));
        }
    }
    out
}

fn check_grafana(root: &Path, g: &Value, services: &BTreeSet<String>) -> Vec<String> {
    let mut problems = Vec::new();
    let ms = mounts(g);
    let provisioned = |kind: &str| host_path(&ms, &format!("/etc/grafana/provisioning/{kind}"));
    // What the dashboard expects of its data source: its `datasource` variable's type,
    // and any fixed uid a panel names.
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/switchyard.json"))
            .expect("the dashboard is JSON");
    let var = dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["type"] == "datasource");
    let var_name = var.and_then(|v| v["name"].as_str()).unwrap_or("");
    let ds_type = var
        .and_then(|v| v["query"].as_str())
        .unwrap_or("prometheus");
    let mut uids = BTreeSet::new();
    collect_uids(&dashboard, &mut uids);
    let var_ref = format!("${{{var_name}}}");
    let fixed: Vec<&String> = uids
        .iter()
        .filter(|u| *u != &var_ref && *u != &format!("${var_name}"))
        .collect();

    // Settings naming a file in the container (the home dashboard) name a mounted one.
    if let Some(Value::Mapping(env)) = get(g, "environment") {
        for (k, v) in env {
            let (Some(k), Some(v)) = (k.as_str(), v.as_str()) else {
                continue;
            };
            if k.ends_with("_PATH") && v.starts_with('/') {
                let there = host_path(&ms, v).is_some_and(|h| root.join(h).is_file());
                if !there {
                    problems.push(format!("grafana: {k}={v} is not a mounted file"));
                }
            }
        }
    }
    match provisioned("datasources") {
        None => problems.push("grafana: no datasources provisioning mounted".into()),
        Some(dir) => {
            let sources: Vec<Value> = yaml_files(&root.join(&dir))
                .into_iter()
                .flat_map(|(_, v)| {
                    get(&v, "datasources")
                        .and_then(Value::as_sequence)
                        .cloned()
                        .unwrap_or_default()
                })
                .collect();
            let usable: Vec<&Value> = sources
                .iter()
                .filter(|s| get_str(s, "type") == Some(ds_type))
                .collect();
            if usable.is_empty() {
                problems.push(format!(
                    "grafana: no {ds_type} data source provisioned in {}",
                    dir.display()
                ));
            }
            // The variable has no saved choice: it takes the default data source.
            if var.is_some()
                && !usable
                    .iter()
                    .any(|s| get(s, "isDefault") == Some(&Value::Bool(true)))
            {
                problems.push(format!(
                    "grafana: the dashboard's ${var_name} needs a default {ds_type} data source"
                ));
            }
            for u in fixed {
                if !usable.iter().any(|s| get_str(s, "uid") == Some(u)) {
                    problems.push(format!(
                        "grafana: the dashboard names data source uid {u}, not provisioned"
                    ));
                }
            }
            for s in &usable {
                let url = get_str(s, "url").unwrap_or("");
                let host = url
                    .strip_prefix("http://")
                    .and_then(|r| r.split([':', '/']).next())
                    .unwrap_or("");
                if !services.contains(host) {
                    problems.push(format!(
                        "grafana: data source url {url} is not a compose service"
                    ));
                }
            }
        }
    }
    match provisioned("dashboards") {
        None => problems.push("grafana: no dashboards provisioning mounted".into()),
        Some(dir) => {
            let paths: Vec<String> = yaml_files(&root.join(&dir))
                .into_iter()
                .flat_map(|(_, v)| {
                    get(&v, "providers")
                        .and_then(Value::as_sequence)
                        .cloned()
                        .unwrap_or_default()
                })
                .filter_map(|p| Some(get_str(get(&p, "options")?, "path")?.to_string()))
                .collect();
            // A provider's folder (in the container) holds the dashboard, mounted from
            // the repository's file.
            let loads_ours = paths.iter().any(|p| {
                let inside = format!("{}/switchyard.json", p.trim_end_matches('/'));
                host_path(&ms, &inside)
                    .is_some_and(|h| h == Path::new("deploy/grafana/switchyard.json"))
            });
            if !loads_ours {
                problems.push(format!(
                    "grafana: no dashboard provider in {} loads deploy/grafana/switchyard.json (provider paths {paths:?})",
                    dir.display()
                ));
            }
        }
    }
    problems
}

/// Every `datasource.uid` in the dashboard.
fn collect_uids(v: &serde_json::Value, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(m) => {
            if let Some(u) = m
                .get("datasource")
                .and_then(|d| d.get("uid"))
                .and_then(|u| u.as_str())
            {
                out.insert(u.to_string());
            }
            m.values().for_each(|x| collect_uids(x, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_uids(x, out)),
        _ => {}
    }
}

#[test]
fn the_compose_stack_references_only_what_exists() {
    panic_on(check_compose(&root(), &read("docker-compose.yml")));
}

#[test]
fn the_compose_checker_fails_on_broken_stacks() {
    let good = read("docker-compose.yml");
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "a mounted file that is not there",
            "./deploy/prometheus/prometheus.yml:",
            "./deploy/prometheus/missing.yml:",
            "does not exist",
        ),
        (
            "an echo on another port than the routes file's",
            "\"0.0.0.0:9001\", \"--name\", \"product\"",
            "\"0.0.0.0:9002\", \"--name\", \"product\"",
            "backend product:9001, but product listens on",
        ),
        (
            "depends_on a service that is not there",
            "    depends_on:\n      - prometheus",
            "    depends_on:\n      - prometheus2",
            "depends on prometheus2, which is not a service",
        ),
        (
            "a published port the proxy does not listen on",
            "\"9901:9901\"",
            "\"9902:9902\"",
            "publishes container ports",
        ),
        (
            "one replica",
            "replicas: 2\n\n  product:",
            "replicas: 1\n\n  product:",
            "payment: deploy.replicas is Some(1), not 2",
        ),
        (
            "a missing service",
            "\n  user:\n",
            "\n  users:\n",
            "service user is missing",
        ),
        (
            "a home dashboard that is not mounted",
            "HOME_DASHBOARD_PATH: /var/lib/grafana/dashboards/switchyard.json",
            "HOME_DASHBOARD_PATH: /var/lib/grafana/dashboards/other.json",
            "is not a mounted file",
        ),
        (
            "data source provisioning without a Prometheus",
            "./deploy/grafana/provisioning/datasources:",
            "./deploy/prometheus:",
            "no prometheus data source provisioned",
        ),
        (
            "a build context that is not there",
            "  context: .\n",
            "  context: ./nowhere\n",
            "build context ./nowhere is not a folder",
        ),
    ];
    let mut failed = Vec::new();
    for (what, from, to, want) in cases {
        assert!(
            good.contains(from),
            "{what}: {from:?} is not in docker-compose.yml"
        );
        let broken = good.replacen(from, to, 1);
        let problems = check_compose(&root(), &broken);
        if !problems.iter().any(|p| p.contains(want)) {
            failed.push(format!("{what}: wanted {want:?} among {problems:?}"));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// Needs DNS-fed backends (`dns_refresh`, and `check` not resolving backend names).
#[test]
fn the_compose_routes_file_passes_check() {
    let (code, out) = check_config(
        "deploy/routes.compose.yaml",
        &[("SWITCHYARD_STICKY_SECRET", "test-key")],
    );
    assert_eq!(code, Some(0), "{out}");
    for pool in ["payment", "product", "user"] {
        assert!(
            out.contains(&format!("{pool}:9001")),
            "{pool} missing:\n{out}"
        );
    }
}

// === Dockerfile ========================================================================

/// One Dockerfile instruction: its keyword (upper case) and the rest of it.
#[derive(Debug, Clone)]
struct Instruction {
    op: String,
    args: String,
}

/// The instructions of `text`: `\` continuations joined, comment lines (also inside a
/// continuation, as Docker allows) and blank lines dropped.
fn instructions(text: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        let (body, continued) = match trimmed.strip_suffix('\\') {
            Some(b) => (b, true),
            None => (trimmed, false),
        };
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(body.trim());
        if !continued {
            let (op, args) = current
                .split_once(char::is_whitespace)
                .unwrap_or((&current, ""));
            out.push(Instruction {
                op: op.to_ascii_uppercase(),
                args: args.trim().to_string(),
            });
            current.clear();
        }
    }
    out
}

/// The instructions from the last FROM on.
fn final_stage(all: &[Instruction]) -> Vec<Instruction> {
    let start = all.iter().rposition(|i| i.op == "FROM").unwrap_or(0);
    all[start..].to_vec()
}

/// `["a", "b"]` (exec form) as its words.
fn exec_form(args: &str) -> Option<Vec<String>> {
    serde_json::from_str(args.trim()).ok()
}

/// `--flag=value` options at the front of `args`, and the rest as words.
fn options(args: &str) -> (BTreeMap<String, String>, Vec<String>) {
    let mut opts = BTreeMap::new();
    let mut rest = Vec::new();
    for w in args.split_whitespace() {
        if rest.is_empty()
            && let Some(o) = w.strip_prefix("--")
        {
            let (k, v) = o.split_once('=').unwrap_or((o, ""));
            opts.insert(k.to_string(), v.to_string());
        } else {
            rest.push(w.to_string());
        }
    }
    (opts, rest)
}

/// `.dockerignore` semantics (Docker's pattern matcher): each pattern is matched against
/// the path and each folder above it, the last matching line wins, `!` lets a path back
/// in; `*` and `?` stay within one path segment, `**` spans any number of them.
fn ignored(dockerignore: &str, path: &str) -> bool {
    let mut ignored = false;
    for line in dockerignore.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (negate, pattern) = match line.strip_prefix('!') {
            Some(p) => (true, p.trim()),
            None => (false, line),
        };
        let pattern = pattern.trim_start_matches('/').trim_end_matches('/');
        let pat: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let hit = (1..=segs.len()).any(|n| glob_path(&pat, &segs[..n]));
        if hit {
            ignored = !negate;
        }
    }
    ignored
}

fn glob_path(pat: &[&str], segs: &[&str]) -> bool {
    match pat.split_first() {
        None => segs.is_empty(),
        Some((&"**", rest)) => (0..=segs.len()).any(|k| glob_path(rest, &segs[k..])),
        Some((p, rest)) => segs.split_first().is_some_and(|(s, srest)| {
            glob_seg(p.as_bytes(), s.as_bytes()) && glob_path(rest, srest)
        }),
    }
}

fn glob_seg(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|k| glob_seg(rest, &s[k..])),
        Some((b'?', rest)) => !s.is_empty() && glob_seg(rest, &s[1..]),
        Some((c, rest)) => s.first() == Some(c) && glob_seg(rest, &s[1..]),
    }
}

/// Every problem with `dockerfile` and `dockerignore` at `root`, and the config file the
/// image copies to its `CMD`'s `--config` (for [`check_config`]).
fn check_dockerfile(
    root: &Path,
    dockerfile: &str,
    dockerignore: &str,
) -> (Vec<String>, Option<String>) {
    let mut problems = Vec::new();
    let all = instructions(dockerfile);
    let froms: Vec<&Instruction> = all.iter().filter(|i| i.op == "FROM").collect();
    if froms.len() < 2 {
        problems.push(format!("{} stage(s), not a multi-stage build", froms.len()));
    }
    if !froms
        .first()
        .is_some_and(|f| f.args.contains("rust") && f.args.contains("bookworm"))
    {
        problems.push("the builder is not a Rust image on Debian bookworm".into());
    }
    if !all
        .iter()
        .any(|i| i.op == "RUN" && i.args.contains("cargo build --release --locked"))
    {
        problems.push("no `cargo build --release --locked`".into());
    }
    let last = final_stage(&all);
    if !last
        .first()
        .is_some_and(|f| f.args.starts_with("gcr.io/distroless/cc-debian12"))
    {
        problems
            .push("the runtime is not distroless cc-debian12 (Debian 12, like the builder)".into());
    }
    match last.iter().rfind(|i| i.op == "USER") {
        None => problems.push("the final stage sets no USER".into()),
        Some(u) => {
            let user = u.args.split(':').next().unwrap_or("");
            if user.is_empty() || user == "root" || user == "0" {
                problems.push(format!("the final stage runs as {}", u.args));
            }
        }
    }
    let exposed: BTreeSet<&str> = last
        .iter()
        .filter(|i| i.op == "EXPOSE")
        .flat_map(|i| i.args.split_whitespace())
        .map(|p| p.split('/').next().unwrap_or(p))
        .collect();
    for port in ["8080", "8443", "9901"] {
        if !exposed.contains(port) {
            problems.push(format!("port {port} is not exposed"));
        }
    }
    // What the final stage puts where, to follow ENTRYPOINT and HEALTHCHECK to it.
    let copies: Vec<(BTreeMap<String, String>, Vec<String>)> = all
        .iter()
        .filter(|i| i.op == "COPY" || i.op == "ADD")
        .map(|i| options(&i.args))
        .collect();
    let binary = "/usr/local/bin/switchyard";
    let installed = last.iter().any(|i| {
        (i.op == "COPY")
            && options(&i.args).0.contains_key("from")
            && options(&i.args).1.last().map(String::as_str) == Some(binary)
    });
    if !installed {
        problems.push(format!(
            "the final stage does not COPY --from the builder to {binary}"
        ));
    }
    match last.iter().rfind(|i| i.op == "HEALTHCHECK") {
        None => problems.push("no HEALTHCHECK".into()),
        Some(h) => {
            let cmd = h.args.split_once("CMD").map(|(_, c)| c).unwrap_or("");
            match exec_form(cmd) {
                Some(words)
                    if words.first().map(String::as_str) == Some(binary)
                        && words.get(1).map(String::as_str) == Some("healthcheck") => {}
                _ => problems.push(format!(
                    "HEALTHCHECK does not run `{binary} healthcheck`: {}",
                    h.args
                )),
            }
        }
    }
    let entry = last
        .iter()
        .rfind(|i| i.op == "ENTRYPOINT")
        .and_then(|i| exec_form(&i.args));
    if entry.as_deref() != Some(&[binary.to_string()][..]) {
        problems.push(format!("ENTRYPOINT is not [\"{binary}\"]: {entry:?}"));
    }
    let cmd = last
        .iter()
        .rfind(|i| i.op == "CMD")
        .and_then(|i| exec_form(&i.args));
    let config = cmd.as_deref().and_then(|c| flag(c, "--config"));
    if cmd.as_ref().and_then(|c| c.first()).map(String::as_str) != Some("run")
        || config.as_deref() != Some("/etc/switchyard/routes.yaml")
    {
        problems.push(format!(
            "CMD is not run --config /etc/switchyard/routes.yaml: {cmd:?}"
        ));
    }
    // COPY sources from the build context: there, and let through by .dockerignore.
    let mut default_config = None;
    for (opts, words) in &copies {
        if opts.contains_key("from") || words.len() < 2 {
            continue;
        }
        let (dest, sources) = words.split_last().expect("two words at least");
        for src in sources {
            let path = normalize(Path::new(src));
            let rel = path.to_string_lossy();
            if !root.join(&path).exists() {
                problems.push(format!("COPY {src}: not in the build context"));
            } else if ignored(dockerignore, &rel) {
                problems.push(format!("COPY {src}: excluded by .dockerignore"));
            } else if root.join(&path).is_dir() {
                // A folder: what it holds must get through too.
                for f in files_under(&root.join(&path)) {
                    let frel = f
                        .strip_prefix(root)
                        .expect("under root")
                        .to_string_lossy()
                        .to_string();
                    if ignored(dockerignore, &frel) {
                        problems.push(format!("COPY {src}: {frel} is excluded by .dockerignore"));
                    }
                }
            }
            if Some(dest.as_str()) == config.as_deref() {
                default_config = Some(rel.to_string());
            }
        }
    }
    if default_config.is_none() {
        problems.push(format!("nothing is copied to the CMD's config {config:?}"));
    }
    for path in [
        "target",
        "target/release/switchyard",
        ".git",
        "fuzz/target/x",
        "certs/localhost.key",
    ] {
        if !ignored(dockerignore, path) {
            problems.push(format!(".dockerignore lets {path} into the build context"));
        }
    }
    (problems, default_config)
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn the_dockerfile_builds_a_small_non_root_image_from_what_exists() {
    let (problems, config) = check_dockerfile(&root(), &read("Dockerfile"), &read(".dockerignore"));
    panic_on(problems);
    // The config baked into the image is one `run` accepts.
    let config = config.expect("a default config");
    let (code, out) = check_config(&config, &[]);
    assert_eq!(code, Some(0), "{config}:\n{out}");
    assert!(out.contains("http://0.0.0.0:8080"), "{out}");
    assert!(out.contains("admin: http://0.0.0.0:9901"), "{out}");
}

#[test]
fn the_dockerfile_checker_fails_on_broken_files() {
    let (good, ignore) = (read("Dockerfile"), read(".dockerignore"));
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "root",
            "USER 65532:65532",
            "USER root",
            "the final stage runs as root",
        ),
        (
            "no 8443",
            "EXPOSE 8080 8443 9901",
            "EXPOSE 8080 9901",
            "port 8443 is not exposed",
        ),
        (
            "a COPY of a file that is not there",
            "COPY deploy/routes.container.yaml",
            "COPY deploy/nothing.yaml",
            "COPY deploy/nothing.yaml: not in the build context",
        ),
        (
            "a probe that is not the healthcheck subcommand",
            "\"healthcheck\"]",
            "\"check\"]",
            "HEALTHCHECK does not run",
        ),
        (
            "one stage",
            "FROM gcr.io/distroless/cc-debian12:nonroot\nCOPY --from=builder",
            "COPY --from=builder",
            "not a multi-stage build",
        ),
    ];
    let mut failed = Vec::new();
    for (what, from, to, want) in cases {
        assert!(
            good.contains(from),
            "{what}: {from:?} is not in the Dockerfile"
        );
        let (problems, _) = check_dockerfile(&root(), &good.replacen(from, to, 1), &ignore);
        if !problems.iter().any(|p| p.contains(want)) {
            failed.push(format!("{what}: wanted {want:?} among {problems:?}"));
        }
    }
    // A .dockerignore that lets target/ in, and one that keeps a source out.
    let (problems, _) = check_dockerfile(&root(), &good, "");
    if !problems
        .iter()
        .any(|p| p.contains(".dockerignore lets target into"))
    {
        failed.push(format!("empty .dockerignore: {problems:?}"));
    }
    let (problems, _) = check_dockerfile(&root(), &good, &format!("{ignore}\nsrc/admin\n"));
    if !problems
        .iter()
        .any(|p| p.contains("src/admin/dashboard.html is excluded"))
    {
        failed.push(format!(".dockerignore without src/admin: {problems:?}"));
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn dockerignore_patterns_match_as_docker_matches_them() {
    let rules = "*\n!src\n**/target\n!keep/target\n*.key\ndocs/*.md\n";
    for (path, want) in [
        ("Cargo.toml", true),
        ("src/main.rs", false),
        ("src/target/x", true),
        ("keep/target", false),
        ("deep/a/target/b", true),
        // No `/` in a pattern does not mean "at any depth": `*.key` is the top folder's.
        ("x.key", true),
        ("src/x.key", false),
        ("docs/a.md", true),
    ] {
        assert_eq!(ignored(rules, path), want, "{path}");
    }
    assert!(
        !ignored("docs/*.md", "docs/sub/a.md"),
        "* stays in one segment"
    );
    assert!(ignored("docs/**/*.md", "docs/sub/a.md"));
    assert!(ignored("**/*.key", "certs/a.key"));
    assert!(!ignored("", "target"));
}

#[test]
fn the_parser_joins_continuations_and_skips_comments_inside_them() {
    let all = instructions(
        "# a comment\nFROM a AS b\nRUN one \\\n # inside\n two \\\n  three\n\nexpose 1 2\n",
    );
    let ops: Vec<(&str, &str)> = all
        .iter()
        .map(|i| (i.op.as_str(), i.args.as_str()))
        .collect();
    assert_eq!(
        ops,
        [
            ("FROM", "a AS b"),
            ("RUN", "one two three"),
            ("EXPOSE", "1 2")
        ]
    );
}

#[test]
fn the_yaml_files_parse() {
    for f in [
        "deploy/prometheus/prometheus.yml",
        "deploy/grafana/provisioning/datasources/prometheus.yaml",
        "deploy/grafana/provisioning/dashboards/switchyard.yaml",
    ] {
        yaml(&read(f), f);
    }
}

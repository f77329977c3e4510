//! `deploy/k8s/`: every manifest checked offline against the pinned Kubernetes JSON schema
//! of its kind (`tests/fixtures/k8s-schemas/`, strict: unknown fields are errors), and the
//! cross-checks no schema can make: probes, ports, selectors and names agree with each
//! other and with the routes.yaml the ConfigMap carries, and that routes.yaml passes
//! `switchyard check`.

use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Kubernetes version whose schemas are vendored (see the README beside them).
const K8S_VERSION: &str = "v1.35.0";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// One YAML document of one manifest file.
struct Doc {
    file: String,
    /// 1-based position of the document in its file.
    index: usize,
    value: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or("")
    }
    fn api_version(&self) -> &str {
        self.value["apiVersion"].as_str().unwrap_or("")
    }
    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or("")
    }
    /// `FILE document N (Kind name)`, for messages.
    fn at(&self) -> String {
        format!(
            "{} document {} ({} {})",
            self.file,
            self.index,
            self.kind(),
            self.name()
        )
    }
}

/// Every document of `text` (the empty ones skipped), as JSON values.
fn parse_docs(file: &str, text: &str) -> Vec<Doc> {
    let mut docs = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value =
            Value::deserialize(de).unwrap_or_else(|e| panic!("{file} document {}: {e}", i + 1));
        if !value.is_null() {
            docs.push(Doc {
                file: file.to_string(),
                index: i + 1,
                value,
            });
        }
    }
    docs
}

/// The `*.yaml` files of deploy/k8s, by name.
fn manifest_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("deploy/k8s"))
        .expect("deploy/k8s exists")
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in deploy/k8s");
    files
}

/// Every document of every manifest.
fn manifests() -> Vec<Doc> {
    manifest_files()
        .iter()
        .flat_map(|p| {
            let file = format!("deploy/k8s/{}", p.file_name().unwrap().to_string_lossy());
            parse_docs(&file, &std::fs::read_to_string(p).unwrap())
        })
        .collect()
}

/// The vendored schemas, by (apiVersion, kind), from each file's
/// `x-kubernetes-group-version-kind`.
fn schemas() -> BTreeMap<(String, String), jsonschema::Validator> {
    let dir = root().join("tests/fixtures/k8s-schemas").join(K8S_VERSION);
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let gvk = &schema["x-kubernetes-group-version-kind"][0];
        let (group, version, kind) = (
            gvk["group"].as_str().expect("a group"),
            gvk["version"].as_str().expect("a version"),
            gvk["kind"].as_str().expect("a kind"),
        );
        let api_version = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        let validator = jsonschema::validator_for(&schema)
            .unwrap_or_else(|e| panic!("{}: not a usable schema: {e}", path.display()));
        out.insert((api_version, kind.to_string()), validator);
    }
    out
}

/// Every schema error of `docs`, one line each: file, document, instance path, message. A
/// document whose apiVersion and kind have no vendored schema is an error too.
fn schema_errors(
    docs: &[Doc],
    schemas: &BTreeMap<(String, String), jsonschema::Validator>,
) -> Vec<String> {
    let mut errors = Vec::new();
    for doc in docs {
        let key = (doc.api_version().to_string(), doc.kind().to_string());
        let Some(validator) = schemas.get(&key) else {
            errors.push(format!(
                "{}: no vendored schema for apiVersion {:?} kind {:?} (tests/fixtures/k8s-schemas/README.md)",
                doc.at(),
                key.0,
                key.1
            ));
            continue;
        };
        for e in validator.iter_errors(&doc.value) {
            let path = e.instance_path().to_string();
            let path = if path.is_empty() { "/".into() } else { path };
            errors.push(format!("{}: at {path}: {e}", doc.at()));
        }
    }
    errors
}

#[test]
fn every_manifest_matches_the_schema_of_its_kind() {
    let docs = manifests();
    let errors = schema_errors(&docs, &schemas());
    assert!(
        errors.is_empty(),
        "{} schema error(s) against Kubernetes {K8S_VERSION}:\n{}",
        errors.len(),
        errors.join("\n")
    );
    // Not vacuous: what the deployment needs is there.
    let count = |kind: &str| docs.iter().filter(|d| d.kind() == kind).count();
    assert_eq!(count("ConfigMap"), 1, "one ConfigMap");
    assert_eq!(count("Deployment"), 4, "switchyard + three example pools");
    assert!(
        count("Service") >= 4,
        "switchyard + three headless Services"
    );
    assert_eq!(count("PodDisruptionBudget"), 1, "one PodDisruptionBudget");
}

/// A copy of a manifest with `from` replaced by `to` (which must be there).
fn broken(file: &str, from: &str, to: &str) -> Vec<Doc> {
    let text = std::fs::read_to_string(root().join(file)).unwrap();
    assert!(text.contains(from), "{file} has no {from:?} to break");
    parse_docs(file, &text.replacen(from, to, 1))
}

#[test]
fn a_broken_manifest_is_rejected() {
    let schemas = schemas();
    // (file, text, its broken form, what the error must name, where)
    let cases = [
        (
            "deploy/k8s/deployment.yaml",
            "  replicas: 2\n",
            "  replica: 2\n",
            "replica",
            "/spec",
        ),
        (
            "deploy/k8s/deployment.yaml",
            "terminationGracePeriodSeconds: 45",
            "terminationGracePeriodSeconds: forty-five",
            "forty-five",
            "/spec/template/spec/terminationGracePeriodSeconds",
        ),
        (
            "deploy/k8s/deployment.yaml",
            "readOnlyRootFilesystem: true",
            "readOnlyRootFileSystem: true",
            "readOnlyRootFileSystem",
            "/spec/template/spec/containers/0/securityContext",
        ),
        (
            "deploy/k8s/service.yaml",
            "targetPort: http",
            "targetPrt: http",
            "targetPrt",
            "/spec/ports/0",
        ),
        (
            "deploy/k8s/pdb.yaml",
            "matchLabels:",
            "matchLabel:",
            "matchLabel",
            "/spec/selector",
        ),
    ];
    for (file, from, to, named, at) in cases {
        let errors = schema_errors(&broken(file, from, to), &schemas);
        assert!(
            errors
                .iter()
                .any(|e| e.contains(&format!("at {at}: ")) && e.contains(named)),
            "{file} with {to:?} for {from:?}: no error naming {named:?} at {at}; got:\n{}",
            errors.join("\n")
        );
    }
    // A kind without a vendored schema is a failure, not a pass.
    let secret = parse_docs(
        "secret.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: x}\n",
    );
    let errors = schema_errors(&secret, &schemas);
    assert!(
        errors.len() == 1 && errors[0].contains("no vendored schema"),
        "{errors:?}"
    );
}

// ---- cross-checks -------------------------------------------------------------------

fn find<'a>(docs: &'a [Doc], kind: &str, name: &str) -> &'a Doc {
    docs.iter()
        .find(|d| d.kind() == kind && d.name() == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/k8s"))
}

/// The routes.yaml the ConfigMap carries.
fn routes_yaml(docs: &[Doc]) -> String {
    find(docs, "ConfigMap", "switchyard-config").value["data"]["routes.yaml"]
        .as_str()
        .expect("the ConfigMap has data.routes.yaml")
        .to_string()
}

fn routes(docs: &[Doc]) -> Value {
    serde_yaml::from_str(&routes_yaml(docs)).expect("the ConfigMap's routes.yaml is YAML")
}

/// The port of a `host:port` (or `[v6]:port`).
fn port_of(addr: &str) -> u64 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("{addr:?} has no port"))
}

/// `labels` has every key and value of `selector` (a non-empty map).
fn selects(selector: &Value, labels: &Value) -> bool {
    let (Some(sel), Some(labels)) = (selector.as_object(), labels.as_object()) else {
        return false;
    };
    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn pod_labels(deployment: &Doc) -> &Value {
    &deployment.value["spec"]["template"]["metadata"]["labels"]
}

fn containers(deployment: &Doc) -> &Vec<Value> {
    deployment.value["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers")
}

/// The port number a probe or a Service's targetPort names in `container`: a number as it
/// is, a name through the container's `ports`.
fn resolve_port(container: &Value, port: &Value) -> Option<u64> {
    match port {
        Value::Number(n) => n.as_u64(),
        Value::String(name) => container["ports"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == *name)
            .and_then(|p| p["containerPort"].as_u64()),
        _ => None,
    }
}

/// A Duration string of routes.yaml (`30s`, `1m`) in seconds.
fn seconds(d: &str) -> u64 {
    let (n, unit) = d.split_at(d.find(|c: char| !c.is_ascii_digit()).unwrap_or(d.len()));
    let n: u64 = n.parse().unwrap_or_else(|_| panic!("duration {d:?}"));
    match unit {
        "s" => n,
        "m" => n * 60,
        _ => panic!("duration {d:?}: use s or m here"),
    }
}

#[test]
fn the_proxy_deployment_agrees_with_its_config() {
    let docs = manifests();
    let config = routes(&docs);
    let dep = find(&docs, "Deployment", "switchyard");
    let spec = &dep.value["spec"];
    let pod = &spec["template"]["spec"];
    let [c] = containers(dep).as_slice() else {
        panic!("{}: one container", dep.at())
    };
    let admin_port = port_of(config["admin"]["bind"].as_str().expect("admin.bind"));
    let web_port = port_of(config["listeners"][0]["bind"].as_str().expect("a listener"));
    assert_eq!(
        resolve_port(c, &"admin".into()),
        Some(admin_port),
        "containerPort admin"
    );
    assert_eq!(
        resolve_port(c, &"http".into()),
        Some(web_port),
        "containerPort http"
    );

    // Probes: /ready for readiness and /healthz for liveness, on the admin listener.
    for (probe, path) in [
        ("readinessProbe", "/ready"),
        ("livenessProbe", "/healthz"),
        ("startupProbe", "/healthz"),
    ] {
        let get = &c[probe]["httpGet"];
        if probe == "startupProbe" && c[probe].is_null() {
            continue;
        }
        assert_eq!(get["path"], path, "{probe} path");
        assert_eq!(
            resolve_port(c, &get["port"]),
            Some(admin_port),
            "{probe} asks the admin listener the config binds"
        );
    }

    // The config: the ConfigMap mounted as a folder (hot reload sees the ..data swap).
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args, ["run", "--config", "/etc/switchyard/routes.yaml"]);
    let mount = c["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["mountPath"] == "/etc/switchyard")
        .expect("a mount at /etc/switchyard");
    assert!(
        mount["subPath"].is_null() && mount["subPathExpr"].is_null(),
        "a folder mount, not subPath: a subPath mount never sees ConfigMap updates"
    );
    let volume = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mounted volume");
    assert_eq!(volume["configMap"]["name"], "switchyard-config");
    assert!(
        volume["configMap"]["items"].is_null(),
        "the whole ConfigMap, so the file is routes.yaml"
    );

    // The sticky secret: the variable the config names, from a Secret the docs create.
    let var = config["sticky_secret_env"]
        .as_str()
        .expect("sticky_secret_env");
    let env = c["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == var)
        .unwrap_or_else(|| panic!("env {var}"));
    let secret = &env["valueFrom"]["secretKeyRef"];
    let (name, key) = (
        secret["name"].as_str().unwrap(),
        secret["key"].as_str().unwrap(),
    );
    let create = format!("kubectl create secret generic {name}");
    let literal = format!("--from-literal={key}=");
    for doc in ["docs/deploy.md", "deploy/k8s/deployment.yaml"] {
        let text = std::fs::read_to_string(root().join(doc)).unwrap();
        assert!(
            text.contains(&create) && text.contains(&literal),
            "{doc} shows how to create the Secret: `{create} {literal}...`"
        );
    }

    // Draining: SIGKILL must not come before shutdown_timeout (+ the preStop sleep) is over.
    let shutdown = seconds(config["shutdown_timeout"].as_str().unwrap_or("30s"));
    let pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap_or(0);
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
    assert!(
        grace > shutdown + pre_stop,
        "terminationGracePeriodSeconds {grace} <= shutdown_timeout {shutdown}s + preStop {pre_stop}s"
    );

    // Rollouts never drop capacity; replicas spread over nodes.
    assert_eq!(spec["strategy"]["type"], "RollingUpdate");
    assert_eq!(spec["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
    assert_eq!(spec["strategy"]["rollingUpdate"]["maxSurge"], 1);
    assert!(spec["replicas"].as_u64().unwrap() >= 2, "replicas >= 2");
    let anti = &pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        [0]["podAffinityTerm"];
    assert_eq!(anti["topologyKey"], "kubernetes.io/hostname");
    assert!(selects(
        &anti["labelSelector"]["matchLabels"],
        pod_labels(dep)
    ));
    assert!(
        !c["resources"]["requests"].is_null() && !c["resources"]["limits"].is_null(),
        "resources"
    );
}

#[test]
fn every_pod_runs_locked_down() {
    let docs = manifests();
    for dep in docs.iter().filter(|d| d.kind() == "Deployment") {
        let pod = &dep.value["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{}", dep.at());
        assert_eq!(pod["securityContext"]["runAsUser"], 65532, "{}", dep.at());
        for c in containers(dep) {
            let sc = &c["securityContext"];
            let at = format!("{} container {}", dep.at(), c["name"]);
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{at}");
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{at}");
            assert_eq!(
                sc["capabilities"]["drop"],
                serde_json::json!(["ALL"]),
                "{at}"
            );
            assert_eq!(c["image"], "switchyard:0.1.0", "{at}");
        }
        assert!(
            selects(
                &dep.value["spec"]["selector"]["matchLabels"],
                pod_labels(dep)
            ),
            "{}: spec.selector selects its own pods",
            dep.at()
        );
    }
}

#[test]
fn the_manifests_are_namespace_agnostic_and_hold_no_secret() {
    for doc in manifests() {
        assert!(
            doc.value["metadata"]["namespace"].is_null(),
            "{}: no hard-coded namespace (kubectl -n / kustomize set it)",
            doc.at()
        );
        assert_ne!(doc.kind(), "Secret", "{}: no Secret is committed", doc.at());
    }
}

#[test]
fn the_services_select_pods_and_ports_that_exist() {
    let docs = manifests();
    let deployments: Vec<&Doc> = docs.iter().filter(|d| d.kind() == "Deployment").collect();
    for svc in docs.iter().filter(|d| d.kind() == "Service") {
        let selector = &svc.value["spec"]["selector"];
        let chosen: Vec<&&Doc> = deployments
            .iter()
            .filter(|d| selects(selector, pod_labels(d)))
            .collect();
        assert_eq!(
            chosen.len(),
            1,
            "{}: selects the pods of exactly one Deployment",
            svc.at()
        );
        let [c] = containers(chosen[0]).as_slice() else {
            panic!("{}: one container", chosen[0].at())
        };
        for port in svc.value["spec"]["ports"].as_array().expect("ports") {
            let target = if port["targetPort"].is_null() {
                &port["port"]
            } else {
                &port["targetPort"]
            };
            assert!(
                resolve_port(c, target).is_some_and(|p| c["ports"]
                    .as_array()
                    .is_some_and(|ps| ps.iter().any(|x| x["containerPort"] == p))),
                "{}: targetPort {target} names a containerPort of {}",
                svc.at(),
                chosen[0].at()
            );
        }
    }
    let front = find(&docs, "Service", "switchyard");
    assert_eq!(front.value["spec"]["ports"][0]["port"], 80);
    assert_eq!(front.value["spec"]["ports"][0]["targetPort"], "http");
    assert!(selects(
        &front.value["spec"]["selector"],
        pod_labels(find(&docs, "Deployment", "switchyard"))
    ));
}

#[test]
fn every_pool_backend_is_a_headless_service_of_pools_yaml() {
    let docs = manifests();
    let config = routes(&docs);
    let pools = config["pools"].as_object().expect("pools");
    let mut used = Vec::new();
    for (pool, p) in pools {
        assert!(
            p["dns_refresh"].is_string(),
            "pool {pool}: dns_refresh, so pod changes are seen"
        );
        assert_eq!(
            p["health_check"]["path"], "/healthz",
            "pool {pool}: an http health check on /healthz"
        );
        assert!(
            matches!(p["health_check"]["kind"].as_str(), None | Some("http")),
            "pool {pool}: an http health check"
        );
        for b in p["backends"].as_array().expect("backends") {
            let addr = b["addr"].as_str().expect("addr");
            let (host, _) = addr.rsplit_once(':').expect("host:port");
            let port = port_of(addr);
            let svc = docs
                .iter()
                .find(|d| d.kind() == "Service" && d.name() == host)
                .unwrap_or_else(|| panic!("pool {pool}: backend {addr}: no Service {host}"));
            assert_eq!(
                svc.file,
                "deploy/k8s/pools.yaml",
                "{}: pool Services live in pools.yaml",
                svc.at()
            );
            assert_eq!(
                svc.value["spec"]["clusterIP"],
                "None",
                "{}: headless, so the name resolves to every pod",
                svc.at()
            );
            assert!(
                svc.value["spec"]["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["port"] == port),
                "{}: has port {port}, which backend {addr} uses",
                svc.at()
            );
            let dep = docs
                .iter()
                .find(|d| {
                    d.kind() == "Deployment"
                        && d.file == "deploy/k8s/pools.yaml"
                        && selects(&svc.value["spec"]["selector"], pod_labels(d))
                })
                .unwrap_or_else(|| panic!("{}: selects no Deployment of pools.yaml", svc.at()));
            // The example pods answer the health check: `switchyard echo` on that port.
            let c = &containers(dep)[0];
            let args: Vec<&str> = c["args"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap())
                .collect();
            assert_eq!(args[..3], ["echo", "--listen", &format!("0.0.0.0:{port}")]);
            assert_eq!(dep.value["spec"]["replicas"], 2, "{}", dep.at());
            used.push(host.to_string());
        }
    }
    for svc in docs
        .iter()
        .filter(|d| d.kind() == "Service" && d.file == "deploy/k8s/pools.yaml")
    {
        assert!(
            used.iter().any(|u| u == svc.name()),
            "{}: no pool uses it",
            svc.at()
        );
    }
}

#[test]
fn the_disruption_budget_covers_the_proxy() {
    let docs = manifests();
    let pdb = docs
        .iter()
        .find(|d| d.kind() == "PodDisruptionBudget")
        .expect("a PodDisruptionBudget");
    let spec = &pdb.value["spec"];
    assert!(
        spec["minAvailable"] == 1 || spec["maxUnavailable"] == 1,
        "{}: minAvailable 1 or maxUnavailable 1",
        pdb.at()
    );
    assert!(
        selects(
            &spec["selector"]["matchLabels"],
            pod_labels(find(&docs, "Deployment", "switchyard"))
        ),
        "{}: selects the switchyard pods",
        pdb.at()
    );
}

/// The ConfigMap's routes.yaml is a config the proxy accepts. Needs DNS-fed backends
/// (`dns_refresh`, and `check` not resolving backend names): until those land, this fails.
#[test]
fn the_configmap_routes_pass_switchyard_check() {
    let docs = manifests();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    std::fs::write(&path, routes_yaml(&docs)).unwrap();
    let var = routes(&docs)["sticky_secret_env"]
        .as_str()
        .unwrap()
        .to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["check", "--config", path.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .env(var, "k8s-test-secret-not-a-real-one")
        .output()
        .expect("run switchyard check");
    assert!(
        out.status.success(),
        "switchyard check on the ConfigMap's routes.yaml (lines count from the first line of \
         data.routes.yaml in deploy/k8s/configmap.yaml): exit {:?}\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

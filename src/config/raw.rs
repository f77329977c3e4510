//! The serde mirror of `routes.yaml`: every key the SPEC names, nothing else.
//!
//! No logic lives here. Every struct denies unknown fields, so a typo is an error with a
//! line and column from the parser. Keys with a SPEC default are `Option`s: defaults are
//! applied in one place, [`super::validate`], which also turns these strings into typed
//! values and reports every semantic error at once.

use indexmap::IndexMap;
use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub listeners: Vec<Listener>,
    pub admin: Option<Admin>,
    pub sticky_secret_env: Option<String>,
    pub resolver: Option<String>,
    pub access_log: Option<AccessLog>,
    pub shutdown_timeout: Option<String>,
    pub workers: Option<usize>,
    pub limits: Option<Limits>,
    #[serde(default)]
    pub pools: IndexMap<String, Pool>,
    #[serde(default)]
    pub routes: Vec<Route>,
}

/// `listeners[]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub name: Option<String>,
    pub bind: Option<String>,
    pub redirect_https: Option<u16>,
    pub tls: Option<ListenerTls>,
    pub trusted_proxies: Option<Vec<String>>,
    pub mode: Option<Mode>,
    pub pool: Option<String>,
    pub sni_routes: Option<Vec<SniRoute>>,
    pub proxy_protocol: Option<ProxyProtocol>,
    pub accept_proxy: Option<bool>,
}

/// `listeners[].mode`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Http,
    Tcp,
}

/// `listeners[].sni_routes[]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SniRoute {
    pub sni: String,
    pub pool: String,
}

/// `listeners[].proxy_protocol` and `pools.NAME.proxy_protocol`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyProtocol {
    V1,
    V2,
}

/// `listeners[].tls`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    #[serde(default)]
    pub certificates: Vec<Certificate>,
    pub session_resumption: Option<bool>,
}

/// `listeners[].tls.certificates[]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    pub cert: String,
    pub key: String,
}

/// `admin`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub bind: String,
}

/// `access_log`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessLog {
    Json,
    Common,
    Off,
}

/// `limits` (top level) and `routes[].limits`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub max_request_header_bytes: Option<u64>,
    pub max_request_body_bytes: Option<u64>,
    pub client_header_timeout: Option<String>,
    pub client_idle_timeout: Option<String>,
    pub client_body_timeout: Option<String>,
    pub client_send_timeout: Option<String>,
    pub max_connections: Option<u64>,
}

/// `pools.NAME`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    pub balance: Option<Balance>,
    pub hash_key: Option<String>,
    pub sticky: Option<Sticky>,
    pub health_check: Option<HealthCheck>,
    pub timeouts: Option<Timeouts>,
    pub when_all_down: Option<WhenAllDown>,
    pub retries: Option<u32>,
    pub eject_on_5xx: Option<u32>,
    pub max_ejection_percent: Option<u32>,
    pub protocol: Option<Protocol>,
    pub tls: Option<bool>,
    pub ca: Option<String>,
    pub sni: Option<String>,
    pub dns_refresh: Option<String>,
    pub proxy_protocol: Option<ProxyProtocol>,
    #[serde(default)]
    pub backends: Vec<Backend>,
}

/// `pools.NAME.balance`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    RoundRobin,
    LeastConnections,
    Random,
    P2cEwma,
    IpHash,
    CookieHash,
    HeaderHash,
}

/// `pools.NAME.when_all_down`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenAllDown {
    FailOpen,
    Reject,
}

/// `pools.NAME.protocol`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Http1,
    H2,
}

/// `pools.NAME.sticky`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sticky {
    pub cookie: String,
    pub max_age: Option<String>,
    pub nocache: Option<bool>,
}

/// `pools.NAME.health_check`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub kind: Option<CheckKind>,
    pub path: Option<String>,
    pub host: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub unhealthy_threshold: Option<u32>,
    pub healthy_threshold: Option<u32>,
}

/// `pools.NAME.health_check.kind`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    Http,
    Tcp,
}

/// `pools.NAME.timeouts`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    pub connect: Option<String>,
    pub response: Option<String>,
    pub read: Option<String>,
    pub write: Option<String>,
    pub idle: Option<String>,
}

/// `pools.NAME.backends[]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    pub addr: String,
    pub weight: Option<u32>,
    pub drain: Option<bool>,
}

/// `routes[]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub name: Option<String>,
    #[serde(rename = "match", default)]
    pub matches: Match,
    pub pool: Option<String>,
    pub split: Option<Split>,
    pub limits: Option<Limits>,
}

/// `routes[].match`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    pub host: Option<String>,
    pub prefix: Option<String>,
    pub path: Option<String>,
    pub methods: Option<Vec<String>>,
    #[serde(default, deserialize_with = "scalar_map")]
    pub headers: IndexMap<String, String>,
    #[serde(default, deserialize_with = "scalar_map")]
    pub cookies: IndexMap<String, String>,
}

/// `routes[].split`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Split {
    pub cookie: String,
    #[serde(default)]
    pub pools: Vec<SplitPool>,
}

/// `routes[].split.pools[]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitPool {
    pub pool: String,
    pub weight: u32,
}

/// A map whose values may be written as any YAML scalar (`x-canary: 1` means the string "1").
fn scalar_map<'de, D>(de: D) -> Result<IndexMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Str(String),
        Int(i64),
        Bool(bool),
        Float(f64),
    }
    let map = IndexMap::<String, Scalar>::deserialize(de)?;
    Ok(map
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Scalar::Str(s) => s,
                Scalar::Int(i) => i.to_string(),
                Scalar::Bool(b) => b.to_string(),
                Scalar::Float(f) => f.to_string(),
            };
            (k, v)
        })
        .collect())
}

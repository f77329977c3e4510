//! Configuration: from `routes.yaml` to validated plain data.
//!
//! ```text
//! routes.yaml --serde (raw.rs)--> raw::Config --validate.rs (every error)--> Config
//!             \--yaml events (spans.rs): line and column of every key ----^
//! ```
//! [`Config`] holds typed values only (addresses, durations, methods, header names): no
//! sockets, atomics or tasks. `snapshot` compiles it into what the hot path reads.

pub mod raw;
pub mod spans;
pub mod validate;

use http::{HeaderName, HeaderValue, Method};
use spans::Pos;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listeners: Vec<Listener>,
    pub admin: Option<SocketAddr>,
    pub access_log: AccessLogFormat,
    pub shutdown_timeout: Duration,
    /// Runtime worker threads; `None` means one per core.
    pub workers: Option<usize>,
    pub limits: Limits,
    /// The keys of `sticky_secret_env`, if set: the first signs, all verify.
    pub sticky_secret: Option<Secret>,
    /// The DNS server backend names are looked up at; `None`: the system's.
    pub resolver: Option<SocketAddr>,
    pub pools: Vec<Pool>,
    pub routes: Vec<Route>,
}

/// Key material from the environment; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    /// The variable it came from.
    pub env: String,
    /// In order, none empty.
    pub keys: Vec<Arc<[u8]>>,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({}: {} keys)", self.env, self.keys.len())
    }
}

/// One downstream listener.
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub name: Arc<str>,
    pub bind: SocketAddr,
    /// Answer every request with a 308 to `https://host:PORT`.
    pub redirect_https: Option<u16>,
    /// Terminate TLS with these certificates.
    pub tls: Option<Arc<crate::tls::Certs>>,
    /// TLS session tickets and cache (default on); off makes every handshake a full one.
    pub session_resumption: bool,
    /// Peers whose `X-Forwarded-For` is believed; empty: none, and the list is appended to.
    pub trusted_proxies: Arc<[ipnet::IpNet]>,
    /// Every connection starts with a PROXY protocol header naming the client.
    pub accept_proxy: bool,
    /// `mode: tcp`: where its connections go; `None` for an HTTP listener.
    pub tcp: Option<TcpListen>,
}

/// Where a tcp listener sends its connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpListen {
    /// Index into [`Config::pools`]: without SNI, or when no `sni_routes` entry matches.
    pub pool: usize,
    /// `sni_routes`, in file order: (lower-case name or `*.suffix`, pool index).
    pub sni_routes: Vec<(String, usize)>,
    /// Send the client's address to the backend first.
    pub proxy_protocol: Option<ProxyVersion>,
}

/// A PROXY protocol version.
pub use crate::proxy_protocol::Version as ProxyVersion;

/// Access log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    Json,
    /// The combined log format.
    Common,
    Off,
}

/// Per-listener request limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_request_header_bytes: usize,
    pub max_request_body_bytes: u64,
    pub client_header_timeout: Duration,
    pub client_idle_timeout: Duration,
    /// Longest wait for the next bytes of a request body (nginx `client_body_timeout`).
    pub client_body_timeout: Duration,
    /// Longest wait for the client to take the next bytes of a response (nginx
    /// `send_timeout`).
    pub client_send_timeout: Duration,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_header_bytes: 65536,
            max_request_body_bytes: 16 * 1024 * 1024,
            client_header_timeout: Duration::from_secs(10),
            client_idle_timeout: Duration::from_secs(60),
            client_body_timeout: Duration::from_secs(60),
            client_send_timeout: Duration::from_secs(60),
            max_connections: 10_000,
        }
    }
}

/// A named set of interchangeable backends.
#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    pub name: Arc<str>,
    pub balance: Balance,
    /// The cookie (`cookie_hash`) or lower-case header name (`header_hash`) hashed.
    pub hash_key: Option<String>,
    pub sticky: Option<Sticky>,
    pub timeouts: Timeouts,
    pub retries: u32,
    pub when_all_down: WhenAllDown,
    /// Active checks of every backend, if configured.
    pub health_check: Option<HealthCheck>,
    /// Consecutive 5xx responses that eject a backend (passive), if set.
    pub eject_on_5xx: Option<u32>,
    /// Passive ejection never takes out more of the pool than this (percent of its
    /// backends, at least one unless 0).
    pub max_ejection_percent: u32,
    pub protocol: Protocol,
    /// Connect to backends with TLS.
    pub tls: Option<UpstreamTls>,
    /// How often backend names are looked up again (before jitter).
    pub dns_refresh: Duration,
    /// Send each new backend connection a PROXY header naming the client first.
    pub proxy_protocol: Option<ProxyVersion>,
    pub backends: Vec<Backend>,
}

/// A pool's proxy-inserted sticky-session cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sticky {
    pub cookie: String,
    /// Tokens older than this count as absent, and the cookie gets `Max-Age`.
    pub max_age: Option<Duration>,
    /// `Cache-Control: private` on responses that set the cookie.
    pub nocache: bool,
}

/// A pool's active health check.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthCheck {
    pub kind: CheckKind,
    /// The request target of an HTTP check (`/healthz`).
    pub path: String,
    /// The `Host` of an HTTP check; `None`: the backend's address.
    pub host: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    /// Failed checks in a row that take a healthy backend out.
    pub unhealthy_threshold: u32,
    /// Passed checks in a row that bring an unhealthy backend back.
    pub healthy_threshold: u32,
}

/// What a health check does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckKind {
    /// `GET path`; a 2xx or 3xx within the timeout passes.
    Http,
    /// A TCP connect (and TLS handshake on a TLS pool) within the timeout passes.
    Tcp,
}

/// The HTTP version spoken to a pool's backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// HTTP/2: h2c on plain connections, ALPN h2 over TLS.
    H2,
}

/// TLS to a pool's backends.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamTls {
    /// Private CAs to trust instead of the webpki roots: (file, its PEM bytes, certificates).
    pub ca: Option<Arc<CaBundle>>,
    /// Server name to send and verify instead of the backend's host name.
    pub sni: Option<String>,
}

/// CA certificates read from a PEM file.
#[derive(Debug)]
pub struct CaBundle {
    pub path: PathBuf,
    pub pem: Vec<u8>,
    pub certs: Vec<rustls::pki_types::CertificateDer<'static>>,
}

impl PartialEq for CaBundle {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path && self.pem == other.pem
    }
}

/// How a pool picks a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastConnections,
    Random,
    /// Power of two choices on a latency EWMA weighted by in-flight requests.
    P2cEwma,
    /// Consistent hash of the client address.
    IpHash,
    /// Consistent hash of the cookie `hash_key`.
    CookieHash,
    /// Consistent hash of the header `hash_key`.
    HeaderHash,
}

impl Balance {
    /// The name used in `routes.yaml`.
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::LeastConnections => "least_connections",
            Balance::Random => "random",
            Balance::P2cEwma => "p2c_ewma",
            Balance::IpHash => "ip_hash",
            Balance::CookieHash => "cookie_hash",
            Balance::HeaderHash => "header_hash",
        }
    }
}

/// Upstream timeouts of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    /// Request sent -> response head.
    pub response: Duration,
    /// Longest wait for the next bytes of a response body (nginx `proxy_read_timeout`).
    pub read: Duration,
    /// Longest wait for the backend to take the next bytes of a request body (nginx
    /// `proxy_send_timeout`).
    pub write: Duration,
    /// A tcp connection with no bytes either way for this long is closed.
    pub idle: Duration,
}

/// What a pool does when no backend is healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenAllDown {
    FailOpen,
    Reject,
}

/// One backend of a pool, as configured: by DNS name it may stand for several.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub addr: Addr,
    pub weight: u32,
    pub drain: bool,
}

/// A backend's `addr`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Addr {
    Ip(SocketAddr),
    /// One backend per address the name resolves to (see `dns`); the name is lower-case.
    Name {
        host: Arc<str>,
        port: u16,
    },
}

impl Addr {
    /// The DNS name as written, if it is one.
    pub fn host(&self) -> Option<&str> {
        match self {
            Addr::Ip(_) => None,
            Addr::Name { host, .. } => Some(host),
        }
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Ip(a) => a.fmt(f),
            Addr::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// One entry of `routes:`, in file order.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub name: Arc<str>,
    pub host: HostMatch,
    pub path: PathMatch,
    /// Empty means any method.
    pub methods: Vec<Method>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub cookies: Vec<(String, String)>,
    /// Where the route's requests go.
    pub to: RouteTo,
    pub max_request_body_bytes: Option<u64>,
}

/// A route's destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteTo {
    /// Index into [`Config::pools`].
    Pool(usize),
    Split(Split),
}

impl RouteTo {
    /// The pools it may send to, as indices into [`Config::pools`].
    pub fn pools(&self) -> impl Iterator<Item = usize> + '_ {
        let (one, split) = match self {
            RouteTo::Pool(p) => (Some(*p), None),
            RouteTo::Split(s) => (None, Some(s)),
        };
        one.into_iter().chain(
            split
                .into_iter()
                .flat_map(|s| s.pools.iter().map(|&(p, _)| p)),
        )
    }
}

impl Config {
    /// Where route `r` sends requests, for people: `pool` or `a 90 / b 10`.
    pub fn destination(&self, r: &Route) -> String {
        match &r.to {
            RouteTo::Pool(p) => self.pools[*p].name.to_string(),
            RouteTo::Split(s) => s
                .pools
                .iter()
                .map(|&(p, w)| format!("{} {w}", self.pools[p].name))
                .collect::<Vec<_>>()
                .join(" / "),
        }
    }
}

/// A weighted choice of pool, kept per user by a cookie naming the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub cookie: String,
    /// (index into [`Config::pools`], weight > 0); at least two, each pool once.
    pub pools: Vec<(usize, u32)>,
}

/// The host condition of a route.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostMatch {
    Any,
    /// Lower-case host name.
    Exact(String),
    /// `*.example.com` stored as `example.com`: matches exactly one more label.
    Wildcard(String),
}

/// The path condition of a route.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathMatch {
    /// Segment-aware prefix without a trailing slash (`/` for everything).
    Prefix(String),
    /// A matchit pattern with parameters renamed by position (`/users/{p0}`).
    Pattern(String),
}

/// A config problem with the place it was found, shown as `PATH:LINE:COL: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub pos: Option<Pos>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pos {
            Some(p) => write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                p.line,
                p.col,
                self.message
            ),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// A config that passed validation, with the warnings found on the way.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<ConfigError>,
}

/// Read, parse and validate the config at `path`.
pub fn load(path: &Path) -> Result<Loaded, Vec<ConfigError>> {
    load_text(path).map(|(l, _)| l)
}

/// [`load`], and the text that was loaded (what a reload compares changes with).
pub fn load_text(path: &Path) -> Result<(Loaded, String), Vec<ConfigError>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigError {
            file: path.to_path_buf(),
            pos: None,
            message: format!("cannot read the config file: {e}"),
        }]
    })?;
    parse(path, &text).map(|l| (l, text))
}

/// Parse and validate config `text`; `path` is used in messages.
pub fn parse(path: &Path, text: &str) -> Result<Loaded, Vec<ConfigError>> {
    parse_with_env(path, text, &|name| std::env::var_os(name))
}

/// [`parse`], reading environment variables (`sticky_secret_env`) through `env`.
pub fn parse_with_env(
    path: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<Loaded, Vec<ConfigError>> {
    let spans = spans::Spans::index(text);
    let raw: raw::Config = if text.trim().is_empty() {
        raw::Config::default()
    } else {
        serde_yaml::from_str(text).map_err(|e| vec![serde_error(path, &e)])?
    };
    validate::validate(&raw, path, &spans, env)
}

/// `p` as written in the config at `file`: relative paths are relative to its folder.
pub fn relative_to(file: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    match file.parent() {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p.to_path_buf(),
    }
}

/// The certificate/key pairs that listeners of the config at `path` name but that do not
/// exist yet (what `demo` generates). Empty when the file does not parse.
pub fn missing_certificates(path: &Path) -> Vec<(PathBuf, PathBuf)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let Ok(raw) = serde_yaml::from_str::<raw::Config>(&text) else {
        return Vec::new();
    };
    raw.listeners
        .iter()
        .filter_map(|l| l.tls.as_ref())
        .flat_map(|t| &t.certificates)
        .map(|c| (relative_to(path, &c.cert), relative_to(path, &c.key)))
        .filter(|(c, k)| !c.exists() || !k.exists())
        .collect()
}

fn serde_error(path: &Path, e: &serde_yaml::Error) -> ConfigError {
    let mut message = e.to_string();
    // The location is shown in front; drop serde's own " at line L column C".
    if let Some(i) = message.find(" at line ") {
        message.truncate(i);
    }
    ConfigError {
        file: path.to_path_buf(),
        pos: e.location().map(|l| Pos {
            line: l.line(),
            col: l.column(),
        }),
        message,
    }
}

//! `raw::Config` -> [`Config`]: defaults applied, values typed, and every problem reported.
//!
//! Validation never stops at the first error: `switchyard check` prints them all, each at
//! the key or value it is about. Features the SPEC names but this build does not have yet
//! are errors too, so that nobody runs a config whose promises are silently ignored.

use super::raw;
use super::spans::{Pos, Spans};
use super::{
    AccessLogFormat, Addr, Backend, Balance, CaBundle, CheckKind, Config, ConfigError, HealthCheck,
    HostMatch, Limits, Listener, Loaded, PathMatch, Pool, Protocol, Route, RouteTo, Secret, Split,
    Sticky, TcpListen, Timeouts, UpstreamTls, WhenAllDown,
};
use crate::router::path::normalize;
use crate::tls::certs::{Certs, Which};
use http::{HeaderName, HeaderValue, Method};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Validate `raw`, read from `file`, whose positions are in `spans`; `env` reads
/// environment variables.
pub fn validate(
    raw: &raw::Config,
    file: &Path,
    spans: &Spans,
    env: &dyn Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<Loaded, Vec<ConfigError>> {
    let mut c = Check {
        file,
        spans,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    for (path, pos) in &spans.duplicates {
        c.error(*pos, format!("`{}` is set twice", last_segment(path)));
    }

    let limits = c.limits(raw.limits.as_ref());
    let admin = raw
        .admin
        .as_ref()
        .and_then(|a| c.socket_addr("admin.bind", &a.bind));
    let sticky_secret = raw
        .sticky_secret_env
        .as_deref()
        .and_then(|name| c.secret(name, env));
    let resolver = raw.resolver.as_deref().and_then(|r| c.resolver(r));
    let access_log = match raw.access_log.unwrap_or(raw::AccessLog::Json) {
        raw::AccessLog::Json => AccessLogFormat::Json,
        raw::AccessLog::Common => AccessLogFormat::Common,
        raw::AccessLog::Off => AccessLogFormat::Off,
    };
    let shutdown_timeout = c.duration(
        "shutdown_timeout",
        raw.shutdown_timeout.as_deref(),
        Duration::from_secs(30),
    );
    if raw.workers == Some(0) {
        c.error(c.spans.value("workers"), "workers must be at least 1");
    }
    let pools: Vec<Pool> = raw.pools.iter().map(|(name, p)| c.pool(name, p)).collect();
    let routes = c.routes(&raw.routes, &pools);
    let listeners = c.listeners(&raw.listeners, &pools);
    c.tcp_pools(&raw.pools, &listeners, &pools);
    if sticky_secret.is_none() {
        for (name, p) in &raw.pools {
            if p.sticky.is_some() {
                c.warn(
                    c.spans.key(&format!("pools.{name}.sticky")),
                    format!(
                        "pool `{name}`'s sticky tokens are signed with a key derived from its name, so anyone can forge them: set `sticky_secret_env`"
                    ),
                );
            }
        }
    }

    if c.errors.is_empty() {
        Ok(Loaded {
            config: Config {
                listeners,
                admin,
                access_log,
                shutdown_timeout,
                workers: raw.workers,
                limits,
                sticky_secret,
                resolver,
                pools,
                routes,
            },
            warnings: c.warnings,
        })
    } else {
        c.errors.sort_by_key(|e| e.pos.map(|p| (p.line, p.col)));
        Err(c.errors)
    }
}

struct Check<'a> {
    file: &'a Path,
    spans: &'a Spans,
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigError>,
}

fn proxy_version(v: raw::ProxyProtocol) -> super::ProxyVersion {
    match v {
        raw::ProxyProtocol::V1 => super::ProxyVersion::V1,
        raw::ProxyProtocol::V2 => super::ProxyVersion::V2,
    }
}

fn last_segment(path: &str) -> &str {
    path.rsplit('.').next().unwrap_or(path)
}

impl Check<'_> {
    fn error(&mut self, pos: Pos, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            pos: Some(pos),
            message: message.into(),
        });
    }

    fn warn(&mut self, pos: Pos, message: impl Into<String>) {
        self.warnings.push(ConfigError {
            file: self.file.to_path_buf(),
            pos: Some(pos),
            message: format!("warning: {}", message.into()),
        });
    }

    fn duration(&mut self, path: &str, value: Option<&str>, default: Duration) -> Duration {
        let Some(v) = value else { return default };
        match humantime::parse_duration(v) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.error(self.spans.value(path), "duration must be more than zero");
                default
            }
            Err(_) => {
                self.error(
                    self.spans.value(path),
                    format!(
                        "`{v}` is not a duration: write a number and a unit, like 500ms, 2s or 1m"
                    ),
                );
                default
            }
        }
    }

    fn socket_addr(&mut self, path: &str, value: &str) -> Option<SocketAddr> {
        match value.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.error(
                    self.spans.value(path),
                    format!(
                        "`{value}` is not an IP address and port, like 127.0.0.1:8080 or [::1]:8080"
                    ),
                );
                None
            }
        }
    }

    /// The keys in the environment variable `name` (comma-separated; the first signs).
    fn secret(
        &mut self,
        name: &str,
        lookup: &dyn Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Option<Secret> {
        let at = self.spans.value("sticky_secret_env");
        let Some(value) = lookup(name) else {
            self.error(
                at,
                format!("`sticky_secret_env` names `{name}`, which is not set in the environment"),
            );
            return None;
        };
        let Some(value) = value.to_str() else {
            self.error(at, format!("`{name}` is not valid UTF-8"));
            return None;
        };
        let keys: Vec<Arc<[u8]>> = value
            .split(',')
            .map(|k| Arc::from(k.trim().as_bytes()))
            .collect();
        if keys.iter().any(|k| k.is_empty()) {
            self.error(
                at,
                format!("`{name}` holds an empty key: write one or more keys separated by commas"),
            );
            return None;
        }
        if keys.iter().any(|k| k.len() < 16) {
            self.warn(
                at,
                format!("a key in `{name}` is shorter than 16 bytes: use 32 random bytes or more"),
            );
        }
        Some(Secret {
            env: name.to_string(),
            keys,
        })
    }

    /// Check a cookie name the proxy sets (an RFC 6265 token).
    fn cookie_name(&mut self, path: &str, name: &str) {
        if name.is_empty() || HeaderName::from_bytes(name.as_bytes()).is_err() {
            self.error(
                self.spans.value(path),
                format!("`{name}` is not a valid cookie name"),
            );
        }
    }

    fn limits(&mut self, raw: Option<&raw::Limits>) -> Limits {
        let d = Limits::default();
        let Some(raw) = raw else { return d };
        let positive = |c: &mut Self, key: &str, v: Option<u64>, default: u64| match v {
            Some(0) => {
                c.error(
                    c.spans.value(&format!("limits.{key}")),
                    format!("{key} must be more than zero"),
                );
                default
            }
            Some(v) => v,
            None => default,
        };
        Limits {
            max_request_header_bytes: positive(
                self,
                "max_request_header_bytes",
                raw.max_request_header_bytes,
                d.max_request_header_bytes as u64,
            ) as usize,
            max_request_body_bytes: positive(
                self,
                "max_request_body_bytes",
                raw.max_request_body_bytes,
                d.max_request_body_bytes,
            ),
            client_header_timeout: self.duration(
                "limits.client_header_timeout",
                raw.client_header_timeout.as_deref(),
                d.client_header_timeout,
            ),
            client_idle_timeout: self.duration(
                "limits.client_idle_timeout",
                raw.client_idle_timeout.as_deref(),
                d.client_idle_timeout,
            ),
            client_body_timeout: self.duration(
                "limits.client_body_timeout",
                raw.client_body_timeout.as_deref(),
                d.client_body_timeout,
            ),
            client_send_timeout: self.duration(
                "limits.client_send_timeout",
                raw.client_send_timeout.as_deref(),
                d.client_send_timeout,
            ),
            max_connections: positive(
                self,
                "max_connections",
                raw.max_connections,
                d.max_connections as u64,
            ) as usize,
        }
    }

    fn listeners(&mut self, raw: &[raw::Listener], pools: &[Pool]) -> Vec<Listener> {
        if raw.is_empty() {
            self.error(
                Pos { line: 1, col: 1 },
                "no listeners: add `listeners:` with at least one `bind:` address",
            );
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut binds: HashMap<SocketAddr, usize> = HashMap::new();
        let mut out = Vec::new();
        for (i, l) in raw.iter().enumerate() {
            let path = format!("listeners.{i}");
            let name = match &l.name {
                Some(n) if !n.is_empty() => {
                    if let Some(prev) = names.insert(n, i) {
                        self.error(
                            self.spans.value(&format!("{path}.name")),
                            format!(
                                "listener name `{n}` is already used on line {}",
                                self.spans.value(&format!("listeners.{prev}")).line
                            ),
                        );
                    }
                    n.as_str()
                }
                _ => {
                    self.error(self.spans.value(&path), "listener needs a `name:`");
                    ""
                }
            };
            let bind = match &l.bind {
                Some(b) => self.socket_addr(&format!("{path}.bind"), b),
                None => {
                    self.error(self.spans.value(&path), "listener needs a `bind:` address");
                    None
                }
            };
            if let Some(b) = bind
                && b.port() != 0
                && let Some(prev) = binds.insert(b, i)
            {
                self.error(
                    self.spans.value(&format!("{path}.bind")),
                    format!(
                        "{b} is already bound on line {}",
                        self.spans.value(&format!("listeners.{prev}")).line
                    ),
                );
            }
            let tls = l.tls.as_ref().and_then(|t| {
                if l.redirect_https.is_some() {
                    self.error(
                        self.spans.key(&format!("{path}.redirect_https")),
                        "a listener cannot both terminate TLS and redirect to HTTPS",
                    );
                }
                self.certificates(&format!("{path}.tls"), t)
            });
            if l.redirect_https == Some(0) {
                self.error(
                    self.spans.value(&format!("{path}.redirect_https")),
                    "redirect_https must be a port number",
                );
            }
            let trusted_proxies = self.cidrs(
                &format!("{path}.trusted_proxies"),
                l.trusted_proxies.as_deref().unwrap_or_default(),
            );
            let tcp = self.tcp_listen(&path, name, l, pools);
            if let Some(bind) = bind {
                out.push(Listener {
                    name: name.into(),
                    bind,
                    redirect_https: l.redirect_https,
                    tls,
                    session_resumption: l
                        .tls
                        .as_ref()
                        .and_then(|t| t.session_resumption)
                        .unwrap_or(true),
                    trusted_proxies: trusted_proxies.into(),
                    accept_proxy: l.accept_proxy.unwrap_or(false),
                    tcp,
                });
            }
        }
        out
    }

    /// A `mode: tcp` listener's pool, `sni_routes` and `proxy_protocol`; the HTTP keys it
    /// cannot have, and the tcp keys an HTTP listener cannot have, are errors.
    fn tcp_listen(
        &mut self,
        path: &str,
        name: &str,
        l: &raw::Listener,
        pools: &[Pool],
    ) -> Option<TcpListen> {
        let tcp = l.mode == Some(raw::Mode::Tcp);
        let http_only = [
            (
                "tls",
                l.tls.is_some(),
                "use `sni_routes` to pass TLS through by name, or an HTTP listener to terminate it",
            ),
            (
                "redirect_https",
                l.redirect_https.is_some(),
                "it sends no HTTP responses",
            ),
            (
                "trusted_proxies",
                l.trusted_proxies.is_some(),
                "it reads no X-Forwarded-For; `accept_proxy` takes the client from a PROXY header",
            ),
        ];
        let tcp_only = [
            ("pool", l.pool.is_some()),
            ("sni_routes", l.sni_routes.is_some()),
            ("proxy_protocol", l.proxy_protocol.is_some()),
        ];
        if !tcp {
            for (key, set) in tcp_only {
                if set {
                    let hint = if key == "proxy_protocol" {
                        "; an HTTP listener's pools take `proxy_protocol` as a pool key"
                    } else {
                        "; HTTP listeners use `routes:`"
                    };
                    self.error(
                        self.spans.key(&format!("{path}.{key}")),
                        format!("`{key}` is for `mode: tcp` listeners{hint}"),
                    );
                }
            }
            return None;
        }
        for (key, set, why) in http_only {
            if set {
                self.error(
                    self.spans.key(&format!("{path}.{key}")),
                    format!("a tcp listener cannot have `{key}`: {why}"),
                );
            }
        }
        let who = format!("listener `{name}`");
        let pool = match &l.pool {
            Some(p) => self.pool_ref(&format!("{path}.pool"), &who, p, pools),
            None => {
                self.error(
                    self.spans.key(&format!("{path}.mode")),
                    "a tcp listener needs a `pool:` (the one for connections no `sni_routes` entry matches)",
                );
                None
            }
        };
        let mut sni_routes: Vec<(String, usize)> = Vec::new();
        for (i, r) in l.sni_routes.iter().flatten().enumerate() {
            let rpath = format!("{path}.sni_routes.{i}");
            let sni = r.sni.trim_end_matches('.').to_ascii_lowercase();
            let bare = sni.strip_prefix("*.").unwrap_or(&sni);
            let valid = !bare.is_empty()
                && !bare.contains('*')
                && bare.split('.').all(|l| {
                    !l.is_empty()
                        && l.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                });
            if !valid || bare.parse::<std::net::IpAddr>().is_ok() {
                self.error(
                    self.spans.value(&format!("{rpath}.sni")),
                    format!(
                        "`{}` is not a server name: a host name, or `*.` and a domain (clients send no SNI for an IP address)",
                        r.sni
                    ),
                );
                continue;
            }
            if let Some(prev) = sni_routes.iter().position(|(s, _)| *s == sni) {
                self.error(
                    self.spans.value(&format!("{rpath}.sni")),
                    format!(
                        "server name `{sni}` is already routed on line {}",
                        self.spans.value(&format!("{path}.sni_routes.{prev}")).line
                    ),
                );
                continue;
            }
            if let Some(p) = self.pool_ref(&format!("{rpath}.pool"), &who, &r.pool, pools) {
                sni_routes.push((sni, p));
            }
        }
        let pool = pool?;
        if let (Some(mine), Some(theirs)) = (l.proxy_protocol, pools[pool].proxy_protocol)
            && proxy_version(mine) != theirs
        {
            self.error(
                self.spans.value(&format!("{path}.proxy_protocol")),
                format!(
                    "listener `{name}` sends PROXY protocol {}, but its pool `{}` says {}: set one",
                    proxy_version(mine).as_str(),
                    pools[pool].name,
                    theirs.as_str()
                ),
            );
        }
        Some(TcpListen {
            pool,
            sni_routes,
            proxy_protocol: l.proxy_protocol.map(proxy_version),
        })
    }

    /// Pools that tcp listeners send to balance connections, not requests: the settings
    /// that need HTTP are errors there.
    fn tcp_pools(
        &mut self,
        raw: &indexmap::IndexMap<String, raw::Pool>,
        listeners: &[Listener],
        pools: &[Pool],
    ) {
        let mut used = vec![false; pools.len()];
        for t in listeners.iter().filter_map(|l| l.tcp.as_ref()) {
            used[t.pool] = true;
            for &(_, p) in &t.sni_routes {
                used[p] = true;
            }
        }
        for (i, (name, p)) in raw.iter().enumerate() {
            if !used.get(i).copied().unwrap_or(false) {
                continue;
            }
            let path = format!("pools.{name}");
            let why = "a tcp listener sends to it";
            if let Some(b) = p.balance
                && !matches!(
                    b,
                    raw::Balance::RoundRobin
                        | raw::Balance::LeastConnections
                        | raw::Balance::Random
                        | raw::Balance::IpHash
                )
            {
                self.error(
                    self.spans.value(&format!("{path}.balance")),
                    format!(
                        "pool `{name}` balances connections ({why}): use round_robin, least_connections, random or ip_hash"
                    ),
                );
            }
            let http_keys = [
                ("sticky", p.sticky.is_some(), "a sticky cookie needs HTTP"),
                (
                    "protocol",
                    p.protocol == Some(raw::Protocol::H2),
                    "bytes are passed on as they are, in no HTTP version",
                ),
                (
                    "tls",
                    p.tls == Some(true),
                    "bytes are passed on as they are; TLS passes through end to end",
                ),
                (
                    "eject_on_5xx",
                    p.eject_on_5xx.is_some(),
                    "there are no HTTP statuses to count",
                ),
                (
                    "hash_key",
                    p.hash_key.is_some(),
                    "only ip_hash hashes connections",
                ),
            ];
            for (key, set, reason) in http_keys {
                if set {
                    self.error(
                        self.spans.key(&format!("{path}.{key}")),
                        format!("pool `{name}` cannot have `{key}` ({why}): {reason}"),
                    );
                }
            }
        }
    }

    /// CIDRs (`10.0.0.0/8`, `::1/128`) or single addresses.
    fn cidrs(&mut self, path: &str, raw: &[String]) -> Vec<ipnet::IpNet> {
        let mut out = Vec::new();
        for (i, c) in raw.iter().enumerate() {
            let net = c
                .parse::<ipnet::IpNet>()
                .or_else(|_| c.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match net {
                Ok(n) => out.push(n.trunc()),
                Err(_) => self.error(
                    self.spans.value(&format!("{path}.{i}")),
                    format!("`{c}` is not an address range, like 10.0.0.0/8 or 127.0.0.1"),
                ),
            }
        }
        out
    }

    fn pool(&mut self, name: &str, p: &raw::Pool) -> Pool {
        let path = format!("pools.{name}");
        if name == "none" {
            self.error(
                self.spans.key(&path),
                "`none` is what metrics call requests that reached no pool: name the pool otherwise",
            );
        }
        let balance = match p.balance.unwrap_or(raw::Balance::RoundRobin) {
            raw::Balance::RoundRobin => Balance::RoundRobin,
            raw::Balance::LeastConnections => Balance::LeastConnections,
            raw::Balance::Random => Balance::Random,
            raw::Balance::P2cEwma => Balance::P2cEwma,
            raw::Balance::IpHash => Balance::IpHash,
            raw::Balance::CookieHash => Balance::CookieHash,
            raw::Balance::HeaderHash => Balance::HeaderHash,
        };
        let hash_key = self.hash_key(&path, balance, p.hash_key.as_deref());
        let sticky = p.sticky.as_ref().map(|st| {
            self.cookie_name(&format!("{path}.sticky.cookie"), &st.cookie);
            Sticky {
                cookie: st.cookie.clone(),
                max_age: st.max_age.as_deref().map(|v| {
                    self.duration(&format!("{path}.sticky.max_age"), Some(v), Duration::ZERO)
                }),
                nocache: st.nocache.unwrap_or(true),
            }
        });
        let health_check = p
            .health_check
            .as_ref()
            .map(|h| self.health_check(&format!("{path}.health_check"), h));
        if p.eject_on_5xx == Some(0) {
            self.error(
                self.spans.value(&format!("{path}.eject_on_5xx")),
                "eject_on_5xx must be at least 1 (leave it out to never eject on 5xx)",
            );
        }
        let max_ejection_percent = p.max_ejection_percent.unwrap_or(50);
        if max_ejection_percent > 100 {
            self.error(
                self.spans.value(&format!("{path}.max_ejection_percent")),
                "max_ejection_percent is a percentage: 0 to 100",
            );
        }
        let tls = self.upstream_tls(&path, p);
        let t = p.timeouts.as_ref();
        let timeouts = Timeouts {
            connect: self.duration(
                &format!("{path}.timeouts.connect"),
                t.and_then(|t| t.connect.as_deref()),
                Duration::from_secs(2),
            ),
            response: self.duration(
                &format!("{path}.timeouts.response"),
                t.and_then(|t| t.response.as_deref()),
                Duration::from_secs(30),
            ),
            read: self.duration(
                &format!("{path}.timeouts.read"),
                t.and_then(|t| t.read.as_deref()),
                Duration::from_secs(60),
            ),
            write: self.duration(
                &format!("{path}.timeouts.write"),
                t.and_then(|t| t.write.as_deref()),
                Duration::from_secs(60),
            ),
            idle: self.duration(
                &format!("{path}.timeouts.idle"),
                t.and_then(|t| t.idle.as_deref()),
                Duration::from_secs(3600),
            ),
        };
        if timeouts.idle < Duration::from_millis(1) {
            self.error(
                self.spans.value(&format!("{path}.timeouts.idle")),
                "timeouts.idle must be at least 1ms",
            );
        }
        if p.backends.is_empty() {
            self.error(
                self.spans.key(&path),
                format!("pool `{name}` has no backends: add at least one under `backends:`"),
            );
        }
        let mut seen: HashMap<Addr, usize> = HashMap::new();
        let mut backends = Vec::new();
        for (i, b) in p.backends.iter().enumerate() {
            let bpath = format!("{path}.backends.{i}");
            let weight = b.weight.unwrap_or(1);
            if !(1..=crate::balance::MAX_WEIGHT).contains(&weight) {
                self.error(
                    self.spans.value(&format!("{bpath}.weight")),
                    format!(
                        "weight must be between 1 and {}",
                        crate::balance::MAX_WEIGHT
                    ),
                );
            }
            let Some(addr) = self.backend_addr(&format!("{bpath}.addr"), &b.addr) else {
                continue;
            };
            if let Some(prev) = seen.insert(addr.clone(), i) {
                self.error(
                    self.spans.value(&format!("{bpath}.addr")),
                    format!(
                        "backend {addr} is already listed on line {}",
                        self.spans.value(&format!("{path}.backends.{prev}")).line
                    ),
                );
            }
            backends.push(Backend {
                addr,
                weight,
                drain: b.drain.unwrap_or(false),
            });
        }
        let dns_refresh = self.duration(
            &format!("{path}.dns_refresh"),
            p.dns_refresh.as_deref(),
            Duration::from_secs(5),
        );
        if p.dns_refresh.is_some() && dns_refresh < MIN_DNS_REFRESH {
            self.error(
                self.spans.value(&format!("{path}.dns_refresh")),
                format!(
                    "dns_refresh must be at least {}",
                    humantime::format_duration(MIN_DNS_REFRESH)
                ),
            );
        }
        if p.proxy_protocol.is_some() && p.protocol == Some(raw::Protocol::H2) {
            self.error(
                self.spans.key(&format!("{path}.proxy_protocol")),
                "`proxy_protocol` cannot go with `protocol: h2`: a PROXY header names one client per connection, and one HTTP/2 connection carries every client's requests",
            );
        }
        Pool {
            name: name.into(),
            balance,
            hash_key,
            sticky,
            timeouts,
            retries: p.retries.unwrap_or(2),
            when_all_down: match p.when_all_down.unwrap_or(raw::WhenAllDown::FailOpen) {
                raw::WhenAllDown::FailOpen => WhenAllDown::FailOpen,
                raw::WhenAllDown::Reject => WhenAllDown::Reject,
            },
            health_check,
            eject_on_5xx: p.eject_on_5xx,
            max_ejection_percent: max_ejection_percent.min(100),
            protocol: match p.protocol.unwrap_or(raw::Protocol::Http1) {
                raw::Protocol::Http1 => Protocol::Http1,
                raw::Protocol::H2 => Protocol::H2,
            },
            tls,
            dns_refresh,
            proxy_protocol: p.proxy_protocol.map(proxy_version),
            backends,
        }
    }

    /// `health_check:`, with the SPEC's defaults.
    fn health_check(&mut self, path: &str, h: &raw::HealthCheck) -> HealthCheck {
        let kind = match h.kind.unwrap_or(raw::CheckKind::Http) {
            raw::CheckKind::Http => CheckKind::Http,
            raw::CheckKind::Tcp => CheckKind::Tcp,
        };
        if kind == CheckKind::Tcp {
            for (key, set) in [("path", h.path.is_some()), ("host", h.host.is_some())] {
                if set {
                    self.error(
                        self.spans.key(&format!("{path}.{key}")),
                        format!("`{key}` only goes with an http check; `kind: tcp` only connects"),
                    );
                }
            }
        }
        let check_path = h.path.clone().unwrap_or_else(|| "/healthz".into());
        if !check_path.starts_with('/') || !check_path.bytes().all(|b| b.is_ascii_graphic()) {
            self.error(
                self.spans.value(&format!("{path}.path")),
                "a health check path starts with `/` and has no spaces or control characters",
            );
        }
        if let Some(host) = &h.host
            && (host.is_empty() || HeaderValue::from_str(host).is_err() || host.contains(' '))
        {
            self.error(
                self.spans.value(&format!("{path}.host")),
                format!("`{host}` is not a valid Host header value"),
            );
        }
        let interval = self.duration(
            &format!("{path}.interval"),
            h.interval.as_deref(),
            Duration::from_secs(5),
        );
        let timeout = self.duration(
            &format!("{path}.timeout"),
            h.timeout.as_deref(),
            Duration::from_secs(1),
        );
        if timeout > interval {
            self.error(
                self.spans.value(&format!("{path}.timeout")),
                format!(
                    "the check timeout ({}) is longer than its interval ({}): checks would overlap",
                    humantime::format_duration(timeout),
                    humantime::format_duration(interval)
                ),
            );
        }
        let mut threshold = |key: &str, v: Option<u32>, default: u32| {
            let v = v.unwrap_or(default);
            if v == 0 {
                self.error(
                    self.spans.value(&format!("{path}.{key}")),
                    format!("{key} must be at least 1"),
                );
            }
            v.max(1)
        };
        let unhealthy_threshold = threshold("unhealthy_threshold", h.unhealthy_threshold, 3);
        let healthy_threshold = threshold("healthy_threshold", h.healthy_threshold, 2);
        HealthCheck {
            kind,
            path: check_path,
            host: h.host.clone(),
            interval,
            timeout,
            unhealthy_threshold,
            healthy_threshold,
        }
    }

    /// `hash_key`: required by, and only allowed with, `cookie_hash` and `header_hash`.
    fn hash_key(&mut self, path: &str, balance: Balance, key: Option<&str>) -> Option<String> {
        let needs = matches!(balance, Balance::CookieHash | Balance::HeaderHash);
        match key {
            None if needs => {
                self.error(
                    self.spans.value(&format!("{path}.balance")),
                    format!(
                        "`balance: {}` needs `hash_key:`, the {} to hash",
                        balance.as_str(),
                        if balance == Balance::CookieHash {
                            "cookie"
                        } else {
                            "header"
                        }
                    ),
                );
                None
            }
            None => None,
            Some(_) if !needs => {
                self.error(
                    self.spans.key(&format!("{path}.hash_key")),
                    "`hash_key` only goes with `balance: cookie_hash` or `balance: header_hash`",
                );
                None
            }
            Some(k) => {
                let kpath = format!("{path}.hash_key");
                if balance == Balance::CookieHash {
                    self.cookie_name(&kpath, k);
                    Some(k.to_string())
                } else if HeaderName::from_bytes(k.as_bytes()).is_err() {
                    self.error(
                        self.spans.value(&kpath),
                        format!("`{k}` is not a valid header name"),
                    );
                    None
                } else {
                    Some(k.to_ascii_lowercase())
                }
            }
        }
    }

    /// `tls: true`, with `ca:` and `sni:` that only make sense with it.
    fn upstream_tls(&mut self, path: &str, p: &raw::Pool) -> Option<UpstreamTls> {
        if p.tls != Some(true) {
            for (key, set) in [("ca", p.ca.is_some()), ("sni", p.sni.is_some())] {
                if set {
                    self.error(
                        self.spans.key(&format!("{path}.{key}")),
                        format!("`{key}` needs `tls: true` on the pool"),
                    );
                }
            }
            return None;
        }
        let ca = p.ca.as_ref().and_then(|ca| {
            let file = self.relative(ca);
            match crate::tls::certs::load_ca(&file) {
                Ok((pem, certs)) => Some(Arc::new(CaBundle {
                    path: file,
                    pem,
                    certs,
                })),
                Err(e) => {
                    self.error(self.spans.value(&format!("{path}.ca")), e);
                    None
                }
            }
        });
        if let Some(sni) = &p.sni
            && rustls::pki_types::ServerName::try_from(sni.as_str()).is_err()
        {
            self.error(
                self.spans.value(&format!("{path}.sni")),
                format!("`{sni}` is not a DNS name or IP address"),
            );
        }
        Some(UpstreamTls {
            ca,
            sni: p.sni.clone(),
        })
    }

    fn relative(&self, p: &str) -> PathBuf {
        super::relative_to(self.file, p)
    }

    /// Load and check a listener's certificates; errors point at the file at fault.
    fn certificates(&mut self, path: &str, t: &raw::ListenerTls) -> Option<Arc<Certs>> {
        if t.certificates.is_empty() {
            self.error(
                self.spans.key(path),
                "`tls:` needs at least one entry under `certificates:`",
            );
            return None;
        }
        let mut entries = Vec::new();
        for (i, c) in t.certificates.iter().enumerate() {
            match crate::tls::certs::load_pair(&self.relative(&c.cert), &self.relative(&c.key)) {
                Ok(e) => entries.push(e),
                Err(e) => {
                    let key = match e.which {
                        Which::Cert => "cert",
                        Which::Key => "key",
                    };
                    let pos = self.spans.value(&format!("{path}.certificates.{i}.{key}"));
                    self.error(pos, e.message);
                }
            }
        }
        (entries.len() == t.certificates.len()).then(|| Arc::new(Certs::new(entries)))
    }

    /// `host:port`: an IP address, or a DNS name looked up at run time (never here, so
    /// `check` does not need the names to resolve).
    fn backend_addr(&mut self, path: &str, value: &str) -> Option<Addr> {
        if let Ok(a) = value.parse() {
            return Some(Addr::Ip(a));
        }
        match value.rsplit_once(':') {
            Some((host, port)) if dns_name(host) => match port.parse::<u16>() {
                Ok(port) if port != 0 => Some(Addr::Name {
                    // A final dot stays: the name is absolute, no search domain is tried.
                    host: host.to_ascii_lowercase().into(),
                    port,
                }),
                _ => {
                    self.error(
                        self.spans.value(path),
                        format!("`{port}` in `{value}` is not a port (1 to 65535)"),
                    );
                    None
                }
            },
            _ => {
                self.error(
                    self.spans.value(path),
                    format!("`{value}` is not host:port, like 127.0.0.1:9001 or app.internal:80"),
                );
                None
            }
        }
    }

    /// `resolver:`: a DNS server's IP, with port 53 unless one is given.
    fn resolver(&mut self, value: &str) -> Option<SocketAddr> {
        if let Ok(a) = value.parse() {
            return Some(a);
        }
        if let Ok(ip) = value.parse::<std::net::IpAddr>() {
            return Some(SocketAddr::new(ip, 53));
        }
        self.error(
            self.spans.value("resolver"),
            format!("`{value}` is not a DNS server address, like 127.0.0.1:53 or 10.96.0.10"),
        );
        None
    }

    fn routes(&mut self, raw: &[raw::Route], pools: &[Pool]) -> Vec<Route> {
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut out: Vec<(usize, Route)> = Vec::new();
        for (i, r) in raw.iter().enumerate() {
            let path = format!("routes.{i}");
            let name = match &r.name {
                Some(n) if !n.is_empty() => {
                    if n == "none" {
                        self.error(
                            self.spans.value(&format!("{path}.name")),
                            "`none` is what metrics call requests that matched no route: name the route otherwise",
                        );
                    }
                    if let Some(prev) = names.insert(n, i) {
                        self.error(
                            self.spans.value(&format!("{path}.name")),
                            format!(
                                "route name `{n}` is already used on line {}",
                                self.spans.value(&format!("routes.{prev}")).line
                            ),
                        );
                    }
                    n.clone()
                }
                _ => {
                    self.error(self.spans.value(&path), "route needs a `name:`");
                    String::new()
                }
            };
            let to = match (&r.pool, &r.split) {
                (Some(p), None) => self
                    .pool_ref(
                        &format!("{path}.pool"),
                        &format!("route `{name}`"),
                        p,
                        pools,
                    )
                    .map(RouteTo::Pool),
                (None, Some(split)) => self.split(&format!("{path}.split"), &name, split, pools),
                (Some(_), Some(_)) => {
                    self.error(
                        self.spans.key(&format!("{path}.split")),
                        "a route has either `pool:` or `split:`, not both",
                    );
                    None
                }
                (None, None) => {
                    self.error(
                        self.spans.value(&path),
                        format!("route `{name}` needs a `pool:` or a `split:`"),
                    );
                    None
                }
            };
            let max_request_body_bytes = r.limits.as_ref().and_then(|l| {
                let lpath = format!("{path}.limits");
                if l.max_request_header_bytes.is_some()
                    || l.client_header_timeout.is_some()
                    || l.client_idle_timeout.is_some()
                    || l.client_body_timeout.is_some()
                    || l.client_send_timeout.is_some()
                    || l.max_connections.is_some()
                {
                    self.error(
                        self.spans.key(&lpath),
                        "a route's `limits:` can only set max_request_body_bytes",
                    );
                }
                if l.max_request_body_bytes == Some(0) {
                    self.error(
                        self.spans.value(&format!("{lpath}.max_request_body_bytes")),
                        "max_request_body_bytes must be more than zero",
                    );
                }
                l.max_request_body_bytes
            });
            let m = &r.matches;
            let mpath = format!("{path}.match");
            let host = self.host_match(&format!("{mpath}.host"), m.host.as_deref());
            let path_match = self.path_match(&mpath, m);
            let methods = self.methods(&format!("{mpath}.methods"), m.methods.as_deref());
            let headers = self.headers(&format!("{mpath}.headers"), &m.headers);
            let cookies = self.cookies(&format!("{mpath}.cookies"), &m.cookies);
            if let (Some(to), Some(host), Some(path_match)) = (to, host, path_match) {
                out.push((
                    i,
                    Route {
                        name: name.into(),
                        host,
                        path: path_match,
                        methods,
                        headers,
                        cookies,
                        to,
                        max_request_body_bytes,
                    },
                ));
            }
        }
        self.overlaps(&out);
        if let Err(e) = crate::router::Router::compile(out.iter().map(|(_, r)| r)) {
            let (i, other) = (out[e.route].0, out[e.other].1.name.clone());
            self.error(
                self.spans.value(&format!("routes.{i}.match.path")),
                format!("path conflicts with route `{other}`: {}", e.reason),
            );
        }
        out.into_iter().map(|(_, r)| r).collect()
    }

    /// The pool `p` named at `path` by route `route`, if it is defined.
    /// The index of pool `p`, which `who` (`route `x``) names at `path`.
    fn pool_ref(&mut self, path: &str, who: &str, p: &str, pools: &[Pool]) -> Option<usize> {
        let found = pools.iter().position(|x| &*x.name == p);
        if found.is_none() {
            let known: Vec<&str> = pools.iter().map(|p| &*p.name).collect();
            self.error(
                self.spans.value(path),
                format!(
                    "{who} names pool `{p}`, which is not defined (pools: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            );
        }
        found
    }

    /// A route's `split:`: a valid cookie name and at least two distinct defined pools,
    /// each with a weight above zero.
    fn split(
        &mut self,
        path: &str,
        route: &str,
        s: &raw::Split,
        pools: &[Pool],
    ) -> Option<RouteTo> {
        self.cookie_name(&format!("{path}.cookie"), &s.cookie);
        if s.pools.len() < 2 {
            self.error(
                self.spans.key(&format!("{path}.pools")),
                "a split needs at least two pools",
            );
        }
        let mut out: Vec<(usize, u32)> = Vec::new();
        let mut ok = s.pools.len() >= 2;
        for (i, sp) in s.pools.iter().enumerate() {
            let ppath = format!("{path}.pools.{i}");
            if sp.weight == 0 {
                self.error(
                    self.spans.value(&format!("{ppath}.weight")),
                    "a split weight must be more than zero",
                );
                ok = false;
            }
            match self.pool_ref(
                &format!("{ppath}.pool"),
                &format!("route `{route}`"),
                &sp.pool,
                pools,
            ) {
                Some(p) if out.iter().any(|&(q, _)| q == p) => {
                    self.error(
                        self.spans.value(&format!("{ppath}.pool")),
                        format!("pool `{}` is already in this split", sp.pool),
                    );
                    ok = false;
                }
                Some(p) if !sp.pool.bytes().all(cookie_octet) => {
                    self.error(
                        self.spans.value(&format!("{ppath}.pool")),
                        format!(
                            "pool `{}` cannot be a cookie's value (the split cookie names the pool): use letters, digits, `-`, `_` and `.`",
                            sp.pool
                        ),
                    );
                    ok = false;
                    let _ = p;
                }
                Some(p) => out.push((p, sp.weight)),
                None => ok = false,
            }
        }
        ok.then(|| {
            RouteTo::Split(Split {
                cookie: s.cookie.clone(),
                pools: out,
            })
        })
    }

    /// Identical matches are errors; a route whose every request an earlier one takes is a
    /// warning.
    fn overlaps(&mut self, routes: &[(usize, Route)]) {
        for (j, (jline, b)) in routes.iter().enumerate() {
            for (iline, a) in &routes[..j] {
                if a.host != b.host || a.path != b.path {
                    continue;
                }
                let pos = self.spans.value(&format!("routes.{jline}"));
                let same =
                    a.methods == b.methods && a.headers == b.headers && a.cookies == b.cookies;
                if same {
                    self.error(
                        pos,
                        format!(
                            "route `{}` has exactly the same match as route `{}` on line {}",
                            b.name,
                            a.name,
                            self.spans.value(&format!("routes.{iline}")).line
                        ),
                    );
                    break;
                } else if covers(a, b) {
                    self.warn(
                        pos,
                        format!(
                            "route `{}` can never match: route `{}` on line {} comes first and takes every request it would",
                            b.name,
                            a.name,
                            self.spans.value(&format!("routes.{iline}")).line
                        ),
                    );
                    break;
                }
            }
        }
    }

    fn host_match(&mut self, path: &str, host: Option<&str>) -> Option<HostMatch> {
        let Some(h) = host else {
            return Some(HostMatch::Any);
        };
        let lower = h.to_ascii_lowercase();
        let (wild, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let valid = !name.is_empty()
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !valid {
            let hint = if name.contains(':') {
                " (without a port)"
            } else {
                ""
            };
            self.error(
                self.spans.value(path),
                format!(
                    "`{h}` is not a host name{hint}: write `shop.example.com` or `*.example.com`"
                ),
            );
            return None;
        }
        Some(if wild {
            HostMatch::Wildcard(name.to_string())
        } else {
            HostMatch::Exact(name.to_string())
        })
    }

    fn path_match(&mut self, mpath: &str, m: &raw::Match) -> Option<PathMatch> {
        match (&m.prefix, &m.path) {
            (Some(_), Some(_)) => {
                self.error(
                    self.spans.key(&format!("{mpath}.path")),
                    "a route matches either a `prefix:` or a `path:`, not both",
                );
                None
            }
            (Some(p), None) => {
                let at = self.spans.value(&format!("{mpath}.prefix"));
                if !p.starts_with('/') {
                    self.error(at, format!("prefix `{p}` must start with /"));
                    return None;
                }
                if normalize(p).ok().as_deref() != Some(p.as_str()) {
                    self.error(
                        at,
                        format!("prefix `{p}` is not a normalized path (no `.`/`..` segments or %-encoded letters)"),
                    );
                    return None;
                }
                let trimmed = p.trim_end_matches('/');
                Some(PathMatch::Prefix(if trimmed.is_empty() {
                    "/".into()
                } else {
                    trimmed.into()
                }))
            }
            (None, Some(p)) => {
                let at = self.spans.value(&format!("{mpath}.path"));
                if !p.starts_with('/') {
                    self.error(at, format!("path `{p}` must start with /"));
                    return None;
                }
                match crate::router::pattern(p) {
                    Ok(p) => Some(PathMatch::Pattern(p)),
                    Err(e) => {
                        self.error(at, format!("path `{p}` is not a valid pattern: {e}"));
                        None
                    }
                }
            }
            (None, None) => Some(PathMatch::Prefix("/".into())),
        }
    }

    fn methods(&mut self, path: &str, methods: Option<&[String]>) -> Vec<Method> {
        let mut out = Vec::new();
        for (i, m) in methods.unwrap_or_default().iter().enumerate() {
            let upper = m.to_ascii_uppercase();
            if *m != upper {
                self.error(
                    self.spans.value(&format!("{path}.{i}")),
                    format!("methods are case-sensitive: write `{upper}`"),
                );
                continue;
            }
            match Method::from_bytes(m.as_bytes()) {
                Ok(m) if !out.contains(&m) => out.push(m),
                Ok(_) => {}
                Err(_) => self.error(
                    self.spans.value(&format!("{path}.{i}")),
                    format!("`{m}` is not an HTTP method"),
                ),
            }
        }
        out
    }

    fn headers(
        &mut self,
        path: &str,
        headers: &indexmap::IndexMap<String, String>,
    ) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::new();
        for (k, v) in headers {
            let at = self.spans.key(&format!("{path}.{k}"));
            match (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                (Ok(n), Ok(v)) => out.push((n, v)),
                (Err(_), _) => self.error(at, format!("`{k}` is not a valid header name")),
                (_, Err(_)) => self.error(
                    at,
                    format!("the value of header `{k}` is not a valid header value"),
                ),
            }
        }
        out
    }

    fn cookies(
        &mut self,
        path: &str,
        cookies: &indexmap::IndexMap<String, String>,
    ) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (k, v) in cookies {
            // RFC 6265 cookie-name is an RFC 7230 token, exactly what a header name allows.
            if k.is_empty() || HeaderName::from_bytes(k.as_bytes()).is_err() {
                self.error(
                    self.spans.key(&format!("{path}.{k}")),
                    format!("`{k}` is not a valid cookie name"),
                );
                continue;
            }
            out.push((k.clone(), v.clone()));
        }
        out
    }
}

/// The shortest `dns_refresh`: a lookup more often than this is a DNS server's load, not
/// freshness.
const MIN_DNS_REFRESH: Duration = Duration::from_millis(100);

/// A host name by RFC 1123: dot-separated labels of letters, digits, `-` and `_` (seen in
/// service names such as Consul's), none empty, longer than 63 or edged by `-`; an
/// optional final dot.
fn dns_name(host: &str) -> bool {
    let h = host.strip_suffix('.').unwrap_or(host);
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// RFC 6265 §4.1.1 `cookie-octet`: what a cookie value may hold unquoted.
fn cookie_octet(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E)
}

/// True when every request that `b`'s conditions accept is also accepted by `a`'s.
fn covers(a: &Route, b: &Route) -> bool {
    let methods = a.methods.is_empty()
        || (!b.methods.is_empty() && b.methods.iter().all(|m| a.methods.contains(m)));
    methods
        && a.headers.iter().all(|h| b.headers.contains(h))
        && a.cookies.iter().all(|c| b.cookies.contains(c))
}

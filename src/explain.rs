//! `switchyard explain`: what the proxy would do with one request, and why, from the
//! proxy's own [`decide`] on the config as `run` loads it. Nothing is sent anywhere.
//!
//! The request is built as an HTTP/1.1 client would send it for the URL (origin-form
//! target, `Host` from the URL's authority, the `-H` fields, the cookies in one `Cookie`
//! field) and arrives on the config's first plain listener for `http://`, its first TLS
//! listener for `https://` (with the URL's host as SNI, so the 421 guard applies).

use crate::config::{Config, HostMatch, PathMatch, RouteTo};
use crate::error::ProxyError;
use crate::proxy::choose::StickyResult;
use crate::proxy::decide::{self, Decision, Target};
use crate::proxy::{ConnInfo, TlsInfo};
use crate::router::{Failed, Trace};
use crate::snapshot::Snapshot;
use http::request::Parts;
use http::{HeaderName, HeaderValue, Method, Request, Uri};
use serde::Serialize;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// The request to explain.
pub struct Ask {
    pub method: Method,
    /// Absolute: `http://host/path?q` or `https://...`.
    pub url: String,
    /// As given: `Name: value`.
    pub headers: Vec<String>,
    pub cookies: Vec<String>,
    pub client: IpAddr,
}

/// What the proxy would do, in the shape `--json` prints.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Explanation {
    pub host: String,
    pub path: String,
    /// The status the proxy answers itself; `None` when it forwards.
    pub status: Option<u16>,
    /// Why it answers itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A redirect's target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    pub route: Option<String>,
    pub pool: Option<String>,
    pub balance: Option<String>,
    /// The route's split, when it has one.
    pub split: Option<SplitShown>,
    /// What the pool's sticky cookie decided: `hit`, `new`, `reassigned`, `invalid`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sticky: Option<String>,
    /// The backend, when the request alone decides it (a hash key, a sticky token).
    pub backend: Option<String>,
    pub listener: String,
    pub candidates: Vec<Candidate>,
}

/// A split: its cookie, its pools and weights, and the pool the cookie forces.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct SplitShown {
    pub cookie: String,
    pub pools: Vec<SplitPool>,
    /// `None`: drawn by weight.
    pub forced: Option<String>,
}

/// One pool of a split.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct SplitPool {
    pub pool: String,
    pub weight: u32,
}

/// A route whose path matched, in the order tried.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Candidate {
    pub route: String,
    pub matched: bool,
    pub reason: String,
}

/// Why a request cannot be explained at all (a usage error: exit 2).
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error("the URL must be absolute, http:// or https://: {0}")]
    Url(String),
    #[error("invalid header {0:?}: write it as 'Name: value'")]
    Header(String),
    #[error("invalid cookie {0:?}: write it as 'name=value'")]
    Cookie(String),
    #[error("the config has no {0} listener to take this URL")]
    NoListener(&'static str),
}

/// Explain `ask` against `config`, its backend names standing for `answers`.
pub fn explain(
    config: Config,
    ask: &Ask,
    answers: &crate::dns::Answers,
) -> Result<Explanation, AskError> {
    let uri: Uri = ask
        .url
        .parse()
        .map_err(|_| AskError::Url(ask.url.clone()))?;
    let https = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") => false,
        Some(s) if s.eq_ignore_ascii_case("https") => true,
        _ => return Err(AskError::Url(ask.url.clone())),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| AskError::Url(ask.url.clone()))?
        .to_string();
    let parts = request(ask, &uri, &authority)?;
    let snap = Snapshot::compile(config, None, answers);
    let listener = snap
        .config
        .listeners
        .iter()
        .find(|l| l.tls.is_some() == https)
        .ok_or(AskError::NoListener(if https { "TLS" } else { "plain" }))?;
    let host = decide::host_name(authority.as_bytes()).into_owned();
    let tls = listener.tls.clone().map(|certs| {
        let sni = String::from_utf8_lossy(&host).into_owned();
        TlsInfo {
            cert: certs.resolve(Some(&sni)),
            sni: Some(sni),
            certs,
        }
    });
    let conn = ConnInfo {
        listener: listener.name.clone(),
        redirect_https: listener.redirect_https,
        peer: SocketAddr::new(ask.client, 0),
        local: listener.bind,
        tls,
        clock: Arc::default(),
        client_ip: HeaderValue::from_str(&ask.client.to_string())
            .expect("an IP address is a valid header value"),
        forwarded: crate::proxy::Forwarded::of(ask.client, &listener.trusted_proxies),
        log: crate::access_log::AccessLog::start(crate::config::AccessLogFormat::Off),
        stats: Arc::default(),
    };
    let mut trace = Candidates {
        snap: &snap,
        parts: &parts,
        list: Vec::new(),
    };
    let decided = decide::decide(&snap, &conn, &parts, &mut trace);
    let mut e = Explanation {
        host: String::from_utf8_lossy(&host).into_owned(),
        path: shown_path(&parts),
        status: None,
        reason: None,
        location: None,
        route: None,
        pool: None,
        balance: None,
        split: None,
        sticky: None,
        backend: None,
        listener: listener.name.to_string(),
        candidates: std::mem::take(&mut trace.list),
    };
    match decided {
        Ok(Decision::Forward(d)) => {
            let c = d.choice;
            let pool = &snap.pools[c.pool];
            let route = &snap.config.routes[d.route];
            e.route = Some(route.name.to_string());
            if let RouteTo::Split(s) = &route.to {
                let by_cookie = c.split.is_some_and(|s| s.by_cookie);
                e.split = Some(SplitShown {
                    cookie: s.cookie.clone(),
                    pools: s
                        .pools
                        .iter()
                        .map(|&(p, weight)| SplitPool {
                            pool: snap.pools[p].name.to_string(),
                            weight,
                        })
                        .collect(),
                    forced: by_cookie.then(|| pool.name.to_string()),
                });
                if !by_cookie {
                    // Drawn by weight: no one pool is the answer.
                    return Ok(e);
                }
            }
            e.pool = Some(pool.name.to_string());
            e.balance = Some(pool.balance.as_str().to_string());
            e.sticky = c.sticky.map(|s| s.result.as_str().to_string());
            let hit = c.sticky.filter(|s| s.result == StickyResult::Hit);
            let decided = match hit {
                Some(_) => Some(c.backend),
                None => c.key.and_then(|k| pool.owner(k)),
            };
            e.backend = decided.map(|b| pool.backends[b].label.to_string());
        }
        Ok(Decision::Redirect(location)) => {
            e.status = Some(308);
            e.reason = Some("redirect_https".into());
            e.location = location.to_str().ok().map(str::to_string);
        }
        Err(err) => {
            e.status = Some(err.status().as_u16());
            e.reason = Some(reason(&err));
        }
    }
    Ok(e)
}

/// The request as a client would send it for `uri`; a `-H 'Host: ...'` replaces the URL's
/// authority as the Host field (the URL's host stays the TLS name: that is how a 421 is
/// asked about).
fn request(ask: &Ask, uri: &Uri, authority: &str) -> Result<Parts, AskError> {
    let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut req = Request::builder().method(ask.method.clone()).uri(target);
    let own_host = ask.headers.iter().any(|h| {
        h.split_once(':')
            .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("host"))
    });
    if !own_host {
        req = req.header(http::header::HOST, authority);
    }
    for raw in &ask.headers {
        let (k, v) = raw
            .split_once(':')
            .ok_or_else(|| AskError::Header(raw.clone()))?;
        let name = HeaderName::try_from(k.trim()).map_err(|_| AskError::Header(raw.clone()))?;
        let value = HeaderValue::try_from(v.trim()).map_err(|_| AskError::Header(raw.clone()))?;
        req = req.header(name, value);
    }
    for c in &ask.cookies {
        if !c.contains('=') {
            return Err(AskError::Cookie(c.clone()));
        }
    }
    if !ask.cookies.is_empty() {
        let cookie = HeaderValue::try_from(ask.cookies.join("; "))
            .map_err(|_| AskError::Cookie(ask.cookies.join("; ")))?;
        req = req.header(http::header::COOKIE, cookie);
    }
    let (parts, ()) = req
        .body(())
        .map_err(|_| AskError::Url(ask.url.clone()))?
        .into_parts();
    Ok(parts)
}

/// The path as the proxy routes it (normalized), or as sent when it does not normalize.
fn shown_path(parts: &Parts) -> String {
    let raw = parts.uri.path();
    match Target::parse(raw)
        .ok()
        .map(|t| crate::router::path::normalize(t.path))
    {
        Some(Ok(p)) => p.into_owned(),
        _ => raw.to_string(),
    }
}

fn reason(e: &ProxyError) -> String {
    match e {
        ProxyError::NoRoute => "no route takes the request".into(),
        ProxyError::Misdirected => "the connection's certificate does not cover this host".into(),
        other => other.to_string(),
    }
}

/// Collects the router's candidates with the reasons the explanation shows.
struct Candidates<'a> {
    snap: &'a Snapshot,
    parts: &'a Parts,
    list: Vec<Candidate>,
}

impl Trace for Candidates<'_> {
    fn candidate(&mut self, route: usize, verdict: Result<(), Failed>) {
        let r = &self.snap.config.routes[route];
        let host = match &r.host {
            HostMatch::Any => String::new(),
            HostMatch::Exact(h) => format!("host {h}, "),
            HostMatch::Wildcard(h) => format!("host *.{h}, "),
        };
        let path = match &r.path {
            PathMatch::Prefix(p) => format!("prefix {p}"),
            PathMatch::Pattern(p) => format!("path {p}"),
        };
        let reason = match verdict {
            Ok(()) => format!("{host}{path}"),
            Err(Failed::Method) => {
                let want: Vec<&str> = r.methods.iter().map(Method::as_str).collect();
                format!(
                    "{host}{path}, but method {} is not {}",
                    self.parts.method,
                    want.join(" or ")
                )
            }
            Err(Failed::Header(i)) => {
                let (n, v) = &r.headers[i];
                format!(
                    "{host}{path}, but header {n} is not {:?}",
                    v.to_str().unwrap_or("?")
                )
            }
            Err(Failed::Cookie(i)) => {
                let (n, v) = &r.cookies[i];
                format!("{host}{path}, but cookie {n} is not {v:?}")
            }
        };
        self.list.push(Candidate {
            route: r.name.to_string(),
            matched: verdict.is_ok(),
            reason,
        });
    }
}

/// The text `explain` prints without `--json`.
pub fn text(e: &Explanation) -> String {
    let mut s = format!(
        "listener:   {}\nhost:       {}\npath:       {}\n",
        e.listener, e.host, e.path
    );
    if e.candidates.is_empty() {
        s += "candidates: none (no route's host and path match)\n";
    } else {
        s += "candidates, in the order tried:\n";
        for c in &e.candidates {
            let verdict = if c.matched { "taken " } else { "passed" };
            s += &format!("  {verdict} {:<16} {}\n", c.route, c.reason);
        }
    }
    match (e.status, &e.route) {
        (Some(status), _) => {
            s += &format!("answer:     {status}");
            if let Some(r) = &e.reason {
                s += &format!(" ({r})");
            }
            if let Some(l) = &e.location {
                s += &format!(" -> {l}");
            }
            s += "\n";
        }
        (None, Some(route)) => {
            s += &format!("route:      {route}\n");
            if let Some(split) = &e.split {
                let pools: Vec<String> = split
                    .pools
                    .iter()
                    .map(|p| format!("{} {}", p.pool, p.weight))
                    .collect();
                s += &format!(
                    "split:      cookie {}, {}; {}\n",
                    split.cookie,
                    pools.join(" / "),
                    match &split.forced {
                        Some(p) => format!("the cookie forces {p}"),
                        None => "drawn by weight".to_string(),
                    }
                );
                if e.pool.is_none() {
                    return s;
                }
            }
            s += &format!("pool:       {}\n", e.pool.as_deref().unwrap_or("-"));
            s += &format!("balance:    {}\n", e.balance.as_deref().unwrap_or("-"));
            if let Some(st) = &e.sticky {
                s += &format!("sticky:     {st}\n");
            }
            s += &format!(
                "backend:    {}\n",
                e.backend
                    .as_deref()
                    .unwrap_or("chosen by the balancer at request time")
            );
        }
        (None, None) => {}
    }
    s
}

//! The hot path: one request in, one response out.
//!
//! [`Proxy::handle`] never fails: it runs [`Proxy::try_handle`], turns an error into its
//! response in one place, logs it once, and attaches the access log entry. `try_handle` is
//! a list of named steps: read the target (400s), route (404), check the body limit (413),
//! rewrite headers, `forward` (the only step that touches the network, with retries), and
//! `finish` the response. Per request it loads the snapshot once and allocates little: the
//! router, balancer and header edits work on borrowed data and atomics.

pub mod fast;
pub mod headers;
pub mod upgrade;

use crate::access_log::{self, AccessLog};
use crate::body::{Body, RequestBody, TooLarge};
use crate::clock::ConnClock;
use crate::error::{ProxyError, UpstreamError};
use crate::health;
use crate::pool::{InFlight, Pick, Pool, Tried};
use crate::router::path::{self, PathError};
use crate::snapshot::{Shared, Snapshot};
use crate::tls::Certs;
use crate::upstream::{self, Recv, Sender};
use http::header::{CONTENT_LENGTH, HOST, LOCATION, TRANSFER_ENCODING};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

/// The request handler shared by every connection.
pub struct Proxy {
    shared: Arc<Shared>,
    log: AccessLog,
}

/// What a request needs to know about the connection it came on.
pub struct ConnInfo {
    pub listener: Arc<str>,
    pub redirect_https: Option<u16>,
    pub peer: SocketAddr,
    pub tls: Option<TlsInfo>,
    pub clock: Arc<ConnClock>,
    /// The peer's IP, ready for `X-Forwarded-For`.
    pub client_ip: HeaderValue,
}

/// What a TLS connection negotiated.
pub struct TlsInfo {
    /// The SNI name the client sent, lower case.
    pub sni: Option<String>,
    /// The listener's certificates and the one this connection presented.
    pub certs: Arc<Certs>,
    pub cert: usize,
}

impl TlsInfo {
    /// Whether a request for `host` may use this connection: a connection opened for one
    /// name must not carry another name its certificate does not cover (HTTP/2 clients
    /// coalesce connections; RFC 9110 §15.5.20).
    fn allows(&self, host: &str) -> bool {
        match &self.sni {
            None => true,
            Some(sni) => sni == host || self.certs.covers(self.cert, host),
        }
    }
}

/// Names picked up along the way, for the log line and error context.
#[derive(Default)]
struct Ctx {
    route: Option<Arc<str>>,
    pool: Option<Arc<str>>,
    backend: Option<Arc<str>>,
}

/// A response received from a backend, and what must go back with its body.
struct Forwarded {
    resp: Response<Recv>,
    sender: Sender,
    in_flight: InFlight,
}

impl Proxy {
    /// A handler reading snapshots from `shared`.
    pub fn new(shared: Arc<Shared>, log: AccessLog) -> Proxy {
        Proxy { shared, log }
    }

    /// Answer one request; errors become their responses here.
    pub async fn handle(&self, req: Request<Incoming>, conn: &ConnInfo) -> Response<Body> {
        let (parts, body) = req.into_parts();
        self.handle_parts(parts, Some(body), conn).await
    }

    /// [`Proxy::handle`] for a request taken apart, `body` `None` when it has none.
    pub async fn handle_parts(
        &self,
        parts: Parts,
        body: Option<Incoming>,
        conn: &ConnInfo,
    ) -> Response<Body> {
        let snap = self.shared.load();
        let request_id = headers::request_id(&parts.headers);
        let entry = self.log.enabled().then(|| {
            let host = Target::raw_host(&parts).unwrap_or_default().to_string();
            self.log
                .entry(conn.listener.clone(), conn.peer, &parts, host)
        });
        let mut ctx = Ctx::default();
        let resp = match self
            .try_handle(&snap, parts, body, conn, &request_id, &mut ctx)
            .await
        {
            Ok(resp) => resp,
            Err(e) => {
                log_error(&e, &ctx, conn, &request_id);
                e.into_response()
            }
        };
        stamp(resp, request_id, entry, ctx)
    }

    async fn try_handle(
        &self,
        snap: &Snapshot,
        mut parts: Parts,
        body: Option<Incoming>,
        conn: &ConnInfo,
        request_id: &HeaderValue,
        ctx: &mut Ctx,
    ) -> Result<Response<Body>, ProxyError> {
        if parts.headers.contains_key(TRANSFER_ENCODING) && conn.clock.head_had_content_length() {
            return Err(ProxyError::AmbiguousLength);
        }
        if parts.method == Method::CONNECT {
            return Err(ProxyError::MethodNotSupported);
        }
        let target = Target::from_request(&parts)?;
        if let Some(tls) = &conn.tls
            && !tls.allows(&target.host)
        {
            return Err(ProxyError::Misdirected);
        }
        if let Some(port) = conn.redirect_https {
            return redirect(&target, &parts.uri, port);
        }
        let ri = snap
            .router
            .find(&target.host, &target.path, &parts)
            .ok_or(ProxyError::NoRoute)?;
        let route = &snap.config.routes[ri];
        let pool = &snap.pools[route.pool];
        ctx.route = Some(route.name.clone());
        ctx.pool = Some(pool.name.clone());

        let limit = route
            .max_request_body_bytes
            .unwrap_or(snap.config.limits.max_request_body_bytes);
        if content_length(&parts.headers).is_some_and(|n| n > limit) {
            return Err(TooLarge { limit }.into());
        }
        let uri = target.upstream_uri(&parts.uri);
        let host = target.upstream_host(&parts);
        if let Some(uri) = uri {
            parts.uri = uri;
        }
        let hop = headers::to_backend(&mut parts.headers, conn, host, request_id);
        parts.version = Version::HTTP_11;
        let mut req = Request::from_parts(parts, RequestBody::limited(body, limit));
        let client_upgrade = hop.upgrade.is_some().then(|| hyper::upgrade::on(&mut req));

        let fwd = self
            .forward(pool, req, client_upgrade.is_some(), ctx)
            .await?;
        finish(fwd, client_upgrade, ctx)
    }

    /// Send `req` to a backend of `pool`, moving on to the next backend while the request
    /// was not delivered, up to the pool's `retries`.
    async fn forward(
        &self,
        pool: &Pool,
        mut req: Request<RequestBody>,
        upgrade: bool,
        ctx: &mut Ctx,
    ) -> Result<Forwarded, ProxyError> {
        let bodiless = req.body().is_end_stream();
        let inline = bodiless && !upgrade && pool.connector.takes_inline();
        // A bodiless GET/HEAD/OPTIONS can be rebuilt if it dies on the wire; anything else
        // is only retried while it comes back unsent. The inline client always hands a
        // request back, so only hyper's needs a copy kept aside.
        let resendable =
            pool.retries > 0 && pool.backends.len() > 1 && is_idempotent(req.method()) && bodiless;
        let replay = (resendable && !inline).then(|| Replay::of(&req));
        let mut attempts = Attempts::new(pool);
        loop {
            let (i, mut conn, in_flight) = attempts.connect(inline, ctx).await?;
            let backend = &pool.backends[i];
            if conn.sender.is_h2() {
                h2_target(&mut req, pool.connector.tls.is_some(), &backend.label);
            }
            let sent = tokio::time::timeout(pool.timeouts.response, conn.sender.send(req)).await;
            let failed = match sent {
                Ok(Ok(resp)) => {
                    return Ok(Forwarded {
                        resp,
                        sender: conn.sender,
                        in_flight,
                    });
                }
                Err(_elapsed) => {
                    return Err(ProxyError::UpstreamTimeout {
                        backend: backend.label.clone(),
                        timeout: pool.timeouts.response,
                    });
                }
                Ok(Err(f)) => f,
            };
            if let UpstreamError::Hyper(e) = &failed.error
                && let Some(limit) = too_large(e)
            {
                return Err(TooLarge { limit }.into());
            }
            let stale = conn.reused
                && failed.request.as_ref().is_some_and(|r| {
                    is_stale(failed.sent, is_idempotent(r.method()), &failed.error)
                });
            req = match (failed.request, &replay) {
                (Some(r), _) if !failed.sent || resendable || stale => r,
                (None, Some(replay)) => replay.request(),
                _ => {
                    return Err(ProxyError::UpstreamProtocol {
                        backend: backend.label.clone(),
                        source: failed.error,
                    });
                }
            };
            if !stale {
                attempts.failed(i, failed.error)?;
            }
        }
    }
}

/// The backends one request tries, and the failures that count against `retries`.
struct Attempts<'p> {
    pool: &'p Pool,
    tried: Tried,
    failures: u32,
    last: Option<ProxyError>,
}

impl<'p> Attempts<'p> {
    fn new(pool: &'p Pool) -> Attempts<'p> {
        Attempts {
            pool,
            tried: Tried::default(),
            failures: 0,
            last: None,
        }
    }

    /// A connection to the next backend to try, with its index and in-flight count;
    /// backends that cannot be connected to are skipped while retries last.
    async fn connect(
        &mut self,
        inline: bool,
        ctx: &mut Ctx,
    ) -> Result<(usize, upstream::Conn, InFlight), ProxyError> {
        let pool = self.pool;
        loop {
            let i = match pool.pick(&self.tried) {
                Pick::Healthy(i) => i,
                // TODO(#metrics): count in switchyard_pool_fail_open_total.
                Pick::FailOpen(i) => i,
                Pick::AllDown => {
                    return Err(ProxyError::NoHealthyBackend {
                        pool: pool.name.clone(),
                    });
                }
                Pick::Exhausted => {
                    return Err(self
                        .last
                        .take()
                        .unwrap_or_else(|| ProxyError::NoHealthyBackend {
                            pool: pool.name.clone(),
                        }));
                }
            };
            let backend = &pool.backends[i];
            ctx.backend = Some(backend.label.clone());
            let in_flight = backend.state.start_request();
            let state = &backend.state;
            match state
                .endpoint
                .checkout(backend.addr, &backend.server_name, &pool.connector, inline)
                .await
            {
                Ok(conn) => {
                    if !conn.reused {
                        state.passive.connected();
                    }
                    return Ok((i, conn, in_flight));
                }
                Err(source) => {
                    if let Some(d) = state.passive.connect_failed(crate::clock::now_ms()) {
                        tracing::warn!(pool = %pool.name, backend = %backend.label, ejected_for = ?d,
                            "backend ejected after {} connect failures in a row", health::EJECT_AFTER);
                    }
                    tracing::debug!(backend = %backend.label, error = %source, "connect failed");
                    self.count(
                        i,
                        ProxyError::Connect {
                            backend: backend.label.clone(),
                            source,
                        },
                    )?;
                }
            }
        }
    }

    /// Backend `i` failed the exchange before a response: `Ok` to try the next one.
    fn failed(&mut self, i: usize, error: UpstreamError) -> Result<(), ProxyError> {
        let backend = self.pool.backends[i].label.clone();
        tracing::debug!(%backend, %error, "exchange failed before a response");
        self.count(
            i,
            ProxyError::UpstreamProtocol {
                backend,
                source: error,
            },
        )
    }

    fn count(&mut self, i: usize, e: ProxyError) -> Result<(), ProxyError> {
        self.tried.add(i);
        self.failures += 1;
        if self.failures > self.pool.retries {
            return Err(e);
        }
        self.last = Some(e);
        Ok(())
    }
}

/// Whether a failure on a kept-alive connection only found the backend's close of it: not
/// the backend's fault, and not counted. Like nginx, an idempotent request that met only
/// the close goes again, even to the same backend.
fn is_stale(sent: bool, idempotent: bool, error: &UpstreamError) -> bool {
    !sent || (idempotent && matches!(error, UpstreamError::Closed))
}

/// Turn the backend's response into the client's.
fn finish(
    fwd: Forwarded,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    ctx: &Ctx,
) -> Result<Response<Body>, ProxyError> {
    let (mut parts, recv) = fwd.resp.into_parts();
    let switching = parts.status == StatusCode::SWITCHING_PROTOCOLS;
    headers::to_client(&mut parts.headers, switching);
    if switching {
        let backend = ctx.backend.clone().unwrap_or_else(|| "-".into());
        let (Some(client), Some(upstream)) = (
            client_upgrade,
            parts.extensions.remove::<hyper::upgrade::OnUpgrade>(),
        ) else {
            return Err(ProxyError::UpstreamUpgrade { backend });
        };
        tokio::spawn(upgrade::tunnel(client, upstream, backend));
        return Ok(Response::from_parts(parts, Body::empty()));
    }
    let body = upstream::Body::new(recv, fwd.sender, fwd.in_flight);
    Ok(Response::from_parts(parts, Body::upstream(body)))
}

/// Host and path of a request, normalized for routing.
struct Target<'a> {
    /// Lower case, without port.
    host: Cow<'a, str>,
    path: Cow<'a, str>,
}

impl<'a> Target<'a> {
    fn from_request(parts: &'a Parts) -> Result<Target<'a>, ProxyError> {
        let raw = Self::raw_host(parts)?;
        let path = path::normalize(parts.uri.path()).map_err(|e| {
            ProxyError::BadRequest(match e {
                PathError::NotAbsolute => "request target is not an absolute path",
                PathError::AboveRoot => "path climbs above the root",
                PathError::BadEscape => "malformed percent-encoding in path",
            })
        })?;
        Ok(Target {
            host: host_name(raw),
            path,
        })
    }

    /// The authority of an absolute-form target (and of every HTTP/2 request), else the
    /// one Host header; empty for an HTTP/1.0 request without one.
    fn raw_host(parts: &'a Parts) -> Result<&'a str, ProxyError> {
        match (parts.uri.scheme(), parts.uri.authority()) {
            (Some(_), Some(a)) => return Ok(a.as_str()),
            (None, Some(_)) => {
                return Err(ProxyError::BadRequest(
                    "authority-form target without CONNECT",
                ));
            }
            _ => {}
        }
        let mut hosts = parts.headers.get_all(HOST).iter();
        match (hosts.next(), hosts.next()) {
            (Some(h), None) => h
                .to_str()
                .map_err(|_| ProxyError::BadRequest("invalid Host header")),
            (Some(_), Some(_)) => Err(ProxyError::BadRequest("more than one Host header")),
            (None, _) if parts.version == Version::HTTP_11 => {
                Err(ProxyError::BadRequest("missing Host header"))
            }
            (None, _) => Ok(""),
        }
    }

    /// The origin-form target for the backend, when it differs from the client's.
    fn upstream_uri(&self, uri: &Uri) -> Option<Uri> {
        if uri.scheme().is_none() && matches!(self.path, Cow::Borrowed(_)) {
            return None;
        }
        let pq = match uri.query() {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.to_string(),
        };
        Some(Uri::try_from(pq).expect("a normalized path is a valid origin-form target"))
    }

    /// The `Host` to send when the client's target carried the authority.
    fn upstream_host(&self, parts: &Parts) -> Option<HeaderValue> {
        let a = parts.uri.authority()?;
        HeaderValue::from_str(a.as_str()).ok()
    }
}

/// Lower-case `raw` and drop its port (`[::1]:80` -> `[::1]`).
fn host_name(raw: &str) -> Cow<'_, str> {
    let b = raw.as_bytes();
    let end = if b.first() == Some(&b'[') {
        b.iter().position(|&c| c == b']').map_or(b.len(), |i| i + 1)
    } else {
        let digits = b.iter().rev().take_while(|c| c.is_ascii_digit()).count();
        match b.len() - digits {
            colon @ 1.. if b[colon - 1] == b':' => colon - 1,
            _ => b.len(),
        }
    };
    let name = &raw[..end];
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

/// `redirect_https`: 308 to the same host and target on the HTTPS port.
fn redirect(target: &Target<'_>, uri: &Uri, port: u16) -> Result<Response<Body>, ProxyError> {
    if target.host.is_empty() {
        return Err(ProxyError::BadRequest("missing Host header"));
    }
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    let location = if port == 443 {
        format!("https://{}{pq}", target.host)
    } else {
        format!("https://{}:{port}{pq}", target.host)
    };
    let location = HeaderValue::try_from(location)
        .map_err(|_| ProxyError::BadRequest("target cannot be redirected"))?;
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    resp.headers_mut().insert(LOCATION, location);
    Ok(resp)
}

/// HTTP/2 carries the target as `:scheme` and `:authority`: make the target absolute, with
/// the Host header (or the backend's address) as its authority.
fn h2_target(req: &mut Request<RequestBody>, tls: bool, backend: &str) {
    if req.uri().scheme().is_some() {
        return;
    }
    let authority = req
        .headers_mut()
        .remove(HOST)
        .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok())
        .or_else(|| http::uri::Authority::try_from(backend).ok());
    let mut parts = req.uri().clone().into_parts();
    parts.scheme = Some(if tls {
        http::uri::Scheme::HTTPS
    } else {
        http::uri::Scheme::HTTP
    });
    parts.authority = authority;
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

fn is_idempotent(m: &Method) -> bool {
    *m == Method::GET || *m == Method::HEAD || *m == Method::OPTIONS
}

/// The limit of a [`TooLarge`] somewhere in `e`'s sources.
fn too_large(e: &hyper::Error) -> Option<u64> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(t) = s.downcast_ref::<TooLarge>() {
            return Some(t.limit);
        }
        source = s.source();
    }
    None
}

/// What it takes to send a bodiless request again.
struct Replay {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Replay {
    fn of(req: &Request<RequestBody>) -> Replay {
        Replay {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: req.headers().clone(),
        }
    }

    fn request(&self) -> Request<RequestBody> {
        let mut r = Request::new(RequestBody::empty());
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.headers_mut() = self.headers.clone();
        r
    }
}

/// Give the client's response its request id, and the access log entry its outcome.
fn stamp(
    mut resp: Response<Body>,
    request_id: HeaderValue,
    entry: Option<Box<access_log::Entry>>,
    ctx: Ctx,
) -> Response<Body> {
    resp.headers_mut()
        .insert(headers::X_REQUEST_ID.clone(), request_id.clone());
    if let Some(mut e) = entry {
        e.status = resp.status().as_u16();
        e.route = ctx.route;
        e.pool = ctx.pool;
        e.backend = ctx.backend;
        e.request_id = Some(request_id);
        resp.body_mut().set_log(e);
    }
    resp
}

/// Log a failed request once: server-side failures as warnings, client errors at debug.
fn log_error(e: &ProxyError, ctx: &Ctx, conn: &ConnInfo, request_id: &HeaderValue) {
    let mut chain = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        source = s.source();
    }
    let id = request_id.to_str().unwrap_or("-");
    let route = ctx.route.as_deref().unwrap_or("-");
    let backend = ctx.backend.as_deref().unwrap_or("-");
    if e.status().is_server_error() {
        tracing::warn!(request_id = id, client = %conn.peer, route, backend, kind = e.kind(), "{chain}");
    } else {
        tracing::debug!(request_id = id, client = %conn.peer, route, kind = e.kind(), "{chain}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_lose_port_and_case() {
        assert_eq!(host_name("Shop.Example.com:8080"), "shop.example.com");
        assert_eq!(host_name("[::1]:8080"), "[::1]");
        assert_eq!(host_name("a.test"), "a.test");
        assert_eq!(host_name("a.test:"), "a.test");
        assert_eq!(host_name("1234"), "1234");
        assert_eq!(host_name("a:b:80"), "a:b");
    }
}

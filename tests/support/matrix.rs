//! The shape matrix: one logical request sent over each internal path of the proxy.
//!
//! The proxy reaches the same pipeline over different internal paths (see DEVELOPERS.md:
//! the lane's bodiless and body-carrying requests, HTTP/1.0, hyper's HTTP/2 server), and
//! upstream over different clients (its own HTTP/1.1 client, plain or TLS; hyper's h2).
//! A behaviour only counts when it holds on every one, so a test here is written once,
//! for a [`Shape`], and run over [`Shape::ALL`] by [`every_shape`]:
//!
//! ```ignore
//! every_shape(|shape| async move {
//!     let m = Matrix::start(shape, Spec::new(vec![Kind::Echo("a")]).log()).await;
//!     let got = m.send(&Req::post("/app/x?q=1", b"hello".to_vec())).await;
//!     assert_eq!(got.status, 200);
//!     let line = m.next_log().await;
//! })
//! .await;
//! ```
//!
//! Every [`Matrix`] is a proxy of its own with two listeners, `web` (plain) and `websecure`
//! (TLS, a certificate for [`HOST`] and 127.0.0.1 from a fresh test CA), one pool
//! [`POOL`] holding the spec's backends in order (and any other pools the spec adds, their
//! backends reached the same way), and one route [`ROUTE`] for the prefix [`PREFIX`] to
//! that pool (or to what [`Spec::route_to`] says, e.g. a split): any other path is a route
//! miss (404).

use super::tls::{Ca, connect};
use super::{
    Backend, Got, Handler, Proxy, RawConn, TestBody, close_delimited, echo_response, eventually,
    full, h2_over, parse_response, refusing_addr,
};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use hyper::body::Incoming;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchyard::access_log::AccessLog;
use switchyard::server::Server;
use tokio::sync::oneshot;

/// The Host every request carries (and the TLS client's SNI).
pub const HOST: &str = "matrix.test";
/// The one route's name.
pub const ROUTE: &str = "main";
/// The one pool's name.
pub const POOL: &str = "upstream";
/// The one route's prefix: paths outside it miss (404).
pub const PREFIX: &str = "/app";
/// The plain listener's name.
pub const PLAIN: &str = "web";
/// The TLS listener's name.
pub const SECURE: &str = "websecure";
/// The name on a [`Shape::TlsPool`] backend's certificate, sent as SNI by the proxy.
pub const BACKEND_SNI: &str = "backend.internal";
/// The body the body shapes send for a request that has none, so they keep their path.
pub const DEFAULT_BODY: &[u8] = b"matrix-body";
/// The longest any one exchange (connect, handshake, request, response) may take.
pub const LIMIT: Duration = Duration::from_secs(10);
/// The longest one shape's run in [`every_shape`] may take.
pub const SHAPE_LIMIT: Duration = Duration::from_secs(60);

/// A request shape: which internal path of the proxy a request takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// HTTP/1.1 without a body on the plain listener to a plain HTTP/1.1 pool: the fast
    /// path (`server::lane` -> `Proxy::fast` -> `upstream::h1`); route misses and bad
    /// targets fall to the lane's general path.
    Get,
    /// HTTP/1.1 with a body and `Content-Length` (POST unless the request names a method;
    /// [`DEFAULT_BODY`] when it has none): handed to hyper (`Proxy::handle`), hyper's client
    /// upstream.
    PostLength,
    /// HTTP/1.1 with a body sent `Transfer-Encoding: chunked`, in two chunks (as for
    /// `PostLength`, [`DEFAULT_BODY`] when the request has none): hyper, with a streamed body
    /// of unknown length.
    PostChunked,
    /// HTTP/1.0, written as raw bytes (`Content-Length` when there is a body), read until
    /// the proxy closes: hyper, with a 1.0 client's connection rules.
    Http10,
    /// HTTP/2 by ALPN on the TLS listener: hyper's h2 server, `X-Forwarded-Proto: https`.
    H2Tls,
    /// HTTP/1.1 (GET, or POST with `Content-Length`) to a pool whose backend is reached over
    /// TLS (`tls: true, ca, sni`), HTTP/1.1 to it: the lane's general path (bodiless) or
    /// hyper, then hyper's client over rustls.
    TlsPool,
    /// HTTP/1.1 (GET, or POST with `Content-Length`) to a `protocol: h2` pool (h2c to the
    /// backend): the lane's general path or hyper, then the multiplexed h2 client.
    H2Pool,
}

impl Shape {
    /// Every shape, in the order [`every_shape`] runs them.
    pub const ALL: [Shape; 7] = [
        Shape::Get,
        Shape::PostLength,
        Shape::PostChunked,
        Shape::Http10,
        Shape::H2Tls,
        Shape::TlsPool,
        Shape::H2Pool,
    ];

    /// A short name for failure reports.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Get => "HTTP/1.1 GET",
            Shape::PostLength => "HTTP/1.1 POST Content-Length",
            Shape::PostChunked => "HTTP/1.1 POST chunked",
            Shape::Http10 => "HTTP/1.0",
            Shape::H2Tls => "HTTP/2 over TLS",
            Shape::TlsPool => "TLS pool (HTTP/1.1 upstream)",
            Shape::H2Pool => "h2c pool",
        }
    }

    /// The listener the shape's client talks to ([`PLAIN`] or [`SECURE`]).
    pub fn listener(self) -> &'static str {
        match self {
            Shape::H2Tls => SECURE,
            _ => PLAIN,
        }
    }

    /// The `X-Forwarded-Proto` the backend should see.
    pub fn proto(self) -> &'static str {
        match self {
            Shape::H2Tls => "https",
            _ => "http",
        }
    }

    /// The HTTP version the backend should receive.
    pub fn upstream_version(self) -> http::Version {
        match self {
            Shape::H2Pool => http::Version::HTTP_2,
            _ => http::Version::HTTP_11,
        }
    }
}

/// What one backend of the pool is.
pub enum Kind {
    /// The shipped echo handler (`x-backend: NAME`, a JSON body describing the request).
    Echo(&'static str),
    /// An address where nothing listens (connections are refused).
    Refusing,
    /// A backend answering with this handler (see [`Kind::serve`]).
    Serve(Handler),
}

impl Kind {
    /// A backend answering with `f`, as for [`Backend::serve`].
    pub fn serve<F>(f: F) -> Kind
    where
        F: Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<TestBody>> + Send>>
            + Send
            + Sync
            + 'static,
    {
        Kind::Serve(Arc::new(f))
    }
}

/// What a [`Matrix`] starts besides the proxy.
pub struct Spec {
    /// The pool's backends, in pool order. Each is served the way the shape's pool needs
    /// (plain HTTP/1 or h2c by hyper's auto builder, or TLS for [`Shape::TlsPool`]).
    pub backends: Vec<Kind>,
    /// Extra keys of the pool, one per line, e.g. `retries: 0\ntimeouts: {response: 300ms}`.
    pub pool_yaml: String,
    /// Extra top-level lines, e.g. `limits: {max_request_body_bytes: 10}`. If it sets
    /// `access_log`, that wins over [`Spec::log`].
    pub top_yaml: String,
    /// Write the access log as JSON into the matrix's buffer (read with
    /// [`Matrix::next_log`]); off by default.
    pub log: bool,
    /// Balancing weights of the backends, by position (missing ones are 1).
    pub weights: Vec<u32>,
    /// Pools besides [`POOL`], each served the way the shape's pool is.
    pub others: Vec<OtherPool>,
    /// What the route goes to, as a YAML flow mapping entry, instead of `pool: POOL`: e.g.
    /// `split: {cookie: ab, pools: [{pool: upstream, weight: 1}, {pool: b, weight: 1}]}`.
    pub route_to: Option<String>,
    /// The environment the config is read with (for `sticky_secret_env`), instead of the
    /// process's.
    pub env: Vec<(String, String)>,
}

/// A pool of a [`Spec`] besides [`POOL`] (see [`Spec::other_pool`]).
pub struct OtherPool {
    pub name: String,
    /// Its backends, in pool order, served as [`Spec::backends`] are.
    pub backends: Vec<Kind>,
    /// Extra keys of the pool, one per line.
    pub yaml: String,
}

impl Default for Spec {
    /// One echo backend named `a`, no extra YAML, no access log.
    fn default() -> Spec {
        Spec::new(vec![Kind::Echo("a")])
    }
}

impl Spec {
    /// These backends, no extra YAML, no access log.
    pub fn new(backends: Vec<Kind>) -> Spec {
        Spec {
            backends,
            pool_yaml: String::new(),
            top_yaml: String::new(),
            log: false,
            weights: Vec::new(),
            others: Vec::new(),
            route_to: None,
            env: Vec::new(),
        }
    }

    /// Add pool keys (one per line).
    pub fn pool(mut self, yaml: &str) -> Spec {
        self.pool_yaml.push_str(yaml);
        self.pool_yaml.push('\n');
        self
    }

    /// Add top-level lines.
    pub fn top(mut self, yaml: &str) -> Spec {
        self.top_yaml.push_str(yaml);
        self.top_yaml.push('\n');
        self
    }

    /// Give the backends these weights, by position.
    pub fn weights(mut self, weights: &[u32]) -> Spec {
        self.weights = weights.to_vec();
        self
    }

    /// Capture the access log as JSON lines.
    pub fn log(mut self) -> Spec {
        self.log = true;
        self
    }

    /// Add a pool `name` with these backends and extra keys (one per line), reached the
    /// way the shape's pool is (TLS or h2c alike); its backends are in [`Matrix::others`].
    pub fn other_pool(mut self, name: &str, backends: Vec<Kind>, yaml: &str) -> Spec {
        self.others.push(OtherPool {
            name: name.to_string(),
            backends,
            yaml: yaml.to_string(),
        });
        self
    }

    /// Send the route to `to` (a flow mapping entry such as `split: {...}`) instead of
    /// `pool: POOL`.
    pub fn route_to(mut self, to: &str) -> Spec {
        self.route_to = Some(to.to_string());
        self
    }

    /// Read the config with the environment variable `name` set to `value` (and no other
    /// variable of the process's).
    pub fn env(mut self, name: &str, value: &str) -> Spec {
        self.env.push((name.to_string(), value.to_string()));
        self
    }
}

/// One backend of a started [`Matrix`].
pub struct Up {
    /// Where the proxy connects (the access log's `backend`, as `ip:port`).
    pub addr: SocketAddr,
    /// The running server; `None` for [`Kind::Refusing`].
    pub server: Option<Backend>,
}

impl Up {
    /// Requests this backend has served (0 for a refusing one).
    pub fn hits(&self) -> usize {
        self.server.as_ref().map_or(0, Backend::hits)
    }

    /// Connections this backend accepted (TLS connections count before the handshake).
    pub fn conns(&self) -> usize {
        self.server
            .as_ref()
            .map_or(0, |b| b.conns.load(Ordering::SeqCst))
    }
}

/// "The same logical request", sent by [`Matrix::send`] in the matrix's shape.
#[derive(Debug, Clone)]
pub struct Req {
    /// The method; `None` for the shape's natural one (see [`Req::method_for`]).
    pub method: Option<String>,
    /// The request target, sent as is (origin form).
    pub path: String,
    /// Extra header fields, in order; a `host` among them replaces [`HOST`].
    pub headers: Vec<(String, String)>,
    /// The body; see [`Req::body_for`] for what each shape sends.
    pub body: Option<Vec<u8>>,
}

impl Req {
    /// A request for `path` without a body.
    pub fn get(path: &str) -> Req {
        Req {
            method: None,
            path: path.to_string(),
            headers: Vec::new(),
            body: None,
        }
    }

    /// A request for `path` with `body` (sent by every shape but [`Shape::Get`]).
    pub fn post(path: &str, body: impl Into<Vec<u8>>) -> Req {
        Req {
            body: Some(body.into()),
            ..Req::get(path)
        }
    }

    /// Use `method` in every shape.
    pub fn method(mut self, method: &str) -> Req {
        self.method = Some(method.to_string());
        self
    }

    /// Add a header field (repeat for several lines of one name).
    pub fn header(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// The body `shape` sends: none for [`Shape::Get`]; the body, or [`DEFAULT_BODY`] when
    /// there is none, for `PostLength` and `PostChunked`; the body if any for the others.
    pub fn body_for(&self, shape: Shape) -> Option<&[u8]> {
        match shape {
            Shape::Get => None,
            Shape::PostLength | Shape::PostChunked => {
                Some(self.body.as_deref().unwrap_or(DEFAULT_BODY))
            }
            _ => self.body.as_deref(),
        }
    }

    /// The method `shape` sends: the one set, else POST when it sends a body, else GET.
    pub fn method_for(&self, shape: Shape) -> String {
        match (&self.method, self.body_for(shape)) {
            (Some(m), _) => m.clone(),
            (None, Some(_)) => "POST".to_string(),
            (None, None) => "GET".to_string(),
        }
    }

    /// The Host (or `:authority`) sent: a `host` header given, else [`HOST`].
    pub fn host(&self) -> &str {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("host"))
            .map_or(HOST, |(_, v)| v.as_str())
    }

    /// The extra header fields without `host`.
    fn fields(&self) -> impl Iterator<Item = &(String, String)> {
        self.headers
            .iter()
            .filter(|(n, _)| !n.eq_ignore_ascii_case("host"))
    }

    /// The raw HTTP/1.x request `shape` writes, for HTTP version `version` ("1.1", "1.0").
    fn raw(&self, shape: Shape, version: &str) -> Vec<u8> {
        let method = self.method_for(shape);
        let mut out = format!(
            "{method} {} HTTP/{version}\r\nHost: {}\r\n",
            self.path,
            self.host()
        );
        for (n, v) in self.fields() {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        let body = self.body_for(shape);
        let mut out = match (shape, body) {
            (_, None) => (out + "\r\n").into_bytes(),
            (Shape::PostChunked, Some(b)) => {
                out.push_str("Transfer-Encoding: chunked\r\n\r\n");
                let mut out = out.into_bytes();
                // Two chunks (one when the body is a single byte or empty).
                let (a, rest) = b.split_at(b.len() / 2);
                for chunk in [a, rest] {
                    if !chunk.is_empty() {
                        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                        out.extend_from_slice(chunk);
                        out.extend_from_slice(b"\r\n");
                    }
                }
                out.extend_from_slice(b"0\r\n\r\n");
                return out;
            }
            (_, Some(b)) => {
                out.push_str(&format!("Content-Length: {}\r\n\r\n", b.len()));
                out.into_bytes()
            }
        };
        if let Some(b) = body {
            out.extend_from_slice(b);
        }
        out
    }
}

/// A shared byte buffer the access log writes into.
#[derive(Clone, Default)]
pub struct LogBuf(pub Arc<Mutex<Vec<u8>>>);

impl Write for LogBuf {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A proxy and its backends, set up for one shape.
pub struct Matrix {
    pub shape: Shape,
    pub proxy: Proxy,
    /// The pool's backends, in the spec's order.
    pub backends: Vec<Up>,
    /// The backends of the spec's other pools, by pool name, in the spec's order.
    pub others: Vec<(String, Vec<Up>)>,
    /// The CA that signed the TLS listener's (and a TLS backend's) certificate.
    pub ca: Ca,
    /// The access log's output (empty unless the spec asked for the log).
    pub log: LogBuf,
    /// Bytes of `log` already returned by [`Matrix::next_log`].
    read: AtomicUsize,
    /// The config the proxy started with, and the environment it read.
    yaml: String,
    env: Vec<(String, String)>,
    _dir: tempfile::TempDir,
}

impl Matrix {
    /// Start the backends of `spec`, each reachable the way `shape`'s pool needs, and a
    /// proxy in front of them with a plain and a TLS listener.
    pub async fn start(shape: Shape, spec: Spec) -> Matrix {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let ca = Ca::new();
        let leaf = ca.leaf(dir.path(), "listener", &[HOST, "127.0.0.1"]);
        let backend_tls = match shape {
            Shape::TlsPool => Some(tls_acceptor(&ca, dir.path())),
            _ => None,
        };
        let backends = start_backends(spec.backends, backend_tls.as_ref()).await;
        let mut others = Vec::new();
        for other in spec.others {
            let ups = start_backends(other.backends, backend_tls.as_ref()).await;
            others.push((other.name, other.yaml, ups));
        }
        let pool_kind = match shape {
            Shape::TlsPool => format!(
                "tls: true\nca: \"{}\"\nsni: {BACKEND_SNI}\n",
                ca.write(dir.path()).display()
            ),
            Shape::H2Pool => "protocol: h2\n".to_string(),
            _ => String::new(),
        };
        let mut pools = pool_entry(POOL, &pool_kind, &spec.pool_yaml, &backends, &spec.weights);
        for (name, yaml, ups) in &others {
            pools.push_str(&pool_entry(name, &pool_kind, yaml, ups, &[]));
        }
        let route_to = spec.route_to.unwrap_or_else(|| format!("pool: {POOL}"));
        let access_log = if spec.top_yaml.contains("access_log:") {
            ""
        } else if spec.log {
            "access_log: json\n"
        } else {
            "access_log: off\n"
        };
        let yaml = format!(
            "listeners:\n\
             \x20 - {{name: {PLAIN}, bind: \"127.0.0.1:0\"}}\n\
             \x20 - name: {SECURE}\n\
             \x20   bind: \"127.0.0.1:0\"\n\
             \x20   tls: {{certificates: [{{cert: \"{cert}\", key: \"{key}\"}}]}}\n\
             {access_log}{top}\
             pools:\n\
             {pools}\
             routes: [{{name: {ROUTE}, match: {{prefix: {PREFIX}}}, {route_to}}}]\n",
            cert = leaf.cert.display(),
            key = leaf.key.display(),
            top = spec.top_yaml,
        );
        let env = spec.env;
        let lookup = |name: &str| {
            env.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| std::ffi::OsString::from(v))
        };
        let loaded = switchyard::config::parse_with_env(Path::new("matrix.yaml"), &yaml, &lookup)
            .unwrap_or_else(|e| panic!("matrix config invalid: {e:?}\n{yaml}"));
        let log = LogBuf::default();
        let writer = AccessLog::start_to(loaded.config.access_log, Box::new(log.clone()));
        let server = Server::bind_with(loaded.config, 1, writer)
            .await
            .expect("bind");
        let names = [PLAIN, SECURE];
        let addrs = names
            .iter()
            .map(|n| (n.to_string(), server.listener_addr(n).expect("bound")))
            .collect::<std::collections::HashMap<_, _>>();
        let (tx, rx) = oneshot::channel();
        let proxy = Proxy {
            addr: addrs[PLAIN],
            addrs,
            admin: server.admin_addr(),
            shared: server.shared(),
            control: server.control(),
            stop: Some(tx),
            done: Some(tokio::spawn(server.run(async {
                let _ = rx.await;
            }))),
        };
        Matrix {
            shape,
            proxy,
            backends,
            others: others
                .into_iter()
                .map(|(name, _, ups)| (name, ups))
                .collect(),
            ca,
            log,
            read: AtomicUsize::new(0),
            yaml,
            env,
            _dir: dir,
        }
    }

    /// Reload the proxy with its config as `edit` changes it (the same text: a reload that
    /// changes nothing but still swaps the snapshot).
    pub async fn reload(&self, edit: impl FnOnce(&str) -> String) -> Result<(), String> {
        let yaml = edit(&self.yaml);
        let lookup = |name: &str| {
            self.env
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| std::ffi::OsString::from(v))
        };
        let loaded = switchyard::config::parse_with_env(Path::new("matrix.yaml"), &yaml, &lookup)
            .unwrap_or_else(|e| panic!("reloaded matrix config invalid: {e:?}\n{yaml}"));
        self.proxy.control.reload(loaded.config).await
    }

    /// The backends of pool `name` ([`POOL`] or one of the spec's other pools).
    pub fn pool(&self, name: &str) -> &[Up] {
        if name == POOL {
            return &self.backends;
        }
        self.others
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, ups)| ups.as_slice())
            .unwrap_or_else(|| panic!("no pool {name} in this matrix"))
    }

    /// Whether this shape's client talks to the TLS listener (cookies come `Secure`).
    pub fn tls(&self) -> bool {
        self.shape.listener() == SECURE
    }

    /// The address of the listener this shape's client talks to.
    pub fn listen_addr(&self) -> SocketAddr {
        self.proxy.addrs[self.shape.listener()]
    }

    /// Send `req` in this matrix's shape on a new connection; the response.
    pub async fn send(&self, req: &Req) -> Got {
        self.send_from(req).await.0
    }

    /// Send `req` in this matrix's shape on a new connection; the response, and the client
    /// connection's local address (the access log's `client`).
    pub async fn send_from(&self, req: &Req) -> (Got, SocketAddr) {
        let shape = self.shape;
        let exchange = async {
            match shape {
                Shape::H2Tls => self.send_h2(req).await,
                Shape::Http10 => self.send_raw(req, "1.0").await,
                _ => self.send_raw(req, "1.1").await,
            }
        };
        match tokio::time::timeout(LIMIT, exchange).await {
            Ok(r) => r,
            Err(_) => panic!("{}: no response within {LIMIT:?} to {req:?}", shape.name()),
        }
    }

    async fn send_raw(&self, req: &Req, version: &str) -> (Got, SocketAddr) {
        let mut c = RawConn::open(self.listen_addr()).await;
        let client = c.stream.local_addr().expect("a local address");
        (self.exchange_raw(&mut c, req, version).await, client)
    }

    /// A client connection in this matrix's shape that keeps going: one HTTP/2 connection,
    /// one keep-alive HTTP/1.1 connection, or (HTTP/1.0) a new connection per request.
    pub async fn session(&self) -> Session {
        match self.shape {
            Shape::H2Tls => {
                let tls = connect(self.listen_addr(), HOST, self.ca.client(&[b"h2"])).await;
                Session::H2(h2_over(tls).await)
            }
            Shape::Http10 => Session::Raw(None),
            _ => Session::Raw(Some(RawConn::open(self.listen_addr()).await)),
        }
    }

    /// Send `req` on `session`.
    pub async fn send_on(&self, session: &mut Session, req: &Req) -> Got {
        let exchange = async {
            match session {
                Session::H2(h2) => self.request_h2(h2, req).await,
                Session::Raw(None) => self.send_raw(req, "1.0").await.0,
                Session::Raw(Some(c)) => self.exchange_raw(c, req, "1.1").await,
            }
        };
        match tokio::time::timeout(LIMIT, exchange).await {
            Ok(r) => r,
            Err(_) => panic!(
                "{}: no response within {LIMIT:?} to {req:?}",
                self.shape.name()
            ),
        }
    }

    async fn exchange_raw(&self, c: &mut RawConn, req: &Req, version: &str) -> Got {
        let shape = self.shape;
        let bytes = req.raw(shape, version);
        assert!(
            c.write(&bytes).await,
            "{}: the proxy refused the request bytes",
            shape.name()
        );
        let head_request = req.method_for(shape) == "HEAD";
        let resp = if version == "1.0" {
            // An HTTP/1.0 exchange ends with the close.
            if c.closed_within(LIMIT).await.is_none() {
                panic!(
                    "{}: connection still open after {LIMIT:?}; read {:?}",
                    shape.name(),
                    c.unread()
                );
            }
            parse_response(&c.buf, head_request)
                .map(|(r, _)| r)
                .or_else(|| close_delimited(&c.buf))
                .unwrap_or_else(|| {
                    panic!("{}: no whole response in {:?}", shape.name(), c.unread())
                })
        } else {
            c.response_to(head_request, LIMIT)
                .await
                .unwrap_or_else(|e| panic!("{}: no response: {e:?}", shape.name()))
        };
        let mut headers = HeaderMap::new();
        for line in resp.head.split("\r\n").skip(1) {
            let Some((n, v)) = line.split_once(':') else {
                continue;
            };
            headers.append(
                HeaderName::from_bytes(n.trim().as_bytes()).expect("a header name"),
                HeaderValue::from_str(v.trim()).expect("a header value"),
            );
        }
        Got {
            status: resp.status,
            headers,
            body: resp.body.into(),
        }
    }

    async fn send_h2(&self, req: &Req) -> (Got, SocketAddr) {
        let tls = connect(self.listen_addr(), HOST, self.ca.client(&[b"h2"])).await;
        assert_eq!(
            tls.get_ref().1.alpn_protocol(),
            Some(&b"h2"[..]),
            "ALPN did not pick h2"
        );
        let client = tls.get_ref().0.local_addr().expect("a local address");
        let mut h2 = h2_over(tls).await;
        (self.request_h2(&mut h2, req).await, client)
    }

    async fn request_h2(
        &self,
        h2: &mut hyper::client::conn::http2::SendRequest<TestBody>,
        req: &Req,
    ) -> Got {
        let shape = self.shape;
        let mut b = Request::builder()
            .method(req.method_for(shape).as_str())
            .uri(format!("https://{}{}", req.host(), req.path));
        // hyper's h2 client drops connection-specific fields (RFC 9113 §8.2.2) itself.
        for (n, v) in req.fields() {
            b = b.header(n.as_str(), v.as_str());
        }
        let body = match req.body_for(shape) {
            Some(data) => {
                b = b.header("content-length", data.len());
                full(data.to_vec())
            }
            None => full(""),
        };
        let request = b
            .body(body)
            .unwrap_or_else(|e| panic!("{}: cannot build {req:?}: {e}", shape.name()));
        let resp = h2
            .send_request(request)
            .await
            .unwrap_or_else(|e| panic!("{}: HTTP/2 request failed: {e}", shape.name()));
        assert_eq!(resp.version(), http::Version::HTTP_2);
        super::collect(resp).await
    }

    /// Send `req` and wait, at most `limit`, for its response to end, whole or cut: how
    /// long that took from the request, and whether the response was whole.
    pub async fn send_until_end(&self, req: &Req, limit: Duration) -> (Duration, bool) {
        let shape = self.shape;
        let start = std::time::Instant::now();
        let whole = if shape == Shape::H2Tls {
            let tls = connect(self.listen_addr(), HOST, self.ca.client(&[b"h2"])).await;
            let mut h2 = h2_over(tls).await;
            let request = Request::builder()
                .method(req.method_for(shape).as_str())
                .uri(format!("https://{}{}", req.host(), req.path))
                .body(full(
                    req.body_for(shape).map(<[u8]>::to_vec).unwrap_or_default(),
                ))
                .expect("a request");
            let ended = async {
                match h2.send_request(request).await {
                    Ok(resp) => http_body_util::BodyExt::collect(resp.into_body())
                        .await
                        .is_ok(),
                    Err(_) => false,
                }
            };
            tokio::time::timeout(limit, ended)
                .await
                .unwrap_or_else(|_| panic!("{}: still streaming after {limit:?}", shape.name()))
        } else {
            let version = if shape == Shape::Http10 { "1.0" } else { "1.1" };
            let mut c = RawConn::open(self.listen_addr()).await;
            assert!(
                c.write(&req.raw(shape, version)).await,
                "{}: refused",
                shape.name()
            );
            let head_request = req.method_for(shape) == "HEAD";
            let read = async {
                use tokio::io::AsyncReadExt;
                let mut chunk = [0u8; 16384];
                loop {
                    if parse_response(&c.buf, head_request).is_some() {
                        return true;
                    }
                    match c.stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => c.buf.extend_from_slice(&chunk[..n]),
                    }
                }
            };
            tokio::time::timeout(limit, read)
                .await
                .unwrap_or_else(|_| panic!("{}: still streaming after {limit:?}", shape.name()))
        };
        (start.elapsed(), whole)
    }

    /// The access log's next whole line (after the last one returned), as JSON, waiting
    /// for it with [`eventually`].
    pub async fn next_log(&self) -> serde_json::Value {
        let mut line = None;
        eventually(LIMIT, || {
            line = self.take_line();
            let found = line.is_some();
            async move { found }
        })
        .await;
        let line = line.expect("a line was found");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("log line not JSON ({e}): {line}"))
    }

    /// The next whole line in the log buffer, if one is there.
    fn take_line(&self) -> Option<String> {
        let buf = self.log.0.lock().unwrap();
        let from = self.read.load(Ordering::SeqCst);
        let end = from + buf[from..].iter().position(|&b| b == b'\n')?;
        self.read.store(end + 1, Ordering::SeqCst);
        Some(String::from_utf8_lossy(&buf[from..end]).into_owned())
    }
}

/// Start `kinds`, in order, over TLS with `tls` when given (else plain HTTP/1 or h2c).
async fn start_backends(kinds: Vec<Kind>, tls: Option<&tokio_rustls::TlsAcceptor>) -> Vec<Up> {
    let mut ups = Vec::new();
    for kind in kinds {
        let handler: Handler = match kind {
            Kind::Refusing => {
                ups.push(Up {
                    addr: refusing_addr().await,
                    server: None,
                });
                continue;
            }
            Kind::Echo(name) => {
                let name: Arc<str> = name.into();
                Arc::new(move |req| {
                    let name = name.clone();
                    Box::pin(async move { echo_response(req, &name).await })
                })
            }
            Kind::Serve(h) => h,
        };
        let server = match tls {
            Some(acceptor) => serve_tls(acceptor.clone(), handler).await,
            None => Backend::serve(move |req| handler(req)).await,
        };
        ups.push(Up {
            addr: server.addr,
            server: Some(server),
        });
    }
    ups
}

/// The YAML of pool `name` under `pools:`: the shape's keys `kind`, the spec's `extra`
/// keys, and `ups` as its backends with `weights` by position (missing ones are 1).
fn pool_entry(name: &str, kind: &str, extra: &str, ups: &[Up], weights: &[u32]) -> String {
    let keys: String = format!("{kind}{extra}")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("    {l}\n"))
        .collect();
    let addrs: Vec<String> = ups
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let weight = weights.get(i).copied().unwrap_or(1);
            format!("{{addr: \"{}\", weight: {weight}}}", b.addr)
        })
        .collect();
    format!("  {name}:\n{keys}    backends: [{}]\n", addrs.join(", "))
}

/// A TLS acceptor for a backend certificate for [`BACKEND_SNI`] from `ca`, with ALPN h2
/// and http/1.1 (the proxy picks; a `protocol: http1` pool must get HTTP/1.1).
fn tls_acceptor(ca: &Ca, dir: &Path) -> tokio_rustls::TlsAcceptor {
    let leaf = ca.leaf(dir, "backend", &[BACKEND_SNI]);
    let key = PrivateKeyDer::from_pem_file(&leaf.key).expect("the backend key");
    let mut cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der.clone()], key)
        .expect("a valid backend certificate");
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

/// A client of a matrix that keeps its connection (see [`Matrix::session`]).
pub enum Session {
    /// HTTP/1.x on raw bytes; `None`: HTTP/1.0, a connection per request.
    Raw(Option<RawConn>),
    H2(hyper::client::conn::http2::SendRequest<TestBody>),
}

/// [`Backend::serve`] over TLS.
async fn serve_tls(acceptor: tokio_rustls::TlsAcceptor, handler: Handler) -> Backend {
    Backend::serve_over(handler, Some(acceptor)).await
}

/// Run `test` for every shape in turn, each in a task of its own bounded by
/// [`SHAPE_LIMIT`]; then fail listing every shape that panicked or timed out, so one
/// failing shape does not hide another.
pub async fn every_shape<F, Fut>(test: F)
where
    F: Fn(Shape) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut failed = Vec::new();
    for shape in Shape::ALL {
        match tokio::spawn(tokio::time::timeout(SHAPE_LIMIT, test(shape))).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => failed.push(format!(
                "{}: did not finish within {SHAPE_LIMIT:?}",
                shape.name()
            )),
            Err(e) => failed.push(format!("{}: {}", shape.name(), panic_message(e))),
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} shapes failed:\n{}",
        failed.len(),
        Shape::ALL.len(),
        failed.join("\n")
    );
}

/// Note that `shape` does not apply to a test, and why (shown with `--nocapture`).
pub fn skip(shape: Shape, why: &str) {
    eprintln!("skipped {}: {why}", shape.name());
}

fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panicked".to_string()),
        Err(e) => e.to_string(),
    }
}

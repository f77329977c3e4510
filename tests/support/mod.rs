//! Test harness: real backends and the real proxy on 127.0.0.1 with ephemeral ports.
#![allow(dead_code)]

pub mod dns;
pub mod matrix;
pub mod tcp;
pub mod tls;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use switchyard::server::Server;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body type of test backends and clients.
pub type TestBody = BoxBody<Bytes, BoxError>;

/// One listener, no access log, and every request to the one backend `{b}`.
pub const ONE_POOL: &str = r#"
listeners: [{name: web, bind: "{listen}"}]
access_log: off
pools: {p: {backends: [{addr: "{b}"}]}}
routes: [{name: all, pool: p}]
"#;

/// A fixed body.
pub fn full(data: impl Into<Bytes>) -> TestBody {
    Full::new(data.into()).map_err(|e| match e {}).boxed()
}

/// A running proxy; shut down (or dropped) at the end of the test.
pub struct Proxy {
    /// The first listener's address.
    pub addr: SocketAddr,
    /// Every listener's address, by name.
    pub addrs: std::collections::HashMap<String, SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub shared: Arc<switchyard::snapshot::Shared>,
    /// Reloads the running proxy's config.
    pub control: switchyard::server::Control,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    /// Start the proxy on `yaml`, with `{NAME}` replaced by the matching address. The first
    /// listener and the admin bind to 127.0.0.1:0 when written as `{listen}` / `{admin}`.
    pub async fn start(yaml: &str, addrs: &[(&str, SocketAddr)]) -> Proxy {
        Proxy::start_workers(yaml, addrs, 1).await
    }

    /// `http://ADDR{path}`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Reload `yaml` (rendered as [`Proxy::start`] renders it: `{listen}` is 127.0.0.1:0,
    /// which keeps a listener started on `{listen}`).
    pub async fn reload(&self, yaml: &str, addrs: &[(&str, SocketAddr)]) -> Result<(), String> {
        let text = render(yaml, addrs);
        let loaded = switchyard::config::parse(Path::new("test.yaml"), &text)
            .unwrap_or_else(|e| panic!("test config invalid: {e:?}\n{text}"));
        self.control.reload(loaded.config).await
    }

    /// Begin a graceful shutdown; the returned handle resolves when `run` has returned.
    pub fn shutdown(&mut self) -> tokio::task::JoinHandle<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.done.take().expect("shut down once")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(d) = &self.done {
            d.abort();
        }
    }
}

pub type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<TestBody>> + Send>>
        + Send
        + Sync,
>;

/// A test backend on 127.0.0.1:0 that counts connections and requests.
pub struct Backend {
    pub addr: SocketAddr,
    pub conns: Arc<AtomicUsize>,
    pub hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    /// The shipped echo backend, named `name`.
    pub async fn echo(name: &str) -> Backend {
        let name: Arc<str> = name.into();
        Backend::serve(move |req| {
            let name = name.clone();
            Box::pin(async move { echo_response(req, &name).await })
        })
        .await
    }

    /// A backend answering with `f`.
    pub async fn serve<F>(f: F) -> Backend
    where
        F: Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<TestBody>> + Send>>
            + Send
            + Sync
            + 'static,
    {
        Backend::serve_over(Arc::new(f), None).await
    }

    /// A backend answering with `handler`, over TLS with `tls` (after the handshake the
    /// same as plain): hyper's auto builder, h1 or h2c/h2, every connection and request
    /// counted.
    pub async fn serve_over(handler: Handler, tls: Option<tokio_rustls::TlsAcceptor>) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        Backend::serve_listener(listener, handler, tls)
    }

    /// The shipped echo backend named `name` on `addr` (DNS tests bind several loopback
    /// IPs to one port).
    pub async fn echo_at(addr: SocketAddr, name: &str) -> std::io::Result<Backend> {
        let name: Arc<str> = name.into();
        let listener = TcpListener::bind(addr).await?;
        Ok(Backend::serve_listener(
            listener,
            Arc::new(move |req| {
                let name = name.clone();
                Box::pin(async move { echo_response(req, &name).await })
            }),
            None,
        ))
    }

    /// Serve `handler` on `listener` (see [`Backend::serve_over`]).
    pub fn serve_listener(
        listener: TcpListener,
        handler: Handler,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Backend {
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let hits = Arc::new(AtomicUsize::new(0));
        let (c, h) = (conns.clone(), hits.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (handler, h, tls) = (handler.clone(), h.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        None => serve_conn(tcp, handler, h).await,
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                serve_conn(stream, handler, h).await;
                            }
                        }
                    }
                });
            }
        });
        Backend {
            addr,
            conns,
            hits,
            task,
        }
    }

    /// A backend that holds every request until `release` is notified, then answers 200
    /// with `text` (and `x-backend: held`).
    pub async fn held(text: &'static str) -> (Backend, Arc<tokio::sync::Notify>) {
        let release = Arc::new(tokio::sync::Notify::new());
        let r = release.clone();
        let b = Backend::serve(move |_| {
            let r = r.clone();
            Box::pin(async move {
                r.notified().await;
                Response::builder()
                    .header("x-backend", "held")
                    .body(full(text))
                    .expect("valid response")
            })
        })
        .await;
        (b, release)
    }

    /// A backend named `name` whose `/healthz` answers with the status in the returned
    /// cell (200 at first) and every other path with `others`, its name as the body and in
    /// `x-backend`.
    pub async fn checked(
        name: &'static str,
        others: u16,
    ) -> (Backend, Arc<std::sync::atomic::AtomicU16>) {
        let health = Arc::new(std::sync::atomic::AtomicU16::new(200));
        let b = Backend::serve_over(checked_handler(name, others, health.clone()), None).await;
        (b, health)
    }

    /// Requests served so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// Panic listing every case (name, outcome) that failed, all of them at once.
pub fn all_ok(results: Vec<(String, Result<(), String>)>) {
    let failed: Vec<String> = results
        .into_iter()
        .filter_map(|(case, r)| r.err().map(|e| format!("{case}: {e}")))
        .collect();
    assert!(
        failed.is_empty(),
        "{} failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

/// Serve one backend connection with `handler`, counting requests in `hits`.
async fn serve_conn<T>(io: T, handler: Handler, hits: Arc<AtomicUsize>)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        hits.fetch_add(1, Ordering::SeqCst);
        let fut = handler(req);
        async move { Ok::<_, Infallible>(fut.await) }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(io), svc)
        .await;
}

/// A backend speaking raw bytes: for each request head it reads, it writes what `script`
/// returns for (request number on this connection, from 0; the head), then closes the
/// connection if asked. Each write is flushed on its own, so a script can split a response.
pub struct RawBackend {
    pub addr: SocketAddr,
    pub conns: Arc<AtomicUsize>,
    /// Every request head received, in order.
    pub heads: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

/// What a [`RawBackend`] answers to one request.
pub struct Reply {
    pub writes: Vec<Vec<u8>>,
    pub close: bool,
}

impl Reply {
    /// `bytes` in one write, connection kept open.
    pub fn bytes(bytes: impl AsRef<[u8]>) -> Reply {
        Reply {
            writes: vec![bytes.as_ref().to_vec()],
            close: false,
        }
    }

    /// Each piece in a write of its own, a moment apart.
    pub fn pieces(pieces: &[&[u8]]) -> Reply {
        Reply {
            writes: pieces.iter().map(|p| p.to_vec()).collect(),
            close: false,
        }
    }

    /// Close the connection after writing.
    pub fn then_close(mut self) -> Reply {
        self.close = true;
        self
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawBackend {
    pub async fn start<F>(script: F) -> RawBackend
    where
        F: Fn(usize, &str) -> Reply + Send + Sync + 'static,
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
        let script = Arc::new(script);
        let (c, h) = (conns.clone(), heads.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut tcp, _)) = listener.accept().await else {
                    continue;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let _ = tcp.set_nodelay(true);
                let (script, h) = (script.clone(), h.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut n = 0;
                    loop {
                        let end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            let mut chunk = [0u8; 4096];
                            match tcp.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(k) => buf.extend_from_slice(&chunk[..k]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end);
                        h.lock().unwrap().push(head.clone());
                        let reply = script(n, &head);
                        n += 1;
                        for w in &reply.writes {
                            if tcp.write_all(w).await.is_err() {
                                return;
                            }
                            let _ = tcp.flush().await;
                            if reply.writes.len() > 1 {
                                // Not a wait for anything: a gap so each piece arrives alone.
                                tokio::time::sleep(Duration::from_millis(15)).await;
                            }
                        }
                        if reply.close {
                            return;
                        }
                    }
                });
            }
        });
        RawBackend {
            addr,
            conns,
            heads,
            task,
        }
    }

    /// Connections accepted so far.
    pub fn conns(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }
}

/// The shipped echo handler, with its body boxed for the test server.
async fn echo_response(req: Request<Incoming>, name: &Arc<str>) -> Response<TestBody> {
    let resp = switchyard::echo::answer(req, name.clone())
        .await
        .unwrap_or_else(|e| match e {});
    resp.map(|b| b.map_err(|e| match e {}).boxed())
}

/// The handler of [`Backend::checked`]: `/healthz` answers with the status in `health`,
/// every other path with `others`, named `name`.
pub fn checked_handler(
    name: &'static str,
    others: u16,
    health: Arc<std::sync::atomic::AtomicU16>,
) -> Handler {
    Arc::new(move |req| {
        let status = if req.uri().path() == "/healthz" {
            health.load(Ordering::SeqCst)
        } else {
            others
        };
        Box::pin(async move {
            Response::builder()
                .status(status)
                .header("x-backend", name)
                .body(full(name))
                .unwrap()
        })
    })
}

/// A WebSocket echo backend for one connection (text and binary messages come back, a
/// close ends it); its address, and the task, which ends with the connection.
pub async fn websocket_echo() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use futures_util::{SinkExt, StreamExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() || msg.is_binary() {
                ws.send(msg).await.unwrap();
            } else if msg.is_close() {
                break;
            }
        }
    });
    (addr, task)
}

/// A proxy started on `yaml` (rendered, no `{NAME}` addresses) that also watches a file
/// holding it, as `run` does: [`Watched::path`] is the file to edit.
pub struct Watched {
    pub proxy: Proxy,
    pub path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Watched {
    pub async fn start(yaml: &str) -> Watched {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.yaml");
        std::fs::write(&path, yaml).unwrap();
        let proxy = Proxy::start(yaml, &[]).await;
        let reloader = switchyard::reload::Reloader::new(
            path.clone(),
            yaml.to_string(),
            proxy.control.clone(),
            proxy.shared.clone(),
        );
        tokio::spawn(reloader.run());
        Watched {
            proxy,
            path,
            _dir: dir,
        }
    }
}

/// An address where nothing listens (bound, then released).
pub async fn refusing_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// A keep-alive HTTP/1.1 client.
pub fn client()
-> hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, TestBody>
{
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

/// A received response with its body collected.
pub struct Got {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Got {
    /// The body as JSON (the echo backend's).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// A header as a string ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Every `Set-Cookie` value, in order.
    pub fn set_cookies(&self) -> Vec<&str> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().expect("a Set-Cookie value in ASCII"))
            .collect()
    }

    /// The `Set-Cookie` value that sets cookie `name`, if one does (fails if several do).
    pub fn set_cookie(&self, name: &str) -> Option<&str> {
        let prefix = format!("{name}=");
        let all: Vec<&str> = self
            .set_cookies()
            .into_iter()
            .filter(|v| v.starts_with(&prefix))
            .collect();
        assert!(all.len() <= 1, "cookie {name} set twice: {all:?}");
        all.first().copied()
    }

    /// The value the response sets cookie `name` to, if it sets it.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        let v = self.set_cookie(name)?;
        let value = &v[name.len() + 1..];
        Some(value.split(';').next().unwrap_or(value))
    }
}

/// The sticky tokens of pool `pool` with its backends at `addrs` (in pool order) under
/// `keys` (a `sticky_secret_env` value: comma-separated, the first signs), as every proxy
/// with that config and secret makes and reads them: to read a proxy's tokens, and to
/// forge ones it never issued (long expired, from another key, for a backend it lacks).
pub fn sticky(
    pool: &str,
    addrs: &[SocketAddr],
    keys: &str,
    max_age: Option<Duration>,
) -> switchyard::sticky::Sticky {
    let cfg = switchyard::config::Sticky {
        cookie: "sy".into(),
        max_age,
        nocache: true,
    };
    let secret = switchyard::config::Secret {
        env: "TEST".into(),
        keys: keys.split(',').map(|k| Arc::from(k.as_bytes())).collect(),
    };
    let labels: Vec<String> = addrs.iter().map(SocketAddr::to_string).collect();
    switchyard::sticky::Sticky::new(&cfg, pool, labels.iter().map(String::as_str), Some(&secret))
}

/// Seconds since the Unix epoch, the clock sticky tokens carry.
pub fn unix_now() -> u64 {
    switchyard::sticky::unix_now()
}

/// A keep-alive client's HTTP/1.1 client type (see [`client`]).
pub type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    TestBody,
>;

/// GET `url` on `client` with the extra header fields `headers`, in order.
pub async fn get_with(client: &HttpClient, url: &str, headers: &[(&str, &str)]) -> Got {
    let mut b = Request::get(url);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    let req = b.body(full("")).expect("a valid request");
    collect(client.request(req).await.expect("request failed")).await
}

/// The `switchyard` binary running `run` as a child process; killed when dropped.
pub struct Binary {
    child: std::process::Child,
    /// Each listener's address, in the order it was logged (the config's).
    pub addrs: Vec<SocketAddr>,
    /// Everything it logged so far.
    log: Arc<std::sync::Mutex<String>>,
}

impl Binary {
    /// Run the binary on `config` with one worker and the environment variables `env` set
    /// (`RUST_LOG` removed), and wait until its `listeners` listeners are listening (the
    /// "listening" log line carries the bound address: readiness, no sleep).
    pub fn start(config: &Path, env: &[(&str, &str)], listeners: usize) -> Binary {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
        cmd.args(["--config", config.to_str().expect("a UTF-8 path")])
            .args(["--workers", "1"])
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("run switchyard");
        let mut stderr = BufReader::new(child.stderr.take().expect("piped stderr"));
        let mut addrs = Vec::new();
        let mut seen = String::new();
        while addrs.len() < listeners {
            let mut line = String::new();
            if stderr.read_line(&mut line).unwrap_or(0) == 0 {
                let _ = child.kill();
                let _ = child.wait();
                panic!("switchyard exited before listening:\n{seen}");
            }
            if let Some(i) = line.find("addr=") {
                addrs.push(line[i + 5..].trim().parse().expect("a listener address"));
            }
            seen.push_str(&line);
        }
        let log = Arc::new(std::sync::Mutex::new(seen));
        let l = log.clone();
        // Keep reading stderr so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut line = String::new();
            while stderr.read_line(&mut line).unwrap_or(0) > 0 {
                l.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        Binary { child, addrs, log }
    }

    /// `http://ADDR{path}` on the first listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addrs[0])
    }

    /// The process id (to send it signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send the process signal `sig` (`HUP`, `TERM`) with kill(1).
    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Wait until the log holds `count` lines containing `text`; the log then.
    pub async fn logged(&self, text: &str, count: usize, timeout: Duration) -> String {
        eventually(timeout, || async {
            self.log().matches(text).count() >= count
        })
        .await;
        self.log()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `switchyard explain --json --config CONFIG ARGS...` with the environment variables
/// `env` set: its exit code and, when it printed one, the decision as JSON (else null).
pub fn explain_json(
    config: &Path,
    env: &[(&str, &str)],
    args: &[&str],
) -> (Option<i32>, serde_json::Value) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"));
    cmd.arg("explain")
        .arg("--config")
        .arg(config)
        .arg("--json")
        .args(args)
        .env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run switchyard explain");
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code(), json)
}

/// Send `req` and collect the response.
pub async fn send(req: Request<TestBody>) -> Got {
    collect(client().request(req).await.expect("request failed")).await
}

/// GET `url`.
pub async fn get(url: &str) -> Got {
    send(Request::get(url).body(full("")).unwrap()).await
}

/// An HTTP/1.1 client connection over `io`.
pub async fn h1_over<T>(io: T) -> hyper::client::conn::http1::SendRequest<TestBody>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    s
}

/// An HTTP/2 client connection over `io`.
pub async fn h2_over<T>(io: T) -> hyper::client::conn::http2::SendRequest<TestBody>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    s
}

/// Collect a response.
pub async fn collect(resp: Response<Incoming>) -> Got {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Got {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

/// Wait until `cond` holds, checking every 10 ms, failing after `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "condition not met within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Write `raw` on a new connection to `addr` and read until the server closes or `limit`.
pub async fn raw(addr: SocketAddr, raw: &[u8], limit: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

// === Exact-bytes clients and backends for framing, timeouts, upgrades and edits ===

impl Proxy {
    /// As [`Proxy::start`], with `workers` workers (`Server::bind_workers`): worker 0 on the
    /// test's runtime, the others on threads of their own.
    pub async fn start_workers(yaml: &str, addrs: &[(&str, SocketAddr)], workers: usize) -> Proxy {
        Proxy::start_with_env(yaml, addrs, workers, &[]).await
    }

    /// As [`Proxy::start_workers`], with environment variables `env` (for
    /// `sticky_secret_env`) instead of the process's.
    pub async fn start_with_env(
        yaml: &str,
        addrs: &[(&str, SocketAddr)],
        workers: usize,
        env: &[(&str, &str)],
    ) -> Proxy {
        let text = render(yaml, addrs);
        let lookup = |name: &str| {
            env.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| std::ffi::OsString::from(v))
        };
        let loaded = switchyard::config::parse_with_env(Path::new("test.yaml"), &text, &lookup)
            .unwrap_or_else(|e| panic!("test config invalid: {e:?}\n{text}"));
        let names: Vec<_> = loaded
            .config
            .listeners
            .iter()
            .map(|l| l.name.clone())
            .collect();
        let server = Server::bind_workers(loaded.config, workers)
            .await
            .expect("bind");
        let addr = server.listener_addr(&names[0]).expect("listener bound");
        let addrs = names
            .iter()
            .map(|n| (n.to_string(), server.listener_addr(n).expect("bound")))
            .collect();
        let admin = server.admin_addr();
        let shared = server.shared();
        let control = server.control();
        let (tx, rx) = oneshot::channel();
        let done = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        Proxy {
            addr,
            addrs,
            admin,
            shared,
            control,
            stop: Some(tx),
            done: Some(done),
        }
    }
}

/// `yaml` with `{listen}`, `{listen2}` and `{admin}` as 127.0.0.1:0 and every `{NAME}` of
/// `addrs` replaced by its address.
pub fn render(yaml: &str, addrs: &[(&str, SocketAddr)]) -> String {
    let mut text = yaml
        .replace("{listen}", "127.0.0.1:0")
        .replace("{listen2}", "127.0.0.1:0")
        .replace("{admin}", "127.0.0.1:0");
    for (name, addr) in addrs {
        text = text.replace(&format!("{{{name}}}"), &addr.to_string());
    }
    text
}

/// One HTTP/1.x response read off a raw connection.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// The status line and header lines, without the blank line.
    pub head: String,
    /// The body, de-chunked when it came chunked.
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The value of header `name` (ASCII case-insensitive), the first if repeated.
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.head, name)
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The value of the first `name` line in `head` (ASCII case-insensitive, trimmed).
pub fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    header_values(head, name).into_iter().next()
}

/// The values of every `name` line in `head` (ASCII case-insensitive, trimmed).
pub fn header_values<'a>(head: &'a str, name: &str) -> Vec<&'a str> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
        .collect()
}

/// How a [`RawConn`] read ended when no whole response came.
#[derive(Debug, PartialEq, Eq)]
pub enum NoResponse {
    /// The peer closed (or reset) the connection; the bytes that came before it.
    Closed(String),
    /// Nothing conclusive within the limit; the bytes so far.
    TimedOut(String),
}

/// A client connection that writes exact bytes and reads responses one at a time.
pub struct RawConn {
    pub stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    pub async fn open(addr: SocketAddr) -> RawConn {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let _ = stream.set_nodelay(true);
        RawConn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Write `bytes` (in one write call); false if the connection refused them.
    pub async fn write(&mut self, bytes: impl AsRef<[u8]>) -> bool {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes.as_ref()).await.is_ok()
    }

    /// Read one response within `limit`; `head_request` when it answers a HEAD.
    pub async fn response_to(
        &mut self,
        head_request: bool,
        limit: Duration,
    ) -> Result<RawResponse, NoResponse> {
        use tokio::io::AsyncReadExt;
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some((resp, used)) = parse_response(&self.buf, head_request) {
                self.buf.drain(..used);
                return Ok(resp);
            }
            let mut chunk = [0u8; 16384];
            let so_far = || String::from_utf8_lossy(&self.buf).into_owned();
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Err(NoResponse::TimedOut(so_far())),
                Ok(Ok(0)) | Ok(Err(_)) => {
                    // A body delimited by the close ends here.
                    if let Some(resp) = close_delimited(&self.buf) {
                        self.buf.clear();
                        return Ok(resp);
                    }
                    return Err(NoResponse::Closed(so_far()));
                }
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Read one response (not to a HEAD) within `limit`.
    pub async fn response(&mut self, limit: Duration) -> Result<RawResponse, NoResponse> {
        self.response_to(false, limit).await
    }

    /// Read (and discard) until the peer closes; how long that took, or None if the
    /// connection was still open after `limit`.
    pub async fn closed_within(&mut self, limit: Duration) -> Option<Duration> {
        use tokio::io::AsyncReadExt;
        let start = Instant::now();
        let deadline = tokio::time::Instant::now() + limit;
        let mut chunk = [0u8; 16384];
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return None,
                Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Bytes read but not yet returned as a response.
    pub fn unread(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }
}

/// The first whole response in `buf` and its length in bytes, if it is all there.
fn parse_response(buf: &[u8], head_request: bool) -> Option<(RawResponse, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end - 4]).into_owned();
    let status: u16 = head.split(' ').nth(1)?.trim().parse().ok()?;
    let no_body = head_request || status < 200 || status == 204 || status == 304;
    let resp = |body: Vec<u8>| RawResponse {
        status,
        head: head.clone(),
        body,
    };
    if no_body {
        return Some((resp(Vec::new()), end));
    }
    let chunked = header_values(&head, "transfer-encoding")
        .iter()
        .any(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        let (body, used) = dechunk(&buf[end..])?;
        return Some((resp(body), end + used));
    }
    if let Some(len) = header_value(&head, "content-length") {
        let len: usize = len.parse().ok()?;
        if buf.len() < end + len {
            return None;
        }
        return Some((resp(buf[end..end + len].to_vec()), end + len));
    }
    // Delimited by the close: whole only once the connection ends.
    None
}

/// A response whose body runs to the close, from everything read.
fn close_delimited(buf: &[u8]) -> Option<RawResponse> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end - 4]).into_owned();
    let status: u16 = head.split(' ').nth(1)?.trim().parse().ok()?;
    if header_value(&head, "content-length").is_some()
        || header_value(&head, "transfer-encoding").is_some()
    {
        return None;
    }
    Some(RawResponse {
        status,
        head,
        body: buf[end..].to_vec(),
    })
}

/// A whole chunked body at the front of `buf`, decoded, and the bytes it took (trailers
/// included); None while incomplete or malformed.
pub fn dechunk(buf: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let line_end = at + buf[at..].windows(2).position(|w| w == b"\r\n")?;
        let line = std::str::from_utf8(&buf[at..line_end]).ok()?;
        let size = line.split(';').next()?.trim();
        let size = usize::from_str_radix(size, 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            // Trailer lines, then the blank line.
            loop {
                let e = at + buf[at..].windows(2).position(|w| w == b"\r\n")?;
                let blank = e == at;
                at = e + 2;
                if blank {
                    return Some((body, at));
                }
            }
        }
        if buf.len() < at + size + 2 {
            return None;
        }
        body.extend_from_slice(&buf[at..at + size]);
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return None;
        }
        at += size + 2;
    }
}

/// One request as a [`BodyBackend`] received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// The connection it came on (from 0, in accept order).
    pub conn: usize,
    /// The request head, as received, blank line included.
    pub head: String,
    /// The body, de-chunked when it came chunked.
    pub body: Vec<u8>,
}

/// A raw backend that reads whole requests, bodies included (by Content-Length or chunked),
/// records each, and answers 200 with the body it received (`x-got: LENGTH`; no body to a
/// HEAD). It closes a connection whose request it cannot frame.
pub struct BodyBackend {
    pub addr: SocketAddr,
    pub conns: Arc<AtomicUsize>,
    pub got: Arc<std::sync::Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for BodyBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl BodyBackend {
    pub async fn start() -> BodyBackend {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let got = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, g) = (conns.clone(), got.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut tcp, _)) = listener.accept().await else {
                    continue;
                };
                let conn = c.fetch_add(1, Ordering::SeqCst);
                let _ = tcp.set_nodelay(true);
                let g = g.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        // Read until one whole request is in `buf`.
                        let (head, body, used) = loop {
                            if let Some(whole) = parse_request(&buf) {
                                break whole;
                            }
                            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n")
                                && request_is_unframeable(&buf[..end + 4], &buf[end + 4..])
                            {
                                return;
                            }
                            let mut chunk = [0u8; 16384];
                            match tcp.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(k) => buf.extend_from_slice(&chunk[..k]),
                            }
                        };
                        buf.drain(..used);
                        g.lock().unwrap().push(Received {
                            conn,
                            head: head.clone(),
                            body: body.clone(),
                        });
                        let mut out = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nx-got: {}\r\n\r\n",
                            body.len(),
                            body.len()
                        )
                        .into_bytes();
                        if !head.starts_with("HEAD ") {
                            out.extend_from_slice(&body);
                        }
                        if tcp.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        BodyBackend {
            addr,
            conns,
            got,
            task,
        }
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Connections accepted so far.
    pub fn conns(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }
}

/// A whole request at the front of `buf`: its head, its decoded body, the bytes it took.
fn parse_request(buf: &[u8]) -> Option<(String, Vec<u8>, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let chunked = header_values(&head, "transfer-encoding")
        .iter()
        .any(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        let (body, used) = dechunk(&buf[end..])?;
        return Some((head, body, end + used));
    }
    let len = match header_value(&head, "content-length") {
        Some(v) => v.parse().ok()?,
        None => 0,
    };
    if buf.len() < end + len {
        return None;
    }
    Some((head, buf[end..end + len].to_vec(), end + len))
}

/// A chunked body that can never become whole (a size line that is not hex): the
/// [`BodyBackend`] gives up on its connection rather than wait for ever.
fn request_is_unframeable(head: &[u8], rest: &[u8]) -> bool {
    let head = String::from_utf8_lossy(head);
    let chunked = header_values(&head, "transfer-encoding")
        .iter()
        .any(|v| v.to_ascii_lowercase().contains("chunked"));
    if !chunked {
        return header_value(&head, "content-length").is_some_and(|v| v.parse::<usize>().is_err());
    }
    let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") else {
        return false;
    };
    let line = String::from_utf8_lossy(&rest[..line_end]);
    let size = line.split(';').next().unwrap_or("").trim();
    usize::from_str_radix(size, 16).is_err()
}

/// How a [`Streamer`] connection's writing ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Streamed {
    /// Bytes the connection accepted after the first write.
    pub written: usize,
    /// A write failed: the peer closed the connection.
    pub failed: bool,
    /// A write made no progress for [`Streamer::STALL`]: the peer stopped reading.
    pub stalled: bool,
}

/// A raw backend that, for the first request on each connection (its head and any
/// Content-Length body read), writes `first` in one write, then `piece` over and over
/// until `total` bytes of pieces are written or a write fails or stalls, and records how
/// that ended. It holds the connection open afterwards.
pub struct Streamer {
    pub addr: SocketAddr,
    pub ended: Arc<std::sync::Mutex<Vec<Streamed>>>,
    /// Piece bytes written so far, over every connection, while they are being written.
    pub progress: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Streamer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Streamer {
    /// How long one write may block before the peer counts as not reading.
    pub const STALL: Duration = Duration::from_secs(10);

    pub async fn start(first: Vec<u8>, piece: Vec<u8>, total: usize) -> Streamer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let ended = Arc::new(std::sync::Mutex::new(Vec::new()));
        let progress = Arc::new(AtomicUsize::new(0));
        let (e, pr) = (ended.clone(), progress.clone());
        let (first, piece) = (Arc::new(first), Arc::new(piece));
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (e, pr) = (e.clone(), pr.clone());
                let (first, piece) = (first.clone(), piece.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    while parse_request(&buf).is_none() {
                        let mut chunk = [0u8; 16384];
                        match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                    }
                    let mut out = Streamed {
                        written: 0,
                        failed: false,
                        stalled: false,
                    };
                    if tcp.write_all(&first).await.is_err() {
                        out.failed = true;
                    }
                    while !out.failed && out.written < total {
                        match tokio::time::timeout(Streamer::STALL, tcp.write(&piece)).await {
                            Err(_) => {
                                out.stalled = true;
                                break;
                            }
                            Ok(Err(_)) | Ok(Ok(0)) => out.failed = true,
                            Ok(Ok(n)) => {
                                out.written += n;
                                pr.fetch_add(n, Ordering::SeqCst);
                            }
                        }
                    }
                    e.lock().unwrap().push(out);
                    // Hold the connection open: only the proxy may close it.
                    let mut sink = [0u8; 4096];
                    while let Ok(n) = tcp.read(&mut sink).await {
                        if n == 0 {
                            break;
                        }
                    }
                });
            }
        });
        Streamer {
            addr,
            ended,
            progress,
            task,
        }
    }

    /// How the connections so far ended their writing.
    pub fn ended(&self) -> Vec<Streamed> {
        self.ended.lock().unwrap().clone()
    }

    /// Piece bytes written so far.
    pub fn progress(&self) -> usize {
        self.progress.load(Ordering::SeqCst)
    }

    /// How the first connection ended its writing, waiting up to `limit` for it to end.
    pub async fn first_ended(&self, limit: Duration) -> Option<Streamed> {
        let start = Instant::now();
        loop {
            if let Some(e) = self.ended().first() {
                return Some(*e);
            }
            if start.elapsed() >= limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

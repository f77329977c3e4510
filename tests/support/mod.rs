//! Test harness: real backends and the real proxy on 127.0.0.1 with ephemeral ports.
#![allow(dead_code)]

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
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    /// Start the proxy on `yaml`, with `{NAME}` replaced by the matching address. The first
    /// listener and the admin bind to 127.0.0.1:0 when written as `{listen}` / `{admin}`.
    pub async fn start(yaml: &str, addrs: &[(&str, SocketAddr)]) -> Proxy {
        let mut text = yaml
            .replace("{listen}", "127.0.0.1:0")
            .replace("{listen2}", "127.0.0.1:0")
            .replace("{admin}", "127.0.0.1:0");
        for (name, addr) in addrs {
            text = text.replace(&format!("{{{name}}}"), &addr.to_string());
        }
        let loaded = switchyard::config::parse(Path::new("test.yaml"), &text)
            .unwrap_or_else(|e| panic!("test config invalid: {e:?}\n{text}"));
        let names: Vec<_> = loaded
            .config
            .listeners
            .iter()
            .map(|l| l.name.clone())
            .collect();
        let server = Server::bind(loaded.config).await.expect("bind");
        let addr = server.listener_addr(&names[0]).expect("listener bound");
        let addrs = names
            .iter()
            .map(|n| (n.to_string(), server.listener_addr(n).expect("bound")))
            .collect();
        let admin = server.admin_addr();
        let shared = server.shared();
        let (tx, rx) = oneshot::channel();
        let done = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        Proxy {
            addr,
            addrs,
            admin,
            shared,
            stop: Some(tx),
            done: Some(done),
        }
    }

    /// `http://ADDR{path}`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
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

type Handler = Arc<
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
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let hits = Arc::new(AtomicUsize::new(0));
        let handler: Handler = Arc::new(f);
        let (c, h) = (conns.clone(), hits.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let handler = handler.clone();
                let h = h.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        h.fetch_add(1, Ordering::SeqCst);
                        let fut = handler(req);
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
                        .await;
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

    /// Requests served so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
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

//! Connections to backends: how they are made (TCP, TLS; HTTP/1.1 or HTTP/2), a keep-alive
//! pool per backend, and the response body that hands its connection back.
//!
//! Two clients, one per backend protocol: every HTTP/1.1 exchange goes through [`h1`],
//! Switchyard's own client, driven in the request's task; HTTP/2 pools (`protocol: h2`, for
//! gRPC) use hyper's client through [`h2`]. HTTP/1.1 carries one exchange at a time, so a
//! connection is checked out for a request and checked back in by [`Body`] only after the
//! response body ended cleanly; a body dropped half-read takes its connection down with
//! it. HTTP/2 multiplexes: a backend has one shared connection, replaced when it closes.

pub mod h1;
pub mod h2;

use crate::body::RequestBody;
use crate::clock::Stall;
use crate::error::{ConnectError, ProxyError, UpstreamError};
use crate::pool::InFlight;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;

/// Idle HTTP/1.1 connections kept per backend and worker.
const MAX_IDLE: usize = 256;
/// Idle connections older than this are closed rather than reused: many servers close
/// idle keep-alive connections after a while, and reusing one just as the server closes
/// it costs a failed exchange.
const MAX_IDLE_AGE: Duration = Duration::from_secs(30);
const MAX_IDLE_MS: u64 = MAX_IDLE_AGE.as_millis() as u64;

/// How a pool connects to its backends.
#[derive(Clone)]
pub struct Connector {
    pub h2: bool,
    /// TLS client config (ALPN set for the protocol), if the pool uses TLS.
    pub tls: Option<Arc<ClientConfig>>,
    pub timeout: Duration,
    /// Every new connection starts with a PROXY protocol header (`proxy_protocol`).
    pub proxy: Option<crate::proxy_protocol::Version>,
}

/// The addresses a PROXY protocol header names: the client, and where it connected to.
pub type ClientAddrs = (SocketAddr, SocketAddr);

/// Idle pools per backend: one per worker runtime (modulo this), so a worker reuses the
/// connections its own runtime drives instead of waking another thread for each request.
const SHARDS: usize = 16;

thread_local! {
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Tell this thread which worker it runs (its idle-pool shard).
pub fn set_worker(index: usize) {
    WORKER.with(|w| w.set(index % SHARDS));
}

/// Idle connections, one pool per worker, each with when it went idle
/// ([`crate::clock::now_ms`]), newest last.
struct Idle<T>([Mutex<Vec<(T, u64)>>; SHARDS]);

impl<T> Default for Idle<T> {
    fn default() -> Self {
        Idle(std::array::from_fn(|_| Mutex::new(Vec::new())))
    }
}

impl<T> Idle<T> {
    /// The newest connection of this worker's pool that is young enough and `usable`.
    fn take(&self, mut usable: impl FnMut(&mut T) -> bool) -> Option<T> {
        let mut idle = self.shard().lock().expect("idle pool lock poisoned");
        if idle.is_empty() {
            return None;
        }
        let now = crate::clock::recent_ms();
        while let Some((mut c, since)) = idle.pop() {
            if now.saturating_sub(since) < MAX_IDLE_MS && usable(&mut c) {
                return Some(c);
            }
        }
        None
    }

    fn put(&self, c: T) {
        // A little stale at worst: the connection then looks older than it is.
        let now = crate::clock::recent_ms();
        let mut idle = self.shard().lock().expect("idle pool lock poisoned");
        if idle.len() < MAX_IDLE {
            idle.push((c, now));
        }
    }

    fn shard(&self) -> &Mutex<Vec<(T, u64)>> {
        &self.0[WORKER.with(|w| w.get())]
    }
}

/// The connections of one backend.
#[derive(Default)]
pub struct Endpoint {
    /// Boxed: a connection moves through several layers per request, and a pointer is
    /// cheaper to move than its buffers' headers.
    idle: Idle<Box<h1::Conn>>,
    shared: Mutex<Option<SendRequest<RequestBody>>>,
}

impl Endpoint {
    /// An HTTP/1.1 connection, pooled or new, and whether it was pooled (a failure on it
    /// may only mean the backend had closed it).
    /// With `proxy_protocol`, a connection names one client, so it is new for each
    /// request of `client` and never pooled.
    pub async fn h1(
        &self,
        addr: SocketAddr,
        name: &ServerName<'static>,
        how: &Connector,
        client: ClientAddrs,
    ) -> Result<(Box<h1::Conn>, bool), ConnectError> {
        if how.proxy.is_some() {
            let io = connect(addr, name, how, Some(client)).await?;
            return Ok((Box::new(h1::Conn::private(io)), false));
        }
        if let Some(c) = self.idle.take(|c| c.is_open()) {
            return Ok((c, true));
        }
        let io = connect(addr, name, how, None).await?;
        Ok((Box::new(h1::Conn::new(io)), false))
    }

    /// The backend's HTTP/2 connection, shared or new, and whether it was shared.
    pub async fn h2(
        &self,
        addr: SocketAddr,
        name: &ServerName<'static>,
        how: &Connector,
    ) -> Result<(SendRequest<RequestBody>, bool), ConnectError> {
        {
            let mut slot = self.shared.lock().expect("h2 slot lock poisoned");
            match &*slot {
                Some(s) if !s.is_closed() => return Ok((s.clone(), true)),
                Some(_) => *slot = None,
                None => {}
            }
        }
        let tcp = connect_tcp(addr, how.timeout).await?;
        let sender = match &how.tls {
            None => h2::handshake(tcp, addr).await?,
            Some(cfg) => h2::handshake(tls(tcp, name, cfg, how.timeout).await?, addr).await?,
        };
        *self.shared.lock().expect("h2 slot lock poisoned") = Some(sender.clone());
        Ok((sender, false))
    }

    /// Return an HTTP/1.1 connection after a complete exchange.
    fn checkin(&self, c: Box<h1::Conn>) {
        if c.is_private() {
            return;
        }
        self.idle.put(c);
    }
}

/// A new connection to `addr`, TLS when the pool says so (ALPN as its protocol wants).
/// With `proxy_protocol`, its header comes first (under any TLS), naming `client`, or no
/// one (`LOCAL`) for the proxy's own connections.
pub async fn connect(
    addr: SocketAddr,
    name: &ServerName<'static>,
    how: &Connector,
    client: Option<ClientAddrs>,
) -> Result<h1::Io, ConnectError> {
    let mut tcp = connect_tcp(addr, how.timeout).await?;
    if let Some(v) = how.proxy {
        let mut header = Vec::with_capacity(64);
        match client {
            Some((src, dst)) => crate::proxy_protocol::encode(v, src, dst, &mut header),
            None => crate::proxy_protocol::encode_local(v, &mut header),
        }
        use tokio::io::AsyncWriteExt;
        tokio::time::timeout(how.timeout, tcp.write_all(&header))
            .await
            .map_err(|_| ConnectError::Timeout(how.timeout))?
            .map_err(ConnectError::Io)?;
    }
    Ok(match &how.tls {
        None => h1::Io::Tcp(tcp),
        Some(cfg) => h1::Io::Tls(Box::new(tls(tcp, name, cfg, how.timeout).await?)),
    })
}

/// A plain TCP connection to `addr` within `timeout`, Nagle off.
pub async fn connect_tcp(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout(timeout))?
        .map_err(ConnectError::Io)?;
    // Requests and responses are written whole; Nagle would only add latency.
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

async fn tls(
    tcp: TcpStream,
    name: &ServerName<'static>,
    cfg: &Arc<ClientConfig>,
    timeout: Duration,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ConnectError> {
    let connector = tokio_rustls::TlsConnector::from(cfg.clone());
    tokio::time::timeout(timeout, connector.connect(name.clone(), tcp))
        .await
        .map_err(|_| ConnectError::Timeout(timeout))?
        .map_err(ConnectError::Tls)
}

/// How an exchange failed, with either client.
#[derive(Debug)]
pub enum Failure {
    /// The backend (or the way to it) failed; `sent`: some of the request was written.
    Backend { error: UpstreamError, sent: bool },
    /// The backend took no body bytes for `timeouts.write`.
    WriteStalled,
    /// The response head did not come within `timeouts.response`.
    Late,
    /// The client's side of the body failed; the backend's connection is spoilt.
    Client(ProxyError),
}

/// A response body as it arrives.
pub enum Recv {
    /// Framed by the HTTP/1.1 client, read off its connection.
    H1 {
        framing: h1::Framing,
        conn: Box<h1::Conn>,
    },
    /// An HTTP/1.1 response that streams while the request body still goes up (the duplex
    /// case): its connection is split, and never reused.
    Duplex {
        framing: h1::Framing,
        buf: bytes::BytesMut,
        io: tokio::io::ReadHalf<h1::Io>,
    },
    H2(Incoming),
}

/// A backend's response body: watched for stalls (`timeouts.read`), it returns its
/// connection to the pool once read to the end, and holds its request's in-flight count
/// until then.
pub struct Body {
    inner: Option<Recv>,
    in_flight: Option<InFlight>,
    stall: Stall,
    timeout: Duration,
}

impl Body {
    /// Wrap `inner`, counted by `in_flight`; at most `timeout` between pieces.
    pub fn new(inner: Recv, in_flight: InFlight, timeout: Duration) -> Body {
        let mut b = Body {
            inner: Some(inner),
            in_flight: Some(in_flight),
            stall: Stall::new(timeout),
            timeout,
        };
        if b.is_end_stream() {
            b.release();
        }
        b
    }

    /// Copy the rest of the body into `out` when it is small (`limit`), framed by length
    /// and already read; returns the bytes copied. The connection goes back to its pool.
    pub fn copy_whole(&mut self, limit: usize, out: &mut Vec<u8>) -> Option<usize> {
        let Some(Recv::H1 { framing, conn }) = &mut self.inner else {
            return None;
        };
        let n = framing.copy_whole(conn, limit, out)?;
        self.release();
        Some(n)
    }

    fn release(&mut self) {
        let in_flight = self.in_flight.take();
        if let (Some(Recv::H1 { framing, conn }), Some(in_flight)) = (self.inner.take(), in_flight)
            && framing.reusable(&conn)
        {
            in_flight.state().endpoint.checkin(conn);
        }
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = match &mut this.inner {
            None => return Poll::Ready(None),
            Some(Recv::H1 { framing, conn }) => framing
                .poll_frame(conn, cx)
                .map(|f| f.map(|r| r.map_err(Into::into))),
            Some(Recv::Duplex { framing, buf, io }) => framing
                .poll_frame_from(buf, io, cx)
                .map(|f| f.map(|r| r.map_err(Into::into))),
            Some(Recv::H2(b)) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(Into::into))),
        };
        let frame = match polled {
            Poll::Pending if this.stall.stuck(cx) => {
                this.inner = None;
                this.in_flight = None;
                return Poll::Ready(Some(Err(UpstreamError::ReadTimeout(this.timeout).into())));
            }
            Poll::Pending => return Poll::Pending,
            Poll::Ready(f) => f,
        };
        this.stall.progress();
        match &frame {
            None => this.release(),
            Some(Ok(_)) if this.is_end_stream() => this.release(),
            Some(Ok(_)) => {}
            // A broken body leaves the connection unusable: drop it.
            Some(Err(_)) => {
                this.inner = None;
                this.in_flight = None;
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            None => true,
            Some(Recv::H1 { framing, .. } | Recv::Duplex { framing, .. }) => framing.is_end(),
            Some(Recv::H2(b)) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            None => SizeHint::with_exact(0),
            Some(Recv::H1 { framing, .. } | Recv::Duplex { framing, .. }) => framing.size_hint(),
            Some(Recv::H2(b)) => b.size_hint(),
        }
    }
}

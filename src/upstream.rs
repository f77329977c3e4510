//! Connections to backends: how they are made (TCP, TLS, HTTP/1.1 or HTTP/2), a keep-alive
//! pool per backend, and the response body that hands its connection back.
//!
//! HTTP/1.1 carries one exchange at a time, so a connection is checked out for a request
//! and checked back in by [`Body`] only after the response body ended cleanly; a body
//! dropped half-read takes its connection down with it (the rest of that response is still
//! on the wire). HTTP/2 multiplexes: a backend has one shared connection, replaced when it
//! closes. Bodiless requests to plain HTTP/1.1 backends take the cheaper [`h1`] client
//! instead of hyper's; its connections are pooled apart from hyper's.

pub mod h1;

use crate::body::RequestBody;
use crate::error::{ConnectError, UpstreamError};
use crate::pool::InFlight;
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Idle HTTP/1.1 connections kept per backend.
const MAX_IDLE: usize = 256;
/// Idle connections older than this are closed rather than reused: many servers close
/// idle keep-alive connections after a while, and reusing one just as the server closes
/// it costs a failed exchange.
const MAX_IDLE_AGE: Duration = Duration::from_secs(30);

/// How a pool connects to its backends.
pub struct Connector {
    pub h2: bool,
    /// TLS client config (ALPN set for the protocol), if the pool uses TLS.
    pub tls: Option<Arc<ClientConfig>>,
    pub timeout: Duration,
}

/// The sending half of a connection to a backend.
pub enum Sender {
    H1(http1::SendRequest<RequestBody>),
    H2(http2::SendRequest<RequestBody>),
    /// An [`h1`] connection, driven by the request's task.
    /// Boxed: the connection moves through several layers per request, a pointer is
    /// cheaper to move than its buffers' headers.
    Inline(Box<h1::Conn>),
}

/// A response body as it arrives: from hyper, or framed by the inline client.
pub enum Recv {
    Hyper(Incoming),
    Inline(h1::Framing),
}

/// A failed exchange, with the request back when it can be sent again.
pub struct Failed {
    pub error: UpstreamError,
    pub request: Option<Request<RequestBody>>,
    /// Some of the request may have reached the backend: only a request that can be
    /// rebuilt (bodiless and idempotent) may go again.
    pub sent: bool,
}

impl Sender {
    /// Send `req`. On failure hyper hands the request back if none of it was sent; the
    /// inline client always does, since the request has no body.
    pub async fn send(&mut self, req: Request<RequestBody>) -> Result<Response<Recv>, Box<Failed>> {
        let hyper = |r: Result<Response<Incoming>, hyper::client::conn::TrySendError<_>>| {
            r.map(|resp| resp.map(Recv::Hyper)).map_err(|mut e| {
                Box::new(Failed {
                    request: e.take_message(),
                    error: UpstreamError::Hyper(e.into_error()),
                    sent: false,
                })
            })
        };
        match self {
            Sender::H1(s) => hyper(s.try_send_request(req).await),
            Sender::H2(s) => hyper(s.try_send_request(req).await),
            Sender::Inline(c) => match c.send(&req).await {
                Ok(resp) => Ok(resp.map(Recv::Inline)),
                Err(f) => Err(Box::new(Failed {
                    error: f.error,
                    request: Some(req),
                    sent: f.sent,
                })),
            },
        }
    }

    /// Whether requests to this connection need an absolute-form target (HTTP/2).
    pub fn is_h2(&self) -> bool {
        matches!(self, Sender::H2(_))
    }
}

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

/// Idle connections of one kind, one pool per worker, each with when they went idle
/// ([`crate::clock::now_ms`]), newest last.
struct Idle<T>([Mutex<Vec<(T, u64)>>; SHARDS]);

impl<T> Default for Idle<T> {
    fn default() -> Self {
        Idle(std::array::from_fn(|_| Mutex::new(Vec::new())))
    }
}

impl<T> Idle<T> {
    /// The newest connection of this worker's pool that is young enough and `usable`.
    fn take(&self, usable: impl Fn(&T) -> bool) -> Option<T> {
        let mut idle = self.shard().lock().expect("idle pool lock poisoned");
        if idle.is_empty() {
            return None;
        }
        let now = crate::clock::now_ms();
        while let Some((c, since)) = idle.pop() {
            if now.saturating_sub(since) < MAX_IDLE_MS && usable(&c) {
                return Some(c);
            }
        }
        None
    }

    fn put(&self, c: T) {
        let now = crate::clock::now_ms();
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
    idle: Idle<http1::SendRequest<RequestBody>>,
    inline: Idle<Box<h1::Conn>>,
    shared: Mutex<Option<http2::SendRequest<RequestBody>>>,
}

/// A connection checked out for one exchange.
pub struct Conn {
    pub sender: Sender,
    /// Came from the pool (so a failure may just mean the server closed it).
    pub reused: bool,
}

/// Idle connections older than this many milliseconds are not reused.
const MAX_IDLE_MS: u64 = MAX_IDLE_AGE.as_millis() as u64;

impl Connector {
    /// Whether a request without body or upgrade may take the [`h1`] client.
    pub fn takes_inline(&self) -> bool {
        !self.h2 && self.tls.is_none()
    }
}

impl Endpoint {
    /// A connection ready for a request: pooled, or new. `inline` asks for an [`h1`]
    /// connection (see [`Connector::takes_inline`]).
    pub async fn checkout(
        &self,
        addr: SocketAddr,
        name: &ServerName<'static>,
        how: &Connector,
        inline: bool,
    ) -> Result<Conn, ConnectError> {
        if inline {
            if let Some(c) = self.inline.take(|c| c.is_open()) {
                return Ok(Conn {
                    sender: Sender::Inline(c),
                    reused: true,
                });
            }
            return Ok(Conn {
                sender: Sender::Inline(Box::new(h1::Conn::new(
                    connect_tcp(addr, how.timeout).await?,
                ))),
                reused: false,
            });
        }
        let pooled = if how.h2 {
            self.shared_h2().map(Sender::H2)
        } else {
            self.idle.take(|s| s.is_ready()).map(Sender::H1)
        };
        if let Some(sender) = pooled {
            return Ok(Conn {
                sender,
                reused: true,
            });
        }
        let sender = connect(addr, name, how).await?;
        if let Sender::H2(s) = &sender {
            *self.shared.lock().expect("h2 slot lock poisoned") = Some(s.clone());
        }
        Ok(Conn {
            sender,
            reused: false,
        })
    }

    fn shared_h2(&self) -> Option<http2::SendRequest<RequestBody>> {
        let mut slot = self.shared.lock().expect("h2 slot lock poisoned");
        match &*slot {
            Some(s) if !s.is_closed() => Some(s.clone()),
            Some(_) => {
                *slot = None;
                None
            }
            None => None,
        }
    }

    /// Return a connection after a complete exchange.
    fn checkin(&self, sender: Sender) {
        match sender {
            Sender::H1(s) if !s.is_closed() => self.idle.put(s),
            Sender::Inline(c) => self.inline.put(c),
            _ => {}
        }
    }
}

async fn connect_tcp(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout(timeout))?
        .map_err(ConnectError::Io)?;
    // Requests and responses are written whole; Nagle would only add latency.
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

async fn connect(
    addr: SocketAddr,
    name: &ServerName<'static>,
    how: &Connector,
) -> Result<Sender, ConnectError> {
    let tcp = connect_tcp(addr, how.timeout).await?;
    match &how.tls {
        None => handshake(tcp, how.h2, addr).await,
        Some(cfg) => {
            let connector = tokio_rustls::TlsConnector::from(cfg.clone());
            let tls = tokio::time::timeout(how.timeout, connector.connect(name.clone(), tcp))
                .await
                .map_err(|_| ConnectError::Timeout(how.timeout))?
                .map_err(ConnectError::Tls)?;
            handshake(tls, how.h2, addr).await
        }
    }
}

async fn handshake<T>(io: T, h2: bool, addr: SocketAddr) -> Result<Sender, ConnectError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    if h2 {
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .handshake(io)
            .await
            .map_err(ConnectError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(backend = %addr, error = %e, "upstream h2 connection ended with an error");
            }
        });
        Ok(Sender::H2(sender))
    } else {
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(ConnectError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(backend = %addr, error = %e, "upstream connection ended with an error");
            }
        });
        Ok(Sender::H1(sender))
    }
}

/// A backend's response body; returns the connection to its pool once read to the end.
pub struct Body {
    inner: Recv,
    keep: Option<(Sender, InFlight)>,
}

impl Body {
    /// Wrap `inner`, received on `sender` for the request counted by `in_flight`.
    pub fn new(inner: Recv, sender: Sender, in_flight: InFlight) -> Body {
        let mut b = Body {
            inner,
            keep: Some((sender, in_flight)),
        };
        if b.is_end_stream() {
            b.release();
        }
        b
    }

    fn release(&mut self) {
        let Some((sender, in_flight)) = self.keep.take() else {
            return;
        };
        let reusable = match (&self.inner, &sender) {
            (Recv::Inline(f), Sender::Inline(c)) => f.reusable(c),
            _ => true,
        };
        if reusable {
            in_flight.state().endpoint.checkin(sender);
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
        let frame = match (&mut this.inner, &mut this.keep) {
            (Recv::Hyper(inner), _) => {
                ready!(Pin::new(inner).poll_frame(cx)).map(|r| r.map_err(Into::into))
            }
            (Recv::Inline(framing), Some((Sender::Inline(conn), _))) => {
                ready!(framing.poll_frame(conn, cx)).map(|r| r.map_err(Into::into))
            }
            // Released: the inline body ended with its connection.
            (Recv::Inline(_), _) => None,
        };
        match &frame {
            None => this.release(),
            Some(Ok(_)) if this.is_end_stream() => this.release(),
            Some(Ok(_)) => {}
            // A broken body leaves the connection unusable: drop it.
            Some(Err(_)) => this.keep = None,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Recv::Hyper(b) => b.is_end_stream(),
            Recv::Inline(f) => f.is_end(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Recv::Hyper(b) => b.size_hint(),
            Recv::Inline(f) => f.size_hint(),
        }
    }
}

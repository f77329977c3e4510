//! Connections to backends: how they are made (TCP, TLS, HTTP/1.1 or HTTP/2), a keep-alive
//! pool per backend, and the response body that hands its connection back.
//!
//! HTTP/1.1 carries one exchange at a time, so a connection is checked out for a request
//! and checked back in by [`Body`] only after the response body ended cleanly; a body
//! dropped half-read takes its connection down with it (the rest of that response is still
//! on the wire). HTTP/2 multiplexes: a backend has one shared connection, replaced when it
//! closes.

use crate::body::RequestBody;
use crate::error::ConnectError;
use crate::health;
use crate::pool::InFlight;
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1, http2};
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
}

impl Sender {
    /// Send `req`; on failure, hyper hands the request back if none of it was sent.
    pub async fn send(
        &mut self,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, TrySendError<Request<RequestBody>>> {
        match self {
            Sender::H1(s) => s.try_send_request(req).await,
            Sender::H2(s) => s.try_send_request(req).await,
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

/// Idle connections with when they went idle ([`health::now_ms`]), newest last.
type IdlePool = Mutex<Vec<(http1::SendRequest<RequestBody>, u64)>>;

/// The connections of one backend.
#[derive(Default)]
pub struct Endpoint {
    /// One pool per worker.
    idle: [IdlePool; SHARDS],
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

impl Endpoint {
    /// A connection ready for a request: pooled, or new.
    pub async fn checkout(
        &self,
        addr: SocketAddr,
        name: &ServerName<'static>,
        how: &Connector,
    ) -> Result<Conn, ConnectError> {
        let pooled = if how.h2 {
            self.shared_h2().map(Sender::H2)
        } else {
            self.take_idle().map(Sender::H1)
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

    fn idle(&self) -> &IdlePool {
        &self.idle[WORKER.with(|w| w.get())]
    }

    fn take_idle(&self) -> Option<http1::SendRequest<RequestBody>> {
        let mut idle = self.idle().lock().expect("idle pool lock poisoned");
        if idle.is_empty() {
            return None;
        }
        let now = health::now_ms();
        while let Some((s, since)) = idle.pop() {
            if s.is_ready() && now.saturating_sub(since) < MAX_IDLE_MS {
                return Some(s);
            }
        }
        None
    }

    /// Return a connection after a complete exchange.
    fn checkin(&self, sender: Sender) {
        let Sender::H1(s) = sender else { return };
        if s.is_closed() {
            return;
        }
        let now = health::now_ms();
        let mut idle = self.idle().lock().expect("idle pool lock poisoned");
        if idle.len() < MAX_IDLE {
            idle.push((s, now));
        }
    }
}

async fn connect(
    addr: SocketAddr,
    name: &ServerName<'static>,
    how: &Connector,
) -> Result<Sender, ConnectError> {
    let tcp = tokio::time::timeout(how.timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout(how.timeout))?
        .map_err(ConnectError::Io)?;
    // Requests and responses are written whole; Nagle would only add latency.
    let _ = tcp.set_nodelay(true);
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
    inner: Incoming,
    keep: Option<(Sender, InFlight)>,
}

impl Body {
    /// Wrap `inner`, received on `sender` for the request counted by `in_flight`.
    pub fn new(inner: Incoming, sender: Sender, in_flight: InFlight) -> Body {
        let mut b = Body {
            inner,
            keep: Some((sender, in_flight)),
        };
        if b.inner.is_end_stream() {
            b.release();
        }
        b
    }

    fn release(&mut self) {
        if let Some((sender, in_flight)) = self.keep.take() {
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
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            None => self.release(),
            Some(Ok(_)) if self.inner.is_end_stream() => self.release(),
            Some(Ok(_)) => {}
            // A broken body leaves the connection unusable: drop it.
            Some(Err(_)) => self.keep = None,
        }
        Poll::Ready(frame.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

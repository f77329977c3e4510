//! Connections to backends: a keep-alive pool per backend, and the response body that
//! hands its connection back when it has been read to the end.
//!
//! HTTP/1.1 carries one exchange at a time, so a connection is checked out for a request
//! and checked back in by [`Body`] only after the response body ended cleanly. A body
//! dropped half-read takes its connection down with it: the rest of that response is still
//! on the wire and the connection cannot be reused.

use crate::body::RequestBody;
use crate::error::ConnectError;
use crate::pool::InFlight;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Idle connections kept per backend.
const MAX_IDLE: usize = 256;
/// Idle connections older than this are closed rather than reused: many servers close
/// idle keep-alive connections after a while, and reusing one just as the server closes
/// it costs a failed exchange.
const MAX_IDLE_AGE: Duration = Duration::from_secs(30);

/// The sending half of an HTTP/1.1 connection to a backend.
pub type Sender = http1::SendRequest<RequestBody>;

/// The idle connections of one backend.
#[derive(Default)]
pub struct Endpoint {
    idle: Mutex<Vec<(Sender, Instant)>>,
}

/// A connection checked out for one exchange.
pub struct Conn {
    pub sender: Sender,
    /// Came from the idle pool (so a failure may just mean the server closed it).
    pub reused: bool,
}

impl Endpoint {
    /// An idle connection ready for a request, or a new one.
    pub async fn checkout(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<Conn, ConnectError> {
        if let Some(sender) = self.take_idle() {
            return Ok(Conn {
                sender,
                reused: true,
            });
        }
        let sender = connect(addr, timeout).await?;
        Ok(Conn {
            sender,
            reused: false,
        })
    }

    fn take_idle(&self) -> Option<Sender> {
        let mut idle = self.idle.lock().expect("idle pool lock poisoned");
        while let Some((s, since)) = idle.pop() {
            if s.is_ready() && since.elapsed() < MAX_IDLE_AGE {
                return Some(s);
            }
        }
        None
    }

    /// Return a connection after a complete exchange.
    fn checkin(&self, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().expect("idle pool lock poisoned");
        if idle.len() < MAX_IDLE {
            idle.push((sender, Instant::now()));
        }
    }
}

async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Sender, ConnectError> {
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout(timeout))?
        .map_err(ConnectError::Io)?;
    // Requests and responses are written whole; Nagle would only add latency.
    let _ = tcp.set_nodelay(true);
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(tcp))
        .await
        .map_err(ConnectError::Handshake)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(backend = %addr, error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
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

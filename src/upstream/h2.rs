//! hyper's HTTP/2 client, for pools with `protocol: h2` (gRPC): one multiplexed connection
//! per backend, driven by a task of its own.

use super::Failure;
use crate::body::RequestBody;
use crate::error::{ConnectError, UpstreamError};
use http::header::HOST;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http2::{Builder, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncWrite};

/// Set up HTTP/2 on `io`, a fresh connection to `addr` (h2c, or h2 over TLS by ALPN).
pub async fn handshake<T>(io: T, addr: SocketAddr) -> Result<SendRequest<RequestBody>, ConnectError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .handshake(TokioIo::new(io))
        .await
        .map_err(ConnectError::Handshake)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(backend = %addr, error = %e, "upstream h2 connection ended with an error");
        }
    });
    Ok(sender)
}

/// Send `req`; on failure the request comes back when none of it was sent.
pub async fn send(
    sender: &mut SendRequest<RequestBody>,
    req: Request<RequestBody>,
) -> Result<Response<Incoming>, (Failure, Option<Request<RequestBody>>)> {
    sender.try_send_request(req).await.map_err(|mut e| {
        let req = e.take_message();
        let failure = Failure::Backend {
            sent: req.is_none(),
            error: UpstreamError::Hyper(e.into_error()),
        };
        (failure, req)
    })
}

/// HTTP/2 carries the target as `:scheme` and `:authority`: make the target absolute, with
/// the Host field (or the backend's address) as its authority.
pub fn absolute(req: &mut Request<RequestBody>, tls: bool, backend: &str) {
    if req.uri().scheme().is_some() {
        return;
    }
    let authority = req
        .headers_mut()
        .remove(HOST)
        .and_then(|h| Authority::try_from(h.as_bytes()).ok())
        .or_else(|| Authority::try_from(backend).ok());
    let mut parts = req.uri().clone().into_parts();
    parts.scheme = Some(if tls { Scheme::HTTPS } else { Scheme::HTTP });
    parts.authority = authority;
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}

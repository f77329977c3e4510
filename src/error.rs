//! The proxy's one error type and the one place errors become responses.
//!
//! Variants are named for their cause and grouped by where it lies: the downstream client,
//! the upstream backend, or availability. `status()` is an exhaustive match, so a new
//! variant cannot ship without a status; sources are kept, never stringified.

use crate::body::{Body, TooLarge};
use crate::wire::chunked::ChunkError;
use http::{HeaderValue, Response, StatusCode, header};
use std::sync::Arc;
use std::time::Duration;

/// Why a request could not be proxied.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    // === downstream ===
    /// A request the proxy refuses to interpret.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// Both Content-Length and Transfer-Encoding (RFC 9112 §6.1): a smuggling attempt or a
    /// broken client; the connection is closed after the 400.
    #[error("bad request: both Content-Length and Transfer-Encoding")]
    AmbiguousLength,
    /// A transfer coding the proxy does not decode (RFC 9112 §6.1: 501).
    #[error("transfer coding not supported")]
    UnsupportedCoding,
    /// A chunked request body that breaks the coding's rules: the client's fault, and the
    /// connection cannot be read further.
    #[error("malformed chunked request body")]
    BadBody(#[source] ChunkError),
    /// The request head is over `max_request_header_bytes` or has too many fields.
    #[error("request head too large")]
    HeadTooLarge,
    /// An HTTP version other than 1.0 and 1.1 on an HTTP/1 connection.
    #[error("HTTP version not supported")]
    VersionNotSupported,
    /// An `Expect` other than `100-continue` (RFC 9110 §10.1.1).
    #[error("expectation not supported")]
    ExpectationFailed,
    /// The client stopped sending its request body (`client_body_timeout`).
    #[error("request body timed out")]
    ClientTimeout,
    /// The client went away before its request was complete (nginx's 499).
    #[error("client closed the connection")]
    ClientClosed,
    /// Plain HTTP sent to a TLS listener.
    #[error("plain HTTP on a TLS port")]
    PlainHttpOnTls,
    /// A method a reverse proxy does not serve (CONNECT).
    #[error("method not supported")]
    MethodNotSupported,
    /// The request's host is not one this TLS connection was opened for.
    #[error("host not covered by this connection's certificate")]
    Misdirected,
    /// No route takes the request.
    #[error("no route")]
    NoRoute,
    /// The request body went over the limit.
    #[error(transparent)]
    BodyTooLarge(#[from] TooLarge),

    // === upstream ===
    /// No connection could be made to any backend tried.
    #[error("cannot connect to {backend}")]
    Connect {
        backend: Arc<str>,
        #[source]
        source: ConnectError,
    },
    /// The backend sent no response headers in time.
    #[error("{backend} sent no response within {timeout:?}")]
    UpstreamTimeout {
        backend: Arc<str>,
        timeout: Duration,
    },
    /// The backend broke the exchange (reset, closed, malformed response).
    #[error("exchange with {backend} failed")]
    UpstreamProtocol {
        backend: Arc<str>,
        #[source]
        source: UpstreamError,
    },
    /// The backend switched protocols on a request that did not ask to, or to another
    /// protocol than the one asked for.
    #[error("{backend} switched protocols unasked")]
    UpstreamUpgrade { backend: Arc<str> },
    /// The backend stopped taking the request body (`timeouts.write`).
    #[error("{backend} took no request body bytes within {timeout:?}")]
    UpstreamWriteTimeout {
        backend: Arc<str>,
        timeout: Duration,
    },

    // === availability ===
    /// No backend of the pool is healthy and the pool rejects.
    #[error("no healthy backend in pool {pool}")]
    NoHealthyBackend { pool: Arc<str> },
}

/// How an exchange with a backend broke.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Reported by hyper's client.
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    /// The connection failed under the inline client.
    #[error(transparent)]
    Io(std::io::Error),
    /// The backend closed the connection before the response was complete.
    #[error("connection closed before the response was complete")]
    Closed,
    /// The response head did not parse.
    #[error("malformed response: {0}")]
    Parse(httparse::Error),
    /// The backend sent no more of the response body for `timeouts.read`.
    #[error("no response body bytes within {0:?}")]
    ReadTimeout(Duration),
    /// The chunked response body broke the coding's rules.
    #[error("malformed response body: {0}")]
    Chunked(ChunkError),
    /// The response broke a rule of HTTP/1.1 framing.
    #[error("malformed response: {0}")]
    Malformed(&'static str),
}

/// Why a connection to a backend could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect failed")]
    Io(#[source] std::io::Error),
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    #[error("TLS handshake failed")]
    Tls(#[source] std::io::Error),
    #[error("HTTP handshake failed")]
    Handshake(#[source] hyper::Error),
}

impl ProxyError {
    /// The response status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_)
            | ProxyError::AmbiguousLength
            | ProxyError::BadBody(_)
            | ProxyError::PlainHttpOnTls => StatusCode::BAD_REQUEST,
            ProxyError::UnsupportedCoding | ProxyError::MethodNotSupported => {
                StatusCode::NOT_IMPLEMENTED
            }
            ProxyError::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::VersionNotSupported => StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            ProxyError::ExpectationFailed => StatusCode::EXPECTATION_FAILED,
            ProxyError::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::ClientClosed => {
                StatusCode::from_u16(499).expect("499 is a valid status code")
            }
            ProxyError::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::Connect { .. }
            | ProxyError::UpstreamProtocol { .. }
            | ProxyError::UpstreamUpgrade { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout { .. } | ProxyError::UpstreamWriteTimeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::NoHealthyBackend { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A short, bounded label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::AmbiguousLength => "ambiguous_length",
            ProxyError::UnsupportedCoding => "unsupported_coding",
            ProxyError::BadBody(_) => "bad_body",
            ProxyError::HeadTooLarge => "head_too_large",
            ProxyError::VersionNotSupported => "version_not_supported",
            ProxyError::ExpectationFailed => "expectation_failed",
            ProxyError::ClientTimeout => "client_timeout",
            ProxyError::ClientClosed => "client_closed",
            ProxyError::PlainHttpOnTls => "plain_http_on_tls",
            ProxyError::MethodNotSupported => "method_not_supported",
            ProxyError::Misdirected => "misdirected",
            ProxyError::NoRoute => "no_route",
            ProxyError::BodyTooLarge(_) => "body_too_large",
            ProxyError::Connect { .. } => "connect",
            ProxyError::UpstreamTimeout { .. } => "upstream_timeout",
            ProxyError::UpstreamProtocol { .. } => "upstream_protocol",
            ProxyError::UpstreamUpgrade { .. } => "upstream_upgrade",
            ProxyError::UpstreamWriteTimeout { .. } => "upstream_write_timeout",
            ProxyError::NoHealthyBackend { .. } => "no_healthy_backend",
        }
    }

    /// Whether the client connection must close after the response: the request body may
    /// be unread, or the client cannot be trusted to frame its next request. As nginx does,
    /// every client error but a route miss or a misdirected host closes.
    pub fn closes_connection(&self) -> bool {
        match self {
            ProxyError::BadRequest(_)
            | ProxyError::AmbiguousLength
            | ProxyError::UnsupportedCoding
            | ProxyError::BadBody(_)
            | ProxyError::HeadTooLarge
            | ProxyError::VersionNotSupported
            | ProxyError::ExpectationFailed
            | ProxyError::ClientTimeout
            | ProxyError::ClientClosed
            | ProxyError::PlainHttpOnTls
            | ProxyError::MethodNotSupported
            | ProxyError::BodyTooLarge(_) => true,
            ProxyError::Misdirected
            | ProxyError::NoRoute
            | ProxyError::Connect { .. }
            | ProxyError::UpstreamTimeout { .. }
            | ProxyError::UpstreamProtocol { .. }
            | ProxyError::UpstreamUpgrade { .. }
            | ProxyError::UpstreamWriteTimeout { .. }
            | ProxyError::NoHealthyBackend { .. } => false,
        }
    }

    /// The short plain-text response for this error.
    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        let text = match &self {
            ProxyError::BadRequest(why) => format!("400 Bad Request: {why}\n"),
            _ => format!(
                "{} {}\n",
                status.as_u16(),
                status.canonical_reason().unwrap_or_default()
            ),
        };
        let mut resp = crate::body::text(status, text);
        let h = resp.headers_mut();
        if self.closes_connection() {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let ProxyError::NoHealthyBackend { .. } = self {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        resp
    }
}

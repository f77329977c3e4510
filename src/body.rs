//! The body types of the proxy: what it sends downstream, and how a request body reaches
//! a backend.
//!
//! None of them buffers a whole body: data (and trailers) pass one piece at a time.
//! [`Body`] carries the request's [`Record`] and counts the bytes it hands out, so the
//! record is finished when the response body is done or dropped. A request body reaches an
//! upstream client as a [`Source`] (the HTTP/1 lane's reader of the client connection, or
//! an HTTP/2 stream, each with the body limit and the body timeout), and hyper's HTTP/2
//! client takes it as a [`RequestBody`].

use crate::clock::Stall;
use crate::error::ProxyError;
use crate::record::Record;
use crate::upstream;
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::sync::mpsc;

/// Any error a body can fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every response sent downstream.
pub struct Body {
    inner: Inner,
    /// Finished when the body is done or dropped, with the bytes sent (HTTP/2 streams;
    /// the lane keeps its record itself).
    record: Option<Box<Record>>,
}

enum Inner {
    Full(Option<Bytes>),
    Upstream(upstream::Body),
}

impl Body {
    /// No body.
    pub fn empty() -> Body {
        Body::full(Bytes::new())
    }

    /// A fixed body.
    pub fn full(data: impl Into<Bytes>) -> Body {
        let data: Bytes = data.into();
        Body {
            inner: Inner::Full((!data.is_empty()).then_some(data)),
            record: None,
        }
    }

    /// A backend's response body, streamed.
    pub fn upstream(body: upstream::Body) -> Body {
        Body {
            inner: Inner::Upstream(body),
            record: None,
        }
    }

    /// Carry `record` until the body is done.
    pub fn set_record(&mut self, record: Box<Record>) {
        self.record = Some(record);
    }

    fn count(&mut self, n: u64) {
        if let Some(r) = &mut self.record {
            r.bytes += n;
        }
    }

    /// The backend connection's body, when it is one (the lane copies what is buffered).
    pub fn upstream_mut(&mut self) -> Option<&mut upstream::Body> {
        match &mut self.inner {
            Inner::Upstream(b) => Some(b),
            Inner::Full(_) => None,
        }
    }
}

/// A short `text/plain` response: errors and admin answers.
pub fn text(status: http::StatusCode, text: impl Into<Bytes>) -> http::Response<Body> {
    let mut resp = http::Response::new(Body::full(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let frame = match &mut this.inner {
            Inner::Full(data) => data.take().map(|d| Ok(Frame::data(d))),
            Inner::Upstream(b) => ready!(Pin::new(b).poll_frame(cx)),
        };
        if let Some(Ok(f)) = &frame
            && let Some(d) = f.data_ref()
        {
            this.count(d.len() as u64);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full(data) => data.is_none(),
            Inner::Upstream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Inner::Upstream(b) => b.size_hint(),
        }
    }
}

/// The request body went over `max_request_body_bytes`.
#[derive(Debug, thiserror::Error)]
#[error("request body is larger than {limit} bytes")]
pub struct TooLarge {
    pub limit: u64,
}

/// A request body as an upstream client pulls it. Errors are the client's (a broken body,
/// the limit, the body timeout), already in the form the client is answered in.
pub trait Source: Send {
    /// The next piece of the body; `None` at its end.
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, ProxyError>>>;

    /// The body's trailer fields, once its data has ended.
    fn trailers(&mut self) -> Option<HeaderMap> {
        None
    }
}

/// Counts a body against its limit: an error before the piece that would cross it, so a
/// backend never receives more than the limit.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    left: u64,
    limit: u64,
}

impl Limit {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Limit {
        Limit { left: limit, limit }
    }

    /// Take `n` bytes from the budget.
    pub fn take(&mut self, n: usize) -> Result<(), ProxyError> {
        match self.left.checked_sub(n as u64) {
            Some(left) => {
                self.left = left;
                Ok(())
            }
            None => Err(ProxyError::BodyTooLarge(TooLarge { limit: self.limit })),
        }
    }
}

/// An HTTP/2 request stream's body, limited and watched for stalls.
pub struct Stream {
    inner: Incoming,
    limit: Limit,
    stall: Stall,
    trailers: Option<HeaderMap>,
}

impl Stream {
    /// `inner` with `limit` bytes at most, and at most `timeout` between pieces.
    pub fn new(inner: Incoming, limit: u64, timeout: Duration) -> Stream {
        Stream {
            inner,
            limit: Limit::new(limit),
            stall: Stall::new(timeout),
            trailers: None,
        }
    }

    /// Whether the stream has no body at all.
    pub fn is_empty(&self) -> bool {
        self.inner.is_end_stream()
    }
}

impl Source for Stream {
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, ProxyError>>> {
        loop {
            let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending if self.stall.stuck(cx) => {
                    return Poll::Ready(Some(Err(ProxyError::ClientTimeout)));
                }
                Poll::Pending => return Poll::Pending,
                Poll::Ready(f) => f,
            };
            self.stall.progress();
            match frame {
                None => return Poll::Ready(None),
                Some(Err(_)) => return Poll::Ready(Some(Err(ProxyError::ClientClosed))),
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) if d.is_empty() => {}
                    Ok(d) => {
                        if let Err(e) = self.limit.take(d.len()) {
                            return Poll::Ready(Some(Err(e)));
                        }
                        return Poll::Ready(Some(Ok(d)));
                    }
                    Err(f) => self.trailers = f.into_trailers().ok(),
                },
            }
        }
    }

    fn trailers(&mut self) -> Option<HeaderMap> {
        self.trailers.take()
    }
}

/// A request body for hyper's HTTP/2 client.
pub enum RequestBody {
    Empty,
    /// From an HTTP/2 client.
    Stream(Stream),
    /// From the HTTP/1 lane, which reads the client connection in its own task and passes
    /// the pieces over.
    Channel(mpsc::Receiver<Result<Frame<Bytes>, ProxyError>>),
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut *self {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Stream(s) => match ready!(s.poll_data(cx)) {
                Some(Ok(d)) => Poll::Ready(Some(Ok(Frame::data(d)))),
                Some(Err(e)) => Poll::Ready(Some(Err(e.into()))),
                None => Poll::Ready(s.trailers().map(|t| Ok(Frame::trailers(t)))),
            },
            RequestBody::Channel(rx) => rx.poll_recv(cx).map(|f| f.map(|r| r.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Stream(s) => s.is_empty(),
            RequestBody::Channel(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Stream(s) => s.inner.size_hint(),
            RequestBody::Channel(_) => SizeHint::default(),
        }
    }
}

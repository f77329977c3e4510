//! The two body types of the proxy: what it sends downstream and what it sends upstream.
//!
//! Neither ever buffers a whole body: data frames (and trailers) pass through one at a
//! time. Both are plain enums rather than boxed trait objects, so a request allocates no
//! body of its own.

use crate::access_log;
use crate::upstream;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

/// Any error a body can fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every response sent downstream.
pub struct Body {
    inner: Inner,
    sent: u64,
    /// Written to the access log when the body is done or dropped, with the bytes sent.
    log: Option<Box<access_log::Entry>>,
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
            sent: 0,
            log: None,
        }
    }

    /// A backend's response body, streamed.
    pub fn upstream(body: upstream::Body) -> Body {
        Body {
            inner: Inner::Upstream(body),
            sent: 0,
            log: None,
        }
    }

    /// Count `n` bytes of this body that went out ahead of it (copied behind the head).
    pub fn sent_ahead(&mut self, n: u64) {
        self.sent += n;
    }

    /// Log `entry` once this body has been sent (or abandoned).
    pub fn set_log(&mut self, entry: Box<access_log::Entry>) {
        self.log = Some(entry);
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

impl Drop for Body {
    fn drop(&mut self) {
        if let Some(entry) = self.log.take() {
            entry.finish(self.sent);
        }
    }
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
            this.sent += d.len() as u64;
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

/// A request body forwarded upstream, cut off with [`TooLarge`] before the frame that would
/// take it past the limit, so a backend never receives more than the limit.
pub struct RequestBody {
    inner: Option<Incoming>,
    left: u64,
    limit: u64,
}

/// The request body went over `max_request_body_bytes`.
#[derive(Debug, thiserror::Error)]
#[error("request body is larger than {limit} bytes")]
pub struct TooLarge {
    pub limit: u64,
}

impl RequestBody {
    /// `inner` (if any) limited to `limit` bytes.
    pub fn limited(inner: Option<Incoming>, limit: u64) -> RequestBody {
        RequestBody {
            inner,
            left: limit,
            limit,
        }
    }

    /// No body (a replayed GET).
    pub fn empty() -> RequestBody {
        RequestBody {
            inner: None,
            left: 0,
            limit: 0,
        }
    }
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(inner) = &mut this.inner else {
            return Poll::Ready(None);
        };
        let frame = ready!(Pin::new(inner).poll_frame(cx));
        if let Some(Ok(f)) = &frame
            && let Some(d) = f.data_ref()
        {
            let n = d.len() as u64;
            if n > this.left {
                this.inner = None;
                return Poll::Ready(Some(Err(TooLarge { limit: this.limit }.into())));
            }
            this.left -= n;
        }
        Poll::Ready(frame.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

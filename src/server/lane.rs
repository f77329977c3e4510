//! The HTTP/1.1 lane: simple requests served without hyper's server.
//!
//! Why: with the upstream side inline (`upstream::h1`), hyper's HTTP/1.1 server and the
//! `http` types built for it were most of the cost per request (bench/README.md). The lane
//! parses the head with httparse and first offers it to the fast path
//! ([`Proxy::plan`] / [`Proxy::fast`]), which routes and rewrites it on its bytes; what the
//! fast path declines, the lane turns into `http` parts for [`Proxy::handle_parts`], as
//! hyper would. Either way the response head and a small body leave in one write.
//!
//! It takes only HTTP/1.1 requests with an origin-form target and no body, `Upgrade` or
//! `Expect`, within the head limits. The first request that is anything else, or does not
//! parse, hands the connection with every byte read so far to hyper for the rest of its
//! life, and hyper answers it exactly as before (400, 431, bodies, upgrades, HTTP/1.0).
//! `server::drive` runs the lane as it runs hyper: the head and idle timeouts, and the fast
//! path's response deadline, come from the connection's [`Clock`](super::stream::Clock),
//! shutdown from [`Lane::graceful_shutdown`].

use crate::body::Body;
use crate::clock::Finished;
use crate::proxy::fast::{self, Answer};
use crate::proxy::{ConnInfo, Proxy};
use crate::wire::{self, Known, MAX_HEADERS, field};
use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{HeaderName, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use std::future::{Future, poll_fn};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Data frames up to this size are copied behind the response head (one write); larger
/// ones are written from where they are.
const COALESCE: usize = 8 * 1024;
/// Room made in a request's header map for the fields `headers::to_backend` adds.
const FORWARDED_FIELDS: usize = 4;

/// How the lane left a connection.
pub enum Outcome<T> {
    /// Closed (by either side, an error, or shutdown).
    Done,
    /// A request for hyper: the stream and the bytes read from it but not consumed.
    Handoff(T, BytesMut),
}

/// The lane's future, with the flag [`Lane::graceful_shutdown`] sets.
pub struct Lane<T> {
    fut: Pin<Box<dyn Future<Output = Outcome<T>> + Send>>,
    closing: Arc<AtomicBool>,
}

impl<T> Lane<T>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Serve `io` for `proxy`; heads longer than `max_head` bytes go to hyper (431).
    pub fn new(io: T, proxy: Arc<Proxy>, info: Arc<ConnInfo>, max_head: usize) -> Lane<T> {
        let closing = Arc::new(AtomicBool::new(false));
        let fut = Box::pin(serve(io, proxy, info, max_head, closing.clone()));
        Lane { fut, closing }
    }

    /// Finish the request in service, then close instead of reading another.
    pub fn graceful_shutdown(&self) {
        self.closing.store(true, Relaxed);
    }
}

impl<T> Future for Lane<T> {
    type Output = Outcome<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome<T>> {
        self.fut.as_mut().poll(cx)
    }
}

/// A request head for [`Proxy::handle`], with what the response depends on.
struct Head {
    parts: http::request::Parts,
    /// `Connection: close`.
    close: bool,
    /// `TE: trailers`: the client takes trailers on a chunked response.
    trailers: bool,
}

/// A request the lane serves.
enum Ready {
    /// Taken by the fast path; the head for the backend is in the `up` buffer.
    Fast {
        plan: fast::Plan,
        close: bool,
        trailers: bool,
    },
    /// For [`Proxy::handle_parts`].
    Head(Box<Head>),
}

/// What the bytes at the front of the buffer are.
enum Parsed {
    Ready(Ready),
    Partial,
    /// Valid for hyper only, or invalid: hyper answers it.
    NotForLane,
    /// A head the lane consumed and found broken: 400, then close.
    Bad,
}

/// Buffers a connection keeps for its life.
struct Buffers {
    /// Bytes read from the client and not consumed yet.
    read: BytesMut,
    /// What is being written to the client.
    out: Vec<u8>,
    /// The head of a fast-path request for the backend.
    up: Vec<u8>,
    /// Field names and value ranges for a general-path header map.
    fields: Vec<(HeaderName, usize, usize)>,
}

async fn serve<T>(
    mut io: T,
    proxy: Arc<Proxy>,
    info: Arc<ConnInfo>,
    max_head: usize,
    closing: Arc<AtomicBool>,
) -> Outcome<T>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    info.clock.lane_started();
    let mut b = Buffers {
        read: BytesMut::with_capacity(4096),
        out: Vec::with_capacity(1024),
        up: Vec::with_capacity(1024),
        fields: Vec::new(),
    };
    loop {
        let ready = loop {
            match parse(&mut b, max_head, &proxy, &info) {
                Parsed::Ready(ready) => break ready,
                Parsed::Partial => {}
                Parsed::NotForLane => {
                    // hyper re-reads these bytes from the buffer, not through the clock's
                    // stream: the clock must see this head, not an earlier one.
                    info.clock.replace_head(&b.read);
                    return Outcome::Handoff(io, b.read);
                }
                Parsed::Bad => {
                    let resp = crate::body::text(
                        StatusCode::BAD_REQUEST,
                        "400 Bad Request: invalid request target or header\n",
                    );
                    let _ = write(&mut io, resp, false, true, false, &mut b.out).await;
                    return Outcome::Done;
                }
            }
            let buf = &mut b.read;
            let read = poll_fn(|cx| {
                // Shutdown closes a connection between requests, not in one.
                if buf.is_empty() && closing.load(Relaxed) {
                    return Poll::Ready(Ok(0));
                }
                if buf.capacity() - buf.len() < 1024 {
                    buf.reserve(4096);
                }
                tokio_util::io::poll_read_buf(Pin::new(&mut io), cx, buf)
            })
            .await;
            if !matches!(read, Ok(n) if n > 0) {
                return Outcome::Done;
            }
        };
        info.clock.request_started();
        let written = match ready {
            Ready::Fast {
                plan,
                close,
                trailers,
            } => {
                let answer = {
                    let _done = Finished(&info.clock);
                    proxy.fast(plan, &b.up, &info, close, &mut b.out).await
                };
                match answer {
                    Answer::Streamed { body, length } => {
                        write_body(&mut io, body, length, trailers, &mut b.out)
                            .await
                            .map(|()| !close)
                    }
                    Answer::Failed(resp) => {
                        write(&mut io, resp, false, close, trailers, &mut b.out).await
                    }
                }
            }
            Ready::Head(head) => {
                let Head {
                    parts,
                    close,
                    trailers,
                } = *head;
                let head_only = parts.method == Method::HEAD;
                let resp = {
                    let _done = Finished(&info.clock);
                    proxy.handle_parts(parts, None, &info).await
                };
                write(&mut io, resp, head_only, close, trailers, &mut b.out).await
            }
        };
        match written {
            Ok(true) if !closing.load(Relaxed) => {}
            _ => {
                let _ = io.shutdown().await;
                return Outcome::Done;
            }
        }
    }
}

/// Parse the head at the front of the read buffer; a head for the lane is taken out.
fn parse(b: &mut Buffers, max: usize, proxy: &Proxy, info: &ConnInfo) -> Parsed {
    let buf = &mut b.read;
    let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut r = httparse::Request::new(&mut []);
    let len = match r.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) if len <= max => len,
        Ok(httparse::Status::Partial) if buf.len() <= max => return Parsed::Partial,
        _ => return Parsed::NotForLane,
    };
    let (Some(method), Some(path), Some(1)) = (r.method, r.path, r.version) else {
        return Parsed::NotForLane;
    };
    if !path.starts_with('/') || method == "CONNECT" {
        return Parsed::NotForLane;
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::NotForLane;
    };
    let (mut close, mut trailers) = (false, false);
    let mut kinds = [Known::Other; MAX_HEADERS];
    for (h, kind) in r.headers.iter().zip(&mut kinds) {
        *kind = Known::of(h.name.as_bytes());
        match *kind {
            // A body (or its framing), an upgrade, or an expectation: hyper's.
            Known::ContentLength | Known::TransferEncoding | Known::Upgrade | Known::Expect => {
                return Parsed::NotForLane;
            }
            Known::Connection => close |= wire::has_token(h.value, b"close"),
            Known::Te => trailers |= wire::has_token(h.value, b"trailers"),
            _ => {}
        }
    }
    let req = fast::Request {
        head: &buf[..len],
        method,
        target: path,
        headers: r.headers,
        kinds: &kinds[..r.headers.len()],
    };
    if let Some(plan) = proxy.plan(&req, info, &mut b.up) {
        buf.advance(len);
        return Parsed::Ready(Ready::Fast {
            plan,
            close,
            trailers,
        });
    }
    let method = req.method;
    let fields = &mut b.fields;
    fields.clear();
    for h in r.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
            return Parsed::NotForLane;
        };
        let (start, end) = wire::span(buf, h.value);
        fields.push((name, start, end));
    }
    let target = wire::span(buf, path.as_bytes());
    let head = buf.split_to(len).freeze();
    let (Ok(uri), Some(headers)) = (
        Uri::from_maybe_shared(head.slice(target.0..target.1)),
        wire::header_map(&head, fields, FORWARDED_FIELDS),
    ) else {
        return Parsed::Bad;
    };
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    parts.headers = headers;
    Parsed::Ready(Ready::Head(Box::new(Head {
        parts,
        close,
        trailers,
    })))
}

/// Write `resp`; `Ok(true)` when the connection may carry another request.
async fn write<T: AsyncWrite + Unpin>(
    io: &mut T,
    resp: Response<Body>,
    head_only: bool,
    close: bool,
    trailers: bool,
    out: &mut Vec<u8>,
) -> io::Result<bool> {
    let (parts, body) = resp.into_parts();
    let status = parts.status;
    let mut keep_alive = !close;
    let mut length = None;
    let mut dated = false;
    out.clear();
    wire::status_line(out, status);
    for (name, value) in &parts.headers {
        if *name == CONNECTION {
            keep_alive &= !wire::has_token(value.as_bytes(), b"close");
            continue;
        }
        if *name == TRANSFER_ENCODING {
            continue;
        }
        if *name == CONTENT_LENGTH {
            length = wire::content_length(value.as_bytes());
        } else if *name == DATE {
            dated = true;
        }
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if !dated {
        wire::date_field(out);
    }
    let bodiless = head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let left = if bodiless {
        Some(0)
    } else if length.is_some() {
        length
    } else if let Some(n) = body.size_hint().exact() {
        out.extend_from_slice(b"content-length: ");
        wire::decimal(out, n);
        out.extend_from_slice(b"\r\n");
        Some(n)
    } else {
        field(out, b"transfer-encoding", b"chunked");
        None
    };
    if !keep_alive {
        field(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    if bodiless {
        io.write_all(out).await?;
        return Ok(keep_alive);
    }
    write_body(io, body, left, trailers, out).await?;
    Ok(keep_alive)
}

/// Write `body` behind the head already in `out`: `left` bytes, or chunked when `None`.
async fn write_body<T: AsyncWrite + Unpin>(
    io: &mut T,
    mut body: Body,
    mut left: Option<u64>,
    trailers: bool,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    let mut trailer_fields = None;
    loop {
        // Take what the body has ready; write out before waiting for more.
        let frame = match poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
            Poll::Ready(f) => f,
            Poll::Pending => {
                if !out.is_empty() {
                    io.write_all(out).await?;
                    out.clear();
                }
                body.frame().await
            }
        };
        let frame = match frame {
            None => break,
            Some(Ok(f)) => f,
            // The head may be out already: the only honest signal left is closing.
            Some(Err(e)) => return Err(io::Error::other(e)),
        };
        let data = match frame.into_data() {
            Ok(d) => d,
            Err(f) => {
                if trailers && let Ok(t) = f.into_trailers() {
                    trailer_fields = Some(t);
                }
                continue;
            }
        };
        if data.is_empty() {
            continue;
        }
        match &mut left {
            Some(n) => {
                if data.len() as u64 > *n {
                    return Err(io::Error::other("body longer than its Content-Length"));
                }
                *n -= data.len() as u64;
                put(io, out, data).await?;
            }
            None => {
                wire::hex(out, data.len() as u64);
                out.extend_from_slice(b"\r\n");
                put(io, out, data).await?;
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    match left {
        Some(0) => {}
        Some(_) => return Err(io::Error::other("body shorter than its Content-Length")),
        None => {
            out.extend_from_slice(b"0\r\n");
            for (name, value) in trailer_fields.iter().flatten() {
                field(out, name.as_str().as_bytes(), value.as_bytes());
            }
            out.extend_from_slice(b"\r\n");
        }
    }
    if !out.is_empty() {
        io.write_all(out).await?;
    }
    Ok(())
}

/// Queue `data` behind what `out` holds, or write both when `data` is large.
async fn put<T: AsyncWrite + Unpin>(io: &mut T, out: &mut Vec<u8>, data: Bytes) -> io::Result<()> {
    if data.len() <= COALESCE {
        out.extend_from_slice(&data);
        return Ok(());
    }
    if !out.is_empty() {
        io.write_all(out).await?;
        out.clear();
    }
    io.write_all(&data).await
}

/// A stream that first yields bytes already read from it.
pub struct Rewind<T> {
    pre: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    /// `inner`, with `pre` read again first.
    pub fn new(pre: Bytes, inner: T) -> Rewind<T> {
        Rewind { pre, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre[..n]);
            self.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

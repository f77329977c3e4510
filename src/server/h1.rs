//! The HTTP/1 wire path, "the lane": HTTP/1.0 and 1.1 client connections end to end, read
//! and written on their bytes.
//!
//! Why not hyper's server: most of the cost per request was in building and dropping
//! `http` types for it (bench/README.md), and owning the bytes is what lets the proxy judge
//! each request's framing by its own fields. Per request, the lane parses the head
//! ([`head`]), runs the pipeline's [`decide`] and writes the backend's head straight from
//! the client's bytes with the request [`edit`]s, while the head is still in the read
//! buffer; then it forwards (the body streams from the client connection, [`body`]),
//! and writes the response ([`write`](mod@write)) from the backend's bytes, or from a header map for
//! an HTTP/2 backend and for the proxy's own answers. Upgrades become a tunnel after a
//! 101 for the protocol asked.
//!
//! Time: the head and idle timeouts and the wait for a response head come from the
//! connection's [`ConnClock`](crate::clock::ConnClock), which `server::Conn::drive` turns into one timer; body reads and
//! writes have their own watchdogs. Bytes left in the buffer after a response are the
//! next head in progress: the head timeout runs for them.

pub mod body;
pub mod head;
pub mod write;

use crate::body::{Body, Limit, RequestBody, Source};
use crate::config::Limits;
use crate::error::{ProxyError, UpstreamError};
use crate::pool::InFlight;
use crate::proxy::choose;
use crate::proxy::decide::{self, Decision};
use crate::proxy::edit::{self, Scan, To as EditTo};
use crate::proxy::forward::{self, Clocked, Inbound, Outbound};
use crate::proxy::{self, ConnInfo, Proxy};
use crate::record::{Record, Text};
use crate::snapshot::Snapshot;
use crate::upstream::{self, Recv};
use body::{ClientBody, Left};
use bytes::{Buf, BytesMut};
use head::{Framing, Head, Slots};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use write::{Broke, Out, To};

/// The lane's future, with the flag [`Lane::graceful_shutdown`] sets.
pub struct Lane {
    fut: Pin<Box<dyn Future<Output = ()> + Send>>,
    closing: Arc<AtomicBool>,
}

impl Lane {
    /// Serve `io` for `proxy`.
    pub fn new<T>(io: T, proxy: Arc<Proxy>, info: Arc<ConnInfo>, limits: Arc<Limits>) -> Lane
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let closing = Arc::new(AtomicBool::new(false));
        let conn = Conn {
            io,
            proxy,
            info,
            limits,
            closing: closing.clone(),
            b: Buffers {
                read: BytesMut::with_capacity(4096),
                out: Vec::with_capacity(1024),
                up: Vec::with_capacity(1024),
            },
        };
        Lane {
            fut: Box::pin(conn.serve()),
            closing,
        }
    }

    /// Finish the request in service, then close instead of reading another.
    pub fn graceful_shutdown(&self) {
        self.closing.store(true, Relaxed);
    }
}

impl Future for Lane {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.fut.as_mut().poll(cx)
    }
}

/// Buffers a connection keeps for its life.
struct Buffers {
    /// Bytes read from the client and not consumed yet.
    read: BytesMut,
    /// What is being written to the client.
    out: Vec<u8>,
    /// The head (and any small body) for the backend.
    up: Vec<u8>,
}

struct Conn<T> {
    io: T,
    proxy: Arc<Proxy>,
    info: Arc<ConnInfo>,
    limits: Arc<Limits>,
    closing: Arc<AtomicBool>,
    b: Buffers,
}

/// A request, decided, with everything the rest of it needs once its head has left the
/// read buffer.
struct Prepared {
    to: To,
    /// Bytes of the read buffer the head (and a body copied along) took.
    used: usize,
    /// Request body bytes still to come from the connection.
    left: Left,
    action: Action,
}

enum Action {
    /// The proxy's own answer (an error, a redirect); boxed, not to weigh down the usual
    /// request.
    Answer(Box<Response<Body>>),
    /// To an HTTP/1.1 backend; its head is in the `up` buffer.
    H1(Forward),
    /// To an HTTP/2 backend; boxed like `Answer`.
    H2(Forward, Box<Request<RequestBody>>),
}

struct Forward {
    snap: Arc<Snapshot>,
    pool: usize,
    backend: usize,
    /// The hash key, for retries along the ring.
    key: Option<u64>,
    method: Method,
    limit: Limit,
    expect_continue: bool,
    /// The protocol the request upgrades to.
    upgrade: Option<Vec<u8>>,
    /// The body goes up chunked.
    chunked: bool,
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn<T> {
    async fn serve(mut self) {
        loop {
            let Some((mut record, p)) = self.next().await else {
                return;
            };
            let go_on = self.exchange(p, &mut record).await;
            // The record is finished here, once the response is all out.
            drop(record);
            if !go_on || self.closing.load(Relaxed) {
                let _ = self.io.shutdown().await;
                return;
            }
            // What follows the response in the buffer is the next head, under way.
            if !self.b.read.is_empty() {
                self.info.clock.head_started();
            }
        }
    }

    /// Read until a head is complete (or broken) and prepare its request; `None` when the
    /// connection ends first.
    async fn next(&mut self) -> Option<(Record, Prepared)> {
        loop {
            if !self.b.read.is_empty()
                && let Some(p) = self.prepare()
            {
                return Some(p);
            }
            let was_empty = self.b.read.is_empty();
            let (io, buf, closing) = (&mut self.io, &mut self.b.read, &self.closing);
            let read = poll_fn(|cx| {
                // Shutdown closes a connection between requests, not in one.
                if buf.is_empty() && closing.load(Relaxed) {
                    return Poll::Ready(Ok(0));
                }
                if buf.capacity() - buf.len() < 1024 {
                    buf.reserve(4096);
                }
                tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, buf)
            })
            .await;
            if !matches!(read, Ok(n) if n > 0) {
                return None;
            }
            if was_empty {
                self.info.clock.head_started();
            }
        }
    }

    /// Parse the head at the front of the read buffer and decide its request, writing the
    /// backend's head into `up`; `None` while the head is incomplete.
    fn prepare(&mut self) -> Option<(Record, Prepared)> {
        // The request's snapshot, and its limits: a reload changes them for the next
        // request of a kept-alive connection too.
        let snap = self.proxy.snapshot();
        if !Arc::ptr_eq(&snap.limits, &self.limits) {
            self.limits = snap.limits.clone();
        }
        let mut slots = Slots::default();
        let parsed = head::parse(
            &self.b.read,
            self.limits.max_request_header_bytes,
            &mut slots,
        );
        let to = |h: Option<&Head<'_>>| To {
            head_only: h.is_some_and(|h| h.method == Method::HEAD),
            version: h.map_or(Version::HTTP_11, |h| h.version),
            close: h.is_none_or(|h| h.close),
            trailers: false,
            timeout: self.limits.client_send_timeout,
        };
        let h = match parsed {
            Ok(None) => return None,
            Ok(Some(h)) => h,
            Err(e) => {
                let mut record = Record::start(&self.info);
                let resp = proxy::fail(e, &mut record);
                return Some((
                    record,
                    Prepared {
                        to: to(None),
                        used: self.b.read.len(),
                        left: Left::Broken,
                        action: Action::Answer(Box::new(resp)),
                    },
                ));
            }
        };
        let mut record = Record::start(&self.info);
        record.method = Some(h.method.clone());
        record.version = h.version;
        let scan = Scan::request(h.fields());
        if record.wants_text() {
            record.text = Some(Box::new(text(&h)));
        }
        let mut to = to(Some(&h));
        to.trailers = scan.te_trailers;
        let (left, whole) = match h.framing {
            Framing::None => (Left::Done, 0),
            Framing::Length(n) => {
                // A small body that came with its head travels with it.
                let rest = self.b.read.len() - h.len;
                match usize::try_from(n) {
                    Ok(n) if n <= write::WHOLE_BODY && n <= rest => (Left::Done, n),
                    _ => (Left::Length(n), 0),
                }
            }
            Framing::Chunked => (Left::Chunked(Default::default()), 0),
        };
        let mut routed = crate::router::Routed::default();
        let action = match decide::decide(&snap, &self.info, &h, &mut routed) {
            Err(e) => {
                record.refused(&snap, routed.0, &e);
                Action::Answer(Box::new(proxy::fail(e, &mut record)))
            }
            Ok(Decision::Redirect(location)) => {
                Action::Answer(Box::new(proxy::redirect(location, &mut record)))
            }
            Ok(Decision::Forward(d)) => {
                record.decided(&snap, &d, scan.client_id);
                let pool = &snap.pools[d.choice.pool];
                let h2 = pool.connector.h2;
                let chunked = matches!(h.framing, Framing::Chunked);
                let id = (!record.id_is_given()).then(|| record.id_bytes());
                let edits = scan.edits(EditTo {
                    client_ip: self.info.client_ip.as_bytes(),
                    tls: self.info.tls.is_some(),
                    forwarded_host: d.raw_host,
                    host: d.authority.map(str::as_bytes),
                    request_id: id,
                    chunked: chunked && !h2,
                    length: h.length,
                    upgrade: !h2 && !h.has_body() && h.version == Version::HTTP_11,
                    keep_forwarded_for: self.info.forwarded.keeps_list(),
                    strip: d.strip(&snap),
                    join_cookies: false,
                });
                let fwd = Forward {
                    snap: snap.clone(),
                    pool: d.choice.pool,
                    backend: d.choice.backend,
                    key: d.choice.key,
                    method: h.method.clone(),
                    limit: Limit::new(d.body_limit),
                    expect_continue: h.expect_continue,
                    upgrade: edits.upgrade().map(<[u8]>::to_vec),
                    chunked: chunked && !h2,
                };
                if h2 {
                    let req = h2_request(&h, &d, &edits, whole, &self.b.read);
                    Action::H2(fwd, Box::new(req))
                } else {
                    let up = &mut self.b.up;
                    d.request_line(&h.method, up);
                    edits.write(|| h.fields(), Some(&self.b.read[..h.len]), up);
                    up.extend_from_slice(&self.b.read[h.len..h.len + whole]);
                    Action::H1(fwd)
                }
            }
        };
        let mut used = h.len + whole;
        let mut left = left;
        if let Action::Answer(_) = action
            && let Left::Length(n) = left
            && (self.b.read.len() - used) as u64 >= n
        {
            // An unread body that is all here is skipped, so the connection goes on.
            used += n as usize;
            left = Left::Done;
        }
        Some((
            record,
            Prepared {
                to,
                used,
                left,
                action,
            },
        ))
    }

    /// Serve one prepared request; whether the connection may carry another.
    async fn exchange(&mut self, p: Prepared, record: &mut Record) -> bool {
        let Prepared {
            mut to,
            used,
            left,
            action,
        } = p;
        self.b.read.advance(used);
        let (fwd, req) = match action {
            Action::Answer(resp) => {
                let complete = matches!(left, Left::Done);
                to.close |= !complete;
                let mut o = Out::new(&mut self.io, to.timeout);
                return write_map(&mut o, *resp, &to, &mut self.b.out, record).await && complete;
            }
            Action::H1(fwd) => (fwd, None),
            Action::H2(fwd, req) => (fwd, Some(req)),
        };
        let snap = fwd.snap.clone();
        let pool = &snap.pools[fwd.pool];
        let streamed = !matches!(left, Left::Done);
        // RFC 9110 §10.1.1: answer the expectation before reading the body, as nginx does,
        // unless the client sent the body without waiting.
        if fwd.expect_continue && streamed && self.b.read.is_empty() {
            let mut o = Out::new(&mut self.io, to.timeout);
            if o.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err() {
                return false;
            }
        }
        let wait = Clocked(&self.info.clock, pool.timeouts.response);
        let read_timeout = pool.timeouts.read;
        let body_timeout = self.limits.client_body_timeout;
        let Some(req) = req else {
            let mut client = ClientBody::new(
                &mut self.io,
                &mut self.b.read,
                left,
                fwd.limit,
                body_timeout,
            );
            let out = Outbound::H1 {
                head: &self.b.up,
                body: streamed.then_some(&mut client as &mut dyn Source),
                chunked: fwd.chunked,
                method: &fwd.method,
                upgrade: fwd.upgrade.as_deref(),
                client: (self.info.peer, self.info.local),
            };
            let answer = forward::forward(pool, fwd.backend, fwd.key, out, wait, record).await;
            let (left, limit) = client.state();
            let body_done = matches!(left, Left::Done);
            to.close |= !body_done;
            let answer = match answer {
                Ok(a) => a,
                Err(e) => {
                    let resp = proxy::fail(e, record);
                    let mut o = Out::new(&mut self.io, to.timeout);
                    return write_map(&mut o, resp, &to, &mut self.b.out, record).await
                        && body_done;
                }
            };
            let Inbound::H1 { head, conn } = answer.inbound else {
                unreachable!("an HTTP/1.1 exchange answers in HTTP/1.1")
            };
            if head.status == StatusCode::SWITCHING_PROTOCOLS {
                let protocol = fwd.upgrade.unwrap_or_default();
                self.tunnel(head, conn, &protocol, record).await;
                return false;
            }
            let (framing, keep_alive) = client_head(&head, &conn, record, &to, &mut self.b.out);
            if head.early && !body_done {
                // The backend answered while the body still goes up: both stream at once,
                // each on its own half of both connections.
                let (io, buf) = conn.into_tunnel();
                let (ur, mut uw) = tokio::io::split(io);
                let recv = Recv::Duplex {
                    framing: head.framing,
                    buf,
                    io: ur,
                };
                let out = &mut self.b.out;
                let (framing, mut body) =
                    response_body(recv, framing, answer.in_flight, read_timeout, record, out);
                let (mut cr, mut cw) = tokio::io::split(&mut self.io);
                let mut client =
                    ClientBody::new(&mut cr, &mut self.b.read, left, limit, body_timeout);
                let upload =
                    upstream::h1::send_rest(&mut uw, &mut client, fwd.chunked, pool.timeouts.write);
                let to = To { close: true, ..to };
                let download = async {
                    let mut o = Out::new(&mut cw, to.timeout);
                    write_body(&mut o, &mut body, framing, &to, out, record).await
                };
                let (sent, _) = tokio::join!(upload, download);
                if let Err(f) = sent {
                    tracing::debug!(failure = ?f, "request body cut while its response streamed");
                }
                return false;
            }
            let recv = Recv::H1 {
                framing: head.framing,
                conn,
            };
            let out = &mut self.b.out;
            let (framing, mut body) =
                response_body(recv, framing, answer.in_flight, read_timeout, record, out);
            let mut o = Out::new(&mut self.io, to.timeout);
            return write_body(&mut o, &mut body, framing, &to, out, record).await
                && keep_alive
                && body_done;
        };
        // To an HTTP/2 backend: the client's body goes over a channel while the exchange
        // runs, and keeps going while the response is written.
        let mut req = *req;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        if streamed {
            *req.body_mut() = RequestBody::Channel(rx);
        }
        let replay = forward::Replay::of(&req);
        let (mut rd, mut wr) = tokio::io::split(&mut self.io);
        let mut client = ClientBody::new(&mut rd, &mut self.b.read, left, fwd.limit, body_timeout);
        let pumped = async {
            if streamed {
                pump(&mut client, tx).await;
            }
        };
        let out = &mut self.b.out;
        let served = async {
            let out_req = Outbound::H2 {
                req: Some(Box::new(req)),
                replay,
            };
            let resp =
                match forward::forward(pool, fwd.backend, fwd.key, out_req, wait, record).await {
                    Ok(answer) => proxy::to_map(answer, read_timeout, record),
                    Err(e) => proxy::fail(e, record),
                };
            let mut o = Out::new(&mut wr, to.timeout);
            write_map(&mut o, resp, &to, out, record).await
        };
        let ((), go_on) = tokio::join!(pumped, served);
        go_on && matches!(client.state().0, Left::Done)
    }

    /// A 101 for the protocol asked: both connections become one byte stream.
    async fn tunnel(
        &mut self,
        head: upstream::h1::Head,
        conn: Box<upstream::h1::Conn>,
        protocol: &[u8],
        record: &mut Record,
    ) {
        let out = &mut self.b.out;
        out.clear();
        crate::wire::status_line(out, head.status);
        let fields = || proxy::head_fields(&head, &conn);
        let set = choose::cookies(record);
        let edits = edit::Response::scan(fields(), Some(protocol), record.id(), head.status, &set);
        edits.write(fields(), Some(&head.bytes), true, out);
        out.extend_from_slice(b"\r\n");
        record.status = 101;
        let (mut upstream, ahead) = conn.into_tunnel();
        let mut o = Out::new(&mut self.io, self.limits.client_send_timeout);
        if o.write_all(out).await.is_err() || o.write_all(&ahead).await.is_err() {
            return;
        }
        if !self.b.read.is_empty() && upstream.write_all(&self.b.read).await.is_err() {
            return;
        }
        self.b.read.clear();
        let label = record.names().backend.unwrap_or_else(|| "-".into());
        record.bytes = proxy::upgrade::tunnel(&mut self.io, &mut upstream, &label).await;
    }
}

/// Write the client's head for a backend's HTTP/1.1 response into `out`, edited; the body's
/// framing for the client and whether the connection stays open.
fn client_head(
    head: &upstream::h1::Head,
    conn: &upstream::h1::Conn,
    record: &mut Record,
    to: &To,
    out: &mut Vec<u8>,
) -> (write::Framing, bool) {
    let written = {
        let set = choose::cookies(record);
        let id = record.id();
        let fields = || proxy::head_fields(head, conn);
        let edits = edit::Response::scan(fields(), None, id, head.status, &set);
        write::head_from_h1(head, fields(), &edits, to, out)
    };
    record.status = head.status.as_u16();
    written
}

/// The response body for the client; a small body already read is copied behind the head
/// in `out`. The framing that is left to write.
fn response_body(
    recv: Recv,
    framing: write::Framing,
    in_flight: InFlight,
    read_timeout: Duration,
    record: &mut Record,
    out: &mut Vec<u8>,
) -> (write::Framing, Body) {
    let mut body = Body::upstream(upstream::Body::new(recv, in_flight, read_timeout));
    if let write::Framing::Length(len) = framing
        && let Some(n) = body
            .upstream_mut()
            .and_then(|u| u.copy_whole(write::WHOLE_BODY, out))
    {
        record.bytes += n as u64;
        return (write::Framing::Length(len - n as u64), body);
    }
    (framing, body)
}

/// Write a body behind the head in `out`; a body that breaks before anything was written
/// becomes a 502 instead. Whether the connection may go on.
async fn write_body<W: AsyncWrite + Unpin>(
    o: &mut Out<'_, W>,
    body: &mut Body,
    framing: write::Framing,
    to: &To,
    out: &mut Vec<u8>,
    record: &mut Record,
) -> bool {
    match write::send_body(o, body, framing, to, out, &mut record.bytes).await {
        Ok(()) => true,
        Err(Broke::Early(e)) => {
            let backend = record.names().backend.unwrap_or_else(|| "-".into());
            record.bytes = 0;
            let source = e
                .downcast::<UpstreamError>()
                .map_or(UpstreamError::Malformed("broken response body"), |u| *u);
            let resp = proxy::fail(ProxyError::UpstreamProtocol { backend, source }, record);
            let to = To { close: true, ..*to };
            write_map(o, resp, &to, out, record).await;
            false
        }
        Err(_) => false,
    }
}

/// Write a header-map response; whether the connection may go on.
async fn write_map<W: AsyncWrite + Unpin>(
    o: &mut Out<'_, W>,
    resp: Response<Body>,
    to: &To,
    out: &mut Vec<u8>,
    record: &mut Record,
) -> bool {
    write::response(o, resp, to, out, &mut record.bytes)
        .await
        .unwrap_or(false)
}

/// Pass the client's body to hyper's HTTP/2 client through `tx`.
async fn pump<S: Source>(
    client: &mut S,
    tx: tokio::sync::mpsc::Sender<Result<http_body::Frame<bytes::Bytes>, ProxyError>>,
) {
    loop {
        let piece = poll_fn(|cx| client.poll_data(cx)).await;
        let frame = match piece {
            Some(Ok(d)) => Ok(http_body::Frame::data(d)),
            Some(Err(e)) => Err(e),
            None => {
                if let Some(t) = client.trailers() {
                    let _ = tx.send(Ok(http_body::Frame::trailers(t))).await;
                }
                return;
            }
        };
        let failed = frame.is_err();
        if tx.send(frame).await.is_err() || failed {
            return;
        }
    }
}

/// The request for an HTTP/2 backend: a header map from the head's fields, edited.
fn h2_request(
    h: &Head<'_>,
    d: &decide::Forward<'_>,
    edits: &edit::Request<'_>,
    whole: usize,
    read: &BytesMut,
) -> Request<RequestBody> {
    let mut map = HeaderMap::with_capacity(h.headers.len());
    for f in h.fields() {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(f.name),
            HeaderValue::from_bytes(f.value),
        ) {
            map.append(n, v);
        }
    }
    let map = edits.apply(&map);
    let mut pq = d.path.to_string();
    if let Some(q) = d.query {
        pq.push('?');
        pq.push_str(q);
    }
    let mut req = Request::new(RequestBody::Empty);
    *req.method_mut() = h.method.clone();
    *req.uri_mut() = Uri::try_from(pq).unwrap_or_else(|_| Uri::from_static("/"));
    *req.headers_mut() = map;
    if whole > 0 {
        let data = bytes::Bytes::copy_from_slice(&read[h.len..h.len + whole]);
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let _ = tx.try_send(Ok(http_body::Frame::data(data)));
        *req.body_mut() = RequestBody::Channel(rx);
    }
    req
}

/// What the access log reads of a request head.
fn text(h: &Head<'_>) -> Text {
    let value = |name: &str| {
        h.fields()
            .find(|f| f.name.eq_ignore_ascii_case(name.as_bytes()))
            .map(|f| String::from_utf8_lossy(f.value).into_owned())
    };
    let host = match decide::Target::parse(h.target) {
        Ok(decide::Target {
            authority: Some(a), ..
        }) => a.to_string(),
        _ => value("host").unwrap_or_default(),
    };
    Text {
        host,
        target: h.target.to_string(),
        referer: value("referer"),
        user_agent: value("user-agent"),
    }
}

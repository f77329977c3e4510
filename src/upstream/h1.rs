//! The HTTP/1.1 client: every request to an HTTP/1.1 backend, over TCP or TLS, driven
//! inside the request's own task.
//!
//! Why it exists: hyper's client runs every connection in a task of its own and passes each
//! request and response across channels; for the small requests that make up most of a
//! proxy's traffic that hand-off cost about a third of Switchyard's instructions per
//! request (bench/README.md). This client writes the request head (with a body that came
//! along) in one write, streams the rest of a body from its [`Source`], parses the response
//! with `httparse` and reads the body straight off the socket as the client side asks.
//!
//! Response framing follows RFC 9112 §6.3 and refuses what smuggling needs: conflicting
//! lengths, heads over [`MAX_HEAD`], chunked bodies outside [`chunked`]'s strict rules, a
//! 101 that was not asked for or switches to another protocol than the one asked for. A
//! connection is reused only after a response that ended exactly where its framing said,
//! from a backend that did not ask to close, spoke HTTP/1.1 framing it may keep alive, and
//! sent nothing more.

use super::Failure;
use crate::body::Source;
use crate::clock::Stall;
use crate::error::{ProxyError, UpstreamError};
use crate::wire::chunked::{self, Piece};
use crate::wire::{self, Known, MAX_HEADERS, content_length, last_token_is, tokens};
use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, StatusCode, Version};
use http_body::{Frame, SizeHint};
use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Longest response head accepted.
pub const MAX_HEAD: usize = 64 * 1024;
/// Free space made in the read buffer before each read: a response of 16 KiB and its head
/// arrive in one read (the space left over from the last one may be too little).
const READ_SIZE: usize = 20 * 1024;
/// Body pieces up to this size are copied behind their chunk header (one write).
const COPY_SMALL: usize = 8 * 1024;

/// A backend connection's byte stream.
pub enum Io {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// A connection to a backend, between or during exchanges.
pub struct Conn {
    io: Io,
    /// Bytes read and not yet consumed.
    buf: BytesMut,
    /// Where the fields of the last response head lie in its bytes.
    fields: Vec<Field>,
    /// Chunk headers of a streamed request body.
    scratch: Vec<u8>,
    /// It began with a PROXY header naming one client: never reused for another.
    private: bool,
}

/// One exchange's request and how to treat its response.
pub struct Exchange<'a, 's> {
    /// The request head, and any body that came along, in wire form.
    pub head: &'a [u8],
    /// The rest of the body, read as it comes.
    pub body: Option<&'a mut (dyn Source + 's)>,
    /// Send `body` chunked (its length is not known).
    pub chunked: bool,
    /// A HEAD request: the response has no body whatever it says.
    pub head_request: bool,
    /// The protocol the request asks to upgrade to: a 101 for it is a success.
    pub upgrade: Option<&'a [u8]>,
    /// Longest wait for the backend to take more of the body (`timeouts.write`).
    pub write_timeout: Duration,
}

/// A response head as received: its bytes, with [`Conn::fields`] pointing into them.
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub bytes: Bytes,
    /// The head had `Transfer-Encoding`, which voids any `Content-Length`.
    pub coded: bool,
    pub framing: Framing,
    /// The request's body was not all sent: the backend answered first.
    pub early: bool,
}

/// Where one field of a response head lies in the head's bytes.
#[derive(Clone, Copy)]
pub struct Field {
    pub known: Known,
    name: (u32, u32),
    value: (u32, u32),
}

impl Field {
    /// The field's name, as the backend spelled it.
    pub fn name<'a>(&self, head: &'a [u8]) -> &'a [u8] {
        &head[self.name.0 as usize..self.name.1 as usize]
    }

    /// The field's value.
    pub fn value<'a>(&self, head: &'a [u8]) -> &'a [u8] {
        &head[self.value.0 as usize..self.value.1 as usize]
    }
}

impl Conn {
    /// Wrap a freshly connected stream.
    pub fn new(io: Io) -> Conn {
        Conn {
            io,
            buf: BytesMut::new(),
            fields: Vec::new(),
            scratch: Vec::new(),
            private: false,
        }
    }

    /// A connection for one client's request only (it named the client in a PROXY header).
    pub fn private(io: Io) -> Conn {
        Conn {
            private: true,
            ..Conn::new(io)
        }
    }

    /// Whether it may serve only the request it was made for.
    pub fn is_private(&self) -> bool {
        self.private
    }

    /// Whether an idle connection still looks open: not closed by the backend, and nothing
    /// unasked-for sent. Costs no system call on a quiet plain connection.
    pub fn is_open(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match &mut self.io {
            Io::Tcp(t) => match t.poll_read_ready(&mut cx) {
                Poll::Pending => true,
                Poll::Ready(Err(_)) => false,
                Poll::Ready(Ok(())) => {
                    let mut probe = [0u8; 1];
                    matches!(t.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
                }
            },
            // TLS may have records to process (session tickets) that carry no data.
            Io::Tls(s) => {
                let mut probe = [0u8; 1];
                let mut rb = ReadBuf::new(&mut probe);
                Pin::new(s).poll_read(&mut cx, &mut rb).is_pending()
            }
        }
    }

    /// Send the request of `x` and read the response head. On a response that came
    /// before the body was all sent, [`Head::early`] says so.
    pub async fn exchange(
        &mut self,
        x: Exchange<'_, '_>,
        wait: impl Wait,
    ) -> Result<Head, Failure> {
        let backend = |error| Failure::Backend { error, sent: true };
        let written = poll_fn(|cx| Pin::new(&mut self.io).poll_write(cx, x.head))
            .await
            .map_err(|e| Failure::Backend {
                error: UpstreamError::Io(e),
                sent: false,
            })?;
        write_all(&mut self.io, &x.head[written..], x.write_timeout).await?;
        let mut early = false;
        if let Some(body) = x.body {
            early = self.send_body(body, x.chunked, x.write_timeout).await?;
            // The response wait runs from now, and a streamed body may have taken a while:
            // refresh the thread's recent time that the wait's deadline is counted from.
            crate::clock::now_ms();
        }
        let mut head = wait
            .head(poll_fn(|cx| self.poll_head(cx, x.head_request, x.upgrade)))
            .await
            .ok_or(Failure::Late)?
            .map_err(backend)?;
        head.early = early;
        Ok(head)
    }

    /// Stream the rest of a request body; `Ok(true)` when the backend answered before it
    /// was all sent (the rest is not sent now).
    async fn send_body(
        &mut self,
        body: &mut dyn Source,
        chunked: bool,
        timeout: Duration,
    ) -> Result<bool, Failure> {
        /// What the body loop waits for.
        enum Next {
            Data(Result<Bytes, ProxyError>),
            End,
            /// The backend answered before the body was all sent.
            Answered,
        }
        let failed = |error| Failure::Backend { error, sent: true };
        loop {
            // While the client's body is pending, a backend that already answers (a 413,
            // a redirect, a stream of its own) is heard instead of waited on.
            let next = poll_fn(|cx| match body.poll_data(cx) {
                Poll::Ready(Some(d)) => Poll::Ready(Ok(Next::Data(d))),
                Poll::Ready(None) => Poll::Ready(Ok(Next::End)),
                Poll::Pending => match fill(&mut self.io, &mut self.buf, cx) {
                    Poll::Ready(Ok(0)) => Poll::Ready(Err(failed(UpstreamError::Closed))),
                    Poll::Ready(Ok(_)) => Poll::Ready(Ok(Next::Answered)),
                    Poll::Ready(Err(e)) => Poll::Ready(Err(failed(UpstreamError::Io(e)))),
                    Poll::Pending => Poll::Pending,
                },
            })
            .await?;
            let piece = match next {
                Next::Answered => return Ok(true),
                Next::Data(d) => Some(d.map_err(Failure::Client)?),
                Next::End => None,
            };
            let trailers = if piece.is_none() {
                body.trailers()
            } else {
                None
            };
            write_piece(
                &mut self.io,
                piece.as_ref(),
                chunked,
                trailers.as_ref(),
                timeout,
                &mut self.scratch,
            )
            .await?;
            if piece.is_none() {
                return Ok(false);
            }
        }
    }

    /// The fields of the head [`Conn::exchange`] returned last.
    pub fn fields(&self) -> &[Field] {
        &self.fields
    }

    /// The connection as a byte stream for a tunnel, with what was read beyond the head.
    pub fn into_tunnel(self) -> (Io, BytesMut) {
        (self.io, self.buf)
    }

    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        head_request: bool,
        upgrade: Option<&[u8]>,
    ) -> Poll<Result<Head, UpstreamError>> {
        loop {
            if !self.buf.is_empty()
                && let Some(head) = self.parse_head(head_request, upgrade)?
            {
                return Poll::Ready(Ok(head));
            }
            if self.buf.len() > MAX_HEAD {
                return Poll::Ready(Err(UpstreamError::Malformed("response head too large")));
            }
            let n = ready!(fill(&mut self.io, &mut self.buf, cx)).map_err(UpstreamError::Io)?;
            if n == 0 {
                return Poll::Ready(Err(if self.buf.is_empty() {
                    UpstreamError::Closed
                } else {
                    UpstreamError::Malformed("connection closed inside the response head")
                }));
            }
        }
    }

    /// The response head at the front of the buffer, if it is all there.
    fn parse_head(
        &mut self,
        head_request: bool,
        upgrade: Option<&[u8]>,
    ) -> Result<Option<Head>, UpstreamError> {
        parse_head(&mut self.buf, &mut self.fields, head_request, upgrade)
    }
}

/// The response head at the front of `buf`, if it is all there, its fields' places in
/// `fields`; informational (1xx) responses before it are skipped. `head_request`: the
/// request was a HEAD; `upgrade`: the protocol it asked to switch to. Pure, for the fuzzer.
pub fn parse_head(
    buf: &mut BytesMut,
    fields: &mut Vec<Field>,
    head_request: bool,
    upgrade: Option<&[u8]>,
) -> Result<Option<Head>, UpstreamError> {
    loop {
        // Uninitialized slots: filling 100 empty headers per response costs more than
        // parsing the handful a backend sends.
        let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut r = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut r, buf, &mut slots);
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
            Ok(httparse::Status::Complete(_)) => {
                return Err(UpstreamError::Malformed("response head too large"));
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(UpstreamError::Parse(e)),
        };
        let code = r.code.unwrap_or_default();
        let switching = code == 101;
        if switching {
            let asked = upgrade.ok_or(UpstreamError::Malformed("switched protocols unasked"))?;
            let to = r
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("upgrade"))
                .map(|h| h.value);
            if !to.is_some_and(|to| same_protocol(to, asked)) {
                return Err(UpstreamError::Malformed(
                    "switched to another protocol than asked",
                ));
            }
        } else if (100..200).contains(&code) {
            buf.advance(len);
            continue;
        }
        let status = StatusCode::from_u16(code)
            .map_err(|_| UpstreamError::Malformed("invalid status code"))?;
        let version = if r.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        // HTTP/1.0 closes after each response unless it says otherwise.
        let mut close = version == Version::HTTP_10;
        let mut length: Option<u64> = None;
        let mut lengths = 0;
        let mut chunked: Option<bool> = None;
        fields.clear();
        for h in r.headers.iter() {
            let known = Known::of(h.name.as_bytes());
            match known {
                Known::ContentLength => {
                    let n = content_length(h.value)
                        .ok_or(UpstreamError::Malformed("invalid Content-Length"))?;
                    if length.is_some_and(|l| l != n) {
                        return Err(UpstreamError::Malformed("conflicting Content-Length"));
                    }
                    length = Some(n);
                    lengths += 1;
                }
                // The last field's last coding decides (RFC 9112 §6.3).
                Known::TransferEncoding => chunked = Some(last_token_is(h.value, b"chunked")),
                Known::Connection => {
                    for token in tokens(h.value) {
                        if token.eq_ignore_ascii_case(b"close") {
                            close = true;
                        } else if token.eq_ignore_ascii_case(b"keep-alive") {
                            close &= version == Version::HTTP_11;
                        }
                    }
                }
                _ => {}
            }
            let name = wire::span(buf, h.name.as_bytes());
            let value = wire::span(buf, h.value);
            // A head is at most MAX_HEAD bytes, so its offsets fit in u32.
            fields.push(Field {
                known,
                name: (name.0 as u32, name.1 as u32),
                value: (value.0 as u32, value.1 as u32),
            });
        }
        // HTTP/1.0 with a transfer coding is faulty framing (RFC 9112 §6.1), and a
        // repeated length is suspect even when the values agree: read it, then close.
        if (version == Version::HTTP_10 && chunked.is_some()) || lengths > 1 {
            close = true;
        }
        let bytes = buf.split_to(len).freeze();
        let bodiless = switching
            || head_request
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let kind = framing(bodiless, length, chunked, &mut close);
        return Ok(Some(Head {
            status,
            version,
            bytes,
            coded: chunked.is_some(),
            framing: Framing { kind, close },
            early: false,
        }));
    }
}

/// Read more of `io` into `buf`; `Ok(0)` is the end of the stream.
fn fill<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < READ_SIZE {
        buf.reserve(READ_SIZE);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// Write all of `data` to a backend, giving up after `timeout` without progress.
pub async fn write_all<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut data: &[u8],
    timeout: Duration,
) -> Result<(), Failure> {
    let failed = |error| Failure::Backend { error, sent: true };
    let mut stall = Stall::new(timeout);
    while !data.is_empty() {
        let n = poll_fn(|cx| match Pin::new(&mut *w).poll_write(cx, data) {
            Poll::Pending if stall.stuck(cx) => Poll::Ready(Err(Failure::WriteStalled)),
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(0)) => Poll::Ready(Err(failed(UpstreamError::Closed))),
            Poll::Ready(Ok(n)) => Poll::Ready(Ok(n)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(failed(UpstreamError::Io(e)))),
        })
        .await?;
        stall.progress();
        data = &data[n..];
    }
    poll_fn(|cx| Pin::new(&mut *w).poll_flush(cx))
        .await
        .map_err(|e| failed(UpstreamError::Io(e)))
}

/// Write one piece of a request body (`None`: its end) to a backend, framed: chunk
/// framing and a small piece go out in one write, a large piece from where it is.
pub async fn write_piece<W: AsyncWrite + Unpin>(
    w: &mut W,
    piece: Option<&Bytes>,
    chunked: bool,
    trailers: Option<&HeaderMap>,
    timeout: Duration,
    scratch: &mut Vec<u8>,
) -> Result<(), Failure> {
    scratch.clear();
    match piece {
        Some(d) if chunked => {
            chunked::chunk_header(scratch, d.len());
            if d.len() <= COPY_SMALL {
                scratch.extend_from_slice(d);
                scratch.extend_from_slice(b"\r\n");
            }
        }
        Some(d) if d.len() <= COPY_SMALL => scratch.extend_from_slice(d),
        Some(_) => {}
        None if chunked => chunked::last_chunk(scratch, trailers),
        None => {}
    }
    write_all(w, scratch, timeout).await?;
    if let Some(d) = piece.filter(|d| d.len() > COPY_SMALL) {
        write_all(w, d, timeout).await?;
        if chunked {
            write_all(w, b"\r\n", timeout).await?;
        }
    }
    Ok(())
}

/// Send the rest of a request body to `w`, after the backend has already answered: the
/// duplex case, where the response streams meanwhile.
pub async fn send_rest<W: AsyncWrite + Unpin>(
    w: &mut W,
    body: &mut dyn Source,
    chunked: bool,
    timeout: Duration,
) -> Result<(), Failure> {
    let mut scratch = Vec::new();
    loop {
        let piece = poll_fn(|cx| body.poll_data(cx))
            .await
            .transpose()
            .map_err(Failure::Client)?;
        let trailers = if piece.is_none() {
            body.trailers()
        } else {
            None
        };
        write_piece(
            w,
            piece.as_ref(),
            chunked,
            trailers.as_ref(),
            timeout,
            &mut scratch,
        )
        .await?;
        if piece.is_none() {
            return Ok(());
        }
    }
}

/// Whether a 101's `Upgrade` names a protocol the request asked for (RFC 9110 §7.8).
fn same_protocol(to: &[u8], asked: &[u8]) -> bool {
    let mut to = tokens(to);
    match (to.next(), to.next()) {
        (Some(p), None) => tokens(asked).any(|a| a.eq_ignore_ascii_case(p)),
        _ => false,
    }
}

/// How the wait for a response head is timed: by the client connection's own clock (the
/// lane, one exchange at a time) or by a timer of its own (HTTP/2 streams).
pub trait Wait {
    /// Run `head` until it is done, `None` when the response is overdue.
    fn head<F: Future>(self, head: F) -> impl Future<Output = Option<F::Output>>;
}

/// How a response's body is delimited (RFC 9112 §6.3), given what its head said: no body
/// at all (`bodiless`: a response to HEAD, 204, 304), its `Content-Length`, and whether its
/// last transfer coding is chunked, if it had any. Sets `close` when the connection cannot
/// carry another exchange after this one.
fn framing(bodiless: bool, length: Option<u64>, chunked: Option<bool>, close: &mut bool) -> Kind {
    // Transfer-Encoding overrides Content-Length, and a message with both is suspect, with a
    // body or without: the length is dropped and the connection not reused.
    if chunked.is_some() && length.is_some() {
        *close = true;
    }
    if bodiless {
        return Kind::Done;
    }
    match (chunked, length) {
        (Some(chunked), _) => {
            if chunked {
                Kind::Chunked(chunked::Decoder::default())
            } else {
                *close = true;
                Kind::UntilClose
            }
        }
        (None, Some(0)) => Kind::Done,
        (None, Some(n)) => Kind::Length(n),
        (None, None) => {
            *close = true;
            Kind::UntilClose
        }
    }
}

/// How the rest of a response is delimited, and how much of it is left.
pub struct Framing {
    kind: Kind,
    /// The connection cannot carry another exchange after this one.
    close: bool,
}

enum Kind {
    Length(u64),
    Chunked(chunked::Decoder),
    UntilClose,
    Done,
}

impl Framing {
    /// The body has been read to its end.
    pub fn is_end(&self) -> bool {
        matches!(self.kind, Kind::Done)
    }

    /// Append the rest of the body to `out` if it is framed by length, at most `limit`
    /// bytes, and already read: the usual small response that arrives with its head,
    /// written behind the client's head without passing through body frames. Returns the
    /// bytes appended; the framing is then at its end.
    pub fn copy_whole(
        &mut self,
        conn: &mut Conn,
        limit: usize,
        out: &mut Vec<u8>,
    ) -> Option<usize> {
        let Kind::Length(n) = self.kind else {
            return None;
        };
        let n = usize::try_from(n)
            .ok()
            .filter(|&n| n <= limit && n <= conn.buf.len())?;
        out.extend_from_slice(&conn.buf[..n]);
        conn.buf.advance(n);
        self.kind = Kind::Done;
        Some(n)
    }

    /// Whether the connection must close after this response, whatever else happens.
    pub fn closes(&self) -> bool {
        self.close
    }

    /// After the end: whether `conn` may carry the next exchange.
    pub fn reusable(&self, conn: &Conn) -> bool {
        self.is_end() && !self.close && conn.buf.is_empty()
    }

    /// What is known of the body's remaining size.
    pub fn size_hint(&self) -> SizeHint {
        match self.kind {
            Kind::Length(n) => SizeHint::with_exact(n),
            Kind::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }

    /// The next piece of the body, read from `conn` as needed.
    pub fn poll_frame(
        &mut self,
        conn: &mut Conn,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        self.poll_frame_from(&mut conn.buf, &mut conn.io, cx)
    }

    /// The next piece of the body, from `buf` and then `io`.
    pub fn poll_frame_from<R: AsyncRead + Unpin>(
        &mut self,
        buf: &mut BytesMut,
        io: &mut R,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        loop {
            match &mut self.kind {
                Kind::Done => return Poll::Ready(None),
                Kind::Length(left) if !buf.is_empty() => {
                    let n = (*left).min(buf.len() as u64);
                    *left -= n;
                    if *left == 0 {
                        self.kind = Kind::Done;
                    }
                    let data = buf.split_to(n as usize).freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Kind::UntilClose if !buf.is_empty() => {
                    let data = buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Kind::Chunked(d) if !buf.is_empty() => match d.decode(buf) {
                    Ok(Some(Piece::Data(data))) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Some(Piece::End(trailers))) => {
                        self.kind = Kind::Done;
                        return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                    }
                    Ok(None) => {}
                    Err(e) => return self.fail(UpstreamError::Chunked(e)),
                },
                _ => {}
            }
            match ready!(fill(io, buf, cx)) {
                Ok(0) if matches!(self.kind, Kind::UntilClose) => {
                    self.kind = Kind::Done;
                    return Poll::Ready(None);
                }
                Ok(0) => return self.fail(UpstreamError::Closed),
                Ok(_) => {}
                Err(e) => return self.fail(UpstreamError::Io(e)),
            }
        }
    }

    fn fail(&mut self, e: UpstreamError) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        self.kind = Kind::Done;
        self.close = true;
        Poll::Ready(Some(Err(e)))
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(t) => Pin::new(t).poll_read(cx, buf),
            Io::Tls(t) => Pin::new(t).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(t) => Pin::new(t).poll_write(cx, buf),
            Io::Tls(t) => Pin::new(t).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(t) => Pin::new(t).poll_flush(cx),
            Io::Tls(t) => Pin::new(t).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(t) => Pin::new(t).poll_shutdown(cx),
            Io::Tls(t) => Pin::new(t).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_101_must_switch_to_what_was_asked() {
        assert!(same_protocol(b"websocket", b"websocket"));
        assert!(same_protocol(b"WebSocket", b"foo, websocket"));
        assert!(!same_protocol(b"something-else", b"websocket"));
        assert!(!same_protocol(b"websocket, h2c", b"websocket"));
        assert!(!same_protocol(b"", b"websocket"));
    }
}

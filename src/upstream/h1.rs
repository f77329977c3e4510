//! The inline HTTP/1.1 client: bodiless requests to plain-TCP HTTP/1.1 backends, driven
//! inside the request's own task.
//!
//! Why it exists: hyper's client runs every connection in a task of its own and passes each
//! request and response across channels. For the small bodiless requests that make up most
//! of a proxy's traffic, that hand-off and hyper's general machinery cost about a third of
//! Switchyard's instructions per request (bench/README.md). This client writes the request
//! head in one write, parses the response with `httparse` (the parser hyper itself uses) and
//! reads the body straight off the socket as the client's connection asks for it.
//!
//! It stays small by taking only what is simple: no request body, no upgrade, no TLS, no
//! HTTP/2. Everything else goes through hyper. Response framing follows RFC 9112 §6.3; a
//! connection is reused only after a response ended exactly where its framing said and the
//! backend did not ask to close.

use crate::body::RequestBody;
use crate::error::UpstreamError;
use crate::wire::{self, Known, MAX_HEADERS, content_length, last_token_is, tokens};
use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Longest response head (or trailer section) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Free space made in the read buffer before each read.
const READ_SIZE: usize = 16 * 1024;

/// A connection to a backend, between or during exchanges.
pub struct Conn {
    io: TcpStream,
    /// Bytes read and not yet consumed.
    buf: BytesMut,
    /// The request head being written; kept for its capacity.
    out: Vec<u8>,
    /// Where the fields of the last response head lie in its bytes.
    fields: Vec<Field>,
}

/// A failed exchange, and whether the backend may have seen the request.
pub struct Failure {
    pub error: UpstreamError,
    /// Some of the request was written.
    pub sent: bool,
}

/// A response head as received: its bytes, with [`Conn::fields`] pointing into them.
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub bytes: Bytes,
    /// `Connection` named other fields, which are hop-by-hop as well.
    pub names_fields: bool,
    /// The head had `Transfer-Encoding`, which voids any `Content-Length`.
    pub coded: bool,
    pub framing: Framing,
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
    /// Wrap a freshly connected socket.
    pub fn new(io: TcpStream) -> Conn {
        Conn {
            io,
            buf: BytesMut::new(),
            out: Vec::new(),
            fields: Vec::new(),
        }
    }

    /// Whether an idle connection still looks open. Costs no system call unless the
    /// backend sent something (its close, or stray bytes) while the connection was idle.
    pub fn is_open(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Send `req` (which has no body) and read the response.
    pub async fn send(&mut self, req: &Request<RequestBody>) -> Result<Response<Framing>, Failure> {
        let mut out = std::mem::take(&mut self.out);
        encode(req, &mut out);
        let head = self.exchange(&out, *req.method() == Method::HEAD).await;
        self.out = out;
        let head = head?;
        self.response(head)
            .map_err(|error| Failure { error, sent: true })
    }

    /// Write `request`, a whole bodiless request head, and read the response head.
    /// `head_request`: it was a HEAD, so the response has no body whatever it says.
    pub async fn exchange(&mut self, request: &[u8], head_request: bool) -> Result<Head, Failure> {
        let written = self.io.write(request).await.map_err(|e| Failure {
            error: UpstreamError::Io(e),
            sent: false,
        })?;
        let sent = |error| Failure { error, sent: true };
        if written < request.len() {
            self.io
                .write_all(&request[written..])
                .await
                .map_err(|e| sent(UpstreamError::Io(e)))?;
        }
        loop {
            if let Some(head) = self.parse_head(head_request).map_err(sent)? {
                return Ok(head);
            }
            if self.buf.len() >= MAX_HEAD {
                return Err(sent(UpstreamError::Malformed("response head too large")));
            }
            let n = match std::future::poll_fn(|cx| self.poll_fill(cx)).await {
                Ok(n) => n,
                // A reset before any of the response: the backend closed, as with EOF.
                Err(e) if self.buf.is_empty() && e.kind() == io::ErrorKind::ConnectionReset => 0,
                Err(e) => return Err(sent(UpstreamError::Io(e))),
            };
            if n == 0 {
                return Err(sent(if self.buf.is_empty() {
                    UpstreamError::Closed
                } else {
                    UpstreamError::Malformed("connection closed inside the response head")
                }));
            }
        }
    }

    /// The fields of the head [`Conn::exchange`] returned last.
    pub fn fields(&self) -> &[Field] {
        &self.fields
    }

    /// `head` as an `http` response for hyper's server: hop-by-hop framing fields left
    /// out (a `Connection` only when it names nothing else, for `headers::to_client`).
    fn response(&mut self, head: Head) -> Result<Response<Framing>, UpstreamError> {
        let mut headers = HeaderMap::with_capacity(self.fields.len());
        for f in &self.fields {
            match f.known {
                Known::Connection if !head.names_fields => continue,
                Known::ContentLength if head.coded => continue,
                _ => {}
            }
            let name = HeaderName::from_bytes(f.name(&head.bytes))
                .map_err(|_| UpstreamError::Malformed("invalid header name"))?;
            let (start, end) = (f.value.0 as usize, f.value.1 as usize);
            let value = HeaderValue::from_maybe_shared(head.bytes.slice(start..end))
                .map_err(|_| UpstreamError::Malformed("invalid header value"))?;
            headers.append(name, value);
        }
        let mut resp = Response::new(head.framing);
        *resp.status_mut() = head.status;
        *resp.version_mut() = head.version;
        *resp.headers_mut() = headers;
        Ok(resp)
    }

    /// Read more into the buffer; `Ok(0)` is the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_SIZE / 4 {
            self.buf.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    /// The response head at the front of the buffer, if it is all there; informational
    /// (1xx) responses before it are skipped.
    fn parse_head(&mut self, head_request: bool) -> Result<Option<Head>, UpstreamError> {
        loop {
            // Uninitialized slots: filling 100 empty headers per response costs more than
            // parsing the handful a backend sends.
            let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS];
            let mut r = httparse::Response::new(&mut []);
            let parsed = httparse::ParserConfig::default()
                .parse_response_with_uninit_headers(&mut r, &self.buf, &mut slots);
            let len = match parsed {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(e) => return Err(UpstreamError::Parse(e)),
            };
            let code = r.code.unwrap_or_default();
            if (100..200).contains(&code) {
                if code == 101 {
                    return Err(UpstreamError::Malformed("switched protocols unasked"));
                }
                self.buf.advance(len);
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
            let mut chunked: Option<bool> = None;
            let mut names_fields = false;
            self.fields.clear();
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
                    }
                    // The last field's last coding decides (RFC 9112 §6.3).
                    Known::TransferEncoding => chunked = Some(last_token_is(h.value, b"chunked")),
                    Known::Connection => {
                        for token in tokens(h.value) {
                            if token.eq_ignore_ascii_case(b"close") {
                                close = true;
                            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                                close = false;
                            } else if wire::names_field(token) {
                                names_fields = true;
                            }
                        }
                    }
                    _ => {}
                }
                let name = wire::span(&self.buf, h.name.as_bytes());
                let value = wire::span(&self.buf, h.value);
                // A head is at most MAX_HEAD bytes, so its offsets fit in u32.
                self.fields.push(Field {
                    known,
                    name: (name.0 as u32, name.1 as u32),
                    value: (value.0 as u32, value.1 as u32),
                });
            }
            let bytes = self.buf.split_to(len).freeze();
            let bodiless = head_request
                || status == StatusCode::NO_CONTENT
                || status == StatusCode::NOT_MODIFIED;
            let kind = framing(bodiless, length, chunked, &mut close);
            return Ok(Some(Head {
                status,
                version,
                bytes,
                names_fields,
                coded: chunked.is_some(),
                framing: Framing { kind, close },
            }));
        }
    }
}

/// How a response's body is delimited (RFC 9112 §6.3), given what its head said: no body
/// at all (`bodiless`: a response to HEAD, 204, 304), its `Content-Length`, and whether its
/// last transfer coding is chunked, if it had any. Sets `close` when the connection cannot
/// carry another exchange after this one.
fn framing(bodiless: bool, length: Option<u64>, chunked: Option<bool>, close: &mut bool) -> Kind {
    if bodiless {
        return Kind::Done;
    }
    match (chunked, length) {
        (Some(chunked), length) => {
            // Transfer-Encoding overrides Content-Length, and a message with both is
            // suspect: the length is dropped and the connection not reused.
            if length.is_some() {
                *close = true;
            }
            if chunked {
                Kind::Chunked(Chunk::Size)
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

/// Write `req`'s head in HTTP/1.1 form.
fn encode(req: &Request<RequestBody>, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// How the rest of a response is delimited, and how much of it is left.
pub struct Framing {
    kind: Kind,
    /// The connection cannot carry another exchange after this one.
    close: bool,
}

enum Kind {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
    Done,
}

enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
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
        loop {
            let need_more = match &mut self.kind {
                Kind::Done => return Poll::Ready(None),
                Kind::Length(left) | Kind::Chunked(Chunk::Data(left)) => {
                    if conn.buf.is_empty() {
                        true
                    } else {
                        let n = (*left).min(conn.buf.len() as u64);
                        *left -= n;
                        let data = conn.buf.split_to(n as usize).freeze();
                        if *left == 0 {
                            self.kind = match self.kind {
                                Kind::Length(_) => Kind::Done,
                                _ => Kind::Chunked(Chunk::DataEnd),
                            };
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Kind::UntilClose => {
                    if conn.buf.is_empty() {
                        true
                    } else {
                        let data = conn.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Kind::Chunked(Chunk::Size) => match httparse::parse_chunk_size(&conn.buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        conn.buf.advance(used);
                        self.kind = Kind::Chunked(if size == 0 {
                            Chunk::Trailers
                        } else {
                            Chunk::Data(size)
                        });
                        false
                    }
                    Ok(httparse::Status::Partial) => true,
                    Err(_) => return self.fail(UpstreamError::Malformed("invalid chunk size")),
                },
                Kind::Chunked(Chunk::DataEnd) => {
                    if conn.buf.len() < 2 {
                        true
                    } else if conn.buf.starts_with(b"\r\n") {
                        conn.buf.advance(2);
                        self.kind = Kind::Chunked(Chunk::Size);
                        false
                    } else {
                        return self.fail(UpstreamError::Malformed("chunk not followed by CRLF"));
                    }
                }
                Kind::Chunked(Chunk::Trailers) => match trailers(&conn.buf) {
                    Ok(Some((used, fields))) => {
                        conn.buf.advance(used);
                        self.kind = Kind::Done;
                        return Poll::Ready(fields.map(|t| Ok(Frame::trailers(t))));
                    }
                    Ok(None) if conn.buf.len() < MAX_HEAD => true,
                    Ok(None) => return self.fail(UpstreamError::Malformed("trailers too large")),
                    Err(e) => return self.fail(e),
                },
            };
            if need_more {
                match ready!(conn.poll_fill(cx)) {
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
    }

    fn fail(&mut self, e: UpstreamError) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        self.kind = Kind::Done;
        self.close = true;
        Poll::Ready(Some(Err(e)))
    }
}

/// The trailer section at the front of `buf`: bytes used and the fields (`None` when
/// there are none), or `Ok(None)` while incomplete.
#[allow(clippy::type_complexity)]
fn trailers(buf: &[u8]) -> Result<Option<(usize, Option<HeaderMap>)>, UpstreamError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let (used, fields) = match httparse::parse_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(c)) => c,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(UpstreamError::Parse(e)),
    };
    if fields.is_empty() {
        return Ok(Some((used, None)));
    }
    let mut map = HeaderMap::with_capacity(fields.len());
    for f in fields {
        let name = HeaderName::from_bytes(f.name.as_bytes())
            .map_err(|_| UpstreamError::Malformed("invalid trailer name"))?;
        let value = HeaderValue::from_bytes(f.value)
            .map_err(|_| UpstreamError::Malformed("invalid trailer value"))?;
        map.append(name, value);
    }
    Ok(Some((used, Some(map))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailer_sections() {
        assert!(matches!(trailers(b"\r\n"), Ok(Some((2, None)))));
        assert!(matches!(trailers(b"a: 1\r\n"), Ok(None)));
        let Ok(Some((n, Some(map)))) = trailers(b"grpc-status: 0\r\n\r\nrest") else {
            panic!("a complete trailer section");
        };
        assert_eq!(n, 18);
        assert_eq!(map["grpc-status"], "0");
    }
}

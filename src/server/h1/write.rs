//! Writing responses to an HTTP/1 client: the head (from a backend's bytes, or from a
//! header map), then the body, framed for this client.
//!
//! Framing is the proxy's to state: a body's known length, else chunked for HTTP/1.1, else
//! (an HTTP/1.0 client) the body runs until the connection closes. A response without a
//! body (to HEAD, 1xx, 204, 304) keeps the `Content-Length` its backend gave. Small pieces
//! are gathered behind the head so a small response leaves in one write; a client that
//! takes no bytes for `client_send_timeout` is cut off.

use crate::body::{Body, BoxError};
use crate::clock::Stall;
use crate::proxy::edit;
use crate::upstream::h1;
use crate::wire::{self, chunked, field};
use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{HeaderMap, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;
use tokio::io::AsyncWrite;

/// Data pieces up to this size are copied behind what is queued (one write); larger ones
/// are written from where they are, with what is queued, in one `writev`.
const COALESCE: usize = 8 * 1024;
/// Bodies up to this size that arrived with their head are copied behind the client's head
/// without passing through body frames; larger ones go out from the read buffer by
/// `writev` (bench/README.md: copying 16 KiB cost more than the frame).
pub const WHOLE_BODY: usize = COALESCE;

/// What writing a response depends on, from its request and connection.
#[derive(Debug, Clone, Copy)]
pub struct To {
    /// A HEAD request: no body, whatever the response says.
    pub head_only: bool,
    pub version: Version,
    /// The connection closes after this response.
    pub close: bool,
    /// The client takes trailers (`TE: trailers`).
    pub trailers: bool,
    /// `client_send_timeout`.
    pub timeout: Duration,
}

/// How a body is framed for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (HTTP/1.0 client, length unknown).
    Close,
}

/// How writing a body failed.
pub enum Broke {
    /// The body failed before anything of the response was written: the client can still
    /// be answered with an error instead.
    Early(BoxError),
    /// The body failed after the head was out: closing is the only signal left.
    Late(BoxError),
    /// The client's side failed (gone, or too slow).
    Client(io::Error),
}

/// A client connection's writing half, watched for stalls.
pub struct Out<'a, T> {
    io: &'a mut T,
    stall: Stall,
    /// Something was written.
    pub wrote: bool,
}

impl<'a, T: AsyncWrite + Unpin> Out<'a, T> {
    /// Write to `io`, giving up after `timeout` without progress.
    pub fn new(io: &'a mut T, timeout: Duration) -> Out<'a, T> {
        Out {
            io,
            stall: Stall::new(timeout),
            wrote: false,
        }
    }

    /// Write all of `head`, then all of `tail`, in as few system calls as the stream takes.
    pub async fn write_two(&mut self, mut head: &[u8], mut tail: &[u8]) -> io::Result<()> {
        self.wrote = true;
        while !head.is_empty() {
            let bufs = [io::IoSlice::new(head), io::IoSlice::new(tail)];
            let n = poll_fn(
                |cx| match Pin::new(&mut *self.io).poll_write_vectored(cx, &bufs) {
                    Poll::Pending if self.stall.stuck(cx) => {
                        Poll::Ready(Err(io::Error::from(io::ErrorKind::TimedOut)))
                    }
                    Poll::Ready(Ok(0)) => {
                        Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero)))
                    }
                    p => p,
                },
            )
            .await?;
            self.stall.progress();
            let from_head = n.min(head.len());
            head = &head[from_head..];
            tail = &tail[n - from_head..];
        }
        self.write_all(tail).await
    }

    /// Write all of `data`.
    pub async fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        self.wrote = true;
        while !data.is_empty() {
            let n = poll_fn(|cx| match Pin::new(&mut *self.io).poll_write(cx, data) {
                Poll::Pending if self.stall.stuck(cx) => {
                    Poll::Ready(Err(io::Error::from(io::ErrorKind::TimedOut)))
                }
                Poll::Ready(Ok(0)) => Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero))),
                p => p,
            })
            .await?;
            self.stall.progress();
            data = &data[n..];
        }
        Ok(())
    }
}

/// Decide the body's framing and whether the connection stays open; `known` is the
/// body's length when known.
fn framing(bodiless: bool, known: Option<u64>, to: &To) -> (Framing, bool) {
    let f = if bodiless {
        Framing::None
    } else if let Some(n) = known {
        Framing::Length(n)
    } else if to.version == Version::HTTP_11 {
        Framing::Chunked
    } else {
        Framing::Close
    };
    (f, !to.close && f != Framing::Close)
}

fn bodiless(status: StatusCode, to: &To) -> bool {
    to.head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

/// Finish a head in `out`: the `Date` if missing, the framing fields, the connection
/// option, the blank line.
fn end_head(out: &mut Vec<u8>, dated: bool, framing: Framing, keep_alive: bool, to: &To) {
    if !dated {
        wire::date_field(out);
    }
    match framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            wire::decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => field(out, b"transfer-encoding", b"chunked"),
        Framing::None | Framing::Close => {}
    }
    if !keep_alive {
        field(out, b"connection", b"close");
    } else if to.version == Version::HTTP_10 {
        field(out, b"connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");
}

/// Write the client's head for a backend's HTTP/1.1 response into `out`, edited, and
/// return the body's framing and whether the connection stays open.
pub fn head_from_h1<'f>(
    head: &h1::Head,
    fields: impl Iterator<Item = edit::Field<'f>>,
    edits: &edit::Response<'_>,
    to: &To,
    out: &mut Vec<u8>,
) -> (Framing, bool) {
    let status = head.status;
    let bodiless = bodiless(status, to);
    out.clear();
    wire::status_line(out, status);
    let w = edits.write(fields, Some(&head.bytes), bodiless, out);
    let (framing, keep_alive) = framing(bodiless, head.framing.size_hint().exact(), to);
    end_head(out, w.dated, framing, keep_alive, to);
    (framing, keep_alive)
}

/// Write the client's head for `parts` (a header map response) into `out`; `known` is the
/// body's length when known.
pub fn head_from_map(
    status: StatusCode,
    headers: &HeaderMap,
    known: Option<u64>,
    to: &To,
    out: &mut Vec<u8>,
) -> (Framing, bool) {
    let bodiless = bodiless(status, to);
    let mut to = *to;
    let mut length = None;
    let mut dated = false;
    out.clear();
    wire::status_line(out, status);
    for (name, value) in headers {
        if *name == CONNECTION {
            to.close |= wire::has_token(value.as_bytes(), b"close");
            continue;
        }
        if *name == TRANSFER_ENCODING {
            continue;
        }
        if *name == CONTENT_LENGTH {
            length = wire::content_length(value.as_bytes());
            if !bodiless {
                continue;
            }
        } else if *name == DATE {
            dated = true;
        }
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    let (framing, keep_alive) = framing(bodiless, length.or(known), &to);
    end_head(out, dated, framing, keep_alive, &to);
    (framing, keep_alive)
}

/// Write a header-map response whole: head, then body; whether the connection may carry
/// another request. Body bytes written are added to `sent`.
pub async fn response<T: AsyncWrite + Unpin>(
    o: &mut Out<'_, T>,
    resp: Response<Body>,
    to: &To,
    out: &mut Vec<u8>,
    sent: &mut u64,
) -> Result<bool, Broke> {
    let (parts, mut body) = resp.into_parts();
    let known = body.size_hint().exact();
    let (framing, keep_alive) = head_from_map(parts.status, &parts.headers, known, to, out);
    send_body(o, &mut body, framing, to, out, sent).await?;
    Ok(keep_alive)
}

/// Write `body` behind the head already in `out`, framed as `framing`; its bytes are added
/// to `sent` as they go.
pub async fn send_body<T: AsyncWrite + Unpin>(
    o: &mut Out<'_, T>,
    body: &mut Body,
    framing: Framing,
    to: &To,
    out: &mut Vec<u8>,
    sent: &mut u64,
) -> Result<(), Broke> {
    let mut left = match framing {
        Framing::Length(n) => Some(n),
        Framing::None => Some(0),
        Framing::Chunked | Framing::Close => None,
    };
    let mut trailers = None;
    if framing != Framing::None {
        loop {
            // Take what the body has ready; write out before waiting for more.
            let frame = match poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await {
                Poll::Ready(f) => f,
                Poll::Pending => {
                    if !out.is_empty() {
                        o.write_all(out).await.map_err(Broke::Client)?;
                        out.clear();
                    }
                    body.frame().await
                }
            };
            let frame = match frame {
                None => break,
                Some(Ok(f)) => f,
                Some(Err(e)) if o.wrote => return Err(Broke::Late(e)),
                Some(Err(e)) => return Err(Broke::Early(e)),
            };
            let data = match frame.into_data() {
                Ok(d) => d,
                Err(f) => {
                    if to.trailers
                        && let Ok(t) = f.into_trailers()
                    {
                        trailers = Some(t);
                    }
                    continue;
                }
            };
            if data.is_empty() {
                continue;
            }
            *sent += data.len() as u64;
            if let Some(n) = &mut left {
                if data.len() as u64 > *n {
                    return Err(Broke::Late("body longer than its Content-Length".into()));
                }
                *n -= data.len() as u64;
            }
            if framing == Framing::Chunked {
                chunked::chunk_header(out, data.len());
                put(o, out, data).await?;
                out.extend_from_slice(b"\r\n");
            } else {
                put(o, out, data).await?;
            }
        }
    }
    match left {
        Some(0) | None => {}
        Some(_) => return Err(Broke::Late("body shorter than its Content-Length".into())),
    }
    if framing == Framing::Chunked {
        chunked::last_chunk(out, trailers.as_ref());
    }
    if !out.is_empty() {
        o.write_all(out).await.map_err(Broke::Client)?;
        out.clear();
    }
    Ok(())
}

/// Queue `data` behind what `out` holds, or write both when `data` is large.
async fn put<T: AsyncWrite + Unpin>(
    o: &mut Out<'_, T>,
    out: &mut Vec<u8>,
    data: Bytes,
) -> Result<(), Broke> {
    if data.len() <= COALESCE {
        out.extend_from_slice(&data);
        return Ok(());
    }
    o.write_two(out, &data).await.map_err(Broke::Client)?;
    out.clear();
    Ok(())
}

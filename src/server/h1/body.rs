//! A request body read from the client connection, as an upstream client pulls it.
//!
//! The lane's read buffer already holds what arrived with the head; the rest is read from
//! the connection as the backend takes it, never ahead of it. `Content-Length` bodies pass
//! as they are; chunked ones are decoded strictly ([`crate::wire::chunked`]) and the
//! upstream client frames them again. A broken body is a 400, a silent client a 408
//! (`client_body_timeout`), one that goes away a 499; the limit cuts before the piece that
//! would cross it (413).

use crate::body::{Limit, Source};
use crate::clock::Stall;
use crate::error::ProxyError;
use crate::wire::chunked::{Decoder, Piece};
use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::AsyncRead;

/// Read this much at a time at least.
const READ_SIZE: usize = 16 * 1024;

/// How much of a body is left.
#[derive(Debug, Clone, Copy)]
pub enum Left {
    Length(u64),
    Chunked(Decoder),
    Done,
    /// Failed: not to be read any further.
    Broken,
}

/// The request body of the client connection `io`, whose read buffer is `buf`.
pub struct ClientBody<'a, T> {
    io: &'a mut T,
    buf: &'a mut BytesMut,
    left: Left,
    limit: Limit,
    stall: Stall,
    trailers: Option<HeaderMap>,
}

impl<'a, T: AsyncRead + Unpin + Send> ClientBody<'a, T> {
    /// The body `left`, with `limit` bytes at most and `timeout` between reads.
    pub fn new(
        io: &'a mut T,
        buf: &'a mut BytesMut,
        left: Left,
        limit: Limit,
        timeout: Duration,
    ) -> ClientBody<'a, T> {
        ClientBody {
            io,
            buf,
            left,
            limit,
            stall: Stall::new(timeout),
            trailers: None,
        }
    }

    /// Where the body is, to go on reading it elsewhere ([`ClientBody::new`]).
    pub fn state(&self) -> (Left, Limit) {
        (self.left, self.limit)
    }

    /// Whether the whole body was read.
    pub fn is_done(&self) -> bool {
        matches!(self.left, Left::Done)
    }

    /// The next piece from the buffer, if it holds one.
    fn take(&mut self) -> Result<Option<Option<Bytes>>, ProxyError> {
        let data = match &mut self.left {
            Left::Done | Left::Broken => return Ok(Some(None)),
            Left::Length(_) if self.buf.is_empty() => return Ok(None),
            Left::Length(left) => {
                let n = (*left).min(self.buf.len() as u64);
                *left -= n;
                if *left == 0 {
                    self.left = Left::Done;
                }
                self.buf.split_to(n as usize).freeze()
            }
            Left::Chunked(d) => match d.decode(self.buf).map_err(ProxyError::BadBody)? {
                None => return Ok(None),
                Some(Piece::Data(data)) => data,
                Some(Piece::End(trailers)) => {
                    self.trailers = trailers;
                    self.left = Left::Done;
                    return Ok(Some(None));
                }
            },
        };
        self.limit.take(data.len())?;
        Ok(Some(Some(data)))
    }
}

impl<T: AsyncRead + Unpin + Send> Source for ClientBody<'_, T> {
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, ProxyError>>> {
        loop {
            match self.take() {
                Ok(Some(piece)) => return Poll::Ready(piece.map(Ok)),
                Ok(None) => {}
                Err(e) => {
                    self.left = Left::Broken;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            if self.buf.capacity() - self.buf.len() < READ_SIZE / 4 {
                self.buf.reserve(READ_SIZE);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut *self.io), cx, self.buf) {
                Poll::Pending if self.stall.stuck(cx) => {
                    self.left = Left::Broken;
                    return Poll::Ready(Some(Err(ProxyError::ClientTimeout)));
                }
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(n)) if n > 0 => self.stall.progress(),
                Poll::Ready(_) => {
                    self.left = Left::Broken;
                    return Poll::Ready(Some(Err(ProxyError::ClientClosed)));
                }
            }
        }
    }

    fn trailers(&mut self) -> Option<HeaderMap> {
        self.trailers.take()
    }
}

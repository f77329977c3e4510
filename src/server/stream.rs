//! A client connection's byte stream, watched: which phase the connection is in (idle,
//! reading a request head, serving), since when, and whether the head being read carries a
//! `Content-Length` line.
//!
//! hyper's own header timer also runs while a keep-alive connection sits idle, which would
//! make `client_header_timeout` cap `client_idle_timeout`; and hyper silently drops
//! `Content-Length` when `Transfer-Encoding` is present, while the SPEC wants such a request
//! refused. So the stream notes when the first byte of a head arrives and scans head bytes
//! for `Content-Length` lines; `server` turns the phase into deadlines, and the proxy
//! refuses a request that has Transfer-Encoding after such a line was seen.

use crate::health::now_ms;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const IDLE: u8 = 0;
const HEAD: u8 = 1;
const ACTIVE: u8 = 2;

/// Shared between a connection's stream, its driver and its requests.
#[derive(Debug, Default)]
pub struct Clock {
    phase: AtomicU8,
    /// When the current phase began, in [`now_ms`] milliseconds.
    since: AtomicU64,
    in_flight: AtomicU32,
    /// A `Content-Length` line was seen in the head now being served.
    content_length_line: AtomicBool,
    /// HTTP/2: heads arrive in frames, so only idleness is timed.
    h2: AtomicBool,
    /// A head started: the driver's timer may now be due earlier than it is set.
    rearm: AtomicBool,
}

/// What the connection driver should do now.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing yet; look again at this many milliseconds.
    WaitUntil(u64),
    /// The request head did not arrive in time: close.
    HeadTimeout,
    /// Idle too long: close gracefully.
    Idle,
}

impl Clock {
    /// A clock for a connection accepted now.
    pub fn new(h2: bool) -> Clock {
        let c = Clock {
            h2: AtomicBool::new(h2),
            ..Clock::default()
        };
        // A new connection owes its first head within the header timeout.
        c.phase.store(if h2 { IDLE } else { HEAD }, Relaxed);
        c.since.store(now_ms(), Relaxed);
        c
    }

    /// A request entered service.
    pub fn request_started(&self) {
        self.in_flight.fetch_add(1, Relaxed);
        self.phase.store(ACTIVE, Relaxed);
    }

    /// A request left service (its response head is out).
    pub fn request_finished(&self) {
        if self.in_flight.fetch_sub(1, Relaxed) == 1 {
            self.since.store(now_ms(), Relaxed);
            self.phase.store(IDLE, Relaxed);
        }
    }

    /// Take the flag set when the request's head had a `Content-Length` line.
    pub fn take_content_length_line(&self) -> bool {
        self.content_length_line.load(Relaxed) && self.content_length_line.swap(false, Relaxed)
    }

    /// Decide, at `now` (ms), given the configured timeouts.
    pub fn check(&self, now: u64, head: Duration, idle: Duration) -> Verdict {
        let since = self.since.load(Relaxed);
        let (limit, verdict) = match self.phase.load(Relaxed) {
            HEAD => (head, Verdict::HeadTimeout),
            IDLE => (idle, Verdict::Idle),
            _ => return Verdict::WaitUntil(now + idle.as_millis() as u64),
        };
        let deadline = since + limit.as_millis() as u64;
        if now >= deadline {
            verdict
        } else {
            Verdict::WaitUntil(deadline)
        }
    }

    /// Take the flag set when a request head started since the last call.
    pub fn take_rearm(&self) -> bool {
        self.rearm.load(Relaxed) && self.rearm.swap(false, Relaxed)
    }

    fn on_read(&self) -> bool {
        if self.h2.load(Relaxed) {
            return false;
        }
        match self.phase.load(Relaxed) {
            IDLE => {
                self.since.store(now_ms(), Relaxed);
                self.phase.store(HEAD, Relaxed);
                self.content_length_line.store(false, Relaxed);
                self.rearm.store(true, Relaxed);
                true
            }
            HEAD => true,
            _ => false,
        }
    }

    fn on_write(&self) {
        // A response body still streaming out after its head keeps the connection busy.
        if self.phase.load(Relaxed) == IDLE {
            self.since.store(now_ms(), Relaxed);
        }
    }
}

/// Finds `Content-Length:` at line starts of a request head, across read boundaries.
#[derive(Default)]
struct HeadScan {
    /// The first bytes of the current line, lower-cased.
    prefix: [u8; NAME.len()],
    plen: usize,
    /// Length of the current line so far.
    line_len: usize,
    /// A non-blank line (the request line) was seen.
    started: bool,
    /// The blank line ending the head was seen.
    done: bool,
}

const NAME: &[u8] = b"content-length:";

impl HeadScan {
    /// Scan `bytes`; true when a `Content-Length` line ended in them.
    fn feed(&mut self, bytes: &[u8]) -> bool {
        let mut found = false;
        let mut rest = bytes;
        while !self.done && !rest.is_empty() {
            let eol = memchr::memchr(b'\n', rest);
            let chunk = &rest[..eol.unwrap_or(rest.len())];
            let take = (NAME.len() - self.plen).min(chunk.len());
            for &b in &chunk[..take] {
                self.prefix[self.plen] = b.to_ascii_lowercase();
                self.plen += 1;
            }
            self.line_len += chunk.len();
            let Some(i) = eol else { break };
            let blank = self.line_len == 0 || (self.line_len == 1 && self.prefix[0] == b'\r');
            if blank {
                // Empty lines before the request line are allowed (RFC 9112 §2.2).
                self.done = self.started;
            } else {
                self.started = true;
                found |= self.prefix == *NAME;
            }
            self.plen = 0;
            self.line_len = 0;
            rest = &rest[i + 1..];
        }
        found
    }
}

/// A client's stream with its [`Clock`] kept current.
pub struct Stream<T> {
    inner: T,
    clock: std::sync::Arc<Clock>,
    scan: HeadScan,
}

impl<T> Stream<T> {
    /// Watch `inner` with `clock`.
    pub fn new(inner: T, clock: std::sync::Arc<Clock>) -> Stream<T> {
        Stream {
            inner,
            clock,
            scan: HeadScan::default(),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Stream<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            let this = &mut *self;
            let was_idle = this.clock.phase.load(Relaxed) == IDLE;
            if this.clock.on_read() {
                if was_idle {
                    this.scan = HeadScan::default();
                }
                if this.scan.feed(&buf.filled()[before..]) {
                    this.clock.content_length_line.store(true, Relaxed);
                }
            }
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Stream<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.clock.on_write();
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.clock.on_write();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(parts: &[&[u8]]) -> bool {
        let mut s = HeadScan::default();
        parts.iter().fold(false, |f, p| s.feed(p) | f)
    }

    #[test]
    fn finds_content_length_in_any_case_and_split_reads() {
        assert!(scan(&[b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\n"]));
        assert!(scan(&[
            b"POST / HTTP/1.1\r\ncontent-LEN",
            b"GTH: 3\r\n\r\n"
        ]));
        assert!(scan(&[
            b"POST / HTTP/1.1\r\n",
            b"C",
            b"ontent-Length:3\r",
            b"\n\r\n"
        ]));
    }

    #[test]
    fn ignores_other_headers_and_the_body() {
        assert!(!scan(&[b"POST / HTTP/1.1\r\nX-Content-Length: 3\r\n\r\n"]));
        assert!(!scan(&[
            b"POST / HTTP/1.1\r\nHost: a\r\n\r\nContent-Length: 3\r\n"
        ]));
        assert!(!scan(&[
            b"POST / HTTP/1.1\r\nHost: a\r\n\r",
            b"\nContent-Length: 3\r\n"
        ]));
    }

    #[test]
    fn leading_blank_lines_do_not_end_the_head() {
        assert!(scan(&[b"\r\nPOST / HTTP/1.1\r\nContent-Length: 3\r\n\r\n"]));
    }

    #[test]
    fn idle_connection_times_out_on_idle_then_head() {
        let c = Clock::new(false);
        c.request_started();
        c.request_finished();
        let since = c.since.load(Relaxed);
        let head = Duration::from_millis(100);
        let idle = Duration::from_millis(1000);
        assert_eq!(c.check(since, head, idle), Verdict::WaitUntil(since + 1000));
        assert_eq!(c.check(since + 1000, head, idle), Verdict::Idle);
        assert!(c.on_read());
        let started = c.since.load(Relaxed);
        assert_eq!(c.check(started + 100, head, idle), Verdict::HeadTimeout);
    }
}

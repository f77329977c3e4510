//! Time: the process clock (milliseconds since start, small enough for an atomic) and
//! each client connection's clock.
//!
//! The connection clock is shared by a connection's wire path, its driver in `server` and
//! its requests: which phase the connection is in (idle, reading a request head, serving),
//! since when, and the deadline of the one wait the lane is in (a response head). `server`
//! turns the phase into deadlines; neither side owns it.
//!
//! hyper's own header timer also runs while a keep-alive connection sits idle, which would
//! make `client_header_timeout` cap `client_idle_timeout`; and hyper silently drops
//! `Content-Length` when `Transfer-Encoding` is present, while the SPEC wants such a request
//! refused. So the stream notes when the first byte of a head arrives and keeps a copy of
//! the head's bytes; the proxy looks for a `Content-Length` line in the copy when (and only
//! when) a request has Transfer-Encoding. The copy holds the first head of a pipelined
//! batch and at most [`HEAD_COPY`] bytes.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

fn start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// Milliseconds since the process started: a clock that fits in an atomic.
pub fn now_ms() -> u64 {
    start().elapsed().as_millis() as u64
}

/// The instant `ms` milliseconds after the process started.
pub fn instant_at(ms: u64) -> Instant {
    start() + Duration::from_millis(ms)
}

const IDLE: u8 = 0;
const HEAD: u8 = 1;
const ACTIVE: u8 = 2;

/// How much of a request head is kept for the Content-Length check.
pub const HEAD_COPY: usize = 16 * 1024;

/// Shared between a connection's stream, its driver and its requests.
#[derive(Debug, Default)]
pub struct ConnClock {
    phase: AtomicU8,
    /// When the current phase began, in [`now_ms`] milliseconds.
    since: AtomicU64,
    in_flight: AtomicU32,
    /// Bytes written while idle: a response body still streaming out keeps the connection
    /// busy. A flag rather than a clock read per write; the idle timer looks at it.
    written: AtomicBool,
    /// The bytes of the request head being read (HTTP/1 only).
    head: Mutex<Vec<u8>>,
    /// HTTP/2: heads arrive in frames, so only idleness is timed.
    h2: AtomicBool,
    /// A head started: the driver's timer may now be due earlier than it is set.
    rearm: AtomicBool,
    /// `server::lane` reads the connection and keeps heads in its own buffer, so no copy
    /// is taken here until it hands the connection to hyper ([`ConnClock::replace_head`]).
    lane: AtomicBool,
    /// When the response head the lane's fast path waits for is due ([`now_ms`]; 0: none).
    /// The driver's timer covers it, so a request needs no timer of its own.
    response_due: AtomicU64,
    /// The driver found `response_due` passed.
    response_late: AtomicBool,
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
    /// The awaited response head is overdue: poll the connection, then look again.
    ResponseLate,
}

impl ConnClock {
    /// A clock for a connection accepted now.
    pub fn new(h2: bool) -> ConnClock {
        let c = ConnClock {
            h2: AtomicBool::new(h2),
            ..ConnClock::default()
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

    /// `server::lane` serves the connection: it keeps heads itself.
    pub fn lane_started(&self) {
        self.lane.store(true, Relaxed);
    }

    /// A response head is expected within `timeout` from now; the driver's timer will set
    /// [`ConnClock::response_late`] if it is not [`ConnClock::response_arrived`] by then.
    pub fn expect_response(&self, timeout: Duration) {
        self.response_late.store(false, Relaxed);
        self.response_due
            .store(now_ms() + timeout.as_millis() as u64, Relaxed);
        self.rearm.store(true, Relaxed);
    }

    /// The awaited response head arrived (or the wait ended otherwise).
    pub fn response_arrived(&self) {
        self.response_due.store(0, Relaxed);
    }

    /// Whether the awaited response head is overdue.
    pub fn response_late(&self) -> bool {
        self.response_late.load(Relaxed)
    }

    /// When the awaited response head is due, if one is awaited.
    pub fn response_due(&self) -> Option<u64> {
        Some(self.response_due.load(Relaxed)).filter(|&t| t != 0)
    }

    /// Make `bytes` the head copy: a head that hyper reads from a buffer rather than
    /// through the stream (after `server::lane` handed the connection over).
    pub fn replace_head(&self, bytes: &[u8]) {
        self.lane.store(false, Relaxed);
        let mut head = self.head.lock().expect("head copy lock poisoned");
        head.clear();
        head.extend_from_slice(&bytes[..bytes.len().min(HEAD_COPY)]);
    }

    /// Whether the head of the request now served had a `Content-Length` line.
    pub fn head_had_content_length(&self) -> bool {
        let head = self.head.lock().expect("head copy lock poisoned");
        has_content_length_line(&head)
    }

    /// Decide, at `now` (ms), given the configured timeouts.
    pub fn check(&self, now: u64, head: Duration, idle: Duration) -> Verdict {
        if self.phase.load(Relaxed) == IDLE && self.written.swap(false, Relaxed) {
            self.since.store(now, Relaxed);
        }
        let since = self.since.load(Relaxed);
        let (limit, verdict) = match self.phase.load(Relaxed) {
            HEAD => (head, Verdict::HeadTimeout),
            IDLE => (idle, Verdict::Idle),
            _ => {
                let mut next = now + idle.as_millis() as u64;
                if let Some(due) = self.response_due() {
                    if now >= due {
                        self.response_due.store(0, Relaxed);
                        self.response_late.store(true, Relaxed);
                        return Verdict::ResponseLate;
                    }
                    next = next.min(due);
                }
                return Verdict::WaitUntil(next);
            }
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

    /// Note `bytes` just read.
    pub(crate) fn on_read(&self, bytes: &[u8]) {
        if self.h2.load(Relaxed) {
            return;
        }
        let start = match self.phase.load(Relaxed) {
            IDLE => true,
            HEAD => false,
            _ => return,
        };
        if start {
            self.since.store(now_ms(), Relaxed);
            self.phase.store(HEAD, Relaxed);
            self.rearm.store(true, Relaxed);
        }
        if self.lane.load(Relaxed) {
            return;
        }
        let mut head = self.head.lock().expect("head copy lock poisoned");
        if start {
            head.clear();
        }
        let room = HEAD_COPY.saturating_sub(head.len());
        head.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    pub(crate) fn on_write(&self) {
        if self.phase.load(Relaxed) == IDLE && !self.written.load(Relaxed) {
            self.written.store(true, Relaxed);
        }
    }
}

/// Marks a request done on its connection's clock when dropped (also on cancel).
pub struct Finished<'a>(pub &'a ConnClock);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// Whether a `Content-Length` field line comes before the blank line ending the head in
/// `raw` (blank lines before the request line are allowed: RFC 9112 §2.2).
fn has_content_length_line(raw: &[u8]) -> bool {
    const NAME: &[u8] = b"content-length:";
    let mut started = false;
    for line in raw.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if started {
                return false;
            }
            continue;
        }
        started = true;
        if line.len() >= NAME.len() && line[..NAME.len()].eq_ignore_ascii_case(NAME) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(parts: &[&[u8]]) -> bool {
        let c = ConnClock::new(false);
        for p in parts {
            c.on_read(p);
        }
        c.head_had_content_length()
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
        let c = ConnClock::new(false);
        c.request_started();
        c.request_finished();
        let since = c.since.load(Relaxed);
        let head = Duration::from_millis(100);
        let idle = Duration::from_millis(1000);
        assert_eq!(c.check(since, head, idle), Verdict::WaitUntil(since + 1000));
        assert_eq!(c.check(since + 1000, head, idle), Verdict::Idle);
        c.on_read(b"GET");
        let started = c.since.load(Relaxed);
        assert_eq!(c.check(started + 100, head, idle), Verdict::HeadTimeout);
    }

    #[test]
    fn an_awaited_response_is_timed_by_the_connection_clock() {
        let c = ConnClock::new(false);
        c.request_started();
        let (head, idle) = (Duration::from_millis(100), Duration::from_secs(60));
        c.expect_response(Duration::from_millis(500));
        assert!(c.take_rearm(), "the driver is told to look at its timer");
        let due = c.response_due().expect("a response is awaited");
        assert_eq!(c.check(due - 1, head, idle), Verdict::WaitUntil(due));
        assert!(!c.response_late());
        assert_eq!(c.check(due, head, idle), Verdict::ResponseLate);
        assert!(c.response_late());
        assert_eq!(c.response_due(), None, "reported once");
        c.expect_response(Duration::from_millis(500));
        assert!(!c.response_late(), "a new wait starts on time");
        c.response_arrived();
        assert_eq!(c.response_due(), None);
    }
}

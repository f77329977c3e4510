//! Time: the process clock (milliseconds since start, small enough for an atomic) and
//! each client connection's clock.
//!
//! The connection clock is shared by a connection's wire path, its driver in `server` and
//! its requests' records: which phase the connection is in (idle, reading a request head,
//! serving), since when, and the deadline of the one wait the lane is in (a response
//! head). `server` turns the phase into deadlines; neither side owns it. The phases are
//! set where they change: a record starts and ends a request, the lane starts a head when
//! its first byte arrives (or when bytes are left over after a response).

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::task::Context;
use std::time::{Duration, Instant};
use tokio::time::Sleep;

fn start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

thread_local! {
    /// The last [`now_ms`] this thread read.
    static RECENT: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Milliseconds since the process started: a clock that fits in an atomic.
pub fn now_ms() -> u64 {
    ms(Instant::now())
}

/// The time now, also kept as this thread's [`recent_ms`].
pub fn now() -> Instant {
    let now = Instant::now();
    ms(now);
    now
}

/// [`now_ms`] as this thread last read it: for deadlines and ages where a request's own
/// start is recent enough, without a clock read each.
pub fn recent_ms() -> u64 {
    match RECENT.get() {
        0 => now_ms(),
        t => t,
    }
}

fn ms(at: Instant) -> u64 {
    let d = at.saturating_duration_since(start());
    // u64 arithmetic: `as_millis` works in u128.
    let t = d.as_secs() * 1000 + u64::from(d.subsec_millis());
    RECENT.set(t.max(1));
    t
}

/// Microseconds from the process start to `at`: for latencies finer than a millisecond.
pub fn micros(at: Instant) -> u64 {
    at.saturating_duration_since(start()).as_micros() as u64
}

/// The instant `ms` milliseconds after the process started.
pub fn instant_at(ms: u64) -> Instant {
    start() + Duration::from_millis(ms)
}

/// A watchdog for a stream of I/O that must keep moving: a body being read or written.
/// It costs nothing until the I/O is first pending; then one timer, pushed back (cheaply:
/// tokio only notes a later deadline) after each pending that followed progress.
pub struct Stall {
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    moved: bool,
}

impl Stall {
    /// A watchdog that fires after `timeout` without progress.
    pub fn new(timeout: Duration) -> Stall {
        Stall {
            timeout,
            sleep: None,
            moved: false,
        }
    }

    /// The I/O made progress.
    pub fn progress(&mut self) {
        self.moved = true;
    }

    /// The I/O is pending: whether it has now been stuck for the whole timeout. Registers
    /// `cx` to be woken when it would be.
    pub fn stuck(&mut self, cx: &mut Context<'_>) -> bool {
        let timeout = self.timeout;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if std::mem::take(&mut self.moved) {
            sleep.as_mut().reset(tokio::time::Instant::now() + timeout);
        }
        sleep.as_mut().poll(cx).is_ready()
    }
}

const IDLE: u8 = 0;
const HEAD: u8 = 1;
const ACTIVE: u8 = 2;

/// Shared between a connection's wire path, its driver and its requests.
#[derive(Debug, Default)]
pub struct ConnClock {
    phase: AtomicU8,
    /// When the current phase began, in [`now_ms`] milliseconds.
    since: AtomicU64,
    in_flight: AtomicU32,
    /// The phase changed: the driver's timer may now be due at another time.
    rearm: AtomicBool,
    /// When the response head the lane waits for is due ([`now_ms`]; 0: none). The
    /// driver's timer covers it, so a request needs no timer of its own.
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
    /// A clock for a connection accepted now: an HTTP/1 connection owes its first head
    /// within the header timeout; HTTP/2 heads arrive in frames, so only idleness is timed.
    pub fn new(h2: bool) -> ConnClock {
        let c = ConnClock::default();
        c.phase.store(if h2 { IDLE } else { HEAD }, Relaxed);
        c.since.store(now_ms(), Relaxed);
        c
    }

    /// A request entered service.
    pub fn request_started(&self) {
        self.in_flight.fetch_add(1, Relaxed);
        self.phase.store(ACTIVE, Relaxed);
    }

    /// A request left service (its response is done).
    pub fn request_finished(&self) {
        if self.in_flight.fetch_sub(1, Relaxed) == 1 {
            self.since.store(now_ms(), Relaxed);
            self.phase.store(IDLE, Relaxed);
            self.rearm.store(true, Relaxed);
        }
    }

    /// The first byte of a request head arrived on an idle connection (or was left over
    /// after a response): the head timeout runs from now.
    pub fn head_started(&self) {
        if self.phase.load(Relaxed) == IDLE {
            self.since.store(now_ms(), Relaxed);
            self.phase.store(HEAD, Relaxed);
            self.rearm.store(true, Relaxed);
        }
    }

    /// A response head is expected within `timeout` from now; the driver's timer will set
    /// [`ConnClock::response_late`] if it is not [`ConnClock::response_arrived`] by then.
    pub fn expect_response(&self, timeout: Duration) {
        self.response_late.store(false, Relaxed);
        // The request started a moment ago on this thread: its clock read is recent.
        self.response_due
            .store(recent_ms() + timeout.as_millis() as u64, Relaxed);
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

    /// Decide, at `now` (ms), given the configured timeouts.
    pub fn check(&self, now: u64, head: Duration, idle: Duration) -> Verdict {
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

    /// Take the flag set when the phase or a deadline changed since the last call.
    pub fn take_rearm(&self) -> bool {
        self.rearm.load(Relaxed) && self.rearm.swap(false, Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_connection_times_out_on_idle_then_head() {
        let c = ConnClock::new(false);
        c.request_started();
        c.request_finished();
        assert!(c.take_rearm());
        let since = c.since.load(Relaxed);
        let head = Duration::from_millis(100);
        let idle = Duration::from_millis(1000);
        assert_eq!(c.check(since, head, idle), Verdict::WaitUntil(since + 1000));
        assert_eq!(c.check(since + 1000, head, idle), Verdict::Idle);
        c.head_started();
        let started = c.since.load(Relaxed);
        assert_eq!(c.check(started + 100, head, idle), Verdict::HeadTimeout);
    }

    #[test]
    fn a_head_started_before_the_first_request_keeps_its_deadline() {
        let c = ConnClock::new(false);
        let accepted = c.since.load(Relaxed);
        c.head_started();
        assert_eq!(
            c.since.load(Relaxed),
            accepted,
            "the first head owes from accept"
        );
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

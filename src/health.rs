//! Backend health: passive ejection, and active checks.
//!
//! Passive (SPEC "Health"): 5 connect failures in a row, or `eject_on_5xx` 5xx responses
//! in a row, eject a backend for 30 s, doubling while it keeps failing, at most 5 min; a
//! pool's `max_ejection_percent` caps how many of its backends can be out at once, so a
//! bad deploy that makes every backend fail cannot empty the pool by ejection alone.
//!
//! Active: one checker task per checked backend, whatever the number of workers, owned by
//! [`Checks`] and reconciled with every snapshot: a backend that stays under the same check
//! keeps its task, its counters and its verdict. Checks start after a random part of the
//! interval and repeat every interval ±10%, so many backends' checks spread out. A
//! backend flips down after `unhealthy_threshold` failed checks in a row and up after
//! `healthy_threshold` passed ones; only flips are logged, with the reason. A passed check
//! also ends a passive ejection.
//!
//! Every verdict is atomics in the backend's shared state: it survives reloads.

use crate::clock::now_ms;
use crate::config::{CheckKind, HealthCheck};
use crate::pool::BackendState;
use crate::snapshot::Snapshot;
use crate::upstream::{self, Connector};
use rustls::pki_types::ServerName;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Connect failures in a row that eject a backend.
pub const EJECT_AFTER: u32 = 5;
const BASE_EJECTION: Duration = Duration::from_secs(30);
const MAX_EJECTION: Duration = Duration::from_secs(300);

/// Passive health of one backend.
#[derive(Debug, Default)]
pub struct Passive {
    failures: AtomicU32,
    /// 5xx responses in a row.
    fives: AtomicU32,
    /// Ejections in a row of the current cause, for the doubling.
    ejections: AtomicU32,
    ejected_until: AtomicU64,
    /// What the current (or last) ejection was for: [`NONE`], [`CONNECT`] or [`FIVES`].
    /// A successful connect ends only a connect ejection, a good response only a 5xx one:
    /// a backend that answers 500 still accepts connections.
    cause: AtomicU8,
}

const NONE: u8 = 0;
const CONNECT: u8 = 1;
const FIVES: u8 = 2;

impl Passive {
    /// False while the backend is ejected. Reads the clock only for a backend that has
    /// been ejected since its last successful connect.
    pub fn available(&self) -> bool {
        let until = self.ejected_until.load(Relaxed);
        until == 0 || until <= now_ms()
    }

    /// Count a failed connect; returns the ejection time if this one ejected the backend.
    /// `may_eject` says whether the pool's ejection cap leaves room.
    pub fn connect_failed(
        &self,
        now_ms: u64,
        may_eject: impl FnOnce() -> bool,
    ) -> Option<Duration> {
        let n = self.failures.fetch_add(1, Relaxed) + 1;
        if n < EJECT_AFTER {
            return None;
        }
        self.failures.store(0, Relaxed);
        may_eject().then(|| self.eject(CONNECT, now_ms))
    }

    /// Count a response status against `eject_on_5xx`; returns the ejection time if this
    /// one ejected the backend.
    pub fn responded(
        &self,
        status: u16,
        eject_on_5xx: Option<u32>,
        now_ms: u64,
        may_eject: impl FnOnce() -> bool,
    ) -> Option<Duration> {
        let limit = eject_on_5xx?;
        if status < 500 {
            if self.fives.load(Relaxed) != 0 {
                self.fives.store(0, Relaxed);
            }
            if self.cause.load(Relaxed) == FIVES {
                self.end(FIVES);
            }
            return None;
        }
        let n = self.fives.fetch_add(1, Relaxed) + 1;
        if n < limit {
            return None;
        }
        self.fives.store(0, Relaxed);
        may_eject().then(|| self.eject(FIVES, now_ms))
    }

    fn eject(&self, cause: u8, now_ms: u64) -> Duration {
        // Doubling while the same trouble goes on; another cause starts over.
        if self.cause.swap(cause, Relaxed) != cause {
            self.ejections.store(0, Relaxed);
        }
        let k = self.ejections.fetch_add(1, Relaxed).min(16);
        let d = BASE_EJECTION.saturating_mul(1 << k).min(MAX_EJECTION);
        self.ejected_until
            .store(now_ms + d.as_millis() as u64, Relaxed);
        d
    }

    /// The ejection for `cause`, if it is the current one, is over, and so is its backoff.
    fn end(&self, cause: u8) {
        if self
            .cause
            .compare_exchange(cause, NONE, Relaxed, Relaxed)
            .is_ok()
        {
            self.ejections.store(0, Relaxed);
            self.ejected_until.store(0, Relaxed);
        }
    }

    /// A connect succeeded: the failure streak starts over, and a connect ejection and its
    /// backoff end.
    pub fn connected(&self) {
        // Loads first: on the hot path these are almost always 0, and a load does not
        // take the cache line exclusive the way a store does.
        if self.failures.load(Relaxed) != 0 {
            self.failures.store(0, Relaxed);
        }
        if self.cause.load(Relaxed) == CONNECT {
            self.end(CONNECT);
        }
    }

    /// An active check passed: any ejection ends now (SPEC "Health").
    fn check_passed(&self) {
        if self.failures.load(Relaxed) != 0 {
            self.failures.store(0, Relaxed);
        }
        if self.fives.load(Relaxed) != 0 {
            self.fives.store(0, Relaxed);
        }
        for cause in [CONNECT, FIVES] {
            self.end(cause);
        }
    }
}

/// What active checks last decided about one backend.
#[derive(Debug, Default)]
pub struct Active {
    down: AtomicBool,
    /// Why it last went down or came back, for `/status`.
    reason: Mutex<Option<Arc<str>>>,
}

impl Active {
    /// Checks took the backend out.
    pub fn is_down(&self) -> bool {
        self.down.load(Relaxed)
    }

    /// The reason of the last flip, if there was one.
    pub fn reason(&self) -> Option<Arc<str>> {
        self.reason.lock().expect("health reason lock").clone()
    }

    fn set(&self, down: bool, reason: Option<Arc<str>>) {
        self.down.store(down, Relaxed);
        *self.reason.lock().expect("health reason lock") = reason;
    }
}

/// Where and how one backend is checked.
#[derive(Clone)]
struct Target {
    pool: Arc<str>,
    label: Arc<str>,
    addr: SocketAddr,
    server_name: ServerName<'static>,
    connector: Connector,
    check: HealthCheck,
}

/// The running checkers, one per checked backend (pool name, address).
#[derive(Default)]
pub struct Checks {
    tasks: Mutex<HashMap<(Arc<str>, SocketAddr), Task>>,
    /// Checkers started so far (a reload that keeps a check starts none).
    started: AtomicU64,
}

struct Task {
    check: HealthCheck,
    state: Arc<BackendState>,
    stop: CancellationToken,
}

impl Checks {
    /// Make the running checkers those `snap` asks for: keep the ones whose backend and
    /// check stay, start new ones, stop the rest. A backend whose pool no longer checks it
    /// counts as up again. Needs a tokio runtime.
    pub fn reconcile(&self, snap: &Snapshot) {
        let mut tasks = self.tasks.lock().expect("health checks lock");
        let mut next = HashMap::new();
        for pool in &snap.pools {
            let check = snap
                .config
                .pools
                .iter()
                .find(|p| p.name == pool.name)
                .and_then(|p| p.health_check.clone());
            for b in &pool.backends {
                let key = (pool.name.clone(), b.addr);
                let Some(check) = check.clone() else {
                    continue;
                };
                if let Some(t) = tasks.remove(&key) {
                    if t.check == check && Arc::ptr_eq(&t.state, &b.state) {
                        next.insert(key, t);
                        continue;
                    }
                    t.stop.cancel();
                }
                let target = Target {
                    pool: pool.name.clone(),
                    label: b.label.clone(),
                    addr: b.addr,
                    server_name: b.server_name.clone(),
                    connector: pool.connector.clone(),
                    check: check.clone(),
                };
                let stop = CancellationToken::new();
                tokio::spawn(run(target, b.state.clone(), stop.clone()));
                self.started.fetch_add(1, Relaxed);
                next.insert(
                    key,
                    Task {
                        check,
                        state: b.state.clone(),
                        stop,
                    },
                );
            }
        }
        for (_, t) in tasks.drain() {
            t.stop.cancel();
            // Unchecked from now on: nothing would ever bring it back.
            if t.state.active.is_down() {
                t.state.active.set(false, None);
            }
        }
        *tasks = next;
    }

    /// Stop every checker.
    pub fn stop(&self) {
        for (_, t) in self.tasks.lock().expect("health checks lock").drain() {
            t.stop.cancel();
        }
    }

    /// How many checkers were started so far.
    pub fn started(&self) -> u64 {
        self.started.load(Relaxed)
    }

    /// How many checkers run.
    pub fn len(&self) -> usize {
        self.tasks.lock().expect("health checks lock").len()
    }

    /// Whether no checker runs.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Check `target` until `stop`, recording verdicts in `state`.
async fn run(target: Target, state: Arc<BackendState>, stop: CancellationToken) {
    let interval = target.check.interval;
    let first = interval.mul_f64(fastrand::f64());
    let (mut passes, mut fails) = (0u32, 0u32);
    let mut wait = first;
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return,
        }
        let result = tokio::select! {
            r = tokio::time::timeout(target.check.timeout, probe(&target)) => {
                r.unwrap_or_else(|_| Err(format!("timed out after {}", humantime::format_duration(target.check.timeout))))
            }
            () = stop.cancelled() => return,
        };
        match result {
            Ok(what) => {
                fails = 0;
                passes = passes.saturating_add(1);
                state.passive.check_passed();
                if state.active.is_down() && passes >= target.check.healthy_threshold {
                    tracing::info!(pool = %target.pool, backend = %target.label, check = %what,
                        "backend is up: {passes} health checks passed in a row");
                    state.active.set(false, Some(what.into()));
                }
            }
            Err(why) => {
                passes = 0;
                fails = fails.saturating_add(1);
                if !state.active.is_down() && fails >= target.check.unhealthy_threshold {
                    tracing::warn!(pool = %target.pool, backend = %target.label, reason = %why,
                        "backend is down: {fails} health checks failed in a row");
                    state.active.set(true, Some(why.into()));
                }
            }
        }
        wait = interval.mul_f64(0.9 + 0.2 * fastrand::f64());
    }
}

/// One check: what passed (`status 200`, `connected`), or why it failed.
async fn probe(t: &Target) -> Result<String, String> {
    let io = upstream::connect(t.addr, &t.server_name, &t.connector, None)
        .await
        .map_err(|e| connect_reason(&e))?;
    if t.check.kind == CheckKind::Tcp {
        return Ok("connected".into());
    }
    let host = t.check.host.as_deref().unwrap_or(&t.label);
    let status = if t.connector.h2 {
        h2_status(io, t, host).await?
    } else {
        h1_status(io, &t.check.path, host).await?
    };
    if (200..400).contains(&status) {
        Ok(format!("status {status}"))
    } else {
        Err(format!("status {status}"))
    }
}

fn connect_reason(e: &crate::error::ConnectError) -> String {
    use crate::error::ConnectError;
    match e {
        ConnectError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            "connection refused".into()
        }
        ConnectError::Io(io) => format!("connect failed: {io}"),
        ConnectError::Timeout(_) => "connect timed out".into(),
        ConnectError::Tls(io) => format!("TLS handshake failed: {io}"),
        ConnectError::Handshake(h) => format!("HTTP/2 handshake failed: {h}"),
    }
}

/// `GET path` over HTTP/1.1 on a connection of its own; the status of the response head,
/// read by the proxy's own response parser (1xx skipped, its limits and strictness).
async fn h1_status(mut io: upstream::h1::Io, path: &str, host: &str) -> Result<u16, String> {
    let req = format!(
        "GET {path} HTTP/1.1\r\nhost: {host}\r\nuser-agent: switchyard-health-check\r\nconnection: close\r\n\r\n"
    );
    io.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("send failed: {e}"))?;
    let mut buf = bytes::BytesMut::with_capacity(1024);
    let mut fields = Vec::new();
    loop {
        match upstream::h1::parse_head(&mut buf, &mut fields, false, None) {
            Ok(Some(head)) => return Ok(head.status.as_u16()),
            Ok(None) => {}
            Err(e) => return Err(format!("bad response: {e}")),
        }
        match io.read_buf(&mut buf).await {
            Ok(0) => return Err("closed without a response".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("read failed: {e}")),
        }
    }
}

/// `GET path` over HTTP/2 (an h2 pool's backends may speak nothing else).
async fn h2_status(io: upstream::h1::Io, t: &Target, host: &str) -> Result<u16, String> {
    let mut sender = upstream::h2::handshake(io, t.addr)
        .await
        .map_err(|e| connect_reason(&e))?;
    let scheme = if t.connector.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let req = http::Request::get(format!("{scheme}://{host}{}", t.check.path))
        .header(http::header::USER_AGENT, "switchyard-health-check")
        .body(crate::body::RequestBody::Empty)
        .map_err(|e| format!("bad check request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    Ok(resp.status().as_u16())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(p: &Passive, n: u32, now: u64, room: bool) -> Option<Duration> {
        let mut last = None;
        for _ in 0..n {
            last = p.connect_failed(now, || room);
        }
        last
    }

    #[test]
    fn five_failures_in_a_row_eject_with_doubling_backoff() {
        let p = Passive::default();
        assert_eq!(fail(&p, 4, 1000, true), None);
        assert_eq!(fail(&p, 1, 1000, true), Some(Duration::from_secs(30)));
        assert_eq!(p.ejected_until.load(Relaxed), 31_000);
        assert_eq!(fail(&p, 5, 31_000, true), Some(Duration::from_secs(60)));
        fail(&p, 40, 0, true);
        assert_eq!(p.ejected_until.load(Relaxed), 300_000);
    }

    #[test]
    fn a_success_resets_the_streak() {
        let p = Passive::default();
        fail(&p, 4, 0, true);
        p.connected();
        assert_eq!(fail(&p, 4, 0, true), None);
        assert!(p.available());
        p.connect_failed(now_ms(), || true);
        assert!(!p.available());
        p.connected();
        assert!(p.available());
    }

    #[test]
    fn no_room_under_the_cap_means_no_ejection() {
        let p = Passive::default();
        assert_eq!(fail(&p, 5, now_ms(), false), None);
        assert!(p.available());
        assert_eq!(fail(&p, 5, now_ms(), true), Some(Duration::from_secs(30)));
        assert!(!p.available());
    }

    #[test]
    fn consecutive_5xx_eject_only_when_asked_and_any_other_status_resets() {
        let p = Passive::default();
        let now = now_ms();
        for _ in 0..10 {
            assert_eq!(p.responded(503, None, now, || true), None);
        }
        assert!(p.available());
        for _ in 0..2 {
            assert_eq!(p.responded(500, Some(3), now, || true), None);
        }
        assert_eq!(p.responded(404, Some(3), now, || true), None);
        for _ in 0..2 {
            assert_eq!(p.responded(502, Some(3), now, || true), None);
        }
        assert_eq!(
            p.responded(502, Some(3), now, || true),
            Some(Duration::from_secs(30))
        );
        assert!(!p.available());
        p.check_passed();
        assert!(p.available(), "a passed active check ends the ejection");
    }

    #[test]
    fn a_5xx_ejection_outlasts_new_connections_and_doubles_while_the_5xx_go_on() {
        let p = Passive::default();
        let now = now_ms();
        let eject = |p: &Passive| {
            let mut last = None;
            for _ in 0..3 {
                last = p.responded(500, Some(3), now, || true);
            }
            last
        };
        assert_eq!(eject(&p), Some(Duration::from_secs(30)));
        p.connected();
        assert!(!p.available(), "it connects, but it still answers 500");
        assert_eq!(eject(&p), Some(Duration::from_secs(60)), "doubled");
        p.responded(200, Some(3), now, || true);
        assert!(p.available(), "a good answer ends it");
        assert_eq!(eject(&p), Some(Duration::from_secs(30)), "and the backoff");
        // A connect ejection starts its own backoff and ends at a successful connect.
        fail(&p, 5, now, true);
        assert!(!p.available());
        p.connected();
        assert!(p.available());
    }
}

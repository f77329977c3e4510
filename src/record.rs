//! One record per request: what happened to it, from its first byte to its last.
//!
//! Every request has one, whichever wire path served it and however it ended: proxied,
//! refused by the lane's own framing checks, plain HTTP on a TLS port, cut off. The wire
//! paths and the pipeline fill it in as they go (route, pool, backend, attempts, status,
//! bytes, when the backend answered), and it is finished exactly once, where it is
//! dropped: when the response body is done (or abandoned). Finishing hands it to the
//! access log; metrics read it in the same place. It costs no allocation unless the access
//! log is on, which also wants the request's text (host, target, referer, user agent).

use crate::error::ProxyError;
use crate::proxy::ConnInfo;
use crate::proxy::choose::{SplitChoice, StickyChoice};
use crate::proxy::decide::Forward;
use crate::snapshot::Snapshot;
use http::{HeaderValue, Method, Version};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// A request's record. The lane keeps it in place for the whole request; an HTTP/2
/// stream's travels boxed in its response body.
pub struct Record {
    pub conn: Arc<ConnInfo>,
    start: Instant,
    /// `None` when the request line did not parse.
    pub method: Option<Method>,
    pub version: Version,
    /// The snapshot the request was decided on; `route`, `pool` and `backend` index it.
    pub snap: Option<Arc<Snapshot>>,
    pub route: Option<usize>,
    pub pool: Option<usize>,
    pub backend: Option<usize>,
    /// Backends tried (connect attempts included).
    pub attempts: u32,
    /// No backend of the pool was healthy, and `when_all_down` decided: `FailOpen`, the
    /// request was tried anyway (`switchyard_pool_fail_open_total`); `Reject`, 503 at once.
    pub all_down: Option<crate::config::WhenAllDown>,
    /// The status the client got (0 while none).
    pub status: u16,
    /// Response body bytes sent to the client.
    pub bytes: u64,
    /// When the backend's response head arrived, counted from the start.
    pub upstream_head: Option<Duration>,
    /// Why the request failed, as [`crate::error::ProxyError::kind`].
    pub error: Option<&'static str>,
    id: RequestId,
    /// What the access log alone reads; filled only while it is on.
    pub text: Option<Box<Text>>,
    /// What the pool's sticky cookie decided (the final word once the response is
    /// written: a retry elsewhere turns a hit into a reassignment).
    pub sticky: Option<StickyChoice>,
    /// How a split chose the pool.
    pub split: Option<SplitChoice>,
}

/// The route, pool and backend of a request, by name.
#[derive(Debug, Default, Clone)]
pub struct Names {
    pub route: Option<Arc<str>>,
    pub pool: Option<Arc<str>>,
    pub backend: Option<Arc<str>>,
}

/// The request's own words, for the access log.
#[derive(Debug, Default, Clone)]
pub struct Text {
    /// As sent, port included.
    pub host: String,
    /// The target as sent, query included.
    pub target: String,
    pub referer: Option<String>,
    pub user_agent: Option<String>,
}

/// A request id: the client's, or one made here (kept as bytes until a `HeaderValue` is
/// needed).
#[derive(Debug, Clone)]
pub enum RequestId {
    None,
    Given(HeaderValue),
    Made([u8; 32]),
}

impl RequestId {
    /// The client's id when it may be used, else a new one.
    pub fn of(client: Option<&[u8]>) -> RequestId {
        match client.and_then(|c| HeaderValue::from_bytes(c).ok()) {
            Some(v) => RequestId::Given(v),
            None => RequestId::Made(new_request_id()),
        }
    }

    /// Whether the id is the client's.
    pub fn is_given(&self) -> bool {
        matches!(self, RequestId::Given(_))
    }
}

impl Record {
    /// A record for a request that starts now on `conn`.
    pub fn start(conn: &Arc<ConnInfo>) -> Record {
        conn.clock.request_started();
        Record {
            conn: conn.clone(),
            start: crate::clock::now(),
            method: None,
            version: Version::HTTP_11,
            snap: None,
            route: None,
            pool: None,
            backend: None,
            attempts: 0,
            all_down: None,
            status: 0,
            bytes: 0,
            upstream_head: None,
            error: None,
            id: RequestId::None,
            text: None,
            sticky: None,
            split: None,
        }
    }

    /// Note where `d` (decided on `snap`) sends the request, and its id: the client's
    /// usable one, or a new one.
    pub fn decided(&mut self, snap: &Arc<Snapshot>, d: &Forward<'_>, client_id: Option<&[u8]>) {
        self.snap = Some(snap.clone());
        self.route = Some(d.route);
        self.pool = Some(d.choice.pool);
        self.backend = Some(d.choice.backend);
        if d.choice.fail_open {
            self.all_down = Some(crate::config::WhenAllDown::FailOpen);
        }
        self.sticky = d.choice.sticky;
        self.split = d.choice.split;
        self.id = RequestId::of(client_id);
    }

    /// The request was refused after routing (a body over the route's limit, a pool with
    /// no healthy backend): note the route, and the pool when `e` or the route names one,
    /// so it is counted there and not as unrouted.
    pub fn refused(&mut self, snap: &Arc<Snapshot>, route: Option<usize>, e: &ProxyError) {
        let Some(r) = route else { return };
        self.snap = Some(snap.clone());
        self.route = Some(r);
        self.pool = match (e, &snap.config.routes[r].to) {
            (ProxyError::NoHealthyBackend { pool }, _) => {
                snap.pools.iter().position(|p| p.name == *pool)
            }
            (_, crate::config::RouteTo::Pool(p)) => Some(*p),
            _ => None,
        };
    }

    /// Whether [`Record::text`] is wanted.
    pub fn wants_text(&self) -> bool {
        self.conn.log.enabled()
    }

    /// The request id, made now if none was set.
    pub fn id(&mut self) -> &[u8] {
        if let RequestId::None = self.id {
            self.id = RequestId::Made(new_request_id());
        }
        self.id_bytes()
    }

    /// The request id as set ([`Record::set_id`]); empty while none is.
    pub fn id_bytes(&self) -> &[u8] {
        match &self.id {
            RequestId::Given(v) => v.as_bytes(),
            RequestId::Made(b) => b,
            RequestId::None => &[],
        }
    }

    /// Whether the request id is the client's own.
    pub fn id_is_given(&self) -> bool {
        self.id.is_given()
    }

    /// The backend has answered, at `now`: note when.
    pub fn answered(&mut self, now: Instant) {
        self.upstream_head = Some(now.saturating_duration_since(self.start));
    }

    /// How long the request has taken so far.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// The names of the route, pool and backend the request went to, as far as it got.
    pub fn names(&self) -> Names {
        let Some(snap) = &self.snap else {
            return Names::default();
        };
        let pool = self.pool.map(|p| &snap.pools[p]);
        Names {
            route: self.route.map(|r| snap.config.routes[r].name.clone()),
            pool: pool.map(|p| p.name.clone()),
            backend: pool
                .zip(self.backend)
                .map(|(p, b)| p.backends[b].label.clone()),
        }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        self.conn.clock.request_finished();
        crate::metrics::stats::request(self);
        if self.conn.log.enabled() {
            let entry = crate::access_log::Entry::of(self, SystemTime::now());
            self.conn.log.send(entry);
        }
    }
}

/// The digits of a new random request id (32 hex digits).
pub fn new_request_id() -> [u8; 32] {
    let mut buf = [0u8; 32];
    let n = fastrand::u128(..).to_le_bytes();
    for (pair, byte) in buf.chunks_exact_mut(2).zip(n) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(byte)]);
    }
    buf
}

/// Each byte value as two lower-case hex digits.
static HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 0xf]];
        i += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_or_made() {
        assert!(RequestId::of(Some(b"abc")).is_given());
        let RequestId::Made(a) = RequestId::of(None) else {
            panic!("made")
        };
        let RequestId::Made(b) = RequestId::of(Some(b"bad\x01")) else {
            panic!("made for an unusable id")
        };
        assert!(a.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
        assert_ne!(a, b);
    }
}

//! Service pools and their backends.
//!
//! A [`Backend`] is rebuilt with every snapshot, but its [`BackendState`] (in-flight count,
//! passive health, idle upstream connections) sits behind an `Arc` that the next snapshot
//! takes over for every (pool, address) that stays, so a reload loses neither counts nor
//! warm connections.

use crate::balance::{Balancer, Ewma};
use crate::config::{self, Balance, Protocol, Timeouts, UpstreamTls, WhenAllDown};
use crate::dns::Answers;
use crate::health::{Active, Passive};
use crate::metrics::stats::BackendStats;
use crate::sticky::Sticky;
use crate::upstream::{Connector, Endpoint};
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

/// A pool compiled for one snapshot.
pub struct Pool {
    pub name: Arc<str>,
    pub backends: Vec<Arc<Backend>>,
    pub balance: Balance,
    balancer: Balancer,
    /// The cookie a `cookie_hash` balancer hashes.
    pub hash_cookie: Option<Box<str>>,
    /// The header a `header_hash` balancer hashes.
    pub hash_header: Option<http::HeaderName>,
    /// The sticky cookie, when the pool has one.
    pub sticky: Option<Sticky>,
    pub timeouts: Timeouts,
    pub retries: u32,
    pub when_all_down: WhenAllDown,
    /// Consecutive 5xx that eject a backend, if set.
    pub eject_on_5xx: Option<u32>,
    /// How many backends passive ejection may take out at once.
    max_ejected: usize,
    /// How connections to the backends are made.
    pub connector: Connector,
    protocol: Protocol,
    tls: Option<UpstreamTls>,
    /// Sticky decisions and fail-open counts; carried over with the pool's name.
    pub stats: Arc<crate::metrics::stats::PoolStats>,
}

/// One backend of a pool: an address to connect to.
pub struct Backend {
    pub addr: SocketAddr,
    /// The DNS name it is an address of, if it came from one (`app.internal`).
    pub name: Option<Arc<str>>,
    /// `ip:port`, as used in logs and metric labels.
    pub label: Arc<str>,
    /// The name TLS sends and verifies: `sni:`, else the backend's host name or IP.
    pub server_name: ServerName<'static>,
    pub weight: u32,
    pub drain: bool,
    pub state: Arc<BackendState>,
    /// What `/metrics` reports of it; carried over with its pool and address even when
    /// its connections are not (a pool's protocol or TLS changed).
    pub stats: Arc<BackendStats>,
}

/// What outlives a snapshot: counters, health and idle connections of one backend.
#[derive(Default)]
pub struct BackendState {
    in_flight: AtomicU32,
    pub passive: Passive,
    pub active: Active,
    /// When the backend last started a request ([`crate::clock::now_ms`]), kept while it
    /// drains: how long it has been quiet tells when it is safe to remove.
    last_request: AtomicU64,
    pub endpoint: Endpoint,
    /// Response latency, for `p2c_ewma`.
    pub latency: Ewma,
}

/// Holds one in-flight request on a backend; dropping it (even on cancel) releases it.
pub struct InFlight(Arc<BackendState>);

impl InFlight {
    /// The backend state this request is counted on.
    pub fn state(&self) -> &Arc<BackendState> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

impl BackendState {
    /// Requests currently in flight.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Relaxed)
    }

    /// Note that a request started now (for draining backends).
    pub fn touch(&self) {
        self.last_request.store(crate::clock::recent_ms(), Relaxed);
    }

    /// How long since the last [`touch`](Self::touch); `None` if there was none.
    pub fn quiet_for(&self) -> Option<std::time::Duration> {
        match self.last_request.load(Relaxed) {
            0 => None,
            t => Some(std::time::Duration::from_millis(
                crate::clock::now_ms().saturating_sub(t),
            )),
        }
    }

    /// Neither checks nor passive ejection took it out.
    pub fn healthy(&self) -> bool {
        !self.active.is_down() && self.passive.available()
    }

    /// Count a request until the returned guard drops.
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Relaxed);
        InFlight(self.clone())
    }
}

impl Backend {
    /// A backend at `addr` for `cfg` (its address, or one its name resolved to), taking
    /// over `prev` state when the backend stays.
    pub fn new(
        cfg: &config::Backend,
        addr: SocketAddr,
        sni: Option<&str>,
        prev: Option<Arc<BackendState>>,
        stats: Option<Arc<BackendStats>>,
    ) -> Backend {
        let server_name = sni
            .or(cfg.addr.host().map(|h| h.trim_end_matches('.')))
            .and_then(|n| ServerName::try_from(n.to_string()).ok())
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        Backend {
            addr,
            name: cfg.addr.host().map(Arc::from),
            label: addr.to_string().into(),
            server_name,
            weight: cfg.weight,
            drain: cfg.drain,
            state: prev.unwrap_or_default(),
            stats: stats.unwrap_or_default(),
        }
    }

    /// May take new requests: not draining, and healthy.
    pub fn available(&self) -> bool {
        !self.drain && self.state.healthy()
    }

    /// May keep its sticky users: healthy (draining is fine).
    pub fn up(&self) -> bool {
        self.state.healthy()
    }
}

/// Backends a request has already tried.
#[derive(Default)]
pub struct Tried {
    low: u64,
    high: Vec<usize>,
}

impl Tried {
    /// Whether backend `i` was tried.
    pub fn has(&self, i: usize) -> bool {
        if i < 64 {
            self.low & (1 << i) != 0
        } else {
            self.high.contains(&i)
        }
    }

    /// Mark backend `i` as tried.
    pub fn add(&mut self, i: usize) {
        if i < 64 {
            self.low |= 1 << i;
        } else {
            self.high.push(i);
        }
    }
}

/// The outcome of asking a pool for the next backend.
#[derive(Debug, PartialEq, Eq)]
pub enum Pick {
    /// A healthy backend.
    Healthy(usize),
    /// No backend is healthy and `when_all_down: fail_open`: try this one anyway.
    FailOpen(usize),
    /// Every candidate was tried.
    Exhausted,
    /// No backend is healthy and `when_all_down: reject`.
    AllDown,
}

impl Pool {
    /// Compile `cfg`, reusing backend state from the previous snapshot's `prev`; `secret`
    /// keys the sticky cookie; a named backend is one backend per address `answers` has
    /// for its name (none yet: none).
    pub fn compile(
        cfg: &config::Pool,
        prev: Option<&Pool>,
        secret: Option<&config::Secret>,
        answers: &Answers,
    ) -> Pool {
        let stats = prev.map(|p| p.stats.clone()).unwrap_or_default();
        let counted = prev;
        // Pooled connections only carry over while they are still the right kind.
        let prev = prev.filter(|p| p.protocol == cfg.protocol && p.tls == cfg.tls);
        let sni = cfg.tls.as_ref().and_then(|t| t.sni.as_deref());
        let backends: Vec<Arc<Backend>> = addresses(cfg, answers)
            .map(|(b, addr)| {
                let old = counted.and_then(|p| p.backends.iter().find(|o| o.addr == addr));
                let state = old.filter(|_| prev.is_some()).map(|o| o.state.clone());
                let stats = old.map(|o| o.stats.clone());
                Arc::new(Backend::new(b, addr, sni, state, stats))
            })
            .collect();
        let backends_len = backends.len();
        let h2 = cfg.protocol == Protocol::H2;
        // The TLS client config carries the session cache: kept while the pool's protocol
        // and TLS settings are (a reload, or a DNS answer that changed), so reconnects
        // resume their sessions instead of full handshakes.
        let tls = match prev {
            Some(p) => p.connector.tls.clone(),
            None => cfg
                .tls
                .as_ref()
                .map(|t| crate::tls::client_config(t.ca.as_ref().map(|c| c.certs.as_slice()), h2)),
        };
        let connector = Connector {
            h2,
            tls,
            timeout: cfg.timeouts.connect,
            proxy: cfg.proxy_protocol,
        };
        let sticky = cfg
            .sticky
            .as_ref()
            .map(|st| Sticky::new(st, &cfg.name, backends.iter().map(|b| &*b.label), secret));
        Pool {
            name: cfg.name.clone(),
            balance: cfg.balance,
            balancer: Balancer::new(cfg.balance, &backends),
            hash_cookie: (cfg.balance == Balance::CookieHash)
                .then(|| cfg.hash_key.as_deref().map(Box::from))
                .flatten(),
            hash_header: (cfg.balance == Balance::HeaderHash)
                .then(|| {
                    cfg.hash_key
                        .as_deref()
                        .and_then(|k| http::HeaderName::from_bytes(k.as_bytes()).ok())
                })
                .flatten(),
            sticky,
            backends,
            timeouts: cfg.timeouts,
            retries: cfg.retries,
            when_all_down: cfg.when_all_down,
            eject_on_5xx: cfg.eject_on_5xx,
            max_ejected: max_ejected(backends_len, cfg.max_ejection_percent),
            connector,
            protocol: cfg.protocol,
            tls: cfg.tls.clone(),
            stats,
        }
    }

    /// Whether passive ejection may take out one more backend (`max_ejection_percent`):
    /// backends active checks took out count too, so the two together never empty more of
    /// the pool than the cap. Two workers ejecting at the same moment may overshoot it by
    /// one (the count and the ejection are not one atomic step).
    pub fn may_eject(&self) -> bool {
        let out = self.backends.iter().filter(|b| !b.state.healthy()).count();
        out < self.max_ejected
    }

    /// The backend a hash key maps to while every backend is up and idle.
    pub fn owner(&self, key: u64) -> Option<usize> {
        self.balancer.owner(key)
    }

    /// The next backend to try, skipping those in `tried`; `key` is the request's hash key
    /// for a hash balancer.
    pub fn pick(&self, tried: &Tried, key: Option<u64>) -> Pick {
        let b = &self.backends;
        if let Some(i) = self
            .balancer
            .pick(b, key, |i| !tried.has(i) && b[i].available())
        {
            return Pick::Healthy(i);
        }
        if b.iter().any(|x| x.available()) {
            return Pick::Exhausted;
        }
        match self.when_all_down {
            WhenAllDown::Reject => Pick::AllDown,
            WhenAllDown::FailOpen => match self.balancer.pick(b, key, |i| !tried.has(i)) {
                Some(i) => Pick::FailOpen(i),
                None => Pick::Exhausted,
            },
        }
    }
}

/// Every address `cfg`'s backends stand for, with the entry each came from, in config
/// order; an address two entries reach (a name resolving to a listed IP) is the first's.
fn addresses<'a>(
    cfg: &'a config::Pool,
    answers: &'a Answers,
) -> impl Iterator<Item = (&'a config::Backend, SocketAddr)> + 'a {
    let mut seen = std::collections::HashSet::new();
    cfg.backends
        .iter()
        .flat_map(move |b| {
            let all: Vec<SocketAddr> = match &b.addr {
                config::Addr::Ip(a) => vec![*a],
                config::Addr::Name { host, port } => {
                    answers.get(host).map_or_else(Vec::new, |ips| {
                        ips.iter().map(|ip| SocketAddr::new(*ip, *port)).collect()
                    })
                }
            };
            all.into_iter().map(move |a| (b, a))
        })
        .filter(move |(_, a)| seen.insert(*a))
}

/// How many of `n` backends `percent` lets passive ejection take out: at least one
/// unless it is 0 (Envoy's outlier detection rounds the same way).
fn max_ejected(n: usize, percent: u32) -> usize {
    if percent == 0 {
        return 0;
    }
    (n * percent as usize / 100).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health;
    use std::time::Duration;

    fn pool(when_all_down: WhenAllDown, drains: &[bool]) -> Pool {
        Pool::compile(
            &config::Pool {
                when_all_down,
                backends: drains
                    .iter()
                    .enumerate()
                    .map(|(i, &drain)| config::Backend {
                        addr: config::Addr::Ip(([127, 0, 0, 1], 1 + i as u16).into()),
                        weight: 1,
                        drain,
                    })
                    .collect(),
                ..pool_cfg()
            },
            None,
            None,
            &Answers::default(),
        )
    }

    fn eject(p: &Pool, i: usize) {
        for _ in 0..health::EJECT_AFTER {
            p.backends[i]
                .state
                .passive
                .connect_failed(crate::clock::now_ms(), || true);
        }
    }

    #[test]
    fn retries_walk_every_backend_once() {
        let p = pool(WhenAllDown::FailOpen, &[false, false, false]);
        let mut tried = Tried::default();
        for _ in 0..3 {
            let Pick::Healthy(i) = p.pick(&tried, None) else {
                panic!()
            };
            assert!(!tried.has(i));
            tried.add(i);
        }
        assert_eq!(p.pick(&tried, None), Pick::Exhausted);
    }

    #[test]
    fn draining_and_ejected_backends_get_no_new_requests() {
        let p = pool(WhenAllDown::FailOpen, &[true, false, false]);
        eject(&p, 2);
        for _ in 0..10 {
            assert_eq!(p.pick(&Tried::default(), None), Pick::Healthy(1));
        }
    }

    #[test]
    fn all_down_fails_open_or_rejects() {
        let open = pool(WhenAllDown::FailOpen, &[false, false]);
        let reject = pool(WhenAllDown::Reject, &[false, false]);
        for p in [&open, &reject] {
            eject(p, 0);
            eject(p, 1);
        }
        assert!(matches!(
            open.pick(&Tried::default(), None),
            Pick::FailOpen(_)
        ));
        assert_eq!(reject.pick(&Tried::default(), None), Pick::AllDown);
    }

    #[test]
    fn the_ejection_cap_counts_ejected_backends() {
        assert_eq!(max_ejected(4, 50), 2);
        assert_eq!(max_ejected(1, 50), 1);
        assert_eq!(max_ejected(3, 10), 1);
        assert_eq!(max_ejected(10, 0), 0);
        let p = pool(WhenAllDown::FailOpen, &[false; 4]);
        assert!(p.may_eject());
        eject(&p, 0);
        assert!(p.may_eject());
        eject(&p, 1);
        assert!(!p.may_eject(), "2 of 4 out at 50%");
    }

    #[test]
    fn state_survives_recompile_for_backends_that_stay() {
        let a = pool(WhenAllDown::FailOpen, &[false, false]);
        let _held = a.backends[1].state.start_request();
        let b = Pool::compile(
            &config::Pool {
                backends: vec![config::Backend {
                    addr: config::Addr::Ip(a.backends[1].addr),
                    weight: 1,
                    drain: false,
                }],
                ..pool_cfg()
            },
            Some(&a),
            None,
            &Answers::default(),
        );
        assert_eq!(b.backends[0].state.in_flight(), 1);
        assert!(Arc::ptr_eq(&a.backends[1].state, &b.backends[0].state));
    }

    fn pool_cfg() -> config::Pool {
        config::Pool {
            name: "p".into(),
            balance: config::Balance::RoundRobin,
            hash_key: None,
            sticky: None,
            timeouts: Timeouts {
                connect: Duration::from_secs(1),
                response: Duration::from_secs(1),
                read: Duration::from_secs(1),
                write: Duration::from_secs(1),
                idle: Duration::from_secs(1),
            },
            retries: 2,
            when_all_down: WhenAllDown::FailOpen,
            health_check: None,
            eject_on_5xx: None,
            max_ejection_percent: 50,
            protocol: Protocol::Http1,
            tls: None,
            dns_refresh: Duration::from_secs(5),
            proxy_protocol: None,
            backends: vec![],
        }
    }
}

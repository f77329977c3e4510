//! The compiled, immutable view of a config that requests read, and the one place it lives.
//!
//! A request loads the current [`Snapshot`] once and keeps that `Arc` to the end, so a
//! reload never changes the rules under a request in flight. Compiling a new snapshot
//! takes over the backend state of the previous one (see `pool`).

use crate::config::{self, Config, Limits};
use crate::dns::{Answers, Dns};
use crate::health::Checks;
use crate::metrics::series::{Count, Series};
use crate::metrics::stats::RouteStats;
use crate::pool::Pool;
use crate::router::Router;
use crate::sni::SniTable;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Everything the hot path reads, compiled from one [`Config`].
pub struct Snapshot {
    pub config: Config,
    pub router: Router,
    /// In config order; a route's pool indices index this.
    pub pools: Vec<Pool>,
    /// The proxy's own cookies (every split cookie and sticky cookie): browsers send them
    /// with every request (`Path=/`), and none of them reaches a backend.
    pub cookies: Box<[Box<[u8]>]>,
    /// The listeners' settings, for the connections they accept from now on.
    listeners: Box<[Arc<config::Listener>]>,
    /// The limits connections accepted from now on get.
    pub limits: Arc<Limits>,
    /// Each route's request counts, in route order; carried over by name.
    pub route_stats: Box<[Arc<RouteStats>]>,
    /// The `sni_routes` of tcp listeners that have them, by listener name: pool indices.
    sni: Box<[(Arc<str>, SniTable<usize>)]>,
    /// Some pool has `proxy_protocol`.
    proxy_protocol: bool,
}

impl Snapshot {
    /// The settings of listener `name`.
    pub fn listener(&self, name: &str) -> Option<&Arc<config::Listener>> {
        self.listeners.iter().find(|l| &*l.name == name)
    }

    /// Whether some pool sends PROXY protocol headers (whose connections need to know
    /// where their client connected to).
    pub fn sends_proxy_protocol(&self) -> bool {
        self.proxy_protocol
    }

    /// The SNI routes of tcp listener `name`, if it has any.
    pub fn sni_table(&self, name: &str) -> Option<&SniTable<usize>> {
        self.sni.iter().find(|(n, _)| &**n == name).map(|(_, t)| t)
    }

    /// Compile `config`, taking over backend state from `prev` where backends stay; named
    /// backends stand for the addresses `answers` holds for them.
    pub fn compile(config: Config, prev: Option<&Snapshot>, answers: &Answers) -> Snapshot {
        let router =
            Router::compile(&config.routes).expect("validation already compiled these routes");
        let pools = config
            .pools
            .iter()
            .map(|p| {
                let old = prev.and_then(|s| s.pools.iter().find(|o| o.name == p.name));
                Pool::compile(p, old, config.sticky_secret.as_ref(), answers)
            })
            .collect::<Vec<Pool>>();
        let mut cookies: Vec<Box<[u8]>> = Vec::new();
        let splits = config.routes.iter().filter_map(|r| match &r.to {
            crate::config::RouteTo::Split(s) => Some(s.cookie.as_bytes()),
            crate::config::RouteTo::Pool(_) => None,
        });
        let sticky = pools
            .iter()
            .filter_map(|p| p.sticky.as_ref().map(|s| s.cookie.as_bytes()));
        for n in splits.chain(sticky) {
            if !cookies.iter().any(|x| **x == *n) {
                cookies.push(n.into());
            }
        }
        let cookies = cookies.into_boxed_slice();
        // By name, through a map: a reload of a thousand routes is not a million compares.
        let kept: HashMap<&str, &Arc<RouteStats>> = prev
            .map(|s| {
                s.config
                    .routes
                    .iter()
                    .map(|r| &*r.name)
                    .zip(s.route_stats.iter())
                    .collect()
            })
            .unwrap_or_default();
        let route_stats = config
            .routes
            .iter()
            .map(|r| {
                kept.get(&*r.name)
                    .map_or_else(Arc::default, |s| Arc::clone(s))
            })
            .collect();
        let sni = config
            .listeners
            .iter()
            .filter_map(|l| {
                let t = l.tcp.as_ref().filter(|t| !t.sni_routes.is_empty())?;
                Some((l.name.clone(), SniTable::new(t.sni_routes.iter().cloned())))
            })
            .collect();
        Snapshot {
            route_stats,
            sni,
            proxy_protocol: config.pools.iter().any(|p| p.proxy_protocol.is_some()),
            listeners: config.listeners.iter().cloned().map(Arc::new).collect(),
            limits: Arc::new(config.limits.clone()),
            config,
            router,
            pools,
            cookies,
        }
    }
}

/// State shared by every task of one running proxy.
pub struct Shared {
    snapshot: ArcSwap<Snapshot>,
    /// `/ready`: every listener bound and not shutting down.
    pub ready: AtomicBool,
    listeners: Mutex<HashMap<Arc<str>, Arc<ListenerStats>>>,
    /// Where each running listener is bound.
    bound: Mutex<HashMap<Arc<str>, SocketAddr>>,
    /// The active health checkers of the current snapshot's backends.
    pub checks: Checks,
    /// Backend names' answers and refresh tasks.
    pub dns: Dns,
    /// Held while a snapshot is compiled and stored: a reload and a DNS refresh racing must
    /// not store a snapshot compiled from a config the other one replaced.
    compiling: Mutex<()>,
    pub reloads: Reloads,
    /// When the current config was loaded (started with, or last reloaded).
    loaded_at: Mutex<SystemTime>,
}

/// What config reloads did (`switchyard_config_reloads_total`, `/status`).
#[derive(Debug, Default)]
pub struct Reloads {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    last: Mutex<Option<LastReload>>,
}

/// The outcome of the last reload.
#[derive(Debug, Clone)]
pub struct LastReload {
    pub at: SystemTime,
    /// `None` when it was taken; else every error, one per line.
    pub error: Option<String>,
}

impl Reloads {
    /// Count a reload, and keep it as the last.
    pub fn record(&self, result: Result<(), String>) {
        match &result {
            Ok(()) => self.ok.fetch_add(1, Relaxed),
            Err(_) => self.failed.fetch_add(1, Relaxed),
        };
        *self.last.lock().expect("reloads lock") = Some(LastReload {
            at: SystemTime::now(),
            error: result.err(),
        });
    }

    /// The last reload, if there was one.
    pub fn last(&self) -> Option<LastReload> {
        self.last.lock().expect("reloads lock").clone()
    }
}

/// Counters of one listener, kept across reloads.
#[derive(Default)]
pub struct ListenerStats {
    /// Failed TLS handshakes, including plain HTTP sent to a TLS port.
    pub tls_handshake_errors: AtomicU64,
    /// Client connections open now, and accepted so far.
    pub connections_active: AtomicU64,
    pub connections_total: AtomicU64,
    /// The requests that matched no route (route and pool `none`).
    pub unrouted: RouteStats,
    /// A tcp listener's connections and bytes.
    pub tcp: TcpStats,
}

/// What a tcp listener counts (`switchyard_tcp_*`).
#[derive(Default)]
pub struct TcpStats {
    /// Connections made to backends, by (pool, backend).
    pub connections: Series<(Arc<str>, Arc<str>), Count>,
    /// Client connections being relayed now (connected to a backend).
    pub active: AtomicU64,
    /// Bytes from clients (`in`) and to clients (`out`).
    pub bytes_in: Count,
    pub bytes_out: Count,
}

impl Shared {
    /// Start with `snapshot`, compiled with `dns`'s answers; not ready yet.
    pub fn new(snapshot: Snapshot, dns: Dns) -> Shared {
        Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            ready: AtomicBool::new(false),
            listeners: Mutex::default(),
            bound: Mutex::default(),
            checks: Checks::default(),
            dns,
            compiling: Mutex::default(),
            reloads: Reloads::default(),
            loaded_at: Mutex::new(SystemTime::now()),
        }
    }

    /// When the current config was loaded.
    pub fn loaded_at(&self) -> SystemTime {
        *self.loaded_at.lock().expect("loaded_at lock")
    }

    /// Every listener's counters there are, by name.
    pub fn listener_stats_all(&self) -> Vec<(Arc<str>, Arc<ListenerStats>)> {
        let all = self.listeners.lock().expect("listener stats lock poisoned");
        let mut v: Vec<_> = all.iter().map(|(n, s)| (n.clone(), s.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Note where listener `name` is bound (`None`: it stopped).
    pub fn set_listener_addr(&self, name: &Arc<str>, addr: Option<SocketAddr>) {
        let mut bound = self.bound.lock().expect("bound listeners lock");
        match addr {
            Some(a) => bound.insert(name.clone(), a),
            None => bound.remove(name),
        };
    }

    /// Where the running listener `name` is bound.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.bound
            .lock()
            .expect("bound listeners lock")
            .get(name)
            .copied()
    }

    /// The counters of listener `name` (created on first use).
    pub fn listener_stats(&self, name: &Arc<str>) -> Arc<ListenerStats> {
        let mut all = self.listeners.lock().expect("listener stats lock poisoned");
        all.entry(name.clone()).or_default().clone()
    }

    /// The current snapshot; keep the `Arc` for the whole request.
    pub fn load(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Compile `config` against the current snapshot and make it current; the health
    /// checkers and DNS refresh tasks follow it (so this needs a tokio runtime).
    pub fn swap(self: &Arc<Self>, config: Config) {
        self.swap_with(config, crate::dns::Prepared::default());
    }

    /// [`swap`](Shared::swap), adopting the lookups `prepared` made for `config`.
    pub fn swap_with(self: &Arc<Self>, config: Config, prepared: crate::dns::Prepared) {
        let _compiling = self.compiling.lock().expect("compile lock");
        self.dns.adopt(prepared);
        self.store(config, true);
        *self.loaded_at.lock().expect("loaded_at lock") = SystemTime::now();
        self.dns.reconcile(self, &self.load().config);
    }

    /// Compile the current config again with the current DNS answers (a name's addresses
    /// changed).
    pub fn refresh(&self) {
        let _compiling = self.compiling.lock().expect("compile lock");
        self.store(self.load().config.clone(), true);
    }

    /// Adopt `prepared` and compile the current config with it, before the proxy runs
    /// (no health checker starts yet).
    pub fn resolved(&self, prepared: crate::dns::Prepared) {
        let _compiling = self.compiling.lock().expect("compile lock");
        self.dns.adopt(prepared);
        self.store(self.load().config.clone(), false);
    }

    fn store(&self, config: Config, checks: bool) {
        let next = Arc::new(Snapshot::compile(
            config,
            Some(&self.snapshot.load()),
            &self.dns.answers(),
        ));
        self.snapshot.store(next.clone());
        if checks {
            self.checks.reconcile(&next);
        }
    }
}

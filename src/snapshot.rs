//! The compiled, immutable view of a config that requests read, and the one place it lives.
//!
//! A request loads the current [`Snapshot`] once and keeps that `Arc` to the end, so a
//! reload never changes the rules under a request in flight. Compiling a new snapshot
//! takes over the backend state of the previous one (see `pool`).

use crate::config::Config;
use crate::pool::Pool;
use crate::router::Router;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};

/// Everything the hot path reads, compiled from one [`Config`].
pub struct Snapshot {
    pub config: Config,
    pub router: Router,
    /// In config order; a route's pool indices index this.
    pub pools: Vec<Pool>,
    /// The proxy's own cookies (every split cookie and sticky cookie): browsers send them
    /// with every request (`Path=/`), and none of them reaches a backend.
    pub cookies: Box<[Box<[u8]>]>,
}

impl Snapshot {
    /// Compile `config`, taking over backend state from `prev` where backends stay.
    pub fn compile(config: Config, prev: Option<&Snapshot>) -> Snapshot {
        let router =
            Router::compile(&config.routes).expect("validation already compiled these routes");
        let pools = config
            .pools
            .iter()
            .map(|p| {
                let old = prev.and_then(|s| s.pools.iter().find(|o| o.name == p.name));
                Pool::compile(p, old, config.sticky_secret.as_ref())
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
        Snapshot {
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
}

/// Counters of one listener, kept across reloads.
// TODO(#metrics): export as switchyard_tls_handshake_errors_total{listener}.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Failed TLS handshakes, including plain HTTP sent to a TLS port.
    pub tls_handshake_errors: AtomicU64,
}

impl Shared {
    /// Start with `snapshot`, not ready yet.
    pub fn new(snapshot: Snapshot) -> Shared {
        Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            ready: AtomicBool::new(false),
            listeners: Mutex::default(),
        }
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

    /// Compile `config` against the current snapshot and make it current.
    pub fn swap(&self, config: Config) {
        let next = Snapshot::compile(config, Some(&self.snapshot.load()));
        self.snapshot.store(Arc::new(next));
    }
}

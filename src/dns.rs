//! DNS-fed backends: an `addr` whose host is a name stands for one backend per address the
//! name resolves to (A and AAAA).
//!
//! [`Dns`] keeps the last good answer of every name the config uses and one task per name
//! (not per request, pool or worker) that looks it up again every `dns_refresh`, ±10 %
//! so a fleet's lookups spread out. Only a changed answer does anything: the snapshot is
//! compiled again from the same config (`Shared::refresh`), and since backend state carries
//! over by address, an address that stays keeps its connections, health and counters, a
//! new one starts fresh, and one that vanished takes no new request while those already on
//! it finish on the snapshot they hold. A failed lookup (an error, a timeout, or an answer
//! with no address) keeps the last good set, is logged and counted: a DNS outage must not
//! empty a pool of backends that are still serving.
//!
//! The resolver's own cache is off: the refresh interval, not the record's TTL, says when
//! an answer is stale (Envoy's `dns_refresh_rate`, nginx's `resolver valid=`).

use crate::config::{Addr, Config};
use crate::snapshot::Shared;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// The addresses each name resolved to last, sorted; what `Snapshot::compile` expands
/// named backends with. A name with no good answer yet is absent.
pub type Answers = HashMap<Arc<str>, Arc<[IpAddr]>>;

/// How long one lookup (both record types, every retry) may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// The resolver, the answers and the refresh tasks of one running proxy.
#[derive(Default)]
pub struct Dns {
    /// Built for the config's `resolver:` (`None` inside: the system's).
    resolver: Mutex<Option<(Option<SocketAddr>, TokioResolver)>>,
    answers: Mutex<Answers>,
    tasks: Mutex<HashMap<Arc<str>, Task>>,
    /// Lookup outcomes by name, kept while the name is in the config.
    stats: Mutex<BTreeMap<Arc<str>, Arc<NameStats>>>,
}

struct Task {
    every: Duration,
    handle: tokio::task::AbortHandle,
}

/// What the lookups of one name did (`switchyard_dns_lookups_total`, ...).
#[derive(Debug, Default)]
pub struct NameStats {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    /// Lookups whose answer differed from the one before (the pool was rebuilt).
    pub changed: AtomicU64,
}

/// Every name `config`'s backends use, with the shortest `dns_refresh` of the pools that
/// use it.
pub fn names(config: &Config) -> BTreeMap<Arc<str>, Duration> {
    let mut out: BTreeMap<Arc<str>, Duration> = BTreeMap::new();
    for p in &config.pools {
        for b in &p.backends {
            if let Addr::Name { host, .. } = &b.addr {
                out.entry(host.clone())
                    .and_modify(|d| *d = (*d).min(p.dns_refresh))
                    .or_insert(p.dns_refresh);
            }
        }
    }
    out
}

impl Dns {
    /// The current answers, for compiling a snapshot.
    pub fn answers(&self) -> Answers {
        self.answers.lock().expect("dns answers lock").clone()
    }

    /// Lookup counts and the current answer of every name in use, by name.
    pub fn stats(&self) -> Vec<(Arc<str>, Arc<NameStats>, usize)> {
        let answers = self.answers.lock().expect("dns answers lock");
        self.stats
            .lock()
            .expect("dns stats lock")
            .iter()
            .map(|(n, s)| (n.clone(), s.clone(), answers.get(n).map_or(0, |a| a.len())))
            .collect()
    }

    /// Look up, once and concurrently, every name of `config` that has no answer yet, so a
    /// proxy starting (or a reload adding a name) serves with backends from its first
    /// request. Bounded by the lookup timeout; a name that fails here is retried by its task.
    pub async fn prepare(&self, config: &Config) {
        let resolver = self.resolver_for(config.resolver);
        let missing: Vec<Arc<str>> = {
            let answers = self.answers.lock().expect("dns answers lock");
            names(config)
                .into_keys()
                .filter(|n| !answers.contains_key(n))
                .collect()
        };
        let mut lookups = tokio::task::JoinSet::new();
        for name in missing {
            let resolver = resolver.clone();
            lookups.spawn(async move {
                let r = lookup(&resolver, &name).await;
                (name, r)
            });
        }
        while let Some(done) = lookups.join_next().await {
            if let Ok((name, result)) = done {
                self.record(&name, result);
            }
        }
    }

    /// Make the refresh tasks those of `config`: one per name, restarted when its interval
    /// changed; names no longer used lose their task, answer and counts. Needs a runtime.
    pub fn reconcile(&self, shared: &Arc<Shared>, config: &Config) {
        let wanted = names(config);
        let mut tasks = self.tasks.lock().expect("dns tasks lock");
        tasks.retain(|name, t| {
            let keep = wanted.get(name) == Some(&t.every);
            if !keep {
                t.handle.abort();
            }
            keep
        });
        for (name, every) in &wanted {
            if tasks.contains_key(name) {
                continue;
            }
            let handle =
                tokio::spawn(refresh(Arc::downgrade(shared), name.clone(), *every)).abort_handle();
            tasks.insert(
                name.clone(),
                Task {
                    every: *every,
                    handle,
                },
            );
        }
        self.answers
            .lock()
            .expect("dns answers lock")
            .retain(|n, _| wanted.contains_key(n));
        self.stats
            .lock()
            .expect("dns stats lock")
            .retain(|n, _| wanted.contains_key(n));
        drop(tasks);
        // The server to ask may have changed too: the next lookups use the new one.
        self.resolver_for(config.resolver);
    }

    /// Stop every refresh task.
    pub fn stop(&self) {
        for (_, t) in self.tasks.lock().expect("dns tasks lock").drain() {
            t.handle.abort();
        }
    }

    /// How many refresh tasks run.
    pub fn tasks(&self) -> usize {
        self.tasks.lock().expect("dns tasks lock").len()
    }

    /// The resolver for `server`, built on first use and again when `server` changes.
    fn resolver_for(&self, server: Option<SocketAddr>) -> TokioResolver {
        let mut slot = self.resolver.lock().expect("dns resolver lock");
        match &*slot {
            Some((s, r)) if *s == server => r.clone(),
            _ => {
                let r = build(server);
                *slot = Some((server, r.clone()));
                r
            }
        }
    }

    /// Keep the outcome of a lookup of `name`; true when its answer changed.
    fn record(&self, name: &Arc<str>, result: Result<Arc<[IpAddr]>, String>) -> bool {
        let stats = self
            .stats
            .lock()
            .expect("dns stats lock")
            .entry(name.clone())
            .or_default()
            .clone();
        match result {
            Ok(addrs) => {
                stats.ok.fetch_add(1, Relaxed);
                let mut answers = self.answers.lock().expect("dns answers lock");
                let before = answers.insert(name.clone(), addrs.clone());
                let changed = before.as_deref() != Some(&*addrs);
                if changed {
                    stats.changed.fetch_add(1, Relaxed);
                    let list: Vec<String> = addrs.iter().map(IpAddr::to_string).collect();
                    tracing::info!(name = %name, addresses = %list.join(", "), "backend name resolved");
                }
                changed
            }
            Err(e) => {
                stats.failed.fetch_add(1, Relaxed);
                let kept = self
                    .answers
                    .lock()
                    .expect("dns answers lock")
                    .get(name)
                    .map_or(0, |a| a.len());
                tracing::warn!(name = %name, error = %e, kept, "backend name lookup failed: keeping the last good addresses");
                false
            }
        }
    }
}

/// A resolver asking `server`, or the system's configuration (`/etc/resolv.conf`, with its
/// search domains, and `/etc/hosts`) when `None`.
fn build(server: Option<SocketAddr>) -> TokioResolver {
    let provider = TokioRuntimeProvider::default();
    let mut builder = match server {
        Some(s) => {
            let mut conn = ConnectionConfig::udp();
            conn.port = s.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = s.port();
            let ns = NameServerConfig::new(s.ip(), true, vec![conn, tcp]);
            TokioResolver::builder_with_config(ResolverConfig::from_name_servers(vec![ns]), provider)
        }
        None => TokioResolver::builder(provider).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the system's DNS configuration: asking 127.0.0.1:53");
            let ns = NameServerConfig::udp_and_tcp(IpAddr::from([127, 0, 0, 1]));
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![ns]),
                TokioRuntimeProvider::default(),
            )
        }),
    };
    let opts = builder.options_mut();
    opts.cache_size = 0;
    opts.ip_strategy = hickory_resolver::config::LookupIpStrategy::Ipv4AndIpv6;
    opts.timeout = Duration::from_secs(1);
    opts.attempts = 2;
    builder
        .build()
        .expect("a resolver without TLS or DNSSEC options builds")
}

/// The addresses `name` resolves to now, sorted and without repeats; no address is an
/// error.
async fn lookup(resolver: &TokioResolver, name: &str) -> Result<Arc<[IpAddr]>, String> {
    let found = tokio::time::timeout(LOOKUP_TIMEOUT, resolver.lookup_ip(name))
        .await
        .map_err(|_| {
            format!(
                "timed out after {}",
                humantime::format_duration(LOOKUP_TIMEOUT)
            )
        })?
        .map_err(|e| e.to_string())?;
    let mut addrs: Vec<IpAddr> = found.iter().collect();
    addrs.sort_unstable();
    addrs.dedup();
    if addrs.is_empty() {
        return Err("the answer has no A or AAAA record".into());
    }
    Ok(addrs.into())
}

/// Look `name` up every `every` (±10 %) until aborted, and rebuild the snapshot when the
/// answer changes.
async fn refresh(shared: Weak<Shared>, name: Arc<str>, every: Duration) {
    loop {
        tokio::time::sleep(every.mul_f64(0.9 + 0.2 * fastrand::f64())).await;
        let Some(s) = shared.upgrade() else { return };
        let resolver = s.dns.resolver_for(s.load().config.resolver);
        drop(s);
        let result = lookup(&resolver, &name).await;
        let Some(s) = shared.upgrade() else { return };
        if s.dns.record(&name, result) {
            s.refresh();
        }
    }
}

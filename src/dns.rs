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
//! empty a pool of backends that are still serving. A and AAAA are asked apart, so one
//! failing keeps the whole last good set too, not the half that answered.
//!
//! A reload's new names are looked up before it is taken ([`Dns::prepare`]), and their
//! answers are adopted only with it: a reload that fails leaves no trace here.
//!
//! The resolver's own cache is off: the refresh interval, not the record's TTL, says when
//! an answer is stale (Envoy's `dns_refresh_rate`, nginx's `resolver valid=`).

use crate::config::{Addr, Config};
use crate::snapshot::Shared;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;
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

/// The longest wait before asking again for a name that has no good answer yet.
const RETRY_UNRESOLVED: Duration = Duration::from_secs(1);

/// The resolver, the answers and the refresh tasks of one running proxy.
#[derive(Default)]
pub struct Dns {
    /// Built for the current config's `resolver:` (`None` inside: the system's).
    resolver: Mutex<Option<(Option<SocketAddr>, TokioResolver)>>,
    answers: Mutex<Answers>,
    tasks: Mutex<HashMap<Arc<str>, Task>>,
    /// Tasks started so far: each one's id, so a task a reload replaced cannot write.
    started: AtomicU64,
    /// Lookup outcomes by name, kept while the name is in the config.
    stats: Mutex<BTreeMap<Arc<str>, Arc<NameStats>>>,
}

struct Task {
    id: u64,
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

/// What one lookup found: the addresses, or why there are none.
type Found = Result<Arc<[IpAddr]>, String>;

/// Lookups made for a config not taken yet, adopted with it ([`Dns::adopt`]).
#[derive(Default)]
pub struct Prepared(Vec<(Arc<str>, Found)>);

/// Every name `config`'s backends use (as written: a final dot makes it absolute), with
/// the shortest `dns_refresh` of the pools that use it.
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

    /// Look up, once and concurrently, the names `next` needs before it can serve: those
    /// with no answer yet, or every one when `next` asks another DNS server than `current`.
    /// Nothing is stored: the lookups are [adopted](Dns::adopt) with the config, so a
    /// reload that fails leaves no trace. Bounded by the lookup timeout; a name that fails
    /// here is retried by its task.
    pub async fn prepare(&self, current: Option<&Config>, next: &Config) -> Prepared {
        let same_server = current.map(|c| c.resolver) == Some(next.resolver);
        let resolver = match self.resolver.lock().expect("dns resolver lock").as_ref() {
            Some((server, r)) if same_server && *server == next.resolver => r.clone(),
            _ => build(next.resolver),
        };
        let missing: Vec<Arc<str>> = {
            let answers = self.answers.lock().expect("dns answers lock");
            names(next)
                .into_keys()
                .filter(|n| !same_server || !answers.contains_key(n))
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
        let mut out = Prepared::default();
        while let Some(done) = lookups.join_next().await {
            if let Ok(one) = done {
                out.0.push(one);
            }
        }
        out
    }

    /// Take the lookups [`prepare`](Dns::prepare) made, now that their config is taken.
    pub fn adopt(&self, prepared: Prepared) {
        for (name, result) in prepared.0 {
            self.record(&name, result);
        }
    }

    /// Make the refresh tasks and the resolver those of `config`: one task per name,
    /// restarted when its interval changed; names no longer used lose their task, answer
    /// and counts. Needs a runtime.
    pub fn reconcile(&self, shared: &Arc<Shared>, config: &Config) {
        let wanted = names(config);
        {
            let mut slot = self.resolver.lock().expect("dns resolver lock");
            if slot.as_ref().map(|(s, _)| *s) != Some(config.resolver) {
                *slot = Some((config.resolver, build(config.resolver)));
            }
        }
        // The tasks lock is held while answers and counts are trimmed, so a task cannot
        // write for a name between its removal here and its abort taking effect.
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
            let id = self.started.fetch_add(1, Relaxed);
            let task = refresh(Arc::downgrade(shared), name.clone(), *every, id);
            let handle = tokio::spawn(task).abort_handle();
            tasks.insert(
                name.clone(),
                Task {
                    id,
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

    /// The resolver of the current config.
    fn resolver(&self) -> Option<TokioResolver> {
        let slot = self.resolver.lock().expect("dns resolver lock");
        slot.as_ref().map(|(_, r)| r.clone())
    }

    /// Whether `name` has a good answer.
    fn resolved(&self, name: &str) -> bool {
        self.answers
            .lock()
            .expect("dns answers lock")
            .contains_key(name)
    }

    /// Keep what the refresh task `id` looked up for `name`, if it is still the name's
    /// task; true when the answer changed.
    fn record_from(&self, id: u64, name: &Arc<str>, result: Found) -> bool {
        let tasks = self.tasks.lock().expect("dns tasks lock");
        if tasks.get(name).map(|t| t.id) != Some(id) {
            return false;
        }
        self.record(name, result)
    }

    /// Keep the outcome of a lookup of `name`; true when its answer changed.
    fn record(&self, name: &Arc<str>, result: Found) -> bool {
        let stats = self
            .stats
            .lock()
            .expect("dns stats lock")
            .entry(name.clone())
            .or_default()
            .clone();
        let mut answers = self.answers.lock().expect("dns answers lock");
        match result {
            Ok(addrs) => {
                stats.ok.fetch_add(1, Relaxed);
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
                let kept = answers.get(name).map_or(0, |a| a.len());
                tracing::warn!(name = %name, error = %e, kept, "backend name lookup failed; the addresses it had stay");
                false
            }
        }
    }
}

/// A resolver asking `server`, or the system's configuration (`/etc/resolv.conf` and
/// `/etc/hosts`, read now) when `None`. An explicit server still gets the system's search
/// domains and `ndots`, so short names mean what they mean to the host's other programs,
/// but not `/etc/hosts`: it answers for itself.
fn build(server: Option<SocketAddr>) -> TokioResolver {
    let system = hickory_resolver::system_conf::read_system_conf();
    let (config, mut opts) = match (server, system) {
        (None, Ok(both)) => both,
        (None, Err(e)) => {
            tracing::warn!(error = %e, "cannot read the system's DNS configuration: asking 127.0.0.1:53");
            let ns = NameServerConfig::udp_and_tcp(IpAddr::from([127, 0, 0, 1]));
            (
                ResolverConfig::from_name_servers(vec![ns]),
                Default::default(),
            )
        }
        (Some(s), system) => {
            let (mut udp, mut tcp) = (ConnectionConfig::udp(), ConnectionConfig::tcp());
            udp.port = s.port();
            tcp.port = s.port();
            let ns = NameServerConfig::new(s.ip(), true, vec![udp, tcp]);
            let (domain, search, mut opts) = match system {
                Ok((c, o)) => (c.domain().cloned(), c.search().to_vec(), o),
                Err(_) => (None, Vec::new(), Default::default()),
            };
            opts.use_hosts_file = ResolveHosts::Never;
            (ResolverConfig::from_parts(domain, search, vec![ns]), opts)
        }
    };
    opts.cache_size = 0;
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    // Two tries of 1 s fit in the lookup timeout, whatever resolv.conf says: a refresh
    // that hangs only delays the next.
    opts.timeout = Duration::from_secs(1);
    opts.attempts = 2;
    TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(opts)
        .build()
        .expect("a resolver without TLS or DNSSEC options builds")
}

/// The addresses `name` resolves to now, sorted and without repeats. A and AAAA are asked
/// apart: a type the name has no record of is empty, but any other failure of either
/// fails the lookup (so the last good set stays whole); no address at all is an error.
async fn lookup(resolver: &TokioResolver, name: &str) -> Found {
    let both = async { tokio::join!(resolver.ipv4_lookup(name), resolver.ipv6_lookup(name)) };
    let (v4, v6) = tokio::time::timeout(LOOKUP_TIMEOUT, both)
        .await
        .map_err(|_| {
            format!(
                "timed out after {}",
                humantime::format_duration(LOOKUP_TIMEOUT)
            )
        })?;
    let mut addrs: Vec<IpAddr> = Vec::new();
    for family in [v4, v6] {
        match family {
            Ok(found) => addrs.extend(found.answers().iter().filter_map(|r| match r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })),
            Err(e) if no_such_record(&e) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    addrs.sort_unstable();
    addrs.dedup();
    if addrs.is_empty() {
        return Err("no A or AAAA record".into());
    }
    Ok(addrs.into())
}

/// The server said the name has no record of the type (NODATA), or does not exist.
fn no_such_record(e: &NetError) -> bool {
    matches!(e, NetError::Dns(DnsError::NoRecordsFound(n))
        if matches!(n.response_code, ResponseCode::NoError | ResponseCode::NXDomain))
}

/// Look `name` up every `every` (±10 %), sooner while it has no answer, until aborted;
/// rebuild the snapshot when the answer changes.
async fn refresh(shared: Weak<Shared>, name: Arc<str>, every: Duration, id: u64) {
    loop {
        let unresolved = shared.upgrade().is_some_and(|s| !s.dns.resolved(&name));
        let wait = if unresolved {
            every.min(RETRY_UNRESOLVED)
        } else {
            every
        };
        tokio::time::sleep(wait.mul_f64(0.9 + 0.2 * fastrand::f64())).await;
        let Some(resolver) = shared.upgrade().and_then(|s| s.dns.resolver()) else {
            return;
        };
        let result = lookup(&resolver, &name).await;
        let Some(s) = shared.upgrade() else { return };
        if s.dns.record_from(id, &name, result) {
            s.refresh();
        }
    }
}

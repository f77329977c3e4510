//! Listeners and client connections: accept, limits, timeouts and graceful shutdown.
//!
//! [`Server::bind`] binds every listener (port 0 works, for tests) and [`Server::run`]
//! serves until its shutdown future resolves. Then the listening sockets close at once
//! (new connections are refused), open connections finish their requests and close, and
//! after `shutdown_timeout` whatever is left is cut. The admin listener stays up until
//! `run` returns, answering `/ready` with 503 while draining.
//!
//! A connection is TLS-terminated here when its listener says so, then served by one wire
//! path for its life: [`h1`] (the lane) or [`h2`] (hyper's HTTP/2 server, by ALPN or
//! prior knowledge). `Conn::drive` runs either under the connection's clock: the head
//! deadline, the idle timeout (a graceful close, then a cut if the connection lingers),
//! the lane's response deadline, and shutdown. `max_connections` is the listener's,
//! shared by every worker ([`ConnLimit`]).

pub mod h1;
pub mod h2;
mod tcp;

use crate::access_log::AccessLog;
use crate::admin;
use crate::clock::{ConnClock, Verdict, instant_at, now_ms};
use crate::config::{self, Config, Limits};
use crate::error::ProxyError;
use crate::net;
use crate::proxy::{self, ConnInfo, Proxy, TlsInfo};
use crate::record::Record;
use crate::snapshot::{ListenerStats, Shared, Snapshot};
use crate::tls;
use crate::upstream;
use h1::Lane;
use http::HeaderValue;
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A proxy with its sockets bound, ready to [`run`](Server::run).
pub struct Server {
    shared: Arc<Shared>,
    proxy: Arc<Proxy>,
    listeners: Vec<Bound>,
    admin: Option<AdminTask>,
    workers: usize,
    commands: mpsc::UnboundedReceiver<Command>,
    control: Control,
}

/// A listener and its sockets: one per worker, all bound to the same address.
struct Bound {
    run: Arc<ListenerRun>,
    sockets: Vec<std::net::TcpListener>,
}

/// One listener while it runs, shared by its accept loops (one per worker) and its
/// connections. Its settings are not here: each new connection reads them from the
/// current snapshot, so a reload changes them without re-binding.
struct ListenerRun {
    /// Its name now: a reload that gives the address another name renames it (the sockets
    /// stay, and nothing queued on them is lost).
    name: std::sync::Mutex<Arc<str>>,
    /// The configured address (a reload re-binds only when this changes).
    bind: SocketAddr,
    limit: Arc<ConnLimit>,
    /// Stop accepting, and let connections finish their requests and close.
    stop: Signal,
    /// Cut whatever connection is left.
    kill: Signal,
}

/// Asks a running [`Server`] to take a new config.
#[derive(Clone)]
pub struct Control {
    tx: mpsc::UnboundedSender<Command>,
}

enum Command {
    Reload(Box<Config>, oneshot::Sender<Result<(), String>>),
}

impl Control {
    /// Make `config` current: bind the listeners it adds, swap the snapshot, stop the
    /// listeners it removes. `Err` (and nothing changed) when a new listener cannot be
    /// bound or the server has stopped.
    pub async fn reload(&self, config: Config) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Reload(Box::new(config), tx))
            .map_err(|_| "the server has stopped".to_string())?;
        rx.await
            .unwrap_or_else(|_| Err("the server has stopped".into()))
    }
}

/// A listener's `max_connections`, shared by every worker's accept loop: the limit is the
/// listener's, not a worker's.
///
/// A worker accepts only while the listener has room, and takes its slot after accepting:
/// a worker waiting for room holds no slot, so a connection queued on another worker's
/// socket gets the next free one. Two workers accepting the last slot at once leave one
/// connection accepted but waiting (at most one per extra worker) until another closes.
pub struct ConnLimit {
    slots: Arc<Semaphore>,
    room: Notify,
    /// The limit now (a reload may change it).
    max: std::sync::Mutex<usize>,
}

impl ConnLimit {
    fn new(max: usize) -> ConnLimit {
        ConnLimit {
            slots: Arc::new(Semaphore::new(max)),
            room: Notify::new(),
            max: std::sync::Mutex::new(max),
        }
    }

    /// Make the limit `max` (a reload). Lowered, it takes the slots back as they free up:
    /// connections above the new limit are not cut, no new one comes in until they go.
    fn resize(&self, max: usize) {
        let mut now = self.max.lock().expect("connection limit lock");
        let old = std::mem::replace(&mut *now, max);
        if max > old {
            self.slots.add_permits(max - old);
            self.room.notify_waiters();
            return;
        }
        let debt = old - max;
        let owed = debt - self.slots.forget_permits(debt);
        if owed > 0 {
            let slots = self.slots.clone();
            tokio::spawn(async move {
                // Every slot in use frees up some day; each one that does is kept.
                for _ in 0..owed {
                    match slots.acquire().await {
                        Ok(p) => p.forget(),
                        Err(_) => return,
                    }
                }
            });
        }
    }

    /// Wait until a slot is free, without taking it.
    async fn has_room(&self) {
        loop {
            let notified = self.room.notified();
            let mut notified = pin!(notified);
            notified.as_mut().enable();
            if self.slots.available_permits() > 0 {
                return;
            }
            notified.await;
        }
    }

    /// Take a slot for an accepted connection.
    async fn take(self: &Arc<Self>) -> Slot {
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        Slot {
            permit: Some(permit),
            limit: self.clone(),
        }
    }
}

/// One connection's place under its listener's limit; freed when dropped.
struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    limit: Arc<ConnLimit>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // The slot first, then the news: a woken accept loop must find it free.
        drop(self.permit.take());
        self.limit.room.notify_waiters();
    }
}

impl Server {
    /// Bind every listener of `config` and its admin address, for one runtime.
    pub async fn bind(config: Config) -> io::Result<Server> {
        Server::bind_workers(config, 1).await
    }

    /// Bind for `workers` single-threaded runtimes: each listener gets one SO_REUSEPORT
    /// socket per worker, so the kernel spreads new connections over the workers and a
    /// connection lives on one thread from accept to close.
    pub async fn bind_workers(config: Config, workers: usize) -> io::Result<Server> {
        let log = AccessLog::start(config.access_log);
        Server::bind_with(config, workers, log).await
    }

    /// [`Server::bind_workers`], with the access log written by `log`.
    pub async fn bind_with(config: Config, workers: usize, log: AccessLog) -> io::Result<Server> {
        let workers = workers.max(1);
        // The admin listener first, and served at once: `/ready` says 503 until every
        // listener is bound and serving, which a probe can then see.
        let admin = match config.admin {
            Some(a) => Some(net::bind(a, false).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot bind the admin listener to {a}: {e}"),
                )
            })?),
            None => None,
        };
        let listener_cfgs = config.listeners.clone();
        let max_connections = config.limits.max_connections;
        let first = Snapshot::compile(config, None, &Default::default());
        let shared = Arc::new(Shared::new(first, crate::dns::Dns::default()));
        let admin = match admin {
            Some(l) => Some(AdminTask::start(l, &shared, &log)?),
            None => None,
        };
        // Backend names resolved before the first request, so the pools they feed are not
        // empty then (a name that fails now is retried soon by its task).
        let prepared = shared.dns.prepare(None, &shared.load().config).await;
        shared.resolved(prepared);
        let mut listeners = Vec::new();
        for l in &listener_cfgs {
            listeners.push(Bound::new(l, workers, max_connections)?);
        }
        for b in &listeners {
            shared.set_listener_addr(&b.run.name(), b.sockets[0].local_addr().ok());
        }
        let (tx, commands) = mpsc::unbounded_channel();
        Ok(Server {
            proxy: Arc::new(Proxy::new(shared.clone(), log)),
            shared,
            listeners,
            admin,
            workers,
            commands,
            control: Control { tx },
        })
    }

    /// A handle that reloads the config of this server once it runs.
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// The bound address of the listener called `name`.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|b| &*b.run.name() == name)
            .and_then(|b| b.sockets[0].local_addr().ok())
    }

    /// The state shared with the running proxy (snapshot, readiness, counters).
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|a| a.addr)
    }

    /// Serve until `shutdown` resolves, then drain (see the module docs). Worker 0 runs on
    /// the calling runtime; with [`bind_workers`](Server::bind_workers), each other worker
    /// gets a thread with a current-thread runtime of its own.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Server {
            shared,
            proxy,
            listeners,
            admin,
            workers,
            mut commands,
            control: _,
        } = self;
        let stop = Signal::default();
        let mut running = Running {
            shared: shared.clone(),
            proxy: proxy.clone(),
            workers,
            senders: Vec::new(),
            listeners: Vec::new(),
        };
        let mut receivers = Vec::new();
        for _ in 0..workers {
            let (tx, rx) = mpsc::unbounded_channel();
            running.senders.push(tx);
            receivers.push(rx);
        }
        let mut receivers = receivers.into_iter().enumerate();
        let (_, local) = receivers.next().expect("at least one worker");
        let threads: Vec<_> = receivers
            .map(|(i, rx)| {
                let worker = Worker {
                    index: i,
                    shared: shared.clone(),
                    proxy: proxy.clone(),
                    stop: stop.clone(),
                };
                std::thread::Builder::new()
                    .name(format!("switchyard-{i}"))
                    .spawn(move || {
                        let rt = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .expect("cannot start a worker runtime");
                        rt.block_on(worker.serve(rx));
                    })
                    .expect("cannot start a worker thread")
            })
            .collect();
        let local = tokio::spawn(
            Worker {
                index: 0,
                shared: shared.clone(),
                proxy,
                stop: stop.clone(),
            }
            .serve(local),
        );
        for b in listeners {
            running.start(b);
        }
        shared.checks.reconcile(&shared.load());
        shared.dns.reconcile(&shared, &shared.load().config);
        shared.ready.store(true, Ordering::Relaxed);

        let mut shutdown = pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some(cmd) = commands.recv() => match cmd {
                    Command::Reload(config, reply) => {
                        // New backend names first: a reload that adds one serves it at
                        // once. Shutdown does not wait for the lookups.
                        let current = shared.load();
                        let prepared = tokio::select! {
                            p = shared.dns.prepare(Some(&current.config), &config) => p,
                            () = &mut shutdown => break,
                        };
                        let _ = reply.send(running.reload(*config, prepared));
                    }
                },
            }
        }
        shared.ready.store(false, Ordering::Relaxed);
        tracing::info!("shutting down: listeners closed, finishing requests in flight");
        shared.checks.stop();
        shared.dns.stop();
        let grace = shared.load().config.shutdown_timeout;
        for l in running.listeners.drain(..) {
            l.stop.fire();
            tokio::spawn(kill_after(l, grace, true));
        }
        stop.fire();
        let _ = local.await;
        for t in threads {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        // The admin listener answers until here (`/ready` 503 while draining).
        drop(admin);
        tracing::info!("stopped");
    }
}

/// The admin listener's task, from bind to the end of `run` (or of a server never run).
struct AdminTask {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl AdminTask {
    fn start(
        l: std::net::TcpListener,
        shared: &Arc<Shared>,
        log: &AccessLog,
    ) -> io::Result<AdminTask> {
        let addr = l.local_addr()?;
        let l = TcpListener::from_std(l)?;
        let metrics = Arc::new(crate::metrics::Metrics::new(shared, log.clone()));
        Ok(AdminTask {
            addr,
            task: tokio::spawn(admin::serve(l, shared.clone(), metrics)),
        })
    }
}

impl Drop for AdminTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Bound {
    /// Bind `l`: one socket per worker (SO_REUSEPORT when there are several).
    fn new(l: &config::Listener, workers: usize, max_connections: usize) -> io::Result<Bound> {
        let err = |e: io::Error| {
            io::Error::new(
                e.kind(),
                format!("cannot bind listener {} to {}: {e}", l.name, l.bind),
            )
        };
        let first = net::bind(l.bind, workers > 1).map_err(err)?;
        // Port 0 picks a port once; the other workers' sockets join that one.
        let addr = first.local_addr()?;
        let mut sockets = vec![first];
        for _ in 1..workers {
            sockets.push(net::bind(addr, true).map_err(err)?);
        }
        Ok(Bound {
            run: Arc::new(ListenerRun {
                name: std::sync::Mutex::new(l.name.clone()),
                bind: l.bind,
                limit: Arc::new(ConnLimit::new(max_connections)),
                stop: Signal::default(),
                kill: Signal::default(),
            }),
            sockets,
        })
    }
}

impl ListenerRun {
    fn name(&self) -> Arc<str> {
        self.name.lock().expect("listener name lock").clone()
    }
}

/// After `grace`, cut the connections `l` still has (shutdown, or the listener removed).
async fn kill_after(l: Arc<ListenerRun>, grace: Duration, shutdown: bool) {
    tokio::time::sleep(grace).await;
    if !shutdown {
        tracing::info!(listener = %l.name(), ?grace, "removed listener: closing its remaining connections");
    }
    l.kill.fire();
}

/// The listeners of a running server, and the workers that accept on them.
struct Running {
    shared: Arc<Shared>,
    proxy: Arc<Proxy>,
    workers: usize,
    /// Hands each worker its socket of a new listener.
    senders: Vec<mpsc::UnboundedSender<Socket>>,
    listeners: Vec<Arc<ListenerRun>>,
}

impl Running {
    /// Hand `b`'s sockets to the workers.
    fn start(&mut self, b: Bound) {
        if let Ok(addr) = b.sockets[0].local_addr() {
            tracing::info!(listener = %b.run.name(), %addr, "listening");
        }
        for (tx, socket) in self.senders.iter().zip(b.sockets) {
            let _ = tx.send(Socket {
                run: b.run.clone(),
                socket,
            });
        }
        self.listeners.push(b.run);
    }

    /// Take `config`: bind what it adds (or re-binds) first, so a failure changes nothing;
    /// then swap the snapshot, start the new listeners and drain the removed ones.
    fn reload(&mut self, config: Config, prepared: crate::dns::Prepared) -> Result<(), String> {
        // Each running listener: kept (same name and bind), renamed (its bind now has
        // another name, which no running listener keeps), or removed.
        let same = |r: &ListenerRun, l: &config::Listener| r.name() == l.name && r.bind == l.bind;
        let mut renames: Vec<(usize, Arc<str>)> = Vec::new();
        let mut added = Vec::new();
        for l in &config.listeners {
            if self.listeners.iter().any(|r| same(r, l)) {
                continue;
            }
            let leaving = self.listeners.iter().position(|r| {
                l.bind.port() != 0
                    && r.bind == l.bind
                    && !config.listeners.iter().any(|n| same(r, n))
            });
            if let Some(i) = leaving
                && !renames.iter().any(|(j, _)| *j == i)
            {
                renames.push((i, l.name.clone()));
                continue;
            }
            added.push(
                Bound::new(l, self.workers, config.limits.max_connections)
                    .map_err(|e| e.to_string())?,
            );
        }
        let max = config.limits.max_connections;
        let grace = config.shutdown_timeout;
        let mut kept = Vec::new();
        let mut removed = Vec::new();
        for (i, r) in self.listeners.drain(..).enumerate() {
            if let Some((_, name)) = renames.iter().find(|(j, _)| *j == i) {
                let old = std::mem::replace(
                    &mut *r.name.lock().expect("listener name lock"),
                    name.clone(),
                );
                tracing::info!(listener = %name, was = %old, bind = %r.bind, "listener renamed");
                let addr = self.shared.listener_addr(&old);
                self.shared.set_listener_addr(&old, None);
                self.shared.set_listener_addr(name, addr);
                kept.push(r);
            } else if config.listeners.iter().any(|n| same(&r, n)) {
                kept.push(r);
            } else {
                removed.push(r);
            }
        }
        self.listeners = kept;
        self.proxy.log().set_format(config.access_log);
        self.shared.swap_with(config, prepared);
        for l in &self.listeners {
            l.limit.resize(max);
        }
        for l in removed {
            let name = l.name();
            tracing::info!(listener = %name, bind = %l.bind, "listener removed: draining its connections");
            self.shared.set_listener_addr(&name, None);
            l.stop.fire();
            tokio::spawn(kill_after(l, grace, false));
        }
        for b in added {
            self.shared
                .set_listener_addr(&b.run.name(), b.sockets[0].local_addr().ok());
            self.start(b);
        }
        Ok(())
    }
}

/// One worker: accept loops over its sockets, and the connections they accept.
struct Worker {
    index: usize,
    shared: Arc<Shared>,
    proxy: Arc<Proxy>,
    stop: Signal,
}

/// One worker's socket of a listener.
struct Socket {
    run: Arc<ListenerRun>,
    socket: std::net::TcpListener,
}

impl Worker {
    /// Accept on every socket `sockets` brings until the server stops, then wait for the
    /// connections to finish (their listeners cut them after the grace time).
    async fn serve(self, mut sockets: mpsc::UnboundedReceiver<Socket>) {
        upstream::set_worker(self.index);
        // A timer always due within a second: a connection's connect or idle timer is
        // then never the runtime's earliest, and setting one does not wake the driver
        // through its eventfd (a write, an epoll wake-up and a read per connection).
        let tick = tokio::spawn(async {
            let mut t = tokio::time::interval(Duration::from_millis(500));
            loop {
                t.tick().await;
            }
        });
        let conns = TaskTracker::new();
        let mut accepts = Vec::new();
        loop {
            let s = tokio::select! {
                Some(s) = sockets.recv() => s,
                _ = self.stop.fired() => break,
            };
            let listener =
                TcpListener::from_std(s.socket).expect("a bound socket registers with the runtime");
            let ctx = Accept {
                proxy: self.proxy.clone(),
                shared: self.shared.clone(),
                run: s.run,
                conns: conns.clone(),
            };
            accepts.retain(|a: &tokio::task::JoinHandle<()>| !a.is_finished());
            accepts.push(tokio::spawn(ctx.run(listener)));
        }
        for a in accepts {
            let _ = a.await;
        }
        conns.close();
        conns.wait().await;
        tick.abort();
    }
}

/// One listener's accept loop on one worker.
struct Accept {
    proxy: Arc<Proxy>,
    shared: Arc<Shared>,
    run: Arc<ListenerRun>,
    conns: TaskTracker,
}

impl Accept {
    async fn run(self, listener: TcpListener) {
        let mut name = self.run.name();
        // Built for the listener's name and `session_resumption`, again if a reload
        // changes either.
        let mut tls: Option<(bool, TlsAcceptor)> = None;
        let mut stats = self.shared.listener_stats(&name);
        let limit = self.run.limit.clone();
        let start = self.shared.load();
        let Some(mut last) = start.listener(&name).cloned() else {
            return;
        };
        // A tcp listener's pool indices are those of the snapshot its settings came from.
        let mut last_snap = last.tcp.is_some().then_some(start);
        loop {
            // Above max_connections, connections wait in the kernel's backlog, unaccepted.
            tokio::select! {
                () = limit.has_room() => {}
                _ = self.run.stop.fired() => break,
            }
            let (tcp, peer) = tokio::select! {
                a = net::accept(&listener) => a,
                _ = self.run.stop.fired() => break,
            };
            let now = self.run.name();
            if now != name {
                name = now;
                stats = self.shared.listener_stats(&name);
                tls = None;
            }
            // This connection's settings: the current snapshot's, or, for a listener a
            // reload is removing this moment, the last it had.
            let snap = self.shared.load();
            if let Some(c) = snap.listener(&name) {
                last = c.clone();
                last_snap = c.tcp.is_some().then(|| snap.clone());
            }
            let cfg = &last;
            let acceptor = match &cfg.tls {
                None => None,
                Some(_) => {
                    let resumption = cfg.session_resumption;
                    if tls.as_ref().is_none_or(|(r, _)| *r != resumption) {
                        let c = tls::server_config(
                            self.shared.clone(),
                            name.clone(),
                            cfg.tls.clone(),
                            resumption,
                        );
                        tls = Some((resumption, TlsAcceptor::from(c)));
                    }
                    tls.as_ref().map(|(_, a)| a.clone())
                }
            };
            let conn = Conn {
                proxy: self.proxy.clone(),
                shared: self.shared.clone(),
                listener: cfg.clone(),
                limits: snap.limits.clone(),
                stop: self.run.stop.clone(),
                kill: self.run.kill.clone(),
                stats: stats.clone(),
                needs_local: cfg.tcp.is_some() || snap.sends_proxy_protocol(),
                tcp: last_snap.clone(),
            };
            drop(snap);
            let limit = limit.clone();
            self.conns.spawn(async move {
                let _slot = limit.take().await;
                conn.serve(tcp, peer, acceptor).await;
            });
        }
    }
}

/// One client connection.
struct Conn {
    proxy: Arc<Proxy>,
    shared: Arc<Shared>,
    listener: Arc<config::Listener>,
    limits: Arc<Limits>,
    stop: Signal,
    kill: Signal,
    stats: Arc<ListenerStats>,
    /// Some pool sends PROXY headers, which name the address the client connected to.
    needs_local: bool,
    /// A tcp listener's: the snapshot its settings came from (their pool indices).
    tcp: Option<Arc<Snapshot>>,
}

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Counts a client connection as open (`switchyard_downstream_connections_active`) until
/// dropped, and as accepted (`_total`).
struct Open(Arc<ListenerStats>);

impl Open {
    fn new(stats: &Arc<ListenerStats>) -> Open {
        stats.connections_total.fetch_add(1, Ordering::Relaxed);
        stats.connections_active.fetch_add(1, Ordering::Relaxed);
        Open(stats.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.connections_active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// HTTP/2 settings for clients. 256 concurrent streams (nginx allows 128, HAProxy 100):
/// browsers open around 100. Flow-control windows of 512 KiB per stream and 1 MiB per
/// connection keep a single upload stream fast over a WAN round trip while bounding what
/// one connection can make the proxy buffer when a backend reads slowly.
const H2_MAX_STREAMS: u32 = 256;
const H2_STREAM_WINDOW: u32 = 512 * 1024;
const H2_CONN_WINDOW: u32 = 1024 * 1024;

impl Conn {
    async fn serve(mut self, mut tcp: TcpStream, peer: SocketAddr, tls: Option<TlsAcceptor>) {
        let _ = tcp.set_nodelay(true);
        let _open = Open::new(&self.stats);
        let head = self.limits.client_header_timeout;
        // Whatever comes before the first request (a PROXY header, a ClientHello, the TLS
        // handshake) shares one deadline from accept.
        let deadline = tokio::time::Instant::now() + head;
        let mut client = tcp::Client {
            src: peer,
            // The configured address is the local one unless it is a wildcard or port 0;
            // asked of the socket only then, and only when a PROXY header will name it.
            dst: match self.listener.bind {
                b if !self.needs_local || (b.port() != 0 && !b.ip().is_unspecified()) => b,
                b => tcp.local_addr().unwrap_or(b),
            },
        };
        if self.listener.accept_proxy {
            // A peer that never sends one is cut like a slow request head.
            match tokio::time::timeout_at(deadline, crate::proxy_protocol::read(&mut tcp)).await {
                Ok(Ok(crate::proxy_protocol::Header::Proxied { src, dst })) => {
                    // A v4 client behind a v6 front tier arrives IPv4-mapped.
                    let canonical =
                        |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
                    client = tcp::Client {
                        src: canonical(src),
                        dst: canonical(dst),
                    };
                }
                // A health check of the proxy in front: the peer is the client.
                Ok(Ok(crate::proxy_protocol::Header::Local)) => {}
                Ok(Err(e)) => {
                    tracing::debug!(listener = %self.listener.name, %peer, error = %e, "no valid PROXY protocol header; closing");
                    return;
                }
                Err(_) => {
                    tracing::debug!(listener = %self.listener.name, %peer, timeout = ?head, "no PROXY protocol header in time; closing");
                    return;
                }
            }
        }
        if let Some(snap) = self.tcp.take() {
            return tcp::serve(&self, snap, tcp, client, deadline).await;
        }
        let Some(acceptor) = tls else {
            let h2 = match tokio::time::timeout_at(deadline, sniff_h2(&tcp)).await {
                Ok(Ok(h2)) => h2,
                _ => return,
            };
            return self.serve_http(tcp, &client, h2, None).await;
        };
        // The handshake shares the head's deadline: a client that stalls it is a slowloris.
        let handshake = self.handshake(acceptor, tcp, &client);
        let stream = match tokio::time::timeout_at(deadline, handshake).await {
            Ok(Some(s)) => s,
            Ok(None) | Err(_) => {
                self.stats
                    .tls_handshake_errors
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let (_, session) = stream.get_ref();
        let h2 = session.alpn_protocol() == Some(b"h2");
        let sni = session.server_name().map(str::to_ascii_lowercase);
        // The current certificates; those of the listener as accepted when a reload has
        // removed it (or its TLS) meanwhile.
        let Some(certs) = tls::listener_certs(&self.shared, &self.listener.name)
            .or_else(|| self.listener.tls.clone())
        else {
            return;
        };
        let info = TlsInfo {
            cert: certs.resolve(sni.as_deref()),
            sni,
            certs,
        };
        self.serve_http(stream, &client, h2, Some(info)).await
    }

    /// The TLS handshake; None (logged) when it fails. Plain HTTP gets a short 400 first.
    async fn handshake(
        &self,
        acceptor: TlsAcceptor,
        mut tcp: TcpStream,
        client: &tcp::Client,
    ) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
        let mut first = [0u8; 1];
        if tcp.peek(&mut first).await.ok()? == 0 {
            return None;
        }
        // Every TLS connection opens with a handshake record (content type 22).
        if first[0] != 22 {
            if first[0].is_ascii_uppercase() {
                // An HTTP request: answered (and logged) like any other refused one.
                let info = self.info(client, None, false);
                let mut record = Record::start(&info);
                let resp = proxy::fail(ProxyError::PlainHttpOnTls, &mut record);
                let to = h1::write::To {
                    head_only: false,
                    version: http::Version::HTTP_11,
                    close: true,
                    trailers: false,
                    timeout: self.limits.client_send_timeout,
                };
                let mut out = Vec::new();
                let mut o = h1::write::Out::new(&mut tcp, to.timeout);
                let _ = h1::write::response(&mut o, resp, &to, &mut out, &mut record.bytes).await;
                use tokio::io::AsyncWriteExt;
                let _ = tcp.shutdown().await;
            }
            tracing::debug!(listener = %self.listener.name, "plain HTTP on a TLS port");
            return None;
        }
        match acceptor.accept(tcp).await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::debug!(listener = %self.listener.name, error = %e, "TLS handshake failed");
                None
            }
        }
    }

    /// What requests on a connection from `peer` know about it.
    fn info(&self, client: &tcp::Client, tls: Option<TlsInfo>, h2: bool) -> Arc<ConnInfo> {
        let peer = client.src;
        Arc::new(ConnInfo {
            local: client.dst,
            listener: self.listener.name.clone(),
            redirect_https: self.listener.redirect_https,
            peer,
            tls,
            clock: Arc::new(ConnClock::new(h2)),
            client_ip: HeaderValue::from_str(&peer.ip().to_string())
                .expect("an IP address is a valid header value"),
            forwarded: crate::proxy::Forwarded::of(peer.ip(), &self.listener.trusted_proxies),
            log: self.proxy.log().clone(),
            stats: self.stats.clone(),
        })
    }

    async fn serve_http<T>(&self, io: T, client: &tcp::Client, h2: bool, tls: Option<TlsInfo>)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let info = self.info(client, tls, h2);
        let clock = info.clock.clone();
        let limits = &self.limits;
        if !h2 {
            let lane = Lane::new(io, self.proxy.clone(), info, limits.clone());
            self.drive(lane, &clock).await;
            return;
        }
        let proxy = self.proxy.clone();
        let svc = service_fn(move |req: hyper::Request<Incoming>| {
            let (proxy, info) = (proxy.clone(), info.clone());
            async move { Ok::<_, Infallible>(h2::serve(&proxy, &info, req).await) }
        });
        let conn = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_concurrent_streams(H2_MAX_STREAMS)
            .initial_stream_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONN_WINDOW)
            .max_header_list_size(limits.max_request_header_bytes.min(u32::MAX as usize) as u32)
            .serve_connection(TokioIo::new(io), svc);
        if let Some(Err(e)) = self.drive(conn, &clock).await {
            tracing::debug!(error = %e, "client connection ended with an error");
        }
    }

    /// Run `conn` to completion, enforcing the head and idle timeouts and shutdown; `None`
    /// when it was cut off.
    async fn drive<C: Graceful>(&self, conn: C, clock: &ConnClock) -> Option<C::Output> {
        let (head, idle) = (
            self.limits.client_header_timeout,
            self.limits.client_idle_timeout,
        );
        let mut conn = pin!(conn);
        let mut stopping = pin!(self.stop.fired());
        let mut killed = pin!(self.kill.fired());
        let first = match clock.check(now_ms(), head, idle) {
            Verdict::WaitUntil(t) => t,
            _ => now_ms(),
        };
        let mut armed = first;
        let mut timer = pin!(tokio::time::sleep_until(instant_at(first).into()));
        let mut graceful = false;
        // After a graceful close is asked for, how long the connection may take to go.
        let mut cut_at = u64::MAX;
        let mut registered = false;
        let mut poll_timer = true;
        poll_fn(|cx| {
            if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                return Poll::Ready(Some(r));
            }
            // A task's waker stays the same, so the shutdown futures are polled once to
            // register it; after that an atomic load per wake-up tells if they fired.
            if !registered {
                registered = true;
                let _ = stopping.as_mut().poll(cx);
                let _ = killed.as_mut().poll(cx);
            }
            if self.kill.is_fired() {
                return Poll::Ready(None);
            }
            if !graceful && self.stop.is_fired() {
                graceful = true;
                conn.as_mut().graceful_shutdown();
                cx.waker().wake_by_ref();
            }
            // The phase changed since the timer was set: it may be due earlier.
            if clock.take_rearm() {
                // A stale `now` only errs towards waiting for the timer.
                let due = match clock.check(crate::clock::recent_ms(), head, idle) {
                    Verdict::WaitUntil(t) => t,
                    _ => now_ms(),
                };
                if due < armed {
                    armed = due;
                    timer.as_mut().reset(instant_at(due).into());
                    poll_timer = true;
                }
            }
            // A timer is polled once after it is set, to register this task; after that
            // it is polled only once elapsed (an atomic load), not on every wake-up.
            while poll_timer || timer.is_elapsed() {
                poll_timer = false;
                if timer.as_mut().poll(cx).is_pending() {
                    break;
                }
                let now = now_ms();
                if now >= cut_at {
                    return Poll::Ready(None);
                }
                let next = match clock.check(now, head, idle) {
                    Verdict::HeadTimeout => {
                        tracing::debug!(timeout = ?head, "request head too slow; closing");
                        return Poll::Ready(None);
                    }
                    Verdict::Idle => {
                        if !graceful {
                            graceful = true;
                            conn.as_mut().graceful_shutdown();
                            cx.waker().wake_by_ref();
                        }
                        // It goes at once unless it is busy; cut it if it lingers.
                        cut_at = cut_at.min(now + head.as_millis() as u64);
                        cut_at
                    }
                    Verdict::WaitUntil(t) => t.min(cut_at),
                    // The lane sees the flag when polled again; the next deadline follows.
                    Verdict::ResponseLate => {
                        cx.waker().wake_by_ref();
                        (now + idle.as_millis() as u64).min(cut_at)
                    }
                };
                armed = next;
                timer.as_mut().reset(instant_at(next).into());
                poll_timer = true;
            }
            Poll::Pending
        })
        .await
    }
}

/// A one-way signal (stop accepting, or cut connections): a flag that every connection
/// reads on each wake-up, and a token to await. Not `CancellationToken::is_cancelled`
/// alone: that takes a mutex, and `stop` is shared by every worker thread.
#[derive(Clone, Default)]
struct Signal(Arc<SignalInner>);

#[derive(Default)]
struct SignalInner {
    fired: std::sync::atomic::AtomicBool,
    token: CancellationToken,
}

impl Signal {
    /// Set the flag, then wake whoever awaits: a task woken by the token sees the flag.
    fn fire(&self) {
        self.0.fired.store(true, Ordering::Release);
        self.0.token.cancel();
    }

    fn is_fired(&self) -> bool {
        self.0.fired.load(Ordering::Acquire)
    }

    /// Resolves once fired.
    fn fired(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.0.token.cancelled()
    }
}

/// Whether the client speaks HTTP/2 with prior knowledge (h2c), from its first bytes.
async fn sniff_h2(tcp: &TcpStream) -> io::Result<bool> {
    let mut buf = [0u8; 24];
    loop {
        let n = tcp.peek(&mut buf).await?;
        if n == 0 || buf[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        // Part of the preface so far: rare, and peek does not consume readiness, so wait
        // a moment rather than spin.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A connection that can be asked to finish gracefully.
trait Graceful: Future {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl Graceful for Lane {
    fn graceful_shutdown(self: Pin<&mut Self>) {
        Lane::graceful_shutdown(&self)
    }
}

impl<I, S> Graceful for http2::Connection<I, S, TokioExecutor>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Future: Send + 'static,
    S::ResBody: http_body::Body + Send + 'static,
    <S::ResBody as http_body::Body>::Data: Send,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http2::Connection::graceful_shutdown(self)
    }
}

//! `mode: tcp` listeners: each client connection is relayed byte for byte to one backend.
//!
//! ```text
//! accept --(accept_proxy: PROXY header)--(sni_routes: ClientHello, kept)--> pool
//!        --> pick a backend, connect (next one on failure, up to `retries`)
//!        --> (proxy_protocol: PROXY header) + the bytes read so far --> relay both ways
//! ```
//! The relay passes a half-close on (one side's EOF becomes a shutdown of the other's
//! write side) and ends when both directions have, when either errors, after
//! `timeouts.idle` without a byte either way, or when the listener's grace time after
//! shutdown (or its removal) is up. The open connection is counted on its backend for
//! its whole life, which is what `least_connections` compares.

use super::Conn;
use crate::clock::now_ms;
use crate::metrics::series::Count;
use crate::pool::{Backend, InFlight, Pick, Tried};
use crate::proxy_protocol;
use crate::snapshot::{Snapshot, TcpStats};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The first read buffer of each direction; it grows to [`MAX_BUF`] for a direction
/// whose reads fill it, so idle connections (thousands of game clients) stay small and
/// bulk transfers take few system calls.
const FIRST_BUF: usize = 16 * 1024;
const MAX_BUF: usize = 256 * 1024;

/// The addresses a tcp connection is relayed for.
pub(super) struct Client {
    /// The client: the peer, or what its PROXY header said.
    pub src: SocketAddr,
    /// Where it connected to: this listener, or what its PROXY header said.
    pub dst: SocketAddr,
}

/// Relay `tcp`, from `client`, to a backend of the listener's pool, as the snapshot it
/// was accepted under (`snap`) says; `deadline` ends the wait for its ClientHello. The
/// listener's grace time cuts it at any step.
pub(super) async fn serve(
    conn: &Conn,
    snap: Arc<Snapshot>,
    tcp: TcpStream,
    client: Client,
    deadline: tokio::time::Instant,
) {
    tokio::select! {
        () = relay(conn, snap, tcp, client, deadline) => {}
        _ = conn.kill.fired() => {}
    }
}

async fn relay(
    conn: &Conn,
    snap: Arc<Snapshot>,
    mut tcp: TcpStream,
    client: Client,
    deadline: tokio::time::Instant,
) {
    let name = &conn.listener.name;
    // `snap` is the snapshot the listener's settings came from: its pool indices are
    // theirs, even when a reload removed or renamed the listener since.
    let Some(listen) = conn.listener.tcp.as_ref() else {
        return;
    };
    let mut first = Vec::new();
    let mut pool_index = listen.pool;
    if let Some(table) = snap.sni_table(name) {
        let head = conn.limits.client_header_timeout;
        let sni = match tokio::time::timeout_at(
            deadline,
            crate::sni::read_hello(&mut tcp, &mut first),
        )
        .await
        {
            Ok(Ok(sni)) => sni,
            Ok(Err(e)) => {
                tracing::debug!(listener = %name, peer = %client.src, error = %e, "no usable TLS ClientHello; closing");
                return;
            }
            Err(_) => {
                tracing::debug!(listener = %name, peer = %client.src, timeout = ?head, "no TLS ClientHello in time; closing");
                return;
            }
        };
        if let Some(&p) = sni.as_deref().and_then(|s| table.get(s)) {
            pool_index = p;
        }
    }
    let pool = &snap.pools[pool_index];
    let Some((backend, open, upstream)) = connect(pool, client.src).await else {
        return;
    };
    let version = listen
        .proxy_protocol
        .or(snap.config.pools[pool_index].proxy_protocol);
    let idle = pool.timeouts.idle;
    let pool_name = pool.name.clone();
    // The connection holds its backend, not the snapshot: an hour-long connection does
    // not keep every config it lived through.
    drop(snap);
    let _open = open;
    let stats = &conn.stats.tcp;
    stats.connections.with(
        |(p, b)| *p == pool_name && *b == backend.label,
        || (pool_name.clone(), backend.label.clone()),
        Count::inc,
    );
    let _active = Active::new(stats);
    // The ClientHello came from the client, even though it goes on in one write with ours.
    stats.bytes_in.add(first.len() as u64);
    if let Some(v) = version {
        let mut header = Vec::with_capacity(108 + first.len());
        proxy_protocol::encode(v, client.src, client.dst, &mut header);
        header.extend_from_slice(&first);
        first = header;
    }
    let relay = Relay { stats, idle };
    match relay.run(tcp, upstream, &first).await {
        Ok(end) => {
            tracing::debug!(listener = %name, backend = %backend.label, ?end, "tcp connection done")
        }
        Err(e) => {
            tracing::debug!(listener = %name, backend = %backend.label, error = %e, "tcp connection ended with an error")
        }
    }
}

/// Connect to a backend of `pool` for a client at `src`: the balancer's pick, then the
/// next on failure, `retries` more times; `None` when none could be reached. The
/// connection counts on its backend from the connect on (what `least_connections` reads),
/// so a burst of new connections spreads instead of piling onto one backend.
async fn connect(
    pool: &crate::pool::Pool,
    src: SocketAddr,
) -> Option<(Arc<Backend>, InFlight, TcpStream)> {
    let key =
        (pool.balance == crate::config::Balance::IpHash).then(|| crate::balance::ip_hash(src.ip()));
    let mut tried = Tried::default();
    for _ in 0..=pool.retries {
        let i = match pool.pick(&tried, key) {
            Pick::Healthy(i) => i,
            Pick::FailOpen(i) => {
                pool.stats.fail_open.inc();
                i
            }
            Pick::AllDown | Pick::Exhausted => break,
        };
        tried.add(i);
        let b = &pool.backends[i];
        let open = b.state.start_request();
        b.state.touch();
        match crate::upstream::connect_tcp(b.addr, pool.timeouts.connect).await {
            Ok(s) => {
                b.state.passive.connected();
                return Some((b.clone(), open, s));
            }
            Err(e) => {
                if let Some(d) = b
                    .state
                    .passive
                    .connect_failed(now_ms(), || pool.may_eject())
                {
                    tracing::warn!(pool = %pool.name, backend = %b.label, ejected_for = ?d,
                        "backend ejected after {} connect failures in a row", crate::health::EJECT_AFTER);
                }
                b.stats.connect_errors.inc();
                tracing::debug!(pool = %pool.name, backend = %b.label, error = %e, "connect failed");
            }
        }
    }
    // Per connection, so at debug: in an outage the ejection warnings and
    // switchyard_upstream_connect_errors_total say it once.
    tracing::debug!(pool = %pool.name, client = %src, "no backend could be reached; closing the client connection");
    None
}

/// Counts a relayed connection in `switchyard_tcp_connections_active` until dropped.
struct Active<'a>(&'a TcpStats);

impl<'a> Active<'a> {
    fn new(stats: &'a TcpStats) -> Self {
        stats.active.fetch_add(1, Relaxed);
        Active(stats)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}

/// Why a relay ended without an error.
#[derive(Debug)]
enum End {
    /// Both sides closed.
    Closed,
    /// No bytes either way for `timeouts.idle`.
    Idle,
}

/// The byte relay of one connection.
struct Relay<'a> {
    stats: &'a TcpStats,
    idle: Duration,
}

impl Relay<'_> {
    /// Send `first` to the backend, then relay until the connection ends.
    async fn run(
        self,
        mut client: TcpStream,
        mut backend: TcpStream,
        first: &[u8],
    ) -> io::Result<End> {
        if !first.is_empty() {
            backend.write_all(first).await?;
        }
        // Both directions and the idle watch run in this one task: the atomic is uncontended.
        let last = AtomicU64::new(now_ms());
        let (mut cr, mut cw) = client.split();
        let (mut br, mut bw) = backend.split();
        let done = AtomicBool::new(false);
        let up = pipe(&mut cr, &mut bw, &self.stats.bytes_in, &last, &done);
        let down = pipe(&mut br, &mut cw, &self.stats.bytes_out, &last, &done);
        let both = async { tokio::try_join!(up, down).map(|_| End::Closed) };
        let idle = async {
            let limit = self.idle.as_millis() as u64;
            loop {
                let due = last.load(Relaxed).saturating_add(limit);
                let now = now_ms();
                if now >= due {
                    return End::Idle;
                }
                tokio::time::sleep(Duration::from_millis(due - now)).await;
            }
        };
        tokio::select! {
            r = both => r,
            end = idle => Ok(end),
        }
    }
}

/// Copy `from` to `to` until `from` ends, then shut `to`'s write side (the half-close
/// passed on), unless the other direction has already ended (`done`): then both sockets
/// are about to close, and the close sends the FIN without a system call of its own.
/// Every chunk is counted in `bytes` and stamps `last`.
async fn pipe<R, W>(
    from: &mut R,
    to: &mut W,
    bytes: &Count,
    last: &AtomicU64,
    done: &AtomicBool,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // Read into spare capacity: a buffer per direction per connection is never zeroed.
    let mut buf: Vec<u8> = Vec::with_capacity(FIRST_BUF);
    loop {
        buf.clear();
        let n = from.read_buf(&mut buf).await?;
        if n == 0 {
            if done.swap(true, Relaxed) {
                return Ok(());
            }
            return to.shutdown().await;
        }
        last.store(now_ms(), Relaxed);
        // Each partial write is traffic: a slow reader taking a big chunk bit by bit is
        // not idle.
        let mut rest = &buf[..];
        while !rest.is_empty() {
            let w = to.write(rest).await?;
            if w == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            rest = &rest[w..];
            last.store(now_ms(), Relaxed);
        }
        bytes.add(n as u64);
        if n == buf.capacity() && n < MAX_BUF {
            buf = Vec::with_capacity((2 * n).min(MAX_BUF));
        }
    }
}

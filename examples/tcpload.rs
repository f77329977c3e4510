//! `tcpload`: a TCP echo server and two client loads, for `bench/tcp.sh`.
//!
//! ```sh
//! cargo run --release --example tcpload -- echo --bind 127.0.0.1:0
//! cargo run --release --example tcpload -- conns --addr 127.0.0.1:18100 --concurrency 50 --duration 10
//! cargo run --release --example tcpload -- bulk --addr 127.0.0.1:18100 --bytes 1073741824
//! ```
//!
//! - `echo` writes back whatever it reads and answers the client's EOF with its own
//!   (shutdown of the write side), so a half-close travels client -> proxy -> echo and back.
//!   Its first line on stdout is the bound address, so `--bind 127.0.0.1:0` can be used.
//! - `conns` is what a new connection costs a proxy: each worker loops connect, write 64
//!   bytes, read them back, close. Latency is connect + echo, not the close.
//! - `bulk` is throughput: per stream, one connection that carries N bytes each way while
//!   they are read back, checks every byte, then half-closes and must see the EOF come back.
//!
//! Both loads end after a fixed time or count and print one `key=value` line (for the
//! script to parse and people to read). `conns` counts failed connections as errors;
//! `bulk` exits 1 on any failed check, with the reason on stderr.

use anyhow::{Context, bail};
use clap::Parser;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser)]
#[command(about = "TCP echo server and load generator for bench/tcp.sh")]
enum Cmd {
    /// Echo every byte back; on EOF, shut down the write side. Runs until killed.
    Echo {
        #[arg(long, value_name = "ADDR")]
        bind: SocketAddr,
    },
    /// Short connections: connect, write 64 bytes, read them back, close, in a loop.
    Conns {
        #[arg(long, value_name = "ADDR")]
        addr: SocketAddr,
        #[arg(long, value_name = "C", default_value_t = 50)]
        concurrency: usize,
        /// Seconds to run.
        #[arg(long, value_name = "SECS", default_value_t = 10.0)]
        duration: f64,
        /// Stop after this many connections, even before the duration.
        #[arg(long, value_name = "N", default_value_t = u64::MAX)]
        max: u64,
    },
    /// Bulk transfer: per stream, N bytes out and the same N bytes back, then a half-close.
    Bulk {
        #[arg(long, value_name = "ADDR")]
        addr: SocketAddr,
        /// Bytes per stream.
        #[arg(long, value_name = "N")]
        bytes: u64,
        #[arg(long, value_name = "S", default_value_t = 1)]
        streams: usize,
        /// Give up (exit 1) after this many seconds.
        #[arg(long, value_name = "SECS", default_value_t = 300.0)]
        timeout: f64,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // One line with the whole cause chain, for the script's log (no backtrace).
    match run(Cmd::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tcpload: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Echo { bind } => echo(bind).await,
        Cmd::Conns {
            addr,
            concurrency,
            duration,
            max,
        } => conns(addr, concurrency, Duration::from_secs_f64(duration), max).await,
        Cmd::Bulk {
            addr,
            bytes,
            streams,
            timeout,
        } => {
            let limit = Duration::from_secs_f64(timeout);
            match tokio::time::timeout(limit, bulk(addr, bytes, streams)).await {
                Ok(done) => done,
                Err(_) => bail!("bulk did not finish within {timeout} s"),
            }
        }
    }
}

// ---------------------------------------------------------------- echo

async fn echo(bind: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(bind)
        .await
        .with_context(|| format!("cannot bind {bind}"))?;
    // The script reads this line to learn the port; flush so it does not sit in a buffer.
    println!("{}", listener.local_addr()?);
    io::stdout().flush()?;
    loop {
        match listener.accept().await {
            Ok((sock, _)) => {
                tokio::spawn(async move {
                    if let Err(e) = echo_one(sock).await {
                        eprintln!("echo: {e}");
                    }
                });
            }
            Err(e) => {
                // Out of descriptors and the like: say so, and let connections drain a little.
                eprintln!("echo: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn echo_one(mut sock: TcpStream) -> io::Result<()> {
    sock.set_nodelay(true)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = sock.read(&mut buf).await?;
        if n == 0 {
            // The client's half-close: everything is echoed, so end our direction too.
            return sock.shutdown().await;
        }
        sock.write_all(&buf[..n]).await?;
    }
}

// ---------------------------------------------------------------- conns

const MSG: [u8; 64] = *b"tcpload conns: 64 bytes out, the same 64 bytes back, then close\n";

/// A failed connect or exchange is counted, not retried; this bounds how long one may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);

async fn conns(
    addr: SocketAddr,
    concurrency: usize,
    duration: Duration,
    max: u64,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let deadline = start + duration;
    // Workers claim connections from one counter so `--max` is a total, not per worker.
    let claimed = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let claimed = claimed.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies_us = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < deadline && claimed.fetch_add(1, Ordering::Relaxed) < max {
                let t = Instant::now();
                match tokio::time::timeout(EXCHANGE_TIMEOUT, exchange(addr)).await {
                    Ok(Ok(())) => latencies_us.push(t.elapsed().as_micros() as u64),
                    Ok(Err(_)) | Err(_) => {
                        errors += 1;
                        // A refusing or broken target fails fast; do not spin on it.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (latencies_us, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for w in workers {
        let (lat, err) = w.await?;
        all.extend(lat);
        errors += err;
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort_unstable();
    println!(
        "conns ok={} errors={} secs={:.2} conn_per_s={:.0} p50_ms={:.3} p99_ms={:.3}",
        all.len(),
        errors,
        secs,
        all.len() as f64 / secs,
        percentile_ms(&all, 50),
        percentile_ms(&all, 99),
    );
    Ok(())
}

/// One short connection: connect, 64 bytes each way, compare, close (by drop: a FIN,
/// since nothing is left unread).
async fn exchange(addr: SocketAddr) -> io::Result<()> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    s.write_all(&MSG).await?;
    let mut back = [0u8; 64];
    s.read_exact(&mut back).await?;
    if back != MSG {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "echo differs"));
    }
    Ok(())
}

/// Nearest-rank percentile of sorted microseconds, in milliseconds (0 when empty).
fn percentile_ms(sorted_us: &[u64], p: usize) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = (sorted_us.len() * p).div_ceil(100).max(1);
    sorted_us[rank - 1] as f64 / 1000.0
}

// ---------------------------------------------------------------- bulk

/// The data sent is a fixed pseudo-random block of this many bytes, repeated. A prime
/// length keeps the repeats from lining up with power-of-two buffer sizes, so a chunk
/// lost or doubled inside a proxy shows up as a mismatch, not only as a wrong count.
const PERIOD: usize = 65521;

async fn bulk(addr: SocketAddr, bytes: u64, streams: usize) -> anyhow::Result<()> {
    // Twice the period, so any window of up to PERIOD bytes starting inside the first
    // period is one contiguous slice to compare against.
    let mut block = vec![0u8; 2 * PERIOD];
    let mut x: u32 = 0x9e37_79b9;
    for b in &mut block[..PERIOD] {
        // xorshift32: cheap, and no byte value or run is special
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = (x >> 24) as u8;
    }
    block.copy_within(..PERIOD, PERIOD);
    let pattern = Arc::new(block);

    let start = Instant::now();
    let mut tasks = Vec::with_capacity(streams);
    for _ in 0..streams {
        tasks.push(tokio::spawn(one_stream(addr, bytes, pattern.clone())));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        t.await?.with_context(|| format!("stream {i}"))?;
    }
    let secs = start.elapsed().as_secs_f64();
    let total = bytes * streams as u64;
    println!(
        "bulk streams={streams} bytes={total} secs={secs:.3} gib_per_s={:.3} verified=ok eof=ok",
        total as f64 / (1u64 << 30) as f64 / secs,
    );
    Ok(())
}

/// One connection: a writer task sends `bytes` and then shuts down its write side, while
/// this task reads the echo back, compares it with what was sent, and waits for the EOF
/// that the echo's own shutdown sends once it has seen ours. A proxy that closed both
/// directions on the client's FIN would cut off the bytes still in flight back.
async fn one_stream(addr: SocketAddr, bytes: u64, pattern: Arc<Vec<u8>>) -> anyhow::Result<()> {
    let sock = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    sock.set_nodelay(true)?;
    let (mut rd, mut wr) = sock.into_split();

    let out = pattern.clone();
    let writer = tokio::spawn(async move {
        let mut left = bytes;
        while left > 0 {
            let n = left.min(PERIOD as u64) as usize;
            wr.write_all(&out[..n]).await?;
            left -= n as u64;
        }
        // The half-close: a FIN to the proxy; the read half stays open for the echo.
        wr.shutdown().await
    });

    let mut buf = vec![0u8; PERIOD];
    let mut got: u64 = 0;
    loop {
        let n = rd.read(&mut buf).await.context("read")?;
        if n == 0 {
            break; // EOF: the echo's shutdown, passed on by the proxy
        }
        let at = (got % PERIOD as u64) as usize;
        if buf[..n] != pattern[at..at + n] {
            bail!("bytes {got}..{} differ from what was sent", got + n as u64);
        }
        got += n as u64;
        if got > bytes {
            bail!("read {got} bytes, more than the {bytes} sent");
        }
    }
    writer.await?.context("write")?;
    if got != bytes {
        bail!("EOF after {got} of {bytes} bytes");
    }
    Ok(())
}

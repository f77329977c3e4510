//! Plain TCP backends and clients for the L4 tests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// What a [`TcpBackend`] does with a connection.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Write `NAME\n`, then echo every byte; on EOF, shut the write side.
    Echo,
    /// Read until EOF, then write `NAME got N bytes` and close: answers only after the
    /// client's half-close came through.
    CountThenReply,
    /// Write this many bytes and shut the write side at once (the backend half-closes
    /// first), then read (and record) what the client sends until EOF.
    SendThenRead(usize),
}

/// A TCP backend on 127.0.0.1:0 that counts and records its connections.
pub struct TcpBackend {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub conns: Arc<AtomicUsize>,
    /// Connections open now.
    pub open: Arc<AtomicUsize>,
    /// The first bytes (up to 4 KiB, as they came) of every connection, in accept order.
    pub firsts: Arc<Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TcpBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TcpBackend {
    /// An echoing backend that greets with `name`.
    pub async fn echo(name: &str) -> TcpBackend {
        TcpBackend::start(name, Mode::Echo).await
    }

    /// A backend doing `mode`, called `name`.
    pub async fn start(name: &str, mode: Mode) -> TcpBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let firsts = Arc::new(Mutex::new(Vec::new()));
        let name: Arc<str> = name.into();
        let (c, o, f) = (conns.clone(), open.clone(), firsts.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                o.fetch_add(1, Ordering::SeqCst);
                let slot = {
                    let mut all = f.lock().unwrap();
                    all.push(Vec::new());
                    all.len() - 1
                };
                let (name, o, f) = (name.clone(), o.clone(), f.clone());
                tokio::spawn(async move {
                    let _ = serve(s, &name, mode, slot, &f).await;
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        TcpBackend {
            addr,
            conns,
            open,
            firsts,
            task,
        }
    }

    /// The first bytes connection `i` sent.
    pub fn first(&self, i: usize) -> Vec<u8> {
        self.firsts.lock().unwrap()[i].clone()
    }

    /// Stop accepting (the port then refuses).
    pub fn stop(&self) {
        self.task.abort();
    }
}

async fn serve(
    mut s: TcpStream,
    name: &str,
    mode: Mode,
    slot: usize,
    firsts: &Mutex<Vec<Vec<u8>>>,
) -> std::io::Result<()> {
    if mode == Mode::Echo {
        s.write_all(format!("{name}\n").as_bytes()).await?;
    }
    if let Mode::SendThenRead(n) = mode {
        let block: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
        s.write_all(&block).await?;
        s.shutdown().await?;
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0usize;
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        {
            let mut all = firsts.lock().unwrap();
            let first = &mut all[slot];
            let room = 4096usize.saturating_sub(first.len()).min(n);
            first.extend_from_slice(&buf[..room]);
        }
        total += n;
        if mode == Mode::Echo {
            s.write_all(&buf[..n]).await?;
        }
    }
    match mode {
        Mode::CountThenReply => {
            s.write_all(format!("{name} got {total} bytes").as_bytes())
                .await?;
            s.shutdown().await
        }
        Mode::SendThenRead(_) => Ok(()),
        Mode::Echo => s.shutdown().await,
    }
}

/// A client connection to `addr` from the loopback address `from` (another 127.x source
/// shows that an address travelled, where 127.0.0.1 could be anybody's).
pub async fn connect_from(from: [u8; 4], addr: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::from((from, 0))).unwrap();
    sock.connect(addr).await.unwrap()
}

/// Connect to `addr` and read the greeting line: the backend's name.
pub async fn greeting(addr: SocketAddr) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let name = read_line(&mut s).await;
    (s, name)
}

/// One line (without `\n`) read a byte at a time, within 5 s.
pub async fn read_line(s: &mut TcpStream) -> String {
    let mut line = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let mut b = [0u8; 1];
            match s.read(&mut b).await {
                Ok(1) if b[0] != b'\n' => line.push(b[0]),
                _ => break,
            }
        }
    })
    .await
    .expect("a line within 5 s");
    String::from_utf8(line).unwrap()
}

/// Whether the peer closes `s` within `limit` (EOF or reset), reading away what comes.
pub async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

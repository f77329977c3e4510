//! TLS passthrough routing: read a connection's ClientHello without terminating TLS, pick
//! a pool by its SNI name, then replay the very bytes read to the backend, which does the
//! handshake itself (so its certificates, ALPN and client auth stay its own).
//!
//! Parsing is rustls' [`Acceptor`]: the same decoder a TLS listener uses, so a hello it
//! would refuse there is refused here too, and a hello split across TLS records or TCP
//! reads is reassembled by it. It only sees copies of the bytes; [`read_hello`] keeps the
//! originals, in order, in the caller's buffer. [`SniTable`] maps the name to a value
//! (a pool) with the same exact-then-one-label-wildcard rule as certificate selection.

use bytes::BufMut;
use rustls::server::Acceptor;
use std::borrow::Cow;
use std::collections::HashMap;
use tokio::io::{AsyncRead, AsyncReadExt};

/// One TLS record at its largest: a 16 KiB plaintext fragment and its 5-byte header.
const MAX_RECORD: usize = 16 * 1024 + 5;

/// Most bytes read while waiting for a complete ClientHello (a bigger one is refused).
///
/// Two full records. Real hellos are far smaller: about 1.8 KiB with a post-quantum key
/// share (X25519MLKEM768), and HAProxy, routing by SNI the same way, sees only a hello
/// that fits its buffer (`tune.bufsize`, 16 KiB by default). Twice that leaves room for
/// big session tickets or padding, and stays below rustls' own 64 KiB handshake-message
/// limit, so the refusal is ours ([`HelloError::TooBig`]) and memory stays bounded.
pub const MAX_HELLO: usize = 2 * MAX_RECORD;

/// How much to ask the socket for at once; rustls takes at most 4 KiB per `read_tls`.
const READ_CHUNK: usize = 4096;

/// The TLS record type of handshake messages, which a ClientHello must start with.
const HANDSHAKE: u8 = 22;

/// Why no SNI could be read from a connection.
#[derive(Debug, thiserror::Error)]
pub enum HelloError {
    /// The peer closed before a complete ClientHello.
    #[error("the client closed before a complete TLS ClientHello")]
    Closed,
    /// Reading from the client failed.
    #[error("reading the TLS ClientHello: {0}")]
    Io(#[from] std::io::Error),
    /// The first byte is not a TLS handshake record (plain HTTP, for instance).
    #[error("not TLS: the first byte is not a handshake record")]
    NotTls,
    /// rustls refused the bytes as a ClientHello.
    #[error("malformed TLS ClientHello: {0}")]
    Malformed(String),
    /// No complete ClientHello within [`MAX_HELLO`] bytes.
    #[error("no complete TLS ClientHello within {MAX_HELLO} bytes")]
    TooBig,
}

/// Read from `io` until a complete ClientHello is in `buf` (every byte read is appended to
/// `buf`, including any bytes after the hello that arrived in the same read), and return
/// its SNI host name, lower-cased, or None when it has none.
///
/// Bytes already in `buf` are taken as the connection's first bytes. The name is as the
/// client sent it otherwise (a trailing dot is kept; [`SniTable::get`] ignores it); an IP
/// address in the SNI extension counts as none. Never reads past [`MAX_HELLO`] bytes in
/// `buf`. Cancel-safe: dropping the future leaves in `buf` exactly the bytes read so far.
pub async fn read_hello<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Option<String>, HelloError> {
    let mut acceptor = Acceptor::default();
    // How much of `buf` rustls has been given.
    let mut fed = 0;
    loop {
        if fed == buf.len() {
            let room = MAX_HELLO.saturating_sub(buf.len());
            if room == 0 {
                return Err(HelloError::TooBig);
            }
            buf.reserve(room.min(READ_CHUNK));
            // `read_buf` appends only what was read, which is what makes this cancel-safe.
            if io.read_buf(&mut (&mut *buf).limit(room)).await? == 0 {
                return Err(HelloError::Closed);
            }
        }
        // Decided on the first byte, so a plain-text client is not kept waiting for bytes
        // it will never send.
        if buf[0] != HANDSHAKE {
            return Err(HelloError::NotTls);
        }
        let new = &buf[fed..];
        fed = buf.len();
        if let Some(sni) = feed(&mut acceptor, new)? {
            return Ok(sni);
        }
    }
}

/// Give `bytes` to `acceptor`; the SNI (or its absence) once the hello is complete.
fn feed(acceptor: &mut Acceptor, mut bytes: &[u8]) -> Result<Option<Option<String>>, HelloError> {
    while !bytes.is_empty() {
        // rustls takes at most 4 KiB per call and buffers at most one record until it has
        // parsed it, so each slice must be offered to `accept` before the next.
        let n = acceptor
            .read_tls(&mut bytes)
            .map_err(|e| HelloError::Malformed(e.to_string()))?;
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let sni = accepted
                    .client_hello()
                    .server_name()
                    .map(str::to_ascii_lowercase);
                return Ok(Some(sni));
            }
            Ok(None) if n == 0 => {
                // Should not happen (rustls always has room below its limits); without
                // this check it would spin.
                return Err(HelloError::Malformed("rustls took no more bytes".into()));
            }
            Ok(None) => {}
            // No alert is sent: the backend, not this proxy, speaks TLS to the client.
            Err((e, _alert)) => return Err(HelloError::Malformed(e.to_string())),
        }
    }
    Ok(None)
}

/// SNI routes of a listener: exact names first, then `*.suffix` wildcards matching exactly
/// one more label (`*.example.com` matches `a.example.com`, not `example.com` nor
/// `a.b.example.com`); names compared case-insensitively (store lower-case), trailing dot
/// ignored.
#[derive(Debug, Clone)]
pub struct SniTable<T> {
    exact: HashMap<String, T>,
    /// Keyed by the suffix: `*.example.com` is `example.com`.
    wildcard: HashMap<String, T>,
}

impl<T> SniTable<T> {
    /// From (pattern, value) pairs in config order; the first entry for a pattern wins.
    pub fn new(entries: impl IntoIterator<Item = (String, T)>) -> Self {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (pattern, value) in entries {
            let pattern = normalize(&pattern).into_owned();
            let map = match pattern.strip_prefix("*.") {
                Some(suffix) => wildcard.entry(suffix.to_string()),
                None => exact.entry(pattern),
            };
            map.or_insert(value);
        }
        SniTable { exact, wildcard }
    }

    /// The value for `sni`; None when nothing matches (caller uses the default pool).
    pub fn get(&self, sni: &str) -> Option<&T> {
        let name = normalize(sni);
        if let Some(v) = self.exact.get(name.as_ref()) {
            return Some(v);
        }
        match name.split_once('.') {
            Some((label, suffix)) if !label.is_empty() => self.wildcard.get(suffix),
            _ => None,
        }
    }

    /// Whether the table has no routes at all.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }
}

/// `name` lower-cased without one trailing dot; borrowed when that changes nothing, since
/// read_hello's names are already lower-case.
fn normalize(name: &str) -> Cow<'_, str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{PrivateKeyDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig};
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};
    use std::time::Duration;
    use tokio::io::{AsyncWriteExt, ReadBuf};
    use tokio::net::{TcpListener, TcpStream};

    /// Long enough for any of these on a loaded machine; reaching it means a hang.
    const HANG: Duration = Duration::from_secs(10);

    fn client_config(roots: RootCertStore) -> ClientConfig {
        ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth()
    }

    /// The first flight of a rustls client connecting to `name` with `cfg`.
    fn hello_with(cfg: ClientConfig, name: &str) -> Vec<u8> {
        let name = ServerName::try_from(name.to_string()).unwrap();
        let mut conn = ClientConnection::new(Arc::new(cfg), name).unwrap();
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).unwrap();
        }
        out
    }

    fn hello(name: &str) -> Vec<u8> {
        hello_with(client_config(RootCertStore::empty()), name)
    }

    /// A hello whose ALPN list makes it about `size` bytes long.
    fn big_hello(size: usize) -> Vec<u8> {
        let mut cfg = client_config(RootCertStore::empty());
        cfg.alpn_protocols = (0..size / 256)
            .map(|i| vec![b'a' + (i % 26) as u8; 255])
            .collect();
        hello_with(cfg, "api.example.com")
    }

    /// Record sizes, from each 5-byte header.
    fn records(mut wire: &[u8]) -> Vec<usize> {
        let mut sizes = Vec::new();
        while wire.len() >= 5 {
            let len = 5 + u16::from_be_bytes([wire[3], wire[4]]) as usize;
            sizes.push(len);
            wire = &wire[len.min(wire.len())..];
        }
        sizes
    }

    /// What a [`Feed`] does once its bytes are used up.
    #[derive(Clone, Copy)]
    enum End {
        Eof,
        /// Never answers again, like a client that sent its bytes and waits.
        Pending,
    }

    /// Yields `data` at most `step` bytes per read.
    struct Feed {
        data: Vec<u8>,
        pos: usize,
        step: usize,
        end: End,
    }

    impl Feed {
        fn new(data: &[u8], step: usize, end: End) -> Feed {
            Feed {
                data: data.to_vec(),
                pos: 0,
                step,
                end,
            }
        }
    }

    impl AsyncRead for Feed {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            out: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let rest = &self.data[self.pos..];
            if rest.is_empty() {
                return match self.end {
                    End::Eof => Poll::Ready(Ok(())),
                    End::Pending => Poll::Pending,
                };
            }
            let n = rest.len().min(self.step).min(out.remaining());
            out.put_slice(&rest[..n]);
            self.pos += n;
            Poll::Ready(Ok(()))
        }
    }

    /// `read_hello` over `data` served `step` bytes at a time; fails the test on a hang.
    async fn read(
        data: &[u8],
        step: usize,
        end: End,
    ) -> (Result<Option<String>, HelloError>, Vec<u8>) {
        let mut feed = Feed::new(data, step, end);
        let mut buf = Vec::new();
        let res = tokio::time::timeout(HANG, read_hello(&mut feed, &mut buf))
            .await
            .expect("read_hello hung");
        (res, buf)
    }

    #[tokio::test]
    async fn sni_from_one_byte_reads() {
        let wire = hello("api.example.com");
        let (res, buf) = read(&wire, 1, End::Pending).await;
        assert_eq!(res.unwrap().as_deref(), Some("api.example.com"));
        assert_eq!(buf, wire);
    }

    #[tokio::test]
    async fn ip_server_name_is_no_sni() {
        let wire = hello("192.0.2.7");
        let (res, buf) = read(&wire, 1, End::Pending).await;
        assert_eq!(res.unwrap(), None);
        assert_eq!(buf, wire);
    }

    #[tokio::test]
    async fn sni_is_lower_cased() {
        let wire = hello("API.Example.COM");
        let (res, _) = read(&wire, 4096, End::Pending).await;
        assert_eq!(res.unwrap().as_deref(), Some("api.example.com"));
    }

    #[tokio::test]
    async fn bytes_after_the_hello_are_kept() {
        let mut wire = hello("api.example.com");
        let hello_len = wire.len();
        wire.extend_from_slice(b"\x17\x03\x03\x00\x03abc");
        let (res, buf) = read(&wire, usize::MAX, End::Pending).await;
        assert_eq!(res.unwrap().as_deref(), Some("api.example.com"));
        assert_eq!(buf, wire);
        assert!(buf.len() > hello_len);
    }

    #[tokio::test]
    async fn bytes_already_in_buf_are_parsed_first() {
        let wire = hello("api.example.com");
        let (head, tail) = wire.split_at(10);
        let mut feed = Feed::new(tail, 100, End::Pending);
        let mut buf = head.to_vec();
        let sni = read_hello(&mut feed, &mut buf).await.unwrap();
        assert_eq!(sni.as_deref(), Some("api.example.com"));
        assert_eq!(buf, wire);
    }

    /// rustls reassembles a handshake message fragmented over many records.
    #[tokio::test]
    async fn hello_split_across_records() {
        let mut cfg = client_config(RootCertStore::empty());
        cfg.max_fragment_size = Some(32);
        let wire = hello_with(cfg, "api.example.com");
        assert!(records(&wire).len() > 20, "{:?}", records(&wire));
        for step in [1, 7, 100, usize::MAX] {
            let (res, buf) = read(&wire, step, End::Pending).await;
            assert_eq!(
                res.unwrap().as_deref(),
                Some("api.example.com"),
                "step {step}"
            );
            assert_eq!(buf, wire);
        }
    }

    /// A real hello bigger than one full record (two records) is still read.
    #[tokio::test]
    async fn hello_over_one_record_is_read() {
        let wire = big_hello(20 * 1024);
        assert!(wire.len() > MAX_RECORD && wire.len() < MAX_HELLO);
        assert_eq!(records(&wire).len(), 2);
        for step in [1000, usize::MAX] {
            let (res, buf) = read(&wire, step, End::Pending).await;
            assert_eq!(res.unwrap().as_deref(), Some("api.example.com"));
            assert_eq!(buf, wire);
        }
    }

    #[tokio::test]
    async fn hello_over_max_is_too_big() {
        let wire = big_hello(40 * 1024);
        assert!(wire.len() > MAX_HELLO);
        let (res, buf) = read(&wire, usize::MAX, End::Pending).await;
        assert!(matches!(res, Err(HelloError::TooBig)), "{res:?}");
        assert_eq!(buf.len(), MAX_HELLO);
        assert_eq!(buf, wire[..MAX_HELLO]);
    }

    /// Records that keep a (claimed 60000-byte) ClientHello going forever.
    #[tokio::test]
    async fn endless_hello_records_are_too_big() {
        let mut wire = vec![HANDSHAKE, 3, 1, 0x10, 0x00, 1, 0x00, 0xea, 0x60];
        wire.resize(5 + 0x1000, 0);
        while wire.len() < 3 * MAX_HELLO {
            wire.extend_from_slice(&[HANDSHAKE, 3, 1, 0x10, 0x00]);
            wire.resize(wire.len() + 0x1000, 0);
        }
        let (res, buf) = read(&wire, 1500, End::Pending).await;
        assert!(matches!(res, Err(HelloError::TooBig)), "{res:?}");
        assert_eq!(buf, wire[..MAX_HELLO]);
    }

    #[tokio::test]
    async fn plain_http_is_not_tls_at_once() {
        // One byte at a time and then silence: it must decide on the first.
        let (res, buf) = read(b"GET / HTTP/1.1\r\n\r\n", 1, End::Pending).await;
        assert!(matches!(res, Err(HelloError::NotTls)), "{res:?}");
        assert_eq!(buf, b"G");
    }

    /// Each is refused once rustls has read enough to tell (the second field), never by
    /// waiting for bytes that would not come.
    #[tokio::test]
    async fn junk_after_a_handshake_header_is_malformed() {
        let cases: [(&[u8], usize); 4] = [
            // A 4-byte ClientHello body of junk.
            (b"\x16\x03\x01\x00\x08\x01\x00\x00\x04\xff\xff\xff\xff", 13),
            // Not a ClientHello: a ServerHello.
            (b"\x16\x03\x03\x00\x08\x02\x00\x00\x04\x03\x03\x00\x00", 13),
            // A record version that is no TLS version: refused at its bytes.
            (b"\x16\x41\x41\x00\x08\x01\x00\x00\x04\xff\xff\xff\xff", 3),
            // A record longer than TLS allows: refused from the header.
            (b"\x16\x03\x01\xff\xff\x01\x00\x00\x04", 5),
        ];
        for (wire, refused_at) in cases {
            let (res, buf) = read(wire, 1, End::Pending).await;
            assert!(
                matches!(res, Err(HelloError::Malformed(_))),
                "{wire:?}: {res:?}"
            );
            assert_eq!(buf, wire[..refused_at]);
        }
    }

    #[tokio::test]
    async fn close_before_the_hello_ends_is_closed() {
        let wire = hello("api.example.com");
        for part in [
            &wire[..0],
            &wire[..3],
            &wire[..wire.len() / 2],
            &wire[..wire.len() - 1],
        ] {
            let (res, buf) = read(part, 64, End::Eof).await;
            assert!(matches!(res, Err(HelloError::Closed)), "{res:?}");
            assert_eq!(buf, part);
        }
    }

    #[tokio::test]
    async fn hello_over_tcp_in_two_writes() {
        let wire = hello("api.example.com");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sent = wire.clone();
        let client = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.set_nodelay(true).unwrap();
            s.write_all(&sent[..7]).await.unwrap();
            // The one deliberate gap: so the server's reads see the hello in two parts.
            tokio::time::sleep(Duration::from_millis(50)).await;
            s.write_all(&sent[7..]).await.unwrap();
            s
        });
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let sni = tokio::time::timeout(HANG, read_hello(&mut conn, &mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(sni.as_deref(), Some("api.example.com"));
        assert_eq!(buf, wire);
        drop(client.await.unwrap());
    }

    /// A TLS server for `api.example.com` that echoes one byte per connection; its
    /// address and a client config trusting it.
    async fn echo_server() -> (std::net::SocketAddr, ClientConfig) {
        let ck = rcgen::generate_simple_self_signed(vec!["api.example.com".into()]).unwrap();
        let cert = ck.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
        let server = ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let mut tls = acceptor.accept(tcp).await.unwrap();
                    let mut b = [0u8; 1];
                    tls.read_exact(&mut b).await.unwrap();
                    tls.write_all(&b).await.unwrap();
                    tls.shutdown().await.unwrap();
                });
            }
        });
        let mut roots = RootCertStore::empty();
        roots.add(cert).unwrap();
        (addr, client_config(roots))
    }

    /// Accepts one connection, routes it by SNI (to `backend`), replays the hello and
    /// relays both ways; the SNI it read.
    async fn relay(
        backend: std::net::SocketAddr,
    ) -> (
        std::net::SocketAddr,
        tokio::task::JoinHandle<Option<String>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut client, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let sni = read_hello(&mut client, &mut buf).await.unwrap();
            let table = SniTable::new([("*.example.com".to_string(), backend)]);
            let to = *table.get(sni.as_deref().unwrap()).unwrap();
            let mut server = TcpStream::connect(to).await.unwrap();
            server.write_all(&buf).await.unwrap();
            // Either side may end the copy with a reset once the test is done.
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            sni
        });
        (addr, task)
    }

    #[tokio::test]
    async fn replayed_hello_completes_the_real_handshake() {
        let (backend, trusting) = echo_server().await;
        let mut fragmented = trusting.clone();
        fragmented.max_fragment_size = Some(64);
        for cfg in [trusting, fragmented] {
            let (addr, relay) = relay(backend).await;
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from("api.example.com").unwrap();
            let mut tls = tokio::time::timeout(
                HANG,
                tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp),
            )
            .await
            .unwrap()
            .expect("TLS handshake through the relay");
            tls.write_all(b"x").await.unwrap();
            let mut b = [0u8; 1];
            tls.read_exact(&mut b).await.unwrap();
            assert_eq!(&b, b"x");
            drop(tls);
            assert_eq!(relay.await.unwrap().as_deref(), Some("api.example.com"));
        }
    }

    fn table(entries: &[(&str, u32)]) -> SniTable<u32> {
        SniTable::new(entries.iter().map(|&(p, v)| (p.to_string(), v)))
    }

    #[test]
    fn table_exact_and_wildcard() {
        let t = table(&[
            ("api.example.com", 1),
            ("*.example.com", 2),
            ("other.test", 3),
        ]);
        assert_eq!(t.get("api.example.com"), Some(&1));
        assert_eq!(t.get("www.example.com"), Some(&2));
        assert_eq!(t.get("other.test"), Some(&3));
        assert_eq!(t.get("nothing.test"), None);
        assert_eq!(t.get(""), None);
        assert!(!t.is_empty());
    }

    #[test]
    fn table_exact_beats_wildcard_whatever_the_order() {
        let t = table(&[("*.example.com", 2), ("api.example.com", 1)]);
        assert_eq!(t.get("api.example.com"), Some(&1));
        assert_eq!(t.get("web.example.com"), Some(&2));
    }

    #[test]
    fn table_wildcard_is_one_label_only() {
        let t = table(&[("*.example.com", 2)]);
        assert_eq!(t.get("example.com"), None);
        assert_eq!(t.get("a.b.example.com"), None);
        assert_eq!(t.get(".example.com"), None);
        assert_eq!(t.get("aexample.com"), None);
    }

    #[test]
    fn table_ignores_case_and_trailing_dot() {
        let t = table(&[("API.Example.com.", 1), ("*.Wild.TEST", 2)]);
        assert_eq!(t.get("api.example.com"), Some(&1));
        assert_eq!(t.get("Api.EXAMPLE.com."), Some(&1));
        assert_eq!(t.get("X.wild.test."), Some(&2));
        assert_eq!(t.get("x.WILD.test"), Some(&2));
    }

    #[test]
    fn table_first_entry_for_a_pattern_wins() {
        let t = table(&[("a.test", 1), ("A.test.", 2), ("*.test", 3), ("*.TEST", 4)]);
        assert_eq!(t.get("a.test"), Some(&1));
        assert_eq!(t.get("b.test"), Some(&3));
    }

    #[test]
    fn empty_table() {
        let t = table(&[]);
        assert!(t.is_empty());
        assert_eq!(t.get("api.example.com"), None);
    }
}

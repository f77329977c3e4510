//! The PROXY protocol, v1 (text) and v2 (binary), as haproxy's `proxy-protocol.txt`
//! defines it: the header an L4 balancer puts at the very start of a connection to say
//! which client it is relaying, and the one Switchyard can send ahead of a backend
//! connection likewise.
//!
//! Behind such a balancer the TCP peer is the balancer, so this header is the only place
//! the client's address (for access logs, `X-Forwarded-For`, per-client limits) arrives;
//! a listener that trusts it must refuse anything malformed rather than guess, so parsing
//! is strict: v1 addresses must be the family the line names and ports plain decimal.
//! [`parse`] judges a prefix, so a client talking HTTP straight at a PROXY port is refused
//! after its first bytes instead of being waited on; [`read`] takes exactly the header off
//! a socket, so the TLS or HTTP code handed the socket next sees what follows it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The v1 signature, its single space included.
const V1_SIG: &[u8] = b"PROXY ";
/// Longest v1 header, CRLF included (the spec's worst case is `UNKNOWN` with two full
/// IPv6 addresses and ports).
const V1_MAX: usize = 107;
/// The v2 signature: the spec picked bytes no text protocol can start with.
const V2_SIG: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The fixed part of a v2 header: signature, version/command, family/protocol, length.
const V2_FIXED: usize = 16;
/// Longest textual IPv6 address, `ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255`.
const V6_TEXT_MAX: usize = 45;
/// Longest textual IPv4 address, `255.255.255.255`.
const V4_TEXT_MAX: usize = 15;

/// A PROXY protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The human-readable line, `PROXY TCP4 ...\r\n`.
    V1,
    /// The binary header with the 12-byte signature.
    V2,
}

impl Version {
    /// The name used in `routes.yaml`.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        }
    }
}

/// What a PROXY header said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// A proxied TCP connection from `src` to `dst`.
    Proxied { src: SocketAddr, dst: SocketAddr },
    /// v2 LOCAL command, or v1 `UNKNOWN`, or v2 with an address family other than TCP over
    /// IPv4/IPv6 (e.g. UDP/unix/UNSPEC): the connection's own peer is the client.
    Local,
}

/// Why bytes cannot be a PROXY header.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// The bytes do not start with either version's signature.
    #[error("not a PROXY protocol header (no PROXY signature)")]
    NotProxy,
    /// A v1 line that breaks the grammar; what broke it.
    #[error("invalid PROXY v1 header: {0}")]
    BadV1(&'static str),
    /// A v2 header that breaks the format; what broke it.
    #[error("invalid PROXY v2 header: {0}")]
    BadV2(&'static str),
    /// A v1 line with no CRLF within 107 bytes.
    #[error("PROXY v1 header longer than 107 bytes")]
    TooLong,
}

/// Errors reading a header off a socket.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The peer closed the connection before the header was complete.
    #[error("connection closed before the PROXY header was complete")]
    Closed,
    /// Reading the socket failed.
    #[error("reading the PROXY header failed: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not a valid PROXY header.
    #[error(transparent)]
    Invalid(#[from] ParseError),
}

use ParseError::{BadV1, BadV2};

/// Append the header for a connection from `src` to `dst` to `out`.
/// Mixed families (v4 src, v6 dst or vice versa): map the IPv4 one to IPv4-mapped IPv6 so
/// both are TCP6 / AF_INET6.
pub fn encode(version: Version, src: SocketAddr, dst: SocketAddr, out: &mut Vec<u8>) {
    // Both formats carry one family for the pair, so a mixed pair goes as IPv6.
    let pair = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Pair::V4(s, d),
        (s, d) => Pair::V6(mapped(s), mapped(d)),
    };
    let (sport, dport) = (src.port(), dst.port());
    match version {
        Version::V1 => {
            let line = match pair {
                Pair::V4(s, d) => format!("PROXY TCP4 {s} {d} {sport} {dport}\r\n"),
                Pair::V6(s, d) => format!("PROXY TCP6 {s} {d} {sport} {dport}\r\n"),
            };
            out.extend_from_slice(line.as_bytes());
        }
        Version::V2 => {
            out.extend_from_slice(&V2_SIG);
            out.push(0x21); // version 2, PROXY
            match pair {
                Pair::V4(s, d) => {
                    out.push(0x11); // AF_INET, STREAM
                    out.extend_from_slice(&12u16.to_be_bytes());
                    out.extend_from_slice(&s.octets());
                    out.extend_from_slice(&d.octets());
                }
                Pair::V6(s, d) => {
                    out.push(0x21); // AF_INET6, STREAM
                    out.extend_from_slice(&36u16.to_be_bytes());
                    out.extend_from_slice(&s.octets());
                    out.extend_from_slice(&d.octets());
                }
            }
            out.extend_from_slice(&sport.to_be_bytes());
            out.extend_from_slice(&dport.to_be_bytes());
        }
    }
}

/// Append a header that names no client (v1 `UNKNOWN`, v2 `LOCAL`): what the proxy's own
/// connections (health checks) send to a backend that requires a header.
pub fn encode_local(version: Version, out: &mut Vec<u8>) {
    match version {
        Version::V1 => out.extend_from_slice(b"PROXY UNKNOWN\r\n"),
        Version::V2 => {
            out.extend_from_slice(&V2_SIG);
            out.push(0x20); // version 2, LOCAL
            out.push(0x00); // AF_UNSPEC
            out.extend_from_slice(&0u16.to_be_bytes());
        }
    }
}

/// The two addresses of a header, in the one family it carries.
enum Pair {
    V4(Ipv4Addr, Ipv4Addr),
    V6(Ipv6Addr, Ipv6Addr),
}

/// `ip` as IPv6, IPv4 ones mapped (`::ffff:a.b.c.d`).
fn mapped(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Parse a header at the start of `buf`: `Ok(Some((header, len)))` when complete (len =
/// bytes it takes), `Ok(None)` when `buf` is a valid prefix and more bytes are needed,
/// `Err` when it cannot be a valid header.
///
/// v1: max 107 bytes incl. CRLF; ports/addresses strictly validated (TCP4 needs IPv4
/// addrs, etc.); an early non-matching byte gives `Err` right away. v2: 12-byte signature,
/// version 2, command LOCAL(0)/PROXY(1) else `Err`, family/proto byte, 2-byte length;
/// TLVs after the addresses are skipped (len covers them). Address block shorter than the
/// family needs → `Err`.
pub fn parse(buf: &[u8]) -> Result<Option<(Header, usize)>, ParseError> {
    match buf.first() {
        None => Ok(None),
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => Err(ParseError::NotProxy),
    }
}

/// [`parse`] for bytes starting with `P`.
fn parse_v1(buf: &[u8]) -> Result<Option<(Header, usize)>, ParseError> {
    let sig = buf.len().min(V1_SIG.len());
    if buf[..sig] != V1_SIG[..sig] {
        return Err(ParseError::NotProxy);
    }
    let window = &buf[..buf.len().min(V1_MAX)];
    match window.iter().position(|&b| b == b'\n') {
        Some(lf) => {
            let line = window[..lf]
                .strip_suffix(b"\r")
                .ok_or(BadV1("LF without CR"))?;
            let rest = line.strip_prefix(V1_SIG).ok_or(ParseError::NotProxy)?;
            Ok(Some((v1_line(rest)?, lf + 1)))
        }
        None if buf.len() >= V1_MAX => Err(ParseError::TooLong),
        None => v1_prefix(window).map(|()| None),
    }
}

/// A complete v1 line after `PROXY `, CRLF taken off.
fn v1_line(rest: &[u8]) -> Result<Header, ParseError> {
    if let Some(tail) = rest.strip_prefix(b"UNKNOWN") {
        // The spec has receivers ignore whatever follows UNKNOWN up to the CRLF.
        return match tail.first() {
            None | Some(b' ') => Ok(Header::Local),
            Some(_) => Err(BadV1("unknown protocol")),
        };
    }
    let (v6, fields) = v1_protocol(rest).ok_or(BadV1("unknown protocol"))?;
    let mut fields = fields.split(|&b| b == b' ');
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(BadV1(
            "expected addresses and ports separated by single spaces",
        ));
    };
    let addr = |field| v1_addr(field, v6).ok_or(BadV1("bad address"));
    let port = |field| v1_port(field).ok_or(BadV1("bad port"));
    Ok(Header::Proxied {
        src: SocketAddr::new(addr(src)?, port(sport)?),
        dst: SocketAddr::new(addr(dst)?, port(dport)?),
    })
}

/// Whether `rest` (after `PROXY `) names TCP6, and the fields after `TCP4 ` / `TCP6 `.
fn v1_protocol(rest: &[u8]) -> Option<(bool, &[u8])> {
    if let Some(fields) = rest.strip_prefix(b"TCP4 ") {
        Some((false, fields))
    } else {
        rest.strip_prefix(b"TCP6 ").map(|fields| (true, fields))
    }
}

/// Judge a v1 line cut short (no LF yet, under 107 bytes): `Ok` if some ending makes it
/// valid. Each field followed by a space is checked in full, the one being sent only for
/// what it has so far, so garbage is refused as soon as it appears.
fn v1_prefix(buf: &[u8]) -> Result<(), ParseError> {
    let Some(rest) = buf.strip_prefix(V1_SIG) else {
        // Only part of the signature, and it matched.
        return Ok(());
    };
    if let Some(tail) = rest.strip_prefix(b"UNKNOWN") {
        return match tail {
            [] | [b' ', ..] | [b'\r'] => Ok(()),
            _ => Err(BadV1("unknown protocol")),
        };
    }
    let Some((v6, fields)) = v1_protocol(rest) else {
        let words: [&[u8]; 3] = [b"UNKNOWN", b"TCP4 ", b"TCP6 "];
        return if words.iter().any(|w| w.starts_with(rest)) {
            Ok(())
        } else {
            Err(BadV1("unknown protocol"))
        };
    };
    // A CR can only be the first half of the CRLF: then every field is here.
    if let Some(line) = buf.strip_suffix(b"\r") {
        let rest = line.strip_prefix(V1_SIG).ok_or(ParseError::NotProxy)?;
        return v1_line(rest).map(|_| ());
    }
    let mut parts = fields.split(|&b| b == b' ').peekable();
    let mut index = 0;
    while let Some(field) = parts.next() {
        let whole = parts.peek().is_some();
        let (ok, why) = match index {
            0 | 1 if whole => (v1_addr(field, v6).is_some(), "bad address"),
            0 | 1 if v6 => (v6_text_prefix(field), "bad address"),
            0 | 1 => (v4_text_prefix(field), "bad address"),
            2 | 3 if whole => (v1_port(field).is_some(), "bad port"),
            2 | 3 => (field.is_empty() || v1_port(field).is_some(), "bad port"),
            _ => (
                false,
                "expected addresses and ports separated by single spaces",
            ),
        };
        if !ok {
            return Err(BadV1(why));
        }
        index += 1;
    }
    Ok(())
}

/// A v1 address of the family the line named.
fn v1_addr(field: &[u8], v6: bool) -> Option<IpAddr> {
    let text = std::str::from_utf8(field).ok()?;
    // std's parsers are strict: IPv4 wants four decimal octets without leading zeros, IPv6
    // takes no zone or brackets.
    if v6 {
        text.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
    } else {
        text.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
    }
}

/// A v1 port: decimal digits only (u16's parser would take a `+`), no leading zero so
/// each port has one spelling, at most 65535.
fn v1_port(field: &[u8]) -> Option<u16> {
    if field.is_empty() || field.len() > 5 || (field.len() > 1 && field[0] == b'0') {
        return None;
    }
    let mut value: u32 = 0;
    for &b in field {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value * 10 + u32::from(b - b'0');
    }
    u16::try_from(value).ok()
}

/// Whether `field` can begin an IPv4 address: dotted octets, the last maybe unfinished.
/// Every prefix of a valid octet is empty or itself a valid octet, so that is the test.
fn v4_text_prefix(field: &[u8]) -> bool {
    let mut octets = field.split(|&b| b == b'.').peekable();
    let mut count = 0;
    while let Some(octet) = octets.next() {
        count += 1;
        let last = octets.peek().is_none();
        if count > 4 || !(v4_octet(octet) || (last && octet.is_empty())) {
            return false;
        }
    }
    field.len() <= V4_TEXT_MAX
}

/// One decimal IPv4 octet as std's parser takes it: 0-255, no leading zero.
fn v4_octet(octet: &[u8]) -> bool {
    match octet {
        [b'0'] => true,
        [b'1'..=b'9', ..] if octet.len() <= 3 && octet.iter().all(u8::is_ascii_digit) => {
            octet
                .iter()
                .fold(0u32, |v, &d| v * 10 + u32::from(d - b'0'))
                <= 255
        }
        _ => false,
    }
}

/// Whether `field` can begin an IPv6 address: its characters and length only, since the
/// full check comes when the field ends.
fn v6_text_prefix(field: &[u8]) -> bool {
    field.len() <= V6_TEXT_MAX
        && field
            .iter()
            .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
}

/// [`parse`] for bytes starting with CR. Each byte of the fixed part is judged as soon as
/// it is here, so garbage is refused without waiting for the length it claims.
/// The most a v2 header's address block and TLVs may take.
const V2_MAX_BLOCK: usize = 4096;

fn parse_v2(buf: &[u8]) -> Result<Option<(Header, usize)>, ParseError> {
    let sig = buf.len().min(V2_SIG.len());
    if buf[..sig] != V2_SIG[..sig] {
        return Err(ParseError::NotProxy);
    }
    let Some(&version_command) = buf.get(12) else {
        return Ok(None);
    };
    if version_command >> 4 != 2 {
        return Err(BadV2("version is not 2"));
    }
    let local = match version_command & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(BadV2("command is neither LOCAL nor PROXY")),
    };
    let Some(&family_protocol) = buf.get(13) else {
        return Ok(None);
    };
    // Address block sizes of UNSPEC, INET, INET6 and UNIX.
    let needs = match family_protocol >> 4 {
        0 => 0,
        1 => 12,
        2 => 36,
        3 => 216,
        _ => return Err(BadV2("unknown address family")),
    };
    if family_protocol & 0x0f > 2 {
        return Err(BadV2("unknown transport protocol"));
    }
    let (Some(&high), Some(&low)) = (buf.get(14), buf.get(15)) else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([high, low]));
    // Real senders add a few small TLVs (AWS, GCP, HAProxy: well under 1 KiB); a header
    // claiming 64 KiB would only make every connection cost that much buffer.
    if len > V2_MAX_BLOCK {
        return Err(BadV2("address block and TLVs longer than 4 KiB"));
    }
    // LOCAL's addresses are to be ignored, so their size is no reason to refuse it.
    if !local && len < needs {
        return Err(BadV2("address block too short for the family"));
    }
    let total = V2_FIXED + len;
    let Some(mut block) = buf.get(V2_FIXED..total) else {
        return Ok(None);
    };
    if local {
        return Ok(Some((Header::Local, total)));
    }
    // Whatever follows the addresses within `len` is TLVs, which nothing here reads.
    let header = match family_protocol {
        0x11 => {
            let src = Ipv4Addr::from(take::<4>(&mut block)?);
            let dst = Ipv4Addr::from(take::<4>(&mut block)?);
            proxied(IpAddr::V4(src), IpAddr::V4(dst), &mut block)?
        }
        0x21 => {
            let src = Ipv6Addr::from(take::<16>(&mut block)?);
            let dst = Ipv6Addr::from(take::<16>(&mut block)?);
            proxied(IpAddr::V6(src), IpAddr::V6(dst), &mut block)?
        }
        _ => Header::Local,
    };
    Ok(Some((header, total)))
}

/// A v2 header's addresses with the two ports that follow them in `block`.
fn proxied(src: IpAddr, dst: IpAddr, block: &mut &[u8]) -> Result<Header, ParseError> {
    let sport = u16::from_be_bytes(take::<2>(block)?);
    let dport = u16::from_be_bytes(take::<2>(block)?);
    Ok(Header::Proxied {
        src: SocketAddr::new(src, sport),
        dst: SocketAddr::new(dst, dport),
    })
}

/// The next `N` bytes of a v2 address block.
fn take<const N: usize>(block: &mut &[u8]) -> Result<[u8; N], ParseError> {
    let (head, rest) = block
        .split_first_chunk::<N>()
        .ok_or(BadV2("address block too short for the family"))?;
    *block = rest;
    Ok(*head)
}

/// Read a PROXY header from the start of `tcp` and consume exactly its bytes, leaving
/// everything after it unread in the socket for the TLS or HTTP code handed `tcp` next.
///
/// Bytes are peeked, and those [`parse`] shows to be inside the header (a valid prefix
/// that is not yet complete) are consumed before waiting for more: peek alone would keep
/// returning the same partial bytes, so it could neither see a peer that closed part-way
/// nor wait without spinning. The last peek is consumed only up to the header's end. No
/// timeout here: the caller wraps this in `tokio::time::timeout`.
pub async fn read(tcp: &mut TcpStream) -> Result<Header, ReadError> {
    let mut head = Vec::new();
    let mut scratch = Vec::new();
    loop {
        // Peek no further than the header can reach: a v2 header's length is known once
        // its fixed part is here; before that, the longest v1 line covers either version.
        let reach = match head.get(..V2_FIXED) {
            Some(fixed) if fixed.starts_with(&V2_SIG) => {
                V2_FIXED + usize::from(u16::from_be_bytes([fixed[14], fixed[15]]))
            }
            _ => V1_MAX,
        };
        scratch.resize(reach.saturating_sub(head.len()).max(1), 0);
        let n = tcp.peek(&mut scratch).await?;
        if n == 0 {
            return Err(ReadError::Closed);
        }
        let start = head.len();
        head.extend_from_slice(&scratch[..n]);
        match parse(&head)? {
            Some((header, len)) => {
                // `head[..start]` was incomplete, so the header ends within this peek.
                let rest = len.saturating_sub(start).min(n);
                tcp.read_exact(&mut scratch[..rest]).await?;
                return Ok(header);
            }
            None => {
                tcp.read_exact(&mut scratch[..n]).await?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn local_headers_parse_as_local() {
        for v in [super::Version::V1, super::Version::V2] {
            let mut out = Vec::new();
            super::encode_local(v, &mut out);
            assert_eq!(
                super::parse(&out),
                Ok(Some((super::Header::Local, out.len()))),
                "{v:?}"
            );
        }
    }

    use super::*;
    use std::net::{SocketAddrV4, SocketAddrV6};
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    fn v4(s: &str) -> SocketAddr {
        SocketAddr::V4(s.parse::<SocketAddrV4>().unwrap())
    }

    fn v6(s: &str) -> SocketAddr {
        SocketAddr::V6(s.parse::<SocketAddrV6>().unwrap())
    }

    fn encoded(version: Version, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
        let mut out = Vec::new();
        encode(version, src, dst, &mut out);
        out
    }

    /// What parsing the encoding of `src` to `dst` must give: a mixed pair comes back as
    /// IPv6, the IPv4 side mapped.
    fn expected(src: SocketAddr, dst: SocketAddr) -> Header {
        if src.is_ipv4() == dst.is_ipv4() {
            return Header::Proxied { src, dst };
        }
        let map = |a: SocketAddr| SocketAddr::new(IpAddr::V6(mapped(a.ip())), a.port());
        Header::Proxied {
            src: map(src),
            dst: map(dst),
        }
    }

    /// The v2 header for 192.0.2.1:56324 -> 198.51.100.2:443, written out by hand.
    const V2_V4: [u8; 28] = [
        0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, // signature
        0x21, // version 2, PROXY
        0x11, // AF_INET, STREAM
        0x00, 0x0C, // 12 bytes of addresses
        192, 0, 2, 1, // src
        198, 51, 100, 2, // dst
        0xDC, 0x04, // 56324
        0x01, 0xBB, // 443
    ];

    /// A v2 IPv4 header with two TLVs (ALPN "h2", authority "example.com") after the addresses.
    fn v2_with_tlvs() -> Vec<u8> {
        let mut h = V2_V4.to_vec();
        let tlvs: &[u8] = &[
            0x01, 0x00, 0x02, b'h', b'2', // PP2_TYPE_ALPN
            0x02, 0x00, 0x0B, b'e', b'x', b'a', b'm', b'p', b'l', b'e', b'.', b'c', b'o',
            b'm', // PP2_TYPE_AUTHORITY
        ];
        h[14..16].copy_from_slice(&(12 + tlvs.len() as u16).to_be_bytes());
        h.extend_from_slice(tlvs);
        h
    }

    /// A v2 header: signature, then `version_command`, `family`, length and `block`.
    fn v2_raw(version_command: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut h = V2_SIG.to_vec();
        h.push(version_command);
        h.push(family);
        h.extend_from_slice(&(block.len() as u16).to_be_bytes());
        h.extend_from_slice(block);
        h
    }

    fn pairs() -> Vec<(SocketAddr, SocketAddr)> {
        vec![
            (v4("192.0.2.1:56324"), v4("198.51.100.2:443")),
            (v4("0.0.0.0:0"), v4("255.255.255.255:65535")),
            (v6("[2001:db8::1]:1234"), v6("[2001:db8::2]:443")),
            (
                v6("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"),
                v6("[::]:0"),
            ),
            (v4("192.0.2.1:1000"), v6("[2001:db8::2]:443")),
            (v6("[2001:db8::1]:1000"), v4("198.51.100.2:80")),
        ]
    }

    #[test]
    fn round_trips_both_versions_and_families() {
        for (src, dst) in pairs() {
            for version in [Version::V1, Version::V2] {
                let mut bytes = encoded(version, src, dst);
                let len = bytes.len();
                bytes.extend_from_slice(b"hello");
                assert_eq!(
                    parse(&bytes),
                    Ok(Some((expected(src, dst), len))),
                    "{version:?} {src} {dst}"
                );
            }
        }
    }

    #[test]
    fn round_trips_random_addresses() {
        let mut rng = fastrand::Rng::with_seed(7);
        let addr = |rng: &mut fastrand::Rng| match rng.bool() {
            true => SocketAddr::new(IpAddr::V4(Ipv4Addr::from(rng.u32(..))), rng.u16(..)),
            false => SocketAddr::new(IpAddr::V6(Ipv6Addr::from(rng.u128(..))), rng.u16(..)),
        };
        for _ in 0..2000 {
            let (src, dst) = (addr(&mut rng), addr(&mut rng));
            for version in [Version::V1, Version::V2] {
                let bytes = encoded(version, src, dst);
                assert!(version == Version::V2 || bytes.len() <= V1_MAX);
                assert_eq!(
                    parse(&bytes),
                    Ok(Some((expected(src, dst), bytes.len()))),
                    "{version:?} {src} {dst}"
                );
            }
        }
    }

    #[test]
    fn encodes_known_bytes() {
        let (src, dst) = (v4("192.0.2.1:56324"), v4("198.51.100.2:443"));
        assert_eq!(
            encoded(Version::V1, src, dst),
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n"
        );
        assert_eq!(encoded(Version::V2, src, dst), V2_V4);
        // Appends rather than replaces.
        let mut out = b"x".to_vec();
        encode(Version::V2, src, dst, &mut out);
        assert_eq!(out[0], b'x');
        assert_eq!(out[1..], V2_V4);
    }

    #[test]
    fn encodes_mixed_families_as_ipv6() {
        let (src, dst) = (v4("192.0.2.1:1000"), v6("[2001:db8::2]:443"));
        assert_eq!(
            encoded(Version::V1, src, dst),
            b"PROXY TCP6 ::ffff:192.0.2.1 2001:db8::2 1000 443\r\n"
        );
        let v2 = encoded(Version::V2, src, dst);
        assert_eq!(v2.len(), 16 + 36);
        assert_eq!(v2[13], 0x21);
        assert_eq!(
            v2[16..32],
            Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped().octets()
        );
    }

    #[test]
    fn parses_known_bytes() {
        let want = Header::Proxied {
            src: v4("192.0.2.1:56324"),
            dst: v4("198.51.100.2:443"),
        };
        let v1 = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n";
        assert_eq!(parse(v1), Ok(Some((want, v1.len()))));
        assert_eq!(parse(&V2_V4), Ok(Some((want, V2_V4.len()))));
    }

    /// Every valid header the tests use, some of them not encodable.
    fn valid_headers() -> Vec<Vec<u8>> {
        let mut all: Vec<Vec<u8>> = Vec::new();
        for (src, dst) in pairs() {
            all.push(encoded(Version::V1, src, dst));
            all.push(encoded(Version::V2, src, dst));
        }
        all.push(b"PROXY UNKNOWN\r\n".to_vec());
        all.push(b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n".to_vec());
        all.push(b"PROXY TCP6 ::ffff:192.0.2.1 ABCD::EF 0 9\r\n".to_vec());
        all.push(v2_with_tlvs());
        all.push(v2_raw(0x20, 0x00, &[]));
        all.push(v2_raw(0x20, 0x11, &V2_V4[16..]));
        all.push(v2_raw(0x21, 0x00, &[]));
        all.push(v2_raw(0x21, 0x12, &V2_V4[16..]));
        all.push(v2_raw(0x21, 0x31, &[0; 216]));
        all
    }

    #[test]
    fn every_prefix_of_a_valid_header_needs_more() {
        for h in valid_headers() {
            for k in 0..h.len() {
                assert_eq!(
                    parse(&h[..k]),
                    Ok(None),
                    "{:?}",
                    String::from_utf8_lossy(&h[..k])
                );
            }
            let mut more = h.clone();
            more.extend_from_slice(b"GET / HTTP/1.1\r\n");
            assert!(matches!(parse(&more), Ok(Some((_, n))) if n == h.len()));
        }
    }

    #[test]
    fn local_and_unknown_are_local() {
        for h in [
            b"PROXY UNKNOWN\r\n".to_vec(),
            b"PROXY UNKNOWN 192.0.2.1 whatever \x01\xff\r\n".to_vec(),
            v2_raw(0x20, 0x00, &[]),
            v2_raw(0x20, 0x21, &[1; 36]),
            // LOCAL ignores the addresses, even too few of them.
            v2_raw(0x20, 0x21, &[1; 4]),
            v2_raw(0x21, 0x00, &[]),
            v2_raw(0x21, 0x00, &[9; 7]),
            v2_raw(0x21, 0x12, &V2_V4[16..]),
            v2_raw(0x21, 0x22, &[1; 36]),
            v2_raw(0x21, 0x31, &[0; 216]),
            v2_raw(0x21, 0x32, &[0; 220]),
        ] {
            assert_eq!(parse(&h), Ok(Some((Header::Local, h.len()))), "{h:?}");
        }
    }

    #[test]
    fn v2_tlvs_are_skipped_and_counted() {
        let h = v2_with_tlvs();
        let mut bytes = h.clone();
        bytes.extend_from_slice(b"hello");
        let want = Header::Proxied {
            src: v4("192.0.2.1:56324"),
            dst: v4("198.51.100.2:443"),
        };
        assert_eq!(parse(&bytes), Ok(Some((want, h.len()))));
        assert_eq!(h.len(), 28 + 19);
    }

    #[test]
    fn refuses_garbage() {
        let bad: &[(&[u8], ParseError)] = &[
            (b"GET / HTTP/1.1\r\n", ParseError::NotProxy),
            (b"G", ParseError::NotProxy),
            (b"PRI * HTTP/2.0", ParseError::NotProxy),
            (b"PROXZ", ParseError::NotProxy),
            (b"PROXY\r\n", ParseError::NotProxy),
            (b"\x16\x03\x01", ParseError::NotProxy),
            (b"\r\n\r\nGET", ParseError::NotProxy),
            (b"PROXY TCP5", BadV1("unknown protocol")),
            (b"PROXY tcp4", BadV1("unknown protocol")),
            (b"PROXY UNKNOWNX\r\n", BadV1("unknown protocol")),
            (b"PROXY UNKNOWN\rX", BadV1("unknown protocol")),
            (
                b"PROXY TCP4 192.0.2.1 198.51.100.2 70000 443\r\n",
                BadV1("bad port"),
            ),
            (
                b"PROXY TCP4 192.0.2.1 198.51.100.2 70000",
                BadV1("bad port"),
            ),
            (
                b"PROXY TCP4 192.0.2.1 198.51.100.2 443 65536",
                BadV1("bad port"),
            ),
            (
                b"PROXY TCP4 192.0.2.1 198.51.100.2 0443 443\r\n",
                BadV1("bad port"),
            ),
            (
                b"PROXY TCP4 192.0.2.1 198.51.100.2 +443 443\r\n",
                BadV1("bad port"),
            ),
            (
                b"PROXY TCP4 192.0.2.1 198.51.100.2 443 -1\r\n",
                BadV1("bad port"),
            ),
            (
                b"PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n",
                BadV1("bad address"),
            ),
            (b"PROXY TCP4 2001:", BadV1("bad address")),
            (b"PROXY TCP4 192.0.2.1 ::1 1 2\r\n", BadV1("bad address")),
            (
                b"PROXY TCP4 192.0.2.01 198.51.100.2 1 2\r\n",
                BadV1("bad address"),
            ),
            (b"PROXY TCP4 192.0.2.256", BadV1("bad address")),
            (b"PROXY TCP4 192.0.2.1.", BadV1("bad address")),
            (b"PROXY TCP6 192.0.2.1 ::1 1 2\r\n", BadV1("bad address")),
            (b"PROXY TCP6 ::1%eth0", BadV1("bad address")),
            (b"PROXY TCP6 [::1]", BadV1("bad address")),
            (
                b"PROXY TCP4 192.0.2.1  198.51.100.2 1 2\r\n",
                BadV1("expected addresses and ports separated by single spaces"),
            ),
            (b"PROXY TCP4 192.0.2.1  ", BadV1("bad address")),
            (
                b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2 \r\n",
                BadV1("expected addresses and ports separated by single spaces"),
            ),
            (
                b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2 3\r\n",
                BadV1("expected addresses and ports separated by single spaces"),
            ),
            (
                b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2 ",
                BadV1("expected addresses and ports separated by single spaces"),
            ),
            (
                b"PROXY TCP4 192.0.2.1 198.51.100.2 1\r\n",
                BadV1("expected addresses and ports separated by single spaces"),
            ),
            (
                b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\n",
                BadV1("LF without CR"),
            ),
            (b"PROXY TCP4 192.0.2.1\r198", BadV1("bad address")),
            (
                b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\r\r\n",
                BadV1("bad port"),
            ),
        ];
        for (bytes, err) in bad {
            assert_eq!(
                parse(bytes),
                Err(*err),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn refuses_other_protocols_where_they_stop_matching() {
        // What plain HTTP/1, HTTP/2 or TLS clients send first: refused at the first byte
        // that cannot be a signature's, never waited on.
        for (hello, at) in [
            (&b"GET / HTTP/1.1\r\n"[..], 1),
            (b"\x16\x03\x01\x02\x00", 1),
            (b"POST / HTTP/1.1\r\n", 2),
            (b"PUT / HTTP/1.1\r\n", 2),
            (b"PATCH / HTTP/1.1\r\n", 2),
            (b"PRI * HTTP/2.0\r\n", 3),
            (b"PROXY\t", 6),
            (b"\r\n\r\nGET", 5),
        ] {
            for k in 0..at {
                assert_eq!(parse(&hello[..k]), Ok(None), "{hello:?} at {k}");
            }
            assert_eq!(parse(&hello[..at]), Err(ParseError::NotProxy), "{hello:?}");
            assert_eq!(parse(hello), Err(ParseError::NotProxy), "{hello:?}");
        }
    }

    #[test]
    fn refuses_v1_without_crlf_past_107_bytes() {
        let mut line = b"PROXY UNKNOWN ".to_vec();
        line.resize(V1_MAX - 1, b'x');
        assert_eq!(parse(&line), Ok(None));
        line.push(b'x');
        assert_eq!(parse(&line), Err(ParseError::TooLong));
        line.extend_from_slice(b"\r\n");
        assert_eq!(parse(&line), Err(ParseError::TooLong));
        // Exactly 107 with the CRLF is fine.
        line.truncate(V1_MAX - 2);
        line.extend_from_slice(b"\r\n");
        assert_eq!(parse(&line), Ok(Some((Header::Local, V1_MAX))));
        // A TCP line padded past 107 is refused long before, as too many fields or a bad one.
        let mut padded = b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2".to_vec();
        padded.resize(200, b' ');
        assert_eq!(
            parse(&padded[..38]),
            Err(BadV1(
                "expected addresses and ports separated by single spaces"
            ))
        );
        assert_eq!(parse(&padded), Err(ParseError::TooLong));
        let mut zeros = b"PROXY TCP6 ".to_vec();
        zeros.resize(200, b'0');
        assert_eq!(parse(&zeros), Err(ParseError::TooLong));
        assert_eq!(parse(&zeros[..V1_MAX - 1]), Err(BadV1("bad address")));
    }

    #[test]
    fn refuses_bad_v2() {
        let mut wrong_version = V2_V4;
        wrong_version[12] = 0x11;
        let mut command_3 = V2_V4;
        command_3[12] = 0x23;
        let mut family_4 = V2_V4;
        family_4[13] = 0x41;
        let mut protocol_3 = V2_V4;
        protocol_3[13] = 0x13;
        let cases: Vec<(Vec<u8>, ParseError)> = vec![
            (wrong_version.to_vec(), BadV2("version is not 2")),
            (
                command_3.to_vec(),
                BadV2("command is neither LOCAL nor PROXY"),
            ),
            (family_4.to_vec(), BadV2("unknown address family")),
            (protocol_3.to_vec(), BadV2("unknown transport protocol")),
            (
                v2_raw(0x21, 0x11, &[0; 11]),
                BadV2("address block too short for the family"),
            ),
            (
                v2_raw(0x21, 0x21, &[0; 35]),
                BadV2("address block too short for the family"),
            ),
            (
                v2_raw(0x21, 0x21, &[0; 12]),
                BadV2("address block too short for the family"),
            ),
            (
                v2_raw(0x21, 0x31, &[0; 215]),
                BadV2("address block too short for the family"),
            ),
            (
                v2_raw(0x21, 0x12, &[0; 2]),
                BadV2("address block too short for the family"),
            ),
        ];
        for (bytes, err) in cases {
            // Refused as soon as the offending byte is in, before the block is.
            let at = match err {
                BadV2("version is not 2" | "command is neither LOCAL nor PROXY") => 13,
                BadV2("unknown address family" | "unknown transport protocol") => 14,
                _ => 16,
            };
            assert_eq!(parse(&bytes[..at - 1]), Ok(None), "{bytes:?}");
            for k in at..=bytes.len() {
                assert_eq!(parse(&bytes[..k]), Err(err), "{bytes:?} at {k}");
            }
        }
    }

    /// Check the properties any input must keep, whatever it is: no panic; a header's
    /// length lies within the input and the header alone parses the same; every shorter
    /// prefix of a valid header or prefix is a valid prefix (so refusing early never refuses
    /// something that could have become valid).
    fn check(buf: &[u8]) -> Result<Option<(Header, usize)>, ParseError> {
        let result = parse(buf);
        match result {
            Ok(Some((header, len))) => {
                assert!(len > 0 && len <= buf.len(), "{buf:?}");
                assert_eq!(parse(&buf[..len]), Ok(Some((header, len))), "{buf:?}");
                for k in 0..len {
                    assert_eq!(parse(&buf[..k]), Ok(None), "{buf:?} at {k}");
                }
            }
            Ok(None) => {
                for k in 0..buf.len() {
                    assert_eq!(parse(&buf[..k]), Ok(None), "{buf:?} at {k}");
                }
            }
            Err(_) => {}
        }
        result
    }

    #[test]
    fn never_panics_on_arbitrary_or_mutated_input() {
        let mut rng = fastrand::Rng::with_seed(0x5eed);
        let valid = valid_headers();
        // Bytes a v1 line is made of, so mutations stay near the grammar.
        let alphabet = b"PROXY TCP46UNKNOW0123456789abcdefABCDEF:.\r\n\0\x21\x11";
        let mut buf = Vec::new();
        // Complete, incomplete, refused.
        let mut outcomes = [0usize; 3];
        for _ in 0..20_000 {
            buf.clear();
            match rng.u8(0..4) {
                0 => {
                    let len = rng.usize(0..128);
                    buf.extend((0..len).map(|_| rng.u8(..)));
                    if let Some(first) = buf.first_mut() {
                        *first = [b'P', b'\r', *first][rng.usize(0..3)];
                    }
                }
                1 => {
                    buf.extend_from_slice(match rng.bool() {
                        true => V1_SIG,
                        false => &V2_SIG,
                    });
                    let len = rng.usize(0..120);
                    buf.extend((0..len).map(|_| alphabet[rng.usize(0..alphabet.len())]));
                }
                _ => {
                    buf.extend_from_slice(&valid[rng.usize(0..valid.len())]);
                    for _ in 0..rng.usize(1..4) {
                        if buf.is_empty() {
                            break;
                        }
                        let at = rng.usize(0..buf.len());
                        match rng.u8(0..5) {
                            0 => buf[at] = rng.u8(..),
                            1 => buf[at] = alphabet[rng.usize(0..alphabet.len())],
                            2 => buf.insert(at, alphabet[rng.usize(0..alphabet.len())]),
                            3 => {
                                buf.remove(at);
                            }
                            _ => buf.truncate(at),
                        }
                    }
                    if rng.bool() {
                        buf.extend_from_slice(b"hello");
                    }
                }
            }
            match check(&buf) {
                Ok(Some(_)) => outcomes[0] += 1,
                Ok(None) => outcomes[1] += 1,
                Err(_) => outcomes[2] += 1,
            }
        }
        // Each outcome is reached often, or the inputs test little.
        assert!(outcomes.iter().all(|&n| n > 1000), "{outcomes:?}");
        for h in &valid {
            check(h).unwrap();
        }
    }

    /// A connected loopback pair: (the side `read` runs on, the peer).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (accepted.unwrap().0, client.unwrap())
    }

    /// Send `header` in two pieces split at `split` with a gap between, then `hello`;
    /// `read` must return `want` and leave exactly `hello` in the socket.
    async fn read_in_pieces(header: Vec<u8>, split: usize, want: Header) {
        let (mut server, mut peer) = pair().await;
        let writer = tokio::spawn(async move {
            peer.write_all(&header[..split]).await.unwrap();
            peer.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
            peer.write_all(&header[split..]).await.unwrap();
            peer.write_all(b"hello").await.unwrap();
            peer.shutdown().await.unwrap();
        });
        let got = tokio::time::timeout(Duration::from_secs(5), read(&mut server))
            .await
            .expect("read timed out")
            .unwrap();
        assert_eq!(got, want);
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"hello");
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn read_consumes_exactly_the_header() {
        let (src, dst) = (v4("192.0.2.1:56324"), v4("198.51.100.2:443"));
        let want = Header::Proxied { src, dst };
        let v1 = encoded(Version::V1, src, dst);
        read_in_pieces(v1.clone(), 3, want).await;
        read_in_pieces(v1.clone(), 20, want).await;
        read_in_pieces(v1.clone(), v1.len() - 1, want).await;
        read_in_pieces(V2_V4.to_vec(), 5, want).await;
        read_in_pieces(V2_V4.to_vec(), 17, want).await;
        read_in_pieces(v2_with_tlvs(), 30, want).await;
        read_in_pieces(b"PROXY UNKNOWN\r\n".to_vec(), 14, Header::Local).await;
    }

    #[tokio::test]
    async fn read_takes_a_v2_header_longer_than_a_v1_line() {
        // 4000 bytes of TLVs: more than the first peek looks at.
        let mut big = V2_V4.to_vec();
        big[14..16].copy_from_slice(&(12u16 + 4000).to_be_bytes());
        big.extend((0..4000).map(|i| (i % 251) as u8));
        let want = Header::Proxied {
            src: v4("192.0.2.1:56324"),
            dst: v4("198.51.100.2:443"),
        };
        read_in_pieces(big.clone(), 10, want).await;
        read_in_pieces(big.clone(), 200, want).await;
        read_in_pieces(big.clone(), big.len() - 1, want).await;
    }

    #[tokio::test]
    async fn read_refuses_garbage_at_once() {
        let (mut server, mut peer) = pair().await;
        // The peer keeps the connection open: the refusal must not wait for more.
        peer.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(1), read(&mut server))
            .await
            .expect("read waited on garbage");
        assert!(
            matches!(got, Err(ReadError::Invalid(ParseError::NotProxy))),
            "{got:?}"
        );
        drop(peer);
    }

    #[tokio::test]
    async fn read_sees_a_peer_close_mid_header() {
        let (mut server, mut peer) = pair().await;
        peer.write_all(b"PROXY TCP4 192.0.2.1 ").await.unwrap();
        peer.shutdown().await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(1), read(&mut server))
            .await
            .expect("read did not see the close");
        assert!(matches!(got, Err(ReadError::Closed)), "{got:?}");

        let (mut server, peer) = pair().await;
        drop(peer);
        let got = tokio::time::timeout(Duration::from_secs(1), read(&mut server))
            .await
            .expect("read did not see the close");
        assert!(matches!(got, Err(ReadError::Closed)), "{got:?}");
    }
}

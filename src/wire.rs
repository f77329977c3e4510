//! HTTP/1.1 bytes shared by the places that read and write them without hyper: the lane
//! (`server::h1`), the header edits (`proxy::edit`) and the HTTP/1.1 client
//! (`upstream::h1`). Parsing itself is httparse's; this is what comes after it, and the
//! chunked coding both directions share ([`chunked`]).

pub mod chunked;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

/// Most header fields accepted in one head (hyper's default).
pub const MAX_HEADERS: usize = 100;

/// The comma-separated tokens of a field value, trimmed, empty ones skipped.
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// Whether the last token of `value` is `token` (ASCII case-insensitive).
pub fn last_token_is(value: &[u8], token: &[u8]) -> bool {
    tokens(value)
        .last()
        .is_some_and(|t| t.eq_ignore_ascii_case(token))
}

/// Whether any token of `value` is `token` (ASCII case-insensitive).
pub fn has_token(value: &[u8], token: &[u8]) -> bool {
    tokens(value).any(|t| t.eq_ignore_ascii_case(token))
}

/// A Content-Length value: digits, or a list of identical digit strings (RFC 9110 §8.6).
pub fn content_length(value: &[u8]) -> Option<u64> {
    let mut n = None;
    for t in value.split(|&b| b == b',').map(|t| t.trim_ascii()) {
        if t.is_empty() {
            return None;
        }
        let mut v: u64 = 0;
        for &b in t {
            if !b.is_ascii_digit() {
                return None;
            }
            v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        }
        if n.is_some_and(|n| n != v) {
            return None;
        }
        n = Some(v);
    }
    n
}

/// The header fields the proxy acts on, told apart by name without building a
/// `HeaderName` (a hashed lookup per field, where most fields are none of these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    CacheControl,
    Connection,
    ContentLength,
    Cookie,
    Date,
    Expect,
    Host,
    Http2Settings,
    KeepAlive,
    ProxyConnection,
    Te,
    TransferEncoding,
    Upgrade,
    XForwardedFor,
    XForwardedHost,
    XForwardedProto,
    XRequestId,
    /// A name that reads as `Content-Length` or `Transfer-Encoding` once `_` is taken for
    /// `-`: never forwarded (see `server::h1::head`).
    Shadow,
    Other,
}

impl Known {
    /// Which of the known fields `name` is (ASCII case-insensitive).
    pub fn of(name: &[u8]) -> Known {
        let is = |known: &[u8]| name.eq_ignore_ascii_case(known);
        // The length picks at most two candidates, so most names cost one comparison.
        match name.len() {
            2 if is(b"te") => Known::Te,
            4 if is(b"host") => Known::Host,
            4 if is(b"date") => Known::Date,
            6 if is(b"expect") => Known::Expect,
            6 if is(b"cookie") => Known::Cookie,
            7 if is(b"upgrade") => Known::Upgrade,
            10 if is(b"connection") => Known::Connection,
            10 if is(b"keep-alive") => Known::KeepAlive,
            12 if is(b"x-request-id") => Known::XRequestId,
            13 if is(b"cache-control") => Known::CacheControl,
            14 if is(b"content-length") => Known::ContentLength,
            14 if is(b"http2-settings") => Known::Http2Settings,
            15 if is(b"x-forwarded-for") => Known::XForwardedFor,
            16 if is(b"x-forwarded-host") => Known::XForwardedHost,
            16 if is(b"proxy-connection") => Known::ProxyConnection,
            17 if is(b"transfer-encoding") => Known::TransferEncoding,
            17 if is(b"x-forwarded-proto") => Known::XForwardedProto,
            _ => Known::Other,
        }
    }

    /// Hop-by-hop by definition (RFC 9110 §7.6.1), whatever `Connection` names.
    pub fn is_hop_by_hop(self) -> bool {
        matches!(
            self,
            Known::Connection
                | Known::KeepAlive
                | Known::ProxyConnection
                | Known::Te
                | Known::TransferEncoding
                | Known::Upgrade
        )
    }
}

/// Whether a field value holds only visible ASCII, spaces and tabs, as
/// `HeaderValue::to_str` demands.
pub fn is_visible(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
}

/// Append `name: value` and its line end.
pub fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Append an HTTP/1.1 status line for `status`, with its canonical reason phrase.
pub fn status_line(out: &mut Vec<u8>, status: http::StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Append `n` in lower-case hex (a chunk size).
pub fn hex(out: &mut Vec<u8>, n: u64) {
    let digits = (64 - n.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        out.push(b"0123456789abcdef"[((n >> (i * 4)) & 0xf) as usize]);
    }
}

/// Whether a `Connection` token names a field to remove, rather than being one of the
/// options `close` and `keep-alive`, or `upgrade` (whose field is hop-by-hop anyway).
pub fn names_field(token: &[u8]) -> bool {
    !(token.eq_ignore_ascii_case(b"close")
        || token.eq_ignore_ascii_case(b"keep-alive")
        || token.eq_ignore_ascii_case(b"upgrade"))
}

/// Append `n` in decimal.
pub fn decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Field lines copied from a head as they came, consecutive ones in a single copy: a
/// head whose fields all pass costs one copy instead of four per field.
pub struct Lines<'a> {
    head: &'a [u8],
    /// The byte range of the kept lines not written yet.
    run: Option<(usize, usize)>,
}

impl<'a> Lines<'a> {
    /// Lines of `head`, which the fields' names and values must point into.
    pub fn new(head: &'a [u8]) -> Lines<'a> {
        Lines { head, run: None }
    }

    /// Keep the field `name: value` (both slices of the head) for `out`.
    pub fn keep(&mut self, out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
        let start = span(self.head, name).0;
        let value_end = span(self.head, value).1;
        let rest = &self.head[value_end..];
        // The line ends at its LF; one ending in a bare LF is written out afresh.
        let end = match rest {
            [b'\r', b'\n', ..] => Some(value_end + 2),
            _ => memchr::memchr(b'\n', rest)
                .filter(|&i| i > 0 && rest[i - 1] == b'\r')
                .map(|i| value_end + i + 1),
        };
        let Some(end) = end else {
            self.flush(out);
            field(out, name, value);
            return;
        };
        match &mut self.run {
            Some((_, e)) if *e == start => *e = end,
            _ => {
                self.flush(out);
                self.run = Some((start, end));
            }
        }
    }

    /// Write the lines kept so far.
    pub fn flush(&mut self, out: &mut Vec<u8>) {
        if let Some((s, e)) = self.run.take() {
            out.extend_from_slice(&self.head[s..e]);
        }
    }
}

/// Where a field's value lies in the head it was parsed from, as a byte range.
pub fn span(head: &[u8], value: &[u8]) -> (usize, usize) {
    let start = value.as_ptr() as usize - head.as_ptr() as usize;
    (start, start + value.len())
}

/// A header map from names and value ranges of `head`, with room for `extra` more fields;
/// the values share `head`'s memory instead of being copied. `None` if a value is not a
/// valid header value.
pub fn header_map(
    head: &Bytes,
    fields: &mut Vec<(HeaderName, usize, usize)>,
    extra: usize,
) -> Option<HeaderMap> {
    let mut map = HeaderMap::with_capacity(fields.len() + extra);
    for (name, start, end) in fields.drain(..) {
        map.append(
            name,
            HeaderValue::from_maybe_shared(head.slice(start..end)).ok()?,
        );
    }
    Some(map)
}

thread_local! {
    /// The second last formatted, and its `Date` value (always 29 bytes).
    static DATE: Cell<(u64, [u8; 29])> = const { Cell::new((u64::MAX, [0; 29])) };
}

/// Append a `Date` field for now, the value formatted at most once a second per thread.
pub fn date_field(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (cached, mut text) = DATE.get();
    if cached != secs {
        text.copy_from_slice(httpdate::fmt_http_date(now).as_bytes());
        DATE.set((secs, text));
    }
    field(out, b"date", &text);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_values() {
        assert_eq!(content_length(b"42"), Some(42));
        assert_eq!(content_length(b"42, 42"), Some(42));
        assert_eq!(content_length(b"42, 43"), None);
        assert_eq!(content_length(b"+42"), None);
        assert_eq!(content_length(b""), None);
        assert_eq!(content_length(b"99999999999999999999999"), None);
    }

    #[test]
    fn tokens_of_field_values() {
        assert!(last_token_is(b"gzip, chunked", b"chunked"));
        assert!(last_token_is(b"Chunked", b"chunked"));
        assert!(!last_token_is(b"chunked, gzip", b"chunked"));
        assert!(has_token(b"keep-alive , Close", b"close"));
        assert!(!has_token(b"closed", b"close"));
    }

    #[test]
    fn known_fields_by_name() {
        assert_eq!(Known::of(b"Content-Length"), Known::ContentLength);
        assert_eq!(Known::of(b"X-FORWARDED-PROTO"), Known::XForwardedProto);
        assert_eq!(Known::of(b"proxy-connection"), Known::ProxyConnection);
        assert_eq!(Known::of(b"te"), Known::Te);
        assert_eq!(Known::of(b"tf"), Known::Other);
        assert_eq!(Known::of(b"x-request-ids"), Known::Other);
    }

    #[test]
    fn kept_lines_are_copied_in_runs() {
        let head = b"GET / HTTP/1.1\r\nA: 1\r\nB:2  \r\nDrop: x\r\nC: 3\nD: 4\r\n\r\n";
        let mut slots = [httparse::EMPTY_HEADER; 8];
        let mut r = httparse::Request::new(&mut slots);
        r.parse(head).unwrap();
        let mut out = Vec::new();
        let mut lines = Lines::new(head);
        for h in r.headers.iter().filter(|h| h.name != "Drop") {
            lines.keep(&mut out, h.name.as_bytes(), h.value);
        }
        lines.flush(&mut out);
        assert_eq!(out, b"A: 1\r\nB:2  \r\nC: 3\r\nD: 4\r\n");
    }

    #[test]
    fn hex_chunk_sizes() {
        for n in [0u64, 9, 10, 255, 256, 4096, 0x1f_ffff, u64::MAX] {
            let mut out = Vec::new();
            hex(&mut out, n);
            assert_eq!(out, format!("{n:x}").as_bytes());
        }
    }

    #[test]
    fn decimals() {
        for n in [0, 7, 10, 100, 4_294_967_296, u64::MAX] {
            let mut out = Vec::new();
            decimal(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }

    #[test]
    fn dates_look_like_http_dates() {
        let mut out = Vec::new();
        date_field(&mut out);
        let line = String::from_utf8(out).unwrap();
        assert!(
            line.starts_with("date: ") && line.ends_with(" GMT\r\n"),
            "{line}"
        );
        assert_eq!(line.len(), "date: ".len() + 29 + 2, "{line}");
    }
}

//! A request head as the lane reads it: httparse's parse, then RFC 9112's rules on body
//! framing, connection options, expectations and upgrades, judged on this request's own
//! fields (never on another request's, never on a copy).
//!
//! Framing (RFC 9112 §6): `Transfer-Encoding` on an HTTP/1.0 request is faulty framing, and
//! beside `Content-Length` a smuggling attempt: 400. Its codings must end in exactly one
//! `chunked` (400 otherwise), and any other coding is one the proxy does not decode: 501.
//! `Content-Length` must be digits, repeated fields must agree: 400 otherwise. Field names
//! that read as a framing field once `_` is taken for `-` (`Transfer_Encoding`) are dropped,
//! as nginx ignores them, so no backend that normalizes names can frame differently.

use crate::error::ProxyError;
use crate::proxy::decide::{Target, View};
use crate::proxy::edit::Field;
use crate::router::Fields;
use crate::wire::{self, Known, MAX_HEADERS};
use http::{HeaderName, Method, Version};
use std::mem::MaybeUninit;

/// How a request's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// A parsed request head, borrowing the read buffer.
pub struct Head<'b> {
    /// Bytes of the head, blank line included.
    pub len: usize,
    pub method: Method,
    pub version: Version,
    pub target: &'b str,
    pub headers: &'b [httparse::Header<'b>],
    /// What each of `headers` is.
    pub kinds: &'b [Known],
    pub framing: Framing,
    /// The connection closes after this exchange (HTTP/1.0 without keep-alive, or
    /// `Connection: close`).
    pub close: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
    /// The declared `Content-Length`.
    pub length: Option<u64>,
    host: Option<&'b [u8]>,
    hosts: usize,
}

/// Field slots for one parse.
pub struct Slots<'b> {
    headers: [MaybeUninit<httparse::Header<'b>>; MAX_HEADERS],
    kinds: [Known; MAX_HEADERS],
}

impl Default for Slots<'_> {
    fn default() -> Self {
        Slots {
            headers: [const { MaybeUninit::uninit() }; MAX_HEADERS],
            kinds: [Known::Other; MAX_HEADERS],
        }
    }
}

/// Parse the head at the front of `buf`: `Ok(None)` while it is incomplete and within
/// `max` bytes. Errors are the answers the client gets.
pub fn parse<'b>(
    buf: &'b [u8],
    max: usize,
    slots: &'b mut Slots<'b>,
) -> Result<Option<Head<'b>>, ProxyError> {
    let mut r = httparse::Request::new(&mut []);
    let len = match r.parse_with_uninit_headers(buf, &mut slots.headers) {
        Ok(httparse::Status::Complete(len)) if len <= max => len,
        Ok(httparse::Status::Partial) if buf.len() <= max => return Ok(None),
        Ok(_) | Err(httparse::Error::TooManyHeaders) => return Err(ProxyError::HeadTooLarge),
        Err(httparse::Error::Version) if names_other_version(buf) => {
            return Err(ProxyError::VersionNotSupported);
        }
        Err(_) => return Err(ProxyError::BadRequest("malformed request head")),
    };
    let (Some(method), Some(target), Some(minor)) = (r.method, r.path, r.version) else {
        return Err(ProxyError::BadRequest("malformed request head"));
    };
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| ProxyError::BadRequest("invalid method"))?;
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let headers: &'b [httparse::Header<'b>] = r.headers;
    let kinds = &mut slots.kinds[..headers.len()];
    let mut h = Head {
        len,
        method,
        version,
        target,
        headers,
        kinds: &[],
        framing: Framing::None,
        close: version == Version::HTTP_10,
        expect_continue: false,
        length: None,
        host: None,
        hosts: 0,
    };
    let mut length: Option<u64> = None;
    let mut coded = false;
    let mut chunked = 0;
    let mut last_chunked = false;
    let mut malformed = false;
    let mut unsupported = false;
    for (f, kind) in headers.iter().zip(kinds.iter_mut()) {
        *kind = Known::of(f.name.as_bytes());
        match *kind {
            Known::ContentLength => {
                // One decimal per field: a list, even of equal values, is refused
                // (RFC 9110 §8.6 allows either; the desync corpus rates lists severe).
                let n = (!f.value.contains(&b','))
                    .then(|| wire::content_length(f.value))
                    .flatten()
                    .ok_or(ProxyError::BadRequest("invalid Content-Length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(ProxyError::BadRequest("conflicting Content-Length"));
                }
                length = Some(n);
            }
            Known::TransferEncoding => {
                coded = true;
                let mut any = false;
                for t in f.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                    any = true;
                    last_chunked = t.eq_ignore_ascii_case(b"chunked");
                    if last_chunked {
                        chunked += 1;
                    } else if is_registered_coding(t) {
                        unsupported = true;
                    } else {
                        malformed = true;
                    }
                }
                malformed |= !any;
            }
            Known::Connection => {
                for t in wire::tokens(f.value) {
                    if t.eq_ignore_ascii_case(b"close") {
                        h.close = true;
                    } else if t.eq_ignore_ascii_case(b"keep-alive") && version == Version::HTTP_10 {
                        h.close = false;
                    }
                }
            }
            Known::Expect => {
                if f.value.eq_ignore_ascii_case(b"100-continue") {
                    h.expect_continue = true;
                } else {
                    return Err(ProxyError::ExpectationFailed);
                }
            }
            Known::Host => {
                h.hosts += 1;
                h.host = Some(f.value);
            }
            Known::Other if looks_like_framing(f.name.as_bytes()) => *kind = Known::Shadow,
            _ => {}
        }
    }
    // HTTP/1.0 "Connection: keep-alive" and Connection: close: close wins.
    if headers
        .iter()
        .zip(kinds.iter())
        .any(|(f, k)| *k == Known::Connection && wire::has_token(f.value, b"close"))
    {
        h.close = true;
    }
    // The order matters: what makes the length ambiguous is refused before what the proxy
    // merely cannot decode.
    h.framing = match (coded, length) {
        (true, _) if version == Version::HTTP_10 => {
            return Err(ProxyError::BadRequest(
                "Transfer-Encoding on an HTTP/1.0 request",
            ));
        }
        (true, Some(_)) => return Err(ProxyError::AmbiguousLength),
        (true, None) if malformed => {
            return Err(ProxyError::BadRequest(
                "unknown or malformed Transfer-Encoding",
            ));
        }
        (true, None) if unsupported => return Err(ProxyError::UnsupportedCoding),
        (true, None) if chunked != 1 || !last_chunked => {
            return Err(ProxyError::BadRequest(
                "chunked must be the one and last coding",
            ));
        }
        (true, None) => Framing::Chunked,
        (false, Some(0) | None) => Framing::None,
        (false, Some(n)) => Framing::Length(n),
    };
    h.length = length;
    h.kinds = kinds;
    Ok(Some(h))
}

/// Whether the request line is `METHOD TARGET HTTP/d.d`, with a version other than 1.x:
/// what httparse refuses as a version error may just be a space in the target (400).
fn names_other_version(buf: &[u8]) -> bool {
    let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|&b| b == b' ');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(_), Some(_), Some(v), None) => {
            matches!(v, [b'H', b'T', b'T', b'P', b'/', d, b'.', e] if d.is_ascii_digit() && e.is_ascii_digit())
        }
        _ => false,
    }
}

/// A transfer coding of the IANA registry (RFC 9112 §7) other than chunked: one the proxy
/// knows but does not decode (501). Anything else is not a coding at all (400).
fn is_registered_coding(t: &[u8]) -> bool {
    [
        &b"gzip"[..],
        b"x-gzip",
        b"deflate",
        b"compress",
        b"x-compress",
    ]
    .iter()
    .any(|c| t.eq_ignore_ascii_case(c))
}

/// A name that is a framing field's once `_` is read as `-` (`Content_Length`), but not
/// the field itself.
fn looks_like_framing(name: &[u8]) -> bool {
    let same = |want: &[u8]| {
        name.len() == want.len()
            && name.contains(&b'_')
            && name
                .iter()
                .zip(want)
                .all(|(&a, &b)| a.eq_ignore_ascii_case(&b) || (a == b'_' && b == b'-'))
    };
    same(b"content-length") || same(b"transfer-encoding")
}

impl<'b> Head<'b> {
    /// The head's fields, for the edits.
    pub fn fields(&self) -> impl Iterator<Item = Field<'b>> + Clone + '_ {
        self.headers
            .iter()
            .zip(self.kinds)
            .map(|(h, &known)| Field {
                name: h.name.as_bytes(),
                value: h.value,
                known,
            })
    }

    /// Whether the request has a body.
    pub fn has_body(&self) -> bool {
        self.framing != Framing::None
    }
}

impl Fields for Head<'_> {
    fn method(&self) -> &Method {
        &self.method
    }

    fn values<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]> {
        self.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name.as_str()))
            .map(|h| h.value)
    }
}

impl View for Head<'_> {
    fn version(&self) -> Version {
        self.version
    }

    fn target(&self) -> Result<Target<'_>, ProxyError> {
        Target::parse(self.target)
    }

    fn host_field(&self) -> (Option<&[u8]>, bool) {
        (self.host, self.hosts > 1)
    }

    fn content_length(&self) -> Option<u64> {
        self.length
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framing(head: &str) -> Result<Framing, ProxyError> {
        let mut slots = Slots::default();
        parse(head.as_bytes(), 65536, &mut slots).map(|h| h.expect("complete").framing)
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let ok = |h: &str| framing(h).unwrap_or_else(|e| panic!("{h}: {e}"));
        assert_eq!(ok("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Framing::None);
        assert_eq!(
            ok("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n"),
            Framing::Length(5)
        );
        assert_eq!(
            ok("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"),
            Framing::Length(5)
        );
        assert_eq!(
            ok("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n"),
            Framing::Chunked
        );
        assert_eq!(
            ok("POST / HTTP/1.0\r\nContent-Length: 0\r\n\r\n"),
            Framing::None
        );
    }

    #[test]
    fn ambiguous_or_unknown_framing_is_refused() {
        let status = |h: &str| {
            framing(h)
                .map(|_| 200)
                .unwrap_or_else(|e| e.status().as_u16())
        };
        for (head, want) in [
            (
                "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                400,
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
                400,
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
                400,
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                400,
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                501,
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                501,
            ),
            ("POST / HTTP/1.1\r\nTransfer-Encoding:\r\n\r\n", 400),
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (
                "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                400,
            ),
            ("POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nExpect: magic\r\n\r\n", 417),
            ("GET / HTTP/2.0\r\n\r\n", 505),
        ] {
            assert_eq!(status(head), want, "{head}");
        }
    }

    #[test]
    fn connection_options_by_version() {
        let close = |h: &str| {
            let mut slots = Slots::default();
            parse(h.as_bytes(), 65536, &mut slots)
                .unwrap()
                .unwrap()
                .close
        };
        assert!(!close("GET / HTTP/1.1\r\n\r\n"));
        assert!(close(
            "GET / HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n"
        ));
        assert!(close("GET / HTTP/1.0\r\n\r\n"));
        assert!(!close("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
        assert!(close(
            "GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n"
        ));
    }

    #[test]
    fn heads_over_the_limit_are_431_even_when_complete() {
        let mut slots = Slots::default();
        let head = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(100));
        assert!(matches!(
            parse(head.as_bytes(), 64, &mut slots),
            Err(ProxyError::HeadTooLarge)
        ));
        let mut slots = Slots::default();
        assert!(matches!(
            parse(&head.as_bytes()[..80], 64, &mut slots),
            Err(ProxyError::HeadTooLarge)
        ));
        let mut slots = Slots::default();
        assert!(matches!(
            parse(&head.as_bytes()[..40], 64, &mut slots),
            Ok(None)
        ));
    }

    #[test]
    fn names_that_read_as_framing_fields_are_marked() {
        let mut slots = Slots::default();
        let h = parse(
            b"POST / HTTP/1.1\r\nTransfer_Encoding: chunked\r\nContent-length_: 1\r\n\r\n",
            65536,
            &mut slots,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.kinds, [Known::Shadow, Known::Other]);
        assert_eq!(h.framing, Framing::None);
    }
}

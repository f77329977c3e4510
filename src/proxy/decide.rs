//! The decision step: what the proxy does with a request, decided once, from the request
//! alone and the snapshot, before anything touches the network.
//!
//! [`decide`] is the same function for every wire path (the HTTP/1 lane reads the request
//! on its bytes, hyper's HTTP/2 server hands over `http` parts: both implement [`View`])
//! and for `switchyard explain`. In order: CONNECT (501); the target's form and its path,
//! normalized (400); the host, from the target's authority or the one `Host` field, which
//! must be a valid RFC 3986 host (400); the TLS name guard (421); `redirect_https` (308);
//! the route, by the router's precedence with method, header and cookie fallback (404);
//! a declared body over the route's limit (413); the pool (a split's variant) and its first
//! backend, by sticky token, hash key or balancer ([`choose`](super::choose); 503 when
//! every backend is down and the pool rejects). Pure and synchronous but for the
//! balancer's atomics.

use super::ConnInfo;
use super::choose::{self, Choice};
use super::edit::Strip;
use crate::error::ProxyError;
use crate::router::path::{self, PathError};
use crate::router::{Fields, Trace};
use crate::snapshot::Snapshot;
use http::{HeaderValue, Method, Version};
use std::borrow::Cow;

/// What `decide` reads of a request, whatever wire path it arrived on.
pub trait View: Fields {
    fn version(&self) -> Version;
    /// The request target, taken apart (errors are 400s).
    fn target(&self) -> Result<Target<'_>, ProxyError>;
    /// The first `Host` field value, and whether there was more than one.
    fn host_field(&self) -> (Option<&[u8]>, bool);
    /// The declared body length, if the request declares one.
    fn content_length(&self) -> Option<u64>;
}

/// A request target's parts (RFC 9112 §3.2), borrowed from the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    /// The authority of an absolute-form target (`:authority` on HTTP/2).
    pub authority: Option<&'a str>,
    /// The path as sent (not normalized), starting with `/`.
    pub path: &'a str,
    pub query: Option<&'a str>,
}

impl<'a> Target<'a> {
    /// Take apart an HTTP/1 request target: origin-form, or absolute-form with an `http`
    /// or `https` scheme. Asterisk-form and authority-form (CONNECT's, refused before
    /// this) are 400s, as are characters a URI may not hold and a fragment.
    pub fn parse(raw: &'a str) -> Result<Target<'a>, ProxyError> {
        let (authority, rest) = if raw.starts_with('/') {
            (None, raw)
        } else {
            let (scheme, rest) = raw.split_once("://").ok_or(ProxyError::BadRequest(
                "request target is not origin or absolute form",
            ))?;
            if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
                return Err(ProxyError::BadRequest(
                    "request target has an unknown scheme",
                ));
            }
            let end = rest.find(['/', '?']).unwrap_or(rest.len());
            let (authority, rest) = rest.split_at(end);
            if authority.is_empty() || host_parts(authority.as_bytes()).is_none() {
                return Err(ProxyError::BadRequest(
                    "invalid authority in request target",
                ));
            }
            (Some(authority), rest)
        };
        // One pass: where the query starts, and whether every byte may stand where it is.
        let b = rest.as_bytes();
        let mut split = b.len();
        let mut ok = true;
        for (i, &c) in b.iter().enumerate() {
            if c == b'?' && split == b.len() {
                split = i;
                continue;
            }
            ok &= CHARS[c as usize] & if split == b.len() { PATH } else { QUERY } != 0;
        }
        if !ok {
            return Err(ProxyError::BadRequest(
                "invalid character in request target",
            ));
        }
        let (path, query) = match split {
            n if n == b.len() => (rest, None),
            n => (&rest[..n], Some(&rest[n + 1..])),
        };
        let path = if path.is_empty() { "/" } else { path };
        Ok(Target {
            authority,
            path,
            query,
        })
    }
}

/// A decided request.
pub enum Decision<'a> {
    /// `redirect_https`: a 308 to this `Location`.
    Redirect(HeaderValue),
    Forward(Forward<'a>),
}

/// A request to forward, and where.
pub struct Forward<'a> {
    /// The host as the client sent it (with any port), for `X-Forwarded-Host` and logs;
    /// ASCII, as [`valid_host`] checked.
    pub raw_host: &'a [u8],
    /// The host for routing: lower case, no port.
    pub host: Cow<'a, [u8]>,
    /// The normalized path: what is routed and what the backend gets.
    pub path: Cow<'a, str>,
    pub query: Option<&'a str>,
    /// The target's authority, when the request carried one (absolute-form or HTTP/2):
    /// the backend gets it as `Host`.
    pub authority: Option<&'a str>,
    /// Index of the route in the snapshot's config.
    pub route: usize,
    /// The pool and first backend.
    pub choice: Choice,
    /// The route's body limit.
    pub body_limit: u64,
}

impl Forward<'_> {
    /// The proxy's own cookies, which the backend must not get, when the request carried
    /// any of them.
    pub fn strip<'s>(&self, snap: &'s Snapshot) -> Strip<'s> {
        match self.choice.strip {
            true => Strip::new(&snap.cookies),
            false => Strip::default(),
        }
    }

    /// Write the request line for an HTTP/1.1 backend into `out` (cleared first): the
    /// method, the normalized path with the query as sent, HTTP/1.1.
    pub fn request_line(&self, method: &Method, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.path.as_bytes());
        if let Some(q) = self.query {
            out.push(b'?');
            out.extend_from_slice(q.as_bytes());
        }
        out.extend_from_slice(b" HTTP/1.1\r\n");
    }
}

/// Decide what to do with `req`, which arrived on `conn`; `trace` hears every route
/// candidate (`()` for none).
pub fn decide<'a>(
    snap: &Snapshot,
    conn: &ConnInfo,
    req: &'a impl View,
    trace: &mut impl Trace,
) -> Result<Decision<'a>, ProxyError> {
    if *req.method() == Method::CONNECT {
        return Err(ProxyError::MethodNotSupported);
    }
    let target = req.target()?;
    let normalized = path::normalize(target.path).map_err(|e| {
        ProxyError::BadRequest(match e {
            PathError::NotAbsolute => "request target is not an absolute path",
            PathError::AboveRoot => "path climbs above the root",
            PathError::BadEscape => "malformed percent-encoding in path",
        })
    })?;
    let (raw_host, host) = host(req, &target)?;
    if let Some(tls) = &conn.tls
        && !tls.allows(&host)
    {
        return Err(ProxyError::Misdirected);
    }
    if let Some(port) = conn.redirect_https {
        return redirect(&host, &target, port).map(Decision::Redirect);
    }
    let route = snap
        .router
        .find_traced(&host, &normalized, req, trace)
        .ok_or(ProxyError::NoRoute)?;
    let r = &snap.config.routes[route];
    let body_limit = r
        .max_request_body_bytes
        .unwrap_or(snap.config.limits.max_request_body_bytes);
    if req.content_length().is_some_and(|n| n > body_limit) {
        return Err(ProxyError::BodyTooLarge(crate::body::TooLarge {
            limit: body_limit,
        }));
    }
    let choice = choose::choose(&snap.pools, &r.to, &snap.cookies, conn, req)?;
    Ok(Decision::Forward(Forward {
        raw_host,
        host,
        path: normalized,
        query: target.query,
        authority: target.authority,
        route,
        choice,
        body_limit,
    }))
}

/// The host as sent and as routed (lower case, no port): the authority of the target,
/// else the one Host field (RFC 9112 §3.2.2: the target's authority wins); empty for an
/// HTTP/1.0 request with neither.
fn host<'a>(
    req: &'a impl View,
    target: &Target<'a>,
) -> Result<(&'a [u8], Cow<'a, [u8]>), ProxyError> {
    let raw = match target.authority {
        Some(a) => a.as_bytes(),
        None => match req.host_field() {
            (Some(_), true) => return Err(ProxyError::BadRequest("more than one Host header")),
            (Some(h), false) => h,
            (None, _) if req.version() == Version::HTTP_11 => {
                return Err(ProxyError::BadRequest("missing Host header"));
            }
            (None, _) => return Ok((b"", Cow::Borrowed(b""))),
        },
    };
    let (end, upper) = host_parts(raw).ok_or(ProxyError::BadRequest("invalid Host header"))?;
    let name = &raw[..end];
    let host = match upper {
        true => Cow::Owned(name.to_ascii_lowercase()),
        false => Cow::Borrowed(name),
    };
    Ok((raw, host))
}

/// Whether `h` is `host [ ":" port ]` per RFC 3986 §3.2.2 (an IP literal in brackets, or a
/// name of unreserved characters, percent escapes and sub-delimiters: no user info, no
/// spaces, nothing a backend could read as a second authority); if so, where the name
/// ends and whether it has upper case letters. One pass over a table.
pub fn host_parts(h: &[u8]) -> Option<(usize, bool)> {
    let (end, rest) = if h.first() == Some(&b'[') {
        let close = h.iter().position(|&b| b == b']')?;
        let inner = &h[1..close];
        if inner.is_empty() || !inner.iter().all(|&b| CHARS[b as usize] & IP6 != 0) {
            return None;
        }
        (close + 1, &h[close + 1..])
    } else {
        let end = h
            .iter()
            .position(|&b| CHARS[b as usize] & HOST == 0)
            .unwrap_or(h.len());
        (end, &h[end..])
    };
    match rest {
        [] => {}
        [b':', digits @ ..] if digits.iter().all(u8::is_ascii_digit) => {}
        _ => return None,
    }
    Some((end, h[..end].iter().any(u8::is_ascii_uppercase)))
}

/// Whether `h` is a valid host (see [`host_parts`]).
pub fn valid_host(h: &[u8]) -> bool {
    host_parts(h).is_some()
}

/// Lower-case `raw` and drop its port (`[::1]:80` -> `[::1]`); `raw` as [`host_parts`]
/// takes it, else unchanged.
pub fn host_name(raw: &[u8]) -> Cow<'_, [u8]> {
    match host_parts(raw) {
        Some((end, true)) => Cow::Owned(raw[..end].to_ascii_lowercase()),
        Some((end, false)) => Cow::Borrowed(&raw[..end]),
        None => Cow::Borrowed(raw),
    }
}

/// `redirect_https`: the `Location` of a 308 to the same host and target on `port`.
fn redirect(host: &[u8], target: &Target<'_>, port: u16) -> Result<HeaderValue, ProxyError> {
    if host.is_empty() {
        return Err(ProxyError::BadRequest("missing Host header"));
    }
    let mut location = format!("https://{}", String::from_utf8_lossy(host));
    if port != 443 {
        location.push_str(&format!(":{port}"));
    }
    location.push_str(target.path);
    if let Some(q) = target.query {
        location.push('?');
        location.push_str(q);
    }
    HeaderValue::try_from(location)
        .map_err(|_| ProxyError::BadRequest("target cannot be redirected"))
}

/// Character classes, one bit each, in [`CHARS`].
const PATH: u8 = 1;
const QUERY: u8 = 2;
const HOST: u8 = 4;
const IP6: u8 = 8;

/// What each byte may be: in a path, the characters `http::Uri` takes (RFC 3986's, plus
/// `"`, `{` and `}`, which clients send unescaped, and UTF-8); in a query, likewise; in a
/// host name, unreserved, `%` and sub-delimiters; in an IPv6 literal, hex digits, `:` and `.`.
static CHARS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        let mut c = 0;
        if matches!(b, 0x21 | 0x22 | 0x24..=0x3B | 0x3D | 0x40..=0x5F | 0x61..=0x7E | 0x80..=0xFF) {
            c |= PATH;
        }
        if matches!(b, 0x21 | 0x24..=0x3B | 0x3D | 0x3F..=0x7E | 0x80..=0xFF) {
            c |= QUERY;
        }
        if b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            )
        {
            c |= HOST;
        }
        if b.is_ascii_hexdigit() || b == b':' || b == b'.' {
            c |= IP6;
        }
        t[i] = c;
        i += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_lose_port_and_case() {
        let name = |h: &str| String::from_utf8(host_name(h.as_bytes()).into_owned()).unwrap();
        assert_eq!(name("Shop.Example.com:8080"), "shop.example.com");
        assert_eq!(name("[::1]:8080"), "[::1]");
        assert_eq!(name("a.test"), "a.test");
        assert_eq!(name("a.test:"), "a.test");
        assert_eq!(name("1234"), "1234");
    }

    #[test]
    fn hosts_are_rfc_3986_hosts() {
        for ok in [
            "a.test",
            "A-b.test:8080",
            "127.0.0.1:80",
            "[::1]:8080",
            "[::1]",
            "a.test:",
            "x%41",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "a b", "a@b", "a/b", "a:b:80", "[::1", "[]", "a\tb", "a:80x", "[::1]x", "a\"b",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn targets_are_origin_or_absolute_form() {
        let t = Target::parse("/a/b?c=d").unwrap();
        assert_eq!((t.authority, t.path, t.query), (None, "/a/b", Some("c=d")));
        let t = Target::parse("http://Shop.test:80/x?y").unwrap();
        assert_eq!(
            (t.authority, t.path, t.query),
            (Some("Shop.test:80"), "/x", Some("y"))
        );
        let t = Target::parse("HTTPS://a.test").unwrap();
        assert_eq!((t.authority, t.path), (Some("a.test"), "/"));
        for bad in [
            "*",
            "a.test:443",
            "ftp://a/b",
            "http://u@a/b",
            "http:///b",
            "/a#f",
            "/a<b",
            "/a?b#c",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
        assert!(Target::parse("/{\"json\":1}").is_ok());
    }
}

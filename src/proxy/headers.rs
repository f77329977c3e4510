//! Header edits between client and backend.
//!
//! Hop-by-hop fields (RFC 9110 §7.6.1) describe one connection and never cross the proxy:
//! `Connection` and every field it names (every value, every comma-separated token, not
//! only the first), `Keep-Alive`, `Proxy-Connection`, `TE` (except `trailers`, which the
//! backend needs to know the client takes trailers), `Transfer-Encoding`, and `Upgrade`
//! unless the request really upgrades. `Trailer` is not hop-by-hop (RFC 9110 §6.6.2): it
//! is kept, since HTTP/1.1 only carries the trailer fields that it declares.

use super::ConnInfo;
use crate::wire;
use http::header::{CONNECTION, HOST, TE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue};

/// `X-Forwarded-For`
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `X-Request-Id`
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// What the hop-by-hop fields of a message asked for.
#[derive(Debug, Default)]
pub struct Hop {
    /// The `Upgrade` value when `Connection` named `upgrade`.
    pub upgrade: Option<HeaderValue>,
    /// `TE` included `trailers`.
    pub te_trailers: bool,
}

/// Which fields of interest a header map holds, found in one pass over its names: cheaper
/// than a hashed lookup per name on every request, where most of them are absent.
#[derive(Debug, Default, Clone, Copy)]
struct Present {
    connection: bool,
    upgrade: bool,
    te: bool,
    keep_alive: bool,
    proxy_connection: bool,
    transfer_encoding: bool,
    forwarded_for: bool,
    request_id: bool,
}

impl Present {
    fn scan(h: &HeaderMap) -> Present {
        let mut p = Present::default();
        for name in h.keys() {
            // Standard names compare as enum tags; the custom ones by bytes.
            if *name == CONNECTION {
                p.connection = true;
            } else if *name == UPGRADE {
                p.upgrade = true;
            } else if *name == TE {
                p.te = true;
            } else if *name == TRANSFER_ENCODING {
                p.transfer_encoding = true;
            } else if *name == KEEP_ALIVE {
                p.keep_alive = true;
            } else if *name == PROXY_CONNECTION {
                p.proxy_connection = true;
            } else if *name == X_FORWARDED_FOR {
                p.forwarded_for = true;
            } else if *name == X_REQUEST_ID {
                p.request_id = true;
            }
        }
        p
    }
}

/// Remove every hop-by-hop field from `h`.
pub fn strip(h: &mut HeaderMap) -> Hop {
    strip_present(h, Present::scan(h))
}

fn strip_present(h: &mut HeaderMap, p: Present) -> Hop {
    let mut hop = Hop::default();
    if p.connection {
        let mut wants_upgrade = false;
        let mut named: Vec<HeaderName> = Vec::new();
        for v in h.get_all(&CONNECTION) {
            for t in wire::tokens(v.as_bytes()) {
                if t.eq_ignore_ascii_case(b"upgrade") {
                    wants_upgrade = true;
                } else if wire::names_field(t)
                    && let Ok(n) = HeaderName::from_bytes(t)
                    // Naming Host would take the request's target away.
                    && n != HOST
                {
                    named.push(n);
                }
            }
        }
        h.remove(&CONNECTION);
        for name in &named {
            h.remove(name);
        }
        if wants_upgrade && p.upgrade {
            hop.upgrade = h.remove(&UPGRADE);
        }
    }
    if p.upgrade && hop.upgrade.is_none() {
        h.remove(&UPGRADE);
    }
    if p.te
        && let Some(te) = h.remove(&TE)
    {
        hop.te_trailers = te.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    }
    if p.keep_alive {
        h.remove(&KEEP_ALIVE);
    }
    if p.proxy_connection {
        h.remove(&PROXY_CONNECTION);
    }
    if p.transfer_encoding {
        h.remove(&TRANSFER_ENCODING);
    }
    hop
}

/// Edit a request's headers for the backend; returns what its hop-by-hop fields asked for.
///
/// `host` is the value the backend gets as `Host` when the request had none of its own
/// (HTTP/2 `:authority`, absolute-form targets).
pub fn to_backend(
    h: &mut HeaderMap,
    conn: &ConnInfo,
    host: Option<HeaderValue>,
    request_id: &HeaderValue,
) -> Hop {
    let present = Present::scan(h);
    let hop = strip_present(h, present);
    // Up to four fields are added below: grow the map once, not per insert.
    h.reserve(4);
    if hop.te_trailers {
        h.insert(TE, HeaderValue::from_static("trailers"));
    }
    if let Some(u) = &hop.upgrade {
        h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(UPGRADE, u.clone());
    }
    if let Some(host) = host {
        h.insert(HOST, host);
    }
    if present.forwarded_for {
        append_forwarded_for(h, &conn.client_ip);
    } else {
        h.insert(X_FORWARDED_FOR.clone(), conn.client_ip.clone());
    }
    h.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if conn.tls.is_some() { "https" } else { "http" }),
    );
    if let Some(host) = h.get(HOST).cloned() {
        h.insert(X_FORWARDED_HOST.clone(), host);
    }
    if !present.request_id {
        h.insert(X_REQUEST_ID.clone(), request_id.clone());
    }
    hop
}

/// Append the client to `X-Forwarded-For`, folding repeated fields into one list.
fn append_forwarded_for(h: &mut HeaderMap, client: &HeaderValue) {
    let mut list = Vec::with_capacity(64);
    for v in h.get_all(&X_FORWARDED_FOR) {
        list.extend_from_slice(v.as_bytes());
        list.extend_from_slice(b", ");
    }
    list.extend_from_slice(client.as_bytes());
    let v = HeaderValue::from_bytes(&list).expect("joined header values stay valid");
    h.insert(X_FORWARDED_FOR.clone(), v);
}

/// Edit a backend's response headers for the client.
pub fn to_client(h: &mut HeaderMap, switching_protocols: bool) {
    let hop = strip(h);
    if switching_protocols && let Some(u) = hop.upgrade {
        h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(UPGRADE, u);
    }
}

/// The request's `X-Request-Id`, or a new random one (32 hex digits).
pub fn request_id(h: &HeaderMap) -> HeaderValue {
    if let Some(v) = h.get(&X_REQUEST_ID)
        && !v.is_empty()
    {
        return v.clone();
    }
    new_request_id()
}

/// A new random request id (32 hex digits).
pub fn new_request_id() -> HeaderValue {
    HeaderValue::from_bytes(&new_request_id_bytes()).expect("hex digits are a valid header value")
}

/// The digits of a new random request id.
pub fn new_request_id_bytes() -> [u8; 32] {
    let mut buf = [0u8; 32];
    let n = fastrand::u128(..).to_le_bytes();
    for (pair, byte) in buf.chunks_exact_mut(2).zip(n) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(byte)]);
    }
    buf
}

/// Each byte value as two lower-case hex digits.
static HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 0xf]];
        i += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn every_connection_token_of_every_value_is_removed() {
        let mut h = headers(&[
            ("connection", "keep-alive, x-a"),
            ("connection", "X-B"),
            ("x-a", "1"),
            ("x-b", "2"),
            ("x-c", "3"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("te", "gzip"),
            ("trailer", "x-checksum"),
        ]);
        let hop = strip(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["trailer", "x-c"]);
        assert!(hop.upgrade.is_none() && !hop.te_trailers);
    }

    #[test]
    fn upgrade_and_te_trailers_are_reported() {
        let mut h = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("te", "trailers, deflate"),
        ]);
        let hop = strip(&mut h);
        assert_eq!(hop.upgrade.unwrap(), "websocket");
        assert!(hop.te_trailers);
        assert!(h.is_empty());
    }

    #[test]
    fn forwarded_for_folds_and_appends() {
        let mut h = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
        ]);
        append_forwarded_for(&mut h, &HeaderValue::from_static("127.0.0.1"));
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 127.0.0.1");
    }

    #[test]
    fn request_ids_are_kept_or_made() {
        let h = headers(&[("x-request-id", "abc")]);
        assert_eq!(request_id(&h), "abc");
        let a = request_id(&HeaderMap::new());
        let b = request_id(&HeaderMap::new());
        assert_eq!(a.len(), 32);
        assert!(
            a.as_bytes()
                .iter()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        );
        assert_ne!(a, b);
    }
}

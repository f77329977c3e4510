//! Header edits between client and backend.
//!
//! Hop-by-hop fields (RFC 9110 §7.6.1) describe one connection and never cross the proxy:
//! `Connection` and every field it names (every value, every comma-separated token, not
//! only the first), `Keep-Alive`, `Proxy-Connection`, `TE` (except `trailers`, which the
//! backend needs to know the client takes trailers), `Transfer-Encoding`, and `Upgrade`
//! unless the request really upgrades. `Trailer` is not hop-by-hop (RFC 9110 §6.6.2): it
//! is kept, since HTTP/1.1 only carries the trailer fields that it declares.

use super::ConnInfo;
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

/// Remove every hop-by-hop field from `h`.
pub fn strip(h: &mut HeaderMap) -> Hop {
    let mut hop = Hop::default();
    if h.contains_key(&CONNECTION) {
        let named: Vec<HeaderName> = h
            .get_all(&CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        h.remove(&CONNECTION);
        for name in &named {
            // Naming Host would take the request's target away; Upgrade is handled below.
            if *name != HOST && *name != UPGRADE {
                h.remove(name);
            }
        }
        if named.contains(&UPGRADE) {
            hop.upgrade = h.remove(&UPGRADE);
        }
    }
    if h.contains_key(&UPGRADE) {
        h.remove(&UPGRADE);
    }
    if let Some(te) = h.remove(&TE) {
        hop.te_trailers = te.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    }
    for name in [&KEEP_ALIVE, &PROXY_CONNECTION, &TRANSFER_ENCODING] {
        if h.contains_key(name) {
            h.remove(name);
        }
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
    let hop = strip(h);
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
    append_forwarded_for(h, &conn.client_ip);
    h.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if conn.tls.is_some() { "https" } else { "http" }),
    );
    if let Some(host) = h.get(HOST).cloned() {
        h.insert(X_FORWARDED_HOST.clone(), host);
    }
    if !h.contains_key(&X_REQUEST_ID) {
        h.insert(X_REQUEST_ID.clone(), request_id.clone());
    }
    hop
}

/// Append the client to `X-Forwarded-For`, folding repeated fields into one list.
fn append_forwarded_for(h: &mut HeaderMap, client: &HeaderValue) {
    if !h.contains_key(&X_FORWARDED_FOR) {
        h.insert(X_FORWARDED_FOR.clone(), client.clone());
        return;
    }
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
    let mut buf = [0u8; 32];
    let mut n = fastrand::u128(..);
    for b in buf.iter_mut().rev() {
        *b = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
    }
    HeaderValue::from_bytes(&buf).expect("hex digits are a valid header value")
}

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
        assert_ne!(a, b);
    }
}

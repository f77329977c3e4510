//! The request pipeline every wire path runs, step by step:
//!
//! 1. [`decide`](decide::decide) (sync, pure but for the balancer): host, TLS guard,
//!    redirect, route, limits, pool and first backend; errors are 4xx/503.
//! 2. [`edit`]: the header edits, as data, applied to bytes (HTTP/1) or a header map.
//! 3. [`forward`](forward::forward): the one retry policy over either upstream client.
//! 4. The response's edits, then the wire path writes it.
//! 5. The request's [`Record`] is finished where it is dropped, when the body is done.
//!
//! Errors become responses in one place, [`fail`], which logs them once. The wire
//! paths (`server::h1`, the lane, and `server::h2`, hyper's HTTP/2 server) only move
//! bytes and call these steps.

pub mod choose;
pub mod decide;
pub mod edit;
pub mod forward;
pub mod upgrade;

use crate::access_log::AccessLog;
use crate::body::Body;
use crate::clock::ConnClock;
use crate::error::ProxyError;
use crate::record::Record;
use crate::snapshot::{Shared, Snapshot};
use crate::tls::Certs;
use crate::upstream::h1;
use edit::{Field, map_fields};
use forward::{Answer, Inbound};
use http::{HeaderValue, Response, StatusCode};
use std::net::SocketAddr;
use std::sync::Arc;

/// The request handler shared by every connection.
pub struct Proxy {
    shared: Arc<Shared>,
    log: AccessLog,
}

/// What a request needs to know about the connection it came on.
pub struct ConnInfo {
    pub listener: Arc<str>,
    pub redirect_https: Option<u16>,
    /// The client: the TCP peer, or what its PROXY header said (`accept_proxy`).
    pub peer: SocketAddr,
    /// Where the client connected to: this listener, or what its PROXY header said.
    pub local: SocketAddr,
    pub tls: Option<TlsInfo>,
    pub clock: Arc<ConnClock>,
    /// The peer's IP, ready for `X-Forwarded-For`.
    pub client_ip: HeaderValue,
    /// What the peer's `X-Forwarded-For` is worth.
    pub forwarded: Forwarded,
    /// Where finished records go.
    pub log: AccessLog,
    /// The listener's counters (connections, and requests that matched no route).
    pub stats: Arc<crate::snapshot::ListenerStats>,
}

/// How a connection's `X-Forwarded-For` is taken (the listener's `trusted_proxies`).
#[derive(Debug, Clone)]
pub enum Forwarded {
    /// No `trusted_proxies`: the client's list is passed on, the peer appended; the peer
    /// is the client.
    Append,
    /// The peer is not a trusted proxy: its list is replaced by the peer.
    Replace,
    /// The peer is a trusted proxy: the list is passed on, and the client is its last
    /// entry that is not a trusted proxy.
    Trust(Arc<[ipnet::IpNet]>),
}

impl Forwarded {
    /// The policy for `peer` on a listener trusting `proxies`.
    pub fn of(peer: std::net::IpAddr, proxies: &Arc<[ipnet::IpNet]>) -> Forwarded {
        if proxies.is_empty() {
            Forwarded::Append
        } else if proxies.iter().any(|n| n.contains(&peer)) {
            Forwarded::Trust(proxies.clone())
        } else {
            Forwarded::Replace
        }
    }

    /// Whether the client's `X-Forwarded-For` goes on to the backend.
    pub fn keeps_list(&self) -> bool {
        !matches!(self, Forwarded::Replace)
    }
}

/// What a TLS connection negotiated.
pub struct TlsInfo {
    /// The SNI name the client sent, lower case.
    pub sni: Option<String>,
    /// The listener's certificates and the one this connection presented.
    pub certs: Arc<Certs>,
    pub cert: usize,
}

impl TlsInfo {
    /// Whether a request for `host` may use this connection: a connection opened for one
    /// name must not carry another name its certificate does not cover (HTTP/2 clients
    /// coalesce connections; RFC 9110 §15.5.20).
    fn allows(&self, host: &[u8]) -> bool {
        match &self.sni {
            None => true,
            Some(sni) => {
                sni.as_bytes() == host
                    || std::str::from_utf8(host).is_ok_and(|h| self.certs.covers(self.cert, h))
            }
        }
    }
}

impl Proxy {
    /// A handler reading snapshots from `shared`.
    pub fn new(shared: Arc<Shared>, log: AccessLog) -> Proxy {
        Proxy { shared, log }
    }

    /// The current snapshot: load it once per request and keep it.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.load()
    }

    /// The access log handle, for a connection's [`ConnInfo`].
    pub fn log(&self) -> &AccessLog {
        &self.log
    }
}

/// The one place a failed request becomes its response: logged once, counted in its
/// record, answered with a short text and the request id.
pub fn fail(e: ProxyError, record: &mut Record) -> Response<Body> {
    log_error(&e, record);
    record.error = Some(e.kind());
    // A fail-open request that ran out of backends stays counted as fail-open.
    if let ProxyError::NoHealthyBackend { .. } = e
        && record.all_down.is_none()
    {
        record.all_down = Some(crate::config::WhenAllDown::Reject);
    }
    let mut resp = e.into_response();
    record.status = resp.status().as_u16();
    let id = HeaderValue::from_bytes(record.id()).expect("request ids are valid header values");
    resp.headers_mut().insert(edit::X_REQUEST_ID.clone(), id);
    resp
}

/// Log a failed request once: server-side failures as warnings, client errors at debug.
fn log_error(e: &ProxyError, record: &mut Record) {
    let mut chain = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        source = s.source();
    }
    let names = record.names();
    let route = names.route.as_deref().unwrap_or("-").to_string();
    let backend = names.backend.as_deref().unwrap_or("-").to_string();
    let peer = record.conn.peer;
    let id = String::from_utf8_lossy(record.id()).into_owned();
    if e.status().is_server_error() {
        tracing::warn!(request_id = %id, client = %peer, route, backend, kind = e.kind(), "{chain}");
    } else {
        tracing::debug!(request_id = %id, client = %peer, route, kind = e.kind(), "{chain}");
    }
}

/// The backend's response as an `http::Response` for a writer that takes header maps
/// (hyper's HTTP/2 server, or the lane for an HTTP/2 backend's answer), edited.
pub fn to_map(answer: Answer, timeout: std::time::Duration, record: &mut Record) -> Response<Body> {
    let set = choose::cookies(record);
    let id = record.id().to_vec();
    let (status, mut headers, recv) = match answer.inbound {
        Inbound::H1 { head, conn } => {
            let fields = || head_fields(&head, &conn);
            let edits = edit::Response::scan(fields(), None, &id, head.status, &set);
            let mut map = http::HeaderMap::with_capacity(conn.fields().len() + 4);
            for f in fields() {
                if !edits.drops(&f, true) {
                    map.append(
                        http::HeaderName::from_bytes(f.name).expect("httparse checked the name"),
                        HeaderValue::from_bytes(f.value).expect("httparse checked the value"),
                    );
                }
            }
            edits.add(&mut map);
            let framing = head.framing;
            (
                head.status,
                map,
                crate::upstream::Recv::H1 { framing, conn },
            )
        }
        Inbound::H2(resp) => {
            let (parts, body) = resp.into_parts();
            let map =
                edit::Response::scan(map_fields(&parts.headers), None, &id, parts.status, &set)
                    .apply(&parts.headers);
            (parts.status, map, crate::upstream::Recv::H2(body))
        }
    };
    record.status = status.as_u16();
    let body = Body::upstream(crate::upstream::Body::new(recv, answer.in_flight, timeout));
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    std::mem::swap(resp.headers_mut(), &mut headers);
    resp
}

/// An `h1::Head`'s fields as edit fields.
pub fn head_fields<'a>(
    head: &'a h1::Head,
    conn: &'a h1::Conn,
) -> impl Iterator<Item = Field<'a>> + Clone + 'a {
    let bytes = &head.bytes[..];
    conn.fields().iter().map(move |f| Field {
        name: f.name(bytes),
        value: f.value(bytes),
        known: f.known,
    })
}

/// A plain response for the lane's own answers (redirects).
pub fn redirect(location: HeaderValue, record: &mut Record) -> Response<Body> {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    resp.headers_mut().insert(http::header::LOCATION, location);
    let id = HeaderValue::from_bytes(record.id()).expect("request ids are valid header values");
    resp.headers_mut().insert(edit::X_REQUEST_ID.clone(), id);
    record.status = 308;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WhenAllDown;

    fn conn() -> Arc<ConnInfo> {
        let peer: SocketAddr = ([127, 0, 0, 1], 1).into();
        Arc::new(ConnInfo {
            listener: "web".into(),
            redirect_https: None,
            peer,
            local: peer,
            tls: None,
            clock: Arc::default(),
            client_ip: HeaderValue::from_static("127.0.0.1"),
            forwarded: Forwarded::of(peer.ip(), &Arc::from(Vec::new())),
            log: AccessLog::start(crate::config::AccessLogFormat::Off),
            stats: Arc::default(),
        })
    }

    #[test]
    fn a_rejected_request_records_what_when_all_down_did() {
        let mut record = Record::start(&conn());
        assert_eq!(record.all_down, None);
        let resp = fail(
            ProxyError::NoHealthyBackend { pool: "p".into() },
            &mut record,
        );
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(record.all_down, Some(WhenAllDown::Reject));
        assert_eq!(record.error, Some("no_healthy_backend"));
        let mut other = Record::start(&conn());
        let _ = fail(ProxyError::NoRoute, &mut other);
        assert_eq!(other.all_down, None);
    }
}

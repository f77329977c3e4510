//! The fast path: a plain HTTP/1.1 request without a body, routed and rewritten on its
//! bytes and answered from the backend's bytes, without an `http::Request`, an
//! `http::Response` or a `HeaderMap` in between.
//!
//! Why: with hyper's server and client out of the way for these requests (`server::lane`,
//! `upstream::h1`), building, editing and dropping two header maps per request was the
//! largest cost left (bench/README.md). Most proxied traffic is this simple case.
//!
//! It takes only the happy case and leaves every decision it does not make to
//! [`Proxy::handle`]: [`Proxy::plan`] declines (and the lane takes the general path) when
//! the listener redirects, the target holds anything but RFC 3986 characters or fails to
//! normalize, `Host` is missing, repeated or not visible ASCII, the TLS name does not
//! cover the host, no route matches, or the pool does not take the inline client. So
//! every 4xx the proxy answers comes from one place; what the fast path answers itself
//! are the outcomes of forwarding (502, 503, 504), through the same [`ProxyError`]
//! responses.
//!
//! The edits are those of `headers::to_backend` and `headers::to_client`, field for field:
//! hop-by-hop fields and those `Connection` names are dropped, `TE: trailers` is kept,
//! `X-Forwarded-For` gets the client appended (repeated fields folded into one),
//! `X-Forwarded-Proto` and `X-Forwarded-Host` are set, and the request id is added where
//! missing. Field names keep the sender's spelling.

use super::{ConnInfo, Ctx, Proxy, host_name, is_idempotent, is_stale, log_error, stamp};
use crate::access_log::Entry;
use crate::body::Body;
use crate::clock::ConnClock;
use crate::error::ProxyError;
use crate::pool::{InFlight, Pool};
use crate::router::Fields;
use crate::router::path;
use crate::snapshot::Snapshot;
use crate::upstream::{self, Recv, Sender, h1};
use crate::wire::{self, Known, Lines, field, has_token, tokens};
use http::{HeaderName, HeaderValue, Method, Response, StatusCode, Version};
use std::borrow::Cow;
use std::future::poll_fn;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;

/// Bodies up to this size that arrive with their head are copied behind the client's head.
const WHOLE_BODY: usize = 16 * 1024;

/// A request head as the lane parsed it.
pub struct Request<'a> {
    /// The head's bytes, which `target` and `headers` point into.
    pub head: &'a [u8],
    pub method: Method,
    /// Origin-form (the lane checked it starts with `/`).
    pub target: &'a str,
    pub headers: &'a [httparse::Header<'a>],
    /// What each of `headers` is.
    pub kinds: &'a [Known],
}

/// A request id: the client's, or one made here (kept as bytes until a `HeaderValue` is
/// needed, which is only for the access log and error responses).
enum RequestId {
    Given(HeaderValue),
    Made([u8; 32]),
}

impl RequestId {
    fn as_bytes(&self) -> &[u8] {
        match self {
            RequestId::Given(v) => v.as_bytes(),
            RequestId::Made(b) => b,
        }
    }

    fn into_value(self) -> HeaderValue {
        match self {
            RequestId::Given(v) => v,
            RequestId::Made(b) => {
                HeaderValue::from_bytes(&b).expect("hex digits are a valid header value")
            }
        }
    }
}

impl Fields for Request<'_> {
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

/// A request the fast path took: what forwarding it needs once its head has left the
/// lane's buffer. The head for the backend is written by [`Proxy::plan`].
pub struct Plan {
    snap: Arc<Snapshot>,
    route: usize,
    request_id: RequestId,
    head_only: bool,
    idempotent: bool,
    entry: Option<Box<Entry>>,
}

/// How the fast path answered.
pub enum Answer {
    /// The response head (and perhaps all of the body) is in `out`; `body` follows,
    /// `length` more bytes, or chunked (`None`).
    Streamed { body: Body, length: Option<u64> },
    /// Forwarding failed: this error response, for the lane's general writer.
    Failed(Response<Body>),
}

impl Proxy {
    /// Take `req` on the fast path, writing the head to send the backend into `up`; `None`
    /// leaves it to [`Proxy::handle`].
    pub fn plan(&self, req: &Request<'_>, conn: &ConnInfo, up: &mut Vec<u8>) -> Option<Plan> {
        if conn.redirect_https.is_some() || !req.target.bytes().all(is_target_char) {
            return None;
        }
        let scan = Scan::of(req);
        let raw_host = match scan.host {
            Some(h) if scan.hosts == 1 && wire::is_visible(h) => std::str::from_utf8(h).ok()?,
            _ => return None,
        };
        // A plain loop: targets are short, and SIMD set-up would cost more than the search.
        let (raw_path, query) = match req.target.bytes().position(|b| b == b'?') {
            Some(i) => (&req.target[..i], Some(&req.target[i + 1..])),
            None => (req.target, None),
        };
        let path = path::normalize(raw_path).ok()?;
        let host = host_name(raw_host);
        if let Some(tls) = &conn.tls
            && !tls.allows(&host)
        {
            return None;
        }
        let snap = self.shared.load();
        let route = snap.router.find(&host, &path, req)?;
        if !snap.pools[snap.config.routes[route].pool]
            .connector
            .takes_inline()
        {
            return None;
        }

        let request_id = match scan.client_id {
            Some(id) if !id.is_empty() => RequestId::Given(HeaderValue::from_bytes(id).ok()?),
            _ => RequestId::Made(super::headers::new_request_id_bytes()),
        };
        up.clear();
        up.extend_from_slice(req.method.as_str().as_bytes());
        up.push(b' ');
        match &path {
            Cow::Borrowed(_) => up.extend_from_slice(req.target.as_bytes()),
            Cow::Owned(p) => {
                up.extend_from_slice(p.as_bytes());
                if let Some(q) = query {
                    up.push(b'?');
                    up.extend_from_slice(q.as_bytes());
                }
            }
        }
        up.extend_from_slice(b" HTTP/1.1\r\n");
        to_backend(req, &scan, conn, raw_host, &request_id, up);

        let entry = self.log.enabled().then(|| {
            let mut e = self.log.begin(
                conn.listener.clone(),
                conn.peer,
                req.method.clone(),
                Version::HTTP_11,
                raw_host.to_string(),
                req.target.to_string(),
            );
            let value = |name| {
                let v = req.values(&name).next()?;
                HeaderValue::from_bytes(v).ok()
            };
            e.referer = value(http::header::REFERER);
            e.user_agent = value(http::header::USER_AGENT);
            e
        });
        Some(Plan {
            route,
            request_id,
            head_only: req.method == Method::HEAD,
            idempotent: is_idempotent(&req.method),
            entry,
            snap,
        })
    }

    /// Send the planned request (its head is `up`) and write the client's response head
    /// into `out`; `close`: the client asked to close after this response.
    pub async fn fast(
        &self,
        plan: Plan,
        up: &[u8],
        conn: &ConnInfo,
        close: bool,
        out: &mut Vec<u8>,
    ) -> Answer {
        let Plan {
            snap,
            route,
            request_id,
            head_only,
            idempotent,
            entry,
        } = plan;
        let route = &snap.config.routes[route];
        let pool = &snap.pools[route.pool];
        let mut ctx = Ctx {
            route: Some(route.name.clone()),
            pool: Some(pool.name.clone()),
            backend: None,
        };
        match forward(&conn.clock, pool, up, head_only, idempotent, &mut ctx).await {
            Ok((head, mut c, in_flight)) => {
                let length = client_head(
                    &head,
                    c.fields(),
                    request_id.as_bytes(),
                    head_only,
                    close,
                    out,
                );
                let status = head.status;
                let mut framing = head.framing;
                // A small body that came with the head goes out in the same write; the
                // connection is back in its pool before the client's write.
                let ahead = framing.copy_whole(&mut c, WHOLE_BODY, out);
                let length = length.map(|n| n - ahead.unwrap_or(0) as u64);
                let inner =
                    upstream::Body::new(Recv::Inline(framing), Sender::Inline(c), in_flight);
                let mut body = Body::upstream(inner);
                if let Some(n) = ahead {
                    body.sent_ahead(n as u64);
                }
                if let Some(mut e) = entry {
                    e.status = status.as_u16();
                    e.route = ctx.route;
                    e.pool = ctx.pool;
                    e.backend = ctx.backend;
                    e.request_id = Some(request_id.into_value());
                    body.set_log(e);
                }
                Answer::Streamed { body, length }
            }
            Err(e) => {
                let request_id = request_id.into_value();
                log_error(&e, &ctx, conn, &request_id);
                Answer::Failed(stamp(e.into_response(), request_id, entry, ctx))
            }
        }
    }
}

/// What one pass over a request's fields found for the plan and the edits.
struct Scan<'a> {
    host: Option<&'a [u8]>,
    hosts: usize,
    /// The first `X-Request-Id` value.
    client_id: Option<&'a [u8]>,
    forwarded_for: bool,
    /// `Connection` names fields beyond the usual tokens.
    names_fields: bool,
    te_trailers: bool,
}

impl<'a> Scan<'a> {
    fn of(req: &Request<'a>) -> Scan<'a> {
        let mut s = Scan {
            host: None,
            hosts: 0,
            client_id: None,
            forwarded_for: false,
            names_fields: false,
            te_trailers: false,
        };
        for (h, kind) in req.headers.iter().zip(req.kinds) {
            match kind {
                Known::Host => {
                    s.hosts += 1;
                    s.host = Some(h.value);
                }
                Known::XRequestId if s.client_id.is_none() => s.client_id = Some(h.value),
                Known::XForwardedFor => s.forwarded_for = true,
                Known::Connection => s.names_fields |= names_any(h.value),
                Known::Te => s.te_trailers |= has_token(h.value, b"trailers"),
                _ => {}
            }
        }
        s
    }
}

/// Append the request's fields for the backend to `up`, edited as `headers::to_backend`
/// edits a header map, then the blank line.
fn to_backend(
    req: &Request<'_>,
    scan: &Scan<'_>,
    conn: &ConnInfo,
    raw_host: &str,
    request_id: &RequestId,
    up: &mut Vec<u8>,
) {
    let fields = || req.headers.iter().zip(req.kinds);
    let connection = || {
        fields()
            .filter(|(_, k)| **k == Known::Connection)
            .map(|(h, _)| h.value)
    };
    let mut lines = Lines::new(req.head);
    for (h, kind) in fields() {
        let name = h.name.as_bytes();
        match kind {
            k if k.is_hop_by_hop() => continue,
            Known::XForwardedFor | Known::XForwardedProto | Known::XForwardedHost => continue,
            _ if scan.names_fields && named(connection(), name) => continue,
            _ => lines.keep(up, name, h.value),
        }
    }
    lines.flush(up);
    if scan.te_trailers {
        field(up, b"te", b"trailers");
    }
    up.extend_from_slice(b"x-forwarded-for: ");
    if scan.forwarded_for {
        for (h, _) in fields().filter(|(_, k)| **k == Known::XForwardedFor) {
            up.extend_from_slice(h.value);
            up.extend_from_slice(b", ");
        }
    }
    up.extend_from_slice(conn.client_ip.as_bytes());
    up.extend_from_slice(b"\r\n");
    let proto: &[u8] = if conn.tls.is_some() {
        b"https"
    } else {
        b"http"
    };
    field(up, b"x-forwarded-proto", proto);
    field(up, b"x-forwarded-host", raw_host.as_bytes());
    if scan.client_id.is_none() {
        field(up, b"x-request-id", request_id.as_bytes());
    }
    up.extend_from_slice(b"\r\n");
}

/// `Proxy::forward` for a planned request: the same retries, on the inline client.
async fn forward(
    clock: &ConnClock,
    pool: &Pool,
    up: &[u8],
    head_only: bool,
    idempotent: bool,
    ctx: &mut Ctx,
) -> Result<(h1::Head, Box<h1::Conn>, InFlight), ProxyError> {
    // The head is kept, so any failed attempt can be sent again.
    let resendable = pool.retries > 0 && pool.backends.len() > 1 && idempotent;
    let mut attempts = super::Attempts::new(pool);
    loop {
        let (i, conn, in_flight) = attempts.connect(true, ctx).await?;
        let Sender::Inline(mut c) = conn.sender else {
            unreachable!("an inline checkout yields an inline connection")
        };
        let sent = {
            // The connection's driver times the wait (see `ConnClock::expect_response`): one
            // timer per connection instead of one per request.
            clock.expect_response(pool.timeouts.response);
            let _arrived = ResponseArrived(clock);
            let mut exchange = pin!(c.exchange(up, head_only));
            poll_fn(|cx| match clock.response_late() {
                true => Poll::Ready(None),
                false => exchange.as_mut().poll(cx).map(Some),
            })
            .await
        };
        let failed = match sent {
            Some(Ok(head)) => return Ok((head, c, in_flight)),
            Some(Err(f)) => f,
            None => {
                return Err(ProxyError::UpstreamTimeout {
                    backend: pool.backends[i].label.clone(),
                    timeout: pool.timeouts.response,
                });
            }
        };
        if conn.reused && is_stale(failed.sent, idempotent, &failed.error) {
            continue;
        }
        if failed.sent && !resendable {
            return Err(ProxyError::UpstreamProtocol {
                backend: pool.backends[i].label.clone(),
                source: failed.error,
            });
        }
        attempts.failed(i, failed.error)?;
    }
}

/// Ends the wait for a response head on the connection's clock, however the wait ends.
struct ResponseArrived<'a>(&'a ConnClock);

impl Drop for ResponseArrived<'_> {
    fn drop(&mut self) {
        self.0.response_arrived();
    }
}

/// Write the client's response head for the backend's `head` into `out`; returns the
/// body's length, `None` for chunked.
fn client_head(
    head: &h1::Head,
    fields: &[h1::Field],
    request_id: &[u8],
    head_only: bool,
    close: bool,
    out: &mut Vec<u8>,
) -> Option<u64> {
    let bytes = &head.bytes[..];
    let status = head.status;
    let bodiless =
        head_only || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    out.clear();
    wire::status_line(out, status);
    let mut dated = false;
    let mut lines = Lines::new(bytes);
    let connection = || {
        fields
            .iter()
            .filter(|c| c.known == Known::Connection)
            .map(|c| c.value(bytes))
    };
    for f in fields {
        let name = f.name(bytes);
        match f.known {
            k if k.is_hop_by_hop() => continue,
            Known::XRequestId => continue,
            // The body's framing is the proxy's to state, except where there is no body:
            // then the length describes what a GET would have returned.
            Known::ContentLength if !bodiless || head.coded => continue,
            Known::Date => dated = true,
            _ if head.names_fields && named(connection(), name) => continue,
            _ => {}
        }
        lines.keep(out, name, f.value(bytes));
    }
    lines.flush(out);
    if !dated {
        wire::date_field(out);
    }
    field(out, b"x-request-id", request_id);
    let length = if bodiless {
        Some(0)
    } else if let Some(n) = head.framing.size_hint().exact() {
        out.extend_from_slice(b"content-length: ");
        wire::decimal(out, n);
        out.extend_from_slice(b"\r\n");
        Some(n)
    } else {
        field(out, b"transfer-encoding", b"chunked");
        None
    };
    if close {
        field(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    length
}

/// Whether a `Connection` value names any field.
fn names_any(value: &[u8]) -> bool {
    tokens(value).any(wire::names_field)
}

/// Whether one of the `Connection` values names the field `name`; `Host` is never taken
/// away this way.
fn named<'a>(mut connection: impl Iterator<Item = &'a [u8]>, name: &[u8]) -> bool {
    if name.eq_ignore_ascii_case(b"host") {
        return false;
    }
    connection.any(|v| tokens(v).any(|t| wire::names_field(t) && t.eq_ignore_ascii_case(name)))
}

/// RFC 3986 characters of an origin-form target: unreserved, sub-delims, `:`, `@`, `/`,
/// `?` and `%`. A target with anything else goes the general way, where `http::Uri`
/// decides.
fn is_target_char(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
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
                | b':'
                | b'@'
                | b'/'
                | b'?'
                | b'%'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_names_fields_but_never_host() {
        let values: [&[u8]; 2] = [b"keep-alive, X-Secret", b"host"];
        let it = || values.iter().copied();
        assert!(named(it(), b"x-secret"));
        assert!(!named(it(), b"host"));
        assert!(!named(it(), b"keep-alive"));
        assert!(!named(it(), b"x-other"));
        assert!(names_any(b"close, x-a"));
        assert!(!names_any(b"Keep-Alive, close"));
    }

    #[test]
    fn targets_of_rfc_3986_characters_only() {
        assert!("/a/b?c=d&e=%20".bytes().all(is_target_char));
        assert!(!"/a b".bytes().all(is_target_char));
        assert!(!"/a\"b".bytes().all(is_target_char));
        assert!(!"/a#b".bytes().all(is_target_char));
    }
}

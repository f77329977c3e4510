//! Header edits between client and backend, described once as data and applied to either
//! representation a message can be in: the fields of a head read on its bytes (HTTP/1,
//! [`Request::write`] / [`Response::write`]), or a header map (HTTP/2 and hyper's client,
//! [`Request::apply`] / [`Response::apply`]). The tests hold the two appliers equal.
//!
//! Hop-by-hop fields (RFC 9110 §7.6.1) describe one connection and never cross the proxy:
//! `Connection` and every field it names (every value, every token, but never `Host`),
//! `Keep-Alive`, `Proxy-Connection`, `TE` (except `trailers`, which tells the backend the
//! client takes trailers), `Transfer-Encoding`, and `Upgrade` unless the request really
//! upgrades. `Expect` is the proxy's to answer and `HTTP2-Settings` belongs to the h2c
//! upgrade the proxy refuses, so neither goes on. `Trailer` is end to end (RFC 9110
//! §6.6.2) and passes. The proxy then adds `X-Forwarded-For` (the client's list, folded
//! into one field, with the peer appended), `X-Forwarded-Proto`, `X-Forwarded-Host` and
//! `X-Request-Id` (the client's if usable, else a new one). The fields a `Connection`
//! names are dropped before anything is added: a client cannot pass its own
//! `X-Forwarded-For` past the proxy by naming it, and an id it named is replaced.

use super::choose::{SetCookies, pairs};
use crate::wire::{self, Known, Lines, field};
use http::header::{
    CACHE_CONTROL, CONNECTION, COOKIE, HOST, SET_COOKIE, TE, TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, HeaderName, HeaderValue};

/// `X-Forwarded-For`
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `X-Request-Id`
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// One field of a head, as bytes, with what it is.
#[derive(Debug, Clone, Copy)]
pub struct Field<'a> {
    pub name: &'a [u8],
    pub value: &'a [u8],
    pub known: Known,
}

impl<'a> Field<'a> {
    /// A field given by name and value.
    pub fn new(name: &'a [u8], value: &'a [u8]) -> Field<'a> {
        Field {
            name,
            value,
            known: Known::of(name),
        }
    }
}

/// The fields of a header map, in its order.
pub fn map_fields(map: &HeaderMap) -> impl Iterator<Item = Field<'_>> {
    map.iter()
        .map(|(n, v)| Field::new(n.as_str().as_bytes(), v.as_bytes()))
}

/// The values of a message's `Connection` fields that name other fields: those fields are
/// hop-by-hop too. Kept as the values themselves; almost every message has none.
#[derive(Debug, Default, Clone)]
pub struct Named<'a> {
    values: Vec<&'a [u8]>,
}

impl<'a> Named<'a> {
    fn add(&mut self, value: &'a [u8]) {
        if wire::tokens(value).any(wire::names_field) {
            self.values.push(value);
        }
    }

    /// Whether the field `name` is named (never `Host`: that would take the target away).
    pub fn contains(&self, name: &[u8]) -> bool {
        !self.values.is_empty()
            && !name.eq_ignore_ascii_case(b"host")
            && self.values.iter().any(|v| {
                wire::tokens(v).any(|t| wire::names_field(t) && t.eq_ignore_ascii_case(name))
            })
    }
}

/// What one pass over a request's fields found, for its edits and its request id.
#[derive(Debug, Default, Clone)]
pub struct Scan<'a> {
    pub named: Named<'a>,
    /// `TE` asked for trailers, in any of its fields.
    pub te_trailers: bool,
    /// `Connection: upgrade` with an `Upgrade` value other than h2c.
    pub upgrade: Option<&'a [u8]>,
    forwarded_for: bool,
    /// The client's first `X-Request-Id`, if it may be used as the request's id.
    pub client_id: Option<&'a [u8]>,
    /// How many `Cookie` fields there are.
    cookies: u32,
}

impl<'a> Scan<'a> {
    /// Scan a request's fields.
    pub fn request(fields: impl Iterator<Item = Field<'a>>) -> Scan<'a> {
        let mut s = Scan::default();
        let mut upgrade_token = false;
        let mut upgrade = None;
        let mut id = None;
        for f in fields {
            match f.known {
                Known::Connection => {
                    upgrade_token |= wire::has_token(f.value, b"upgrade");
                    s.named.add(f.value);
                }
                Known::Te => s.te_trailers |= wire::has_token(f.value, b"trailers"),
                Known::Upgrade if upgrade.is_none() => upgrade = Some(f.value),
                Known::XForwardedFor => s.forwarded_for = true,
                Known::XRequestId if id.is_none() => id = Some(f.value),
                Known::Cookie => s.cookies += 1,
                _ => {}
            }
        }
        // h2c is refused: the request goes on as plain HTTP/1.1 (RFC 9113 §3.1 drops it).
        s.upgrade = upgrade.filter(|u| upgrade_token && !wire::has_token(u, b"h2c"));
        s.forwarded_for &= !s.named.contains(b"x-forwarded-for");
        s.client_id = id
            .filter(|v| !v.is_empty() && wire::is_visible(v) && !s.named.contains(b"x-request-id"));
        s
    }

    /// The edits for a request with these fields.
    pub fn edits(&self, to: To<'a>) -> Request<'a> {
        Request {
            named: self.named.clone(),
            te_trailers: self.te_trailers,
            upgrade: if to.upgrade { self.upgrade } else { None },
            forwarded_for: self.forwarded_for && to.keep_forwarded_for,
            cookies: !to.strip.is_empty() || (to.join_cookies && self.cookies > 1),
            to,
        }
    }
}

/// What the proxy adds to a request, whatever its fields.
#[derive(Debug, Clone, Copy)]
pub struct To<'a> {
    /// The peer's address, appended to `X-Forwarded-For`.
    pub client_ip: &'a [u8],
    /// The listener terminates TLS (`X-Forwarded-Proto: https`).
    pub tls: bool,
    /// The host as the client sent it, for `X-Forwarded-Host`.
    pub forwarded_host: &'a [u8],
    /// The target's authority, which the backend gets as `Host` instead of any Host field.
    pub host: Option<&'a [u8]>,
    /// The request id to add; `None` when the client's is kept.
    pub request_id: Option<&'a [u8]>,
    /// The body goes upstream chunked (its length is not known).
    pub chunked: bool,
    /// The declared length, stated once: repeated `Content-Length` fields become one.
    pub length: Option<u64>,
    /// The backend may be asked to upgrade (HTTP/1.1 backends only).
    pub upgrade: bool,
    /// The client's `X-Forwarded-For` goes on (else the peer alone is sent).
    pub keep_forwarded_for: bool,
    /// The proxy's own cookies, taken out of `Cookie`.
    pub strip: Strip<'a>,
    /// Several `Cookie` fields become one (HTTP/2 to an HTTP/1.1 backend, RFC 9113
    /// §8.2.3).
    pub join_cookies: bool,
}

/// Cookie names to take out of a request's `Cookie` fields: the proxy's own (a route's
/// split cookie and the sticky cookies of its pools).
#[derive(Debug, Default, Clone, Copy)]
pub struct Strip<'a> {
    names: &'a [Box<[u8]>],
}

impl<'a> Strip<'a> {
    /// Strip cookies with these names.
    pub const fn new(names: &'a [Box<[u8]>]) -> Strip<'a> {
        Strip { names }
    }

    /// Whether there is nothing to strip.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    fn has(&self, name: &[u8]) -> bool {
        self.names.iter().any(|n| **n == *name)
    }

    /// The one `Cookie` value for `values`, without the stripped pairs; the others as
    /// sent, joined by `; `. Empty when none is left.
    fn join<'v>(&self, values: impl Iterator<Item = &'v [u8]>, out: &mut Vec<u8>) {
        for p in values.flat_map(pairs).filter(|p| !self.has(p.name)) {
            if !out.is_empty() {
                out.extend_from_slice(b"; ");
            }
            out.extend_from_slice(p.whole);
        }
    }
}

/// The edits of one request on its way to the backend.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    named: Named<'a>,
    te_trailers: bool,
    upgrade: Option<&'a [u8]>,
    forwarded_for: bool,
    /// The `Cookie` fields are rewritten into one (stripped or joined).
    cookies: bool,
    to: To<'a>,
}

impl Request<'_> {
    /// Whether the request upgrades (its `Upgrade` value goes to the backend).
    pub fn upgrade(&self) -> Option<&[u8]> {
        self.upgrade
    }

    /// Whether a field of the client's is left out.
    fn drops(&self, f: &Field<'_>) -> bool {
        match f.known {
            k if k.is_hop_by_hop() => true,
            Known::Expect
            | Known::Http2Settings
            | Known::Shadow
            | Known::XForwardedFor
            | Known::XForwardedProto
            | Known::XForwardedHost => true,
            Known::XRequestId => self.to.request_id.is_some(),
            Known::ContentLength => true,
            Known::Host if self.to.host.is_some() => true,
            Known::Cookie if self.cookies => true,
            _ => self.named.contains(f.name),
        }
    }

    /// The rewritten `Cookie` value, if the fields are rewritten and any pair is left.
    fn cookie<'v>(&self, values: impl Iterator<Item = &'v [u8]>) -> Option<Vec<u8>> {
        if !self.cookies {
            return None;
        }
        let mut v = Vec::new();
        self.to.strip.join(values, &mut v);
        (!v.is_empty()).then_some(v)
    }

    /// Append the fields for the backend to `out`, edited, and the blank line; `fields`
    /// gives the request's fields (it is called twice). Fields that point into `head` and
    /// pass unchanged are copied in runs.
    pub fn write<'f, I: Iterator<Item = Field<'f>>>(
        &self,
        fields: impl Fn() -> I,
        head: Option<&[u8]>,
        out: &mut Vec<u8>,
    ) {
        write_kept(fields(), head, out, |f| self.drops(f));
        let to = &self.to;
        let cookies = fields()
            .filter(|f| f.known == Known::Cookie)
            .map(|f| f.value);
        if let Some(c) = self.cookie(cookies) {
            field(out, b"cookie", &c);
        }
        if self.te_trailers {
            field(out, b"te", b"trailers");
        }
        if let Some(u) = self.upgrade {
            field(out, b"connection", b"upgrade");
            field(out, b"upgrade", u);
        }
        if let Some(h) = to.host {
            field(out, b"host", h);
        }
        out.extend_from_slice(b"x-forwarded-for: ");
        if self.forwarded_for {
            for f in fields().filter(|f| f.known == Known::XForwardedFor) {
                out.extend_from_slice(f.value);
                out.extend_from_slice(b", ");
            }
        }
        out.extend_from_slice(to.client_ip);
        out.extend_from_slice(b"\r\n");
        field(out, b"x-forwarded-proto", proto(to.tls));
        field(out, b"x-forwarded-host", to.forwarded_host);
        if let Some(id) = to.request_id {
            field(out, b"x-request-id", id);
        }
        if to.chunked {
            field(out, b"transfer-encoding", b"chunked");
        } else if let Some(n) = to.length {
            out.extend_from_slice(b"content-length: ");
            wire::decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }

    /// `map`, a request's fields, edited.
    pub fn apply(&self, map: &HeaderMap) -> HeaderMap {
        let mut list = Vec::new();
        if self.forwarded_for {
            for v in map.get_all(&X_FORWARDED_FOR) {
                list.extend_from_slice(v.as_bytes());
                list.extend_from_slice(b", ");
            }
        }
        list.extend_from_slice(self.to.client_ip);
        let mut out = kept(map, 6, |f| self.drops(f));
        let to = &self.to;
        let cookies = map.get_all(COOKIE).iter().map(HeaderValue::as_bytes);
        if let Some(c) = self.cookie(cookies) {
            out.insert(COOKIE, value(&c));
        }
        if self.te_trailers {
            out.insert(TE, HeaderValue::from_static("trailers"));
        }
        if let Some(u) = self.upgrade {
            out.insert(CONNECTION, HeaderValue::from_static("upgrade"));
            out.insert(UPGRADE, value(u));
        }
        if let Some(h) = to.host {
            out.insert(HOST, value(h));
        }
        out.insert(X_FORWARDED_FOR.clone(), value(&list));
        out.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(if to.tls { "https" } else { "http" }),
        );
        out.insert(X_FORWARDED_HOST.clone(), value(to.forwarded_host));
        if let Some(id) = to.request_id {
            out.insert(X_REQUEST_ID.clone(), value(id));
        }
        if to.chunked {
            out.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        } else if let Some(n) = to.length {
            out.insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        out
    }
}

/// The edits of one response on its way to the client.
#[derive(Debug, Clone)]
pub struct Response<'a> {
    named: Named<'a>,
    /// A 101 to an upgrade: `Connection: upgrade` and this `Upgrade` go to the client.
    upgrade: Option<&'a [u8]>,
    /// The response had `Transfer-Encoding`, which voids a `Content-Length` (RFC 9112
    /// §6.3): the length is dropped, never passed on beside another framing. A 204 or
    /// 1xx must not carry one at all (RFC 9110 §8.6).
    no_length: bool,
    request_id: &'a [u8],
    /// The proxy's cookies.
    set: &'a SetCookies,
    /// Add `Cache-Control: private`: a cookie is set that a shared cache must not hand to
    /// other users, and the backend did not already say private or no-store.
    private: bool,
}

/// What [`Response::write`] saw, for the writer that adds framing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Written {
    pub dated: bool,
}

impl<'a> Response<'a> {
    /// The edits for a response with `fields`; `upgrade` is the protocol the client asked
    /// for, when the response is a 101 that agreed to it; `set` the cookies the proxy sets.
    pub fn scan(
        fields: impl Iterator<Item = Field<'a>>,
        upgrade: Option<&'a [u8]>,
        request_id: &'a [u8],
        status: http::StatusCode,
        set: &'a SetCookies,
    ) -> Response<'a> {
        let mut named = Named::default();
        let mut coded = status == http::StatusCode::NO_CONTENT || status.is_informational();
        let mut private = set.private;
        for f in fields {
            match f.known {
                Known::Connection => named.add(f.value),
                Known::TransferEncoding => coded = true,
                Known::CacheControl if private => {
                    private = !wire::has_token(f.value, b"private")
                        && !wire::has_token(f.value, b"no-store");
                }
                _ => {}
            }
        }
        Response {
            named,
            upgrade,
            no_length: coded,
            request_id,
            set,
            private,
        }
    }

    /// Whether a field of the backend's is left out; `keep_length: false` also leaves
    /// `Content-Length` out, for a writer that frames the body itself.
    pub fn drops(&self, f: &Field<'_>, keep_length: bool) -> bool {
        match f.known {
            k if k.is_hop_by_hop() => true,
            Known::XRequestId => true,
            Known::ContentLength => self.no_length || !keep_length,
            _ => self.named.contains(f.name),
        }
    }

    /// Append the response's fields for the client to `out`, edited; no blank line, so the
    /// writer can add its framing. `keep_length: false` leaves `Content-Length` out too, for
    /// a writer that frames the body itself.
    pub fn write<'f>(
        &self,
        fields: impl Iterator<Item = Field<'f>>,
        head: Option<&[u8]>,
        keep_length: bool,
        out: &mut Vec<u8>,
    ) -> Written {
        let mut w = Written::default();
        write_kept(fields, head, out, |f| {
            let drop = self.drops(f, keep_length);
            w.dated |= !drop && f.known == Known::Date;
            drop
        });
        if let Some(u) = self.upgrade {
            field(out, b"connection", b"upgrade");
            field(out, b"upgrade", u);
        }
        for c in self.set.values() {
            field(out, b"set-cookie", c);
        }
        if self.private {
            field(out, b"cache-control", b"private");
        }
        field(out, b"x-request-id", self.request_id);
        w
    }

    /// `map`, a response's fields, edited.
    pub fn apply(&self, map: &HeaderMap) -> HeaderMap {
        let mut out = kept(map, 4, |f| self.drops(f, true));
        self.add(&mut out);
        out
    }

    /// Add the proxy's fields to `map`, which holds the kept ones.
    pub fn add(&self, map: &mut HeaderMap) {
        if let Some(u) = self.upgrade {
            map.insert(CONNECTION, HeaderValue::from_static("upgrade"));
            map.insert(UPGRADE, value(u));
        }
        for c in self.set.values() {
            map.append(SET_COOKIE, value(c));
        }
        if self.private {
            map.append(CACHE_CONTROL, HeaderValue::from_static("private"));
        }
        map.insert(X_REQUEST_ID.clone(), value(self.request_id));
    }
}

fn proto(tls: bool) -> &'static [u8] {
    if tls { b"https" } else { b"http" }
}

/// A header value from bytes that came from a header value (or a validated host or id).
fn value(b: &[u8]) -> HeaderValue {
    HeaderValue::from_bytes(b).expect("bytes of header values stay a valid header value")
}

/// Write the fields `drop` keeps, in order; runs of consecutive kept lines of `head` are
/// copied at once.
fn write_kept<'f>(
    fields: impl Iterator<Item = Field<'f>>,
    head: Option<&[u8]>,
    out: &mut Vec<u8>,
    mut drop: impl FnMut(&Field<'f>) -> bool,
) {
    match head {
        Some(head) => {
            let mut lines = Lines::new(head);
            for f in fields {
                if !drop(&f) {
                    lines.keep(out, f.name, f.value);
                }
            }
            lines.flush(out);
        }
        None => {
            for f in fields {
                if !drop(&f) {
                    field(out, f.name, f.value);
                }
            }
        }
    }
}

/// The fields of `map` that `drop` keeps, with room for `extra` more.
fn kept(map: &HeaderMap, extra: usize, drop: impl Fn(&Field<'_>) -> bool) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(map.len() + extra);
    for (n, v) in map {
        if !drop(&Field::new(n.as_str().as_bytes(), v.as_bytes())) {
            out.append(n.clone(), v.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests;

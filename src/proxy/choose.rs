//! Where a routed request starts: which pool (a split's variant) and which backend (the
//! pool's sticky token, else its balancer, fed the request's hash key). Part of the
//! decision step, so it runs once per request, on every wire path, and in `explain`; and
//! the cookies the response then sets ([`cookies`]), from what was decided and the backend
//! that finally answered.
//!
//! Cookies are read and stripped on the bytes of the `Cookie` fields ([`pairs`]): one pass,
//! no allocation, and the spans that let every other cookie pass byte for byte. The pair
//! syntax is the `cookie` crate's `split_parse` (`;`-separated, trimmed, split at the first
//! `=`); a test holds the two equal.

use super::{ConnInfo, Forwarded};
use crate::balance;
use crate::config::{RouteTo, Split};
use crate::error::ProxyError;
use crate::pool::{Pick, Pool, Tried};
use crate::record::Record;
use crate::router::Fields;
use crate::sticky::{self, Verdict};
use http::header::COOKIE;
use std::net::IpAddr;

/// Where a request starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    /// Index of the pool in the snapshot.
    pub pool: usize,
    /// The first backend to try.
    pub backend: usize,
    /// No backend is healthy, and the pool fails open: this one is tried anyway.
    pub fail_open: bool,
    /// The request's hash key, hashed: retries go on along the ring from it.
    pub key: Option<u64>,
    pub split: Option<SplitChoice>,
    pub sticky: Option<StickyChoice>,
    /// The request carries some of the proxy's own cookies: strip them upstream.
    pub strip: bool,
}

/// How a split chose its pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitChoice {
    /// The split cookie named the pool (the user's variant, or QA forcing one); otherwise
    /// it was drawn by weight and the response sets the cookie.
    pub by_cookie: bool,
}

/// What the pool's sticky cookie decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StickyChoice {
    pub result: StickyResult,
    /// The backend a valid token named, while it is in the pool.
    pub token_backend: Option<usize>,
    /// The token was signed by an older key: the response re-signs it.
    pub old_key: bool,
}

/// The outcome of a sticky decision (`switchyard_sticky_decisions_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StickyResult {
    /// A valid token, and its backend took the request.
    Hit,
    /// No cookie.
    New,
    /// A valid token whose backend is down or gone, or failed the request.
    Reassigned,
    /// A bad signature, a malformed or expired token.
    Invalid,
}

impl StickyResult {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            StickyResult::Hit => "hit",
            StickyResult::New => "new",
            StickyResult::Reassigned => "reassigned",
            StickyResult::Invalid => "invalid",
        }
    }
}

/// Choose the pool and first backend for a request to `to`, in `pools`, that arrived on
/// `conn`; `own` are the proxy's cookies (see `Snapshot::cookies`).
pub fn choose(
    pools: &[Pool],
    to: &RouteTo,
    own: &[Box<[u8]>],
    conn: &ConnInfo,
    req: &impl Fields,
) -> Result<Choice, ProxyError> {
    let jar = Jar::read(own, req);
    let (p, split) = match to {
        RouteTo::Pool(p) => (*p, None),
        RouteTo::Split(s) => {
            let (p, c) = split(pools, s, &jar, req);
            (p, Some(c))
        }
    };
    // Any of them, not only this route's: the browser sends every pool's token and every
    // split's cookie to every path.
    let strip = jar.any;
    let pool = &pools[p];
    let key = hash_key(pool, conn, req);
    let mut sticky = None;
    if let Some(st) = &pool.sticky {
        let (c, hit) = sticky_choice(pool, st, &jar, req);
        sticky = Some(c);
        if let Some(backend) = hit {
            return Ok(Choice {
                pool: p,
                backend,
                fail_open: false,
                key,
                split,
                sticky,
                strip,
            });
        }
    }
    let (backend, fail_open) = match pool.pick(&Tried::default(), key) {
        Pick::Healthy(i) => (i, false),
        Pick::FailOpen(i) => (i, true),
        Pick::AllDown | Pick::Exhausted => {
            return Err(ProxyError::NoHealthyBackend {
                pool: pool.name.clone(),
            });
        }
    };
    Ok(Choice {
        pool: p,
        backend,
        fail_open,
        key,
        split,
        sticky,
        strip,
    })
}

/// The split's pool: the one its cookie names, else one drawn by weight.
fn split<'r>(
    pools: &[Pool],
    s: &Split,
    jar: &Jar<'_, 'r>,
    req: &'r impl Fields,
) -> (usize, SplitChoice) {
    let sent = jar.get(s.cookie.as_bytes(), req);
    if let Some(v) = sent
        && let Some(&(p, _)) = s
            .pools
            .iter()
            .find(|&&(p, _)| pools[p].name.as_bytes() == v)
    {
        return (p, SplitChoice { by_cookie: true });
    }
    let total: u32 = s.pools.iter().map(|&(_, w)| w).sum();
    let mut r = fastrand::u32(..total);
    let mut chosen = s.pools[0].0;
    for &(p, w) in &s.pools {
        if r < w {
            chosen = p;
            break;
        }
        r -= w;
    }
    (chosen, SplitChoice { by_cookie: false })
}

/// Read the pool's sticky cookie; the backend when the token holds.
fn sticky_choice<'r>(
    pool: &Pool,
    st: &sticky::Sticky,
    jar: &Jar<'_, 'r>,
    req: &'r impl Fields,
) -> (StickyChoice, Option<usize>) {
    let sent = jar.get(st.cookie.as_bytes(), req);
    let mut c = StickyChoice {
        result: StickyResult::New,
        token_backend: None,
        old_key: false,
    };
    let Some(token) = sent else {
        return (c, None);
    };
    match st.verify(token, sticky::unix_now()) {
        Verdict::Invalid => c.result = StickyResult::Invalid,
        Verdict::Valid { backend, old_key } => {
            c.token_backend = backend;
            c.old_key = old_key;
            match backend {
                Some(b) if pool.backends[b].up() => {
                    c.result = StickyResult::Hit;
                    return (c, Some(b));
                }
                _ => c.result = StickyResult::Reassigned,
            }
        }
    }
    (c, None)
}

/// The request's hash key for a hash balancer, hashed; `None` when the pool does not hash
/// or the request has no key (round robin then).
fn hash_key(pool: &Pool, conn: &ConnInfo, req: &impl Fields) -> Option<u64> {
    use crate::config::Balance::*;
    match pool.balance {
        CookieHash => cookie(req, pool.hash_cookie.as_deref()?.as_bytes()).map(balance::hash),
        HeaderHash => req
            .values(pool.hash_header.as_ref()?)
            .next()
            .map(balance::hash),
        IpHash => Some(balance::ip_hash(client(conn, req))),
        _ => None,
    }
}

/// The client's address: the peer, unless it is a trusted proxy; then the last
/// `X-Forwarded-For` entry that is not one (nginx's `real_ip_recursive on`).
pub fn client(conn: &ConnInfo, req: &impl Fields) -> IpAddr {
    let peer = conn.peer.ip();
    let Forwarded::Trust(trusted) = &conn.forwarded else {
        return peer;
    };
    let xff = super::edit::X_FORWARDED_FOR.clone();
    let fields: Vec<&[u8]> = req.values(&xff).collect();
    let mut client = peer;
    for entry in fields
        .iter()
        .rev()
        .flat_map(|v| v.rsplit(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
    {
        let Some(ip) = std::str::from_utf8(entry)
            .ok()
            .and_then(|s| s.parse::<IpAddr>().ok())
        else {
            // Garbage is where belief stops: the last good hop is the client.
            break;
        };
        client = ip;
        if !trusted.iter().any(|n| n.contains(&ip)) {
            break;
        }
    }
    client
}

/// The proxy's own cookies in a request, read in one pass over its `Cookie` fields.
struct Jar<'o, 'r> {
    own: &'o [Box<[u8]>],
    /// The first value of each of the first [`JAR`] names of `own`.
    values: [Option<&'r [u8]>; JAR],
    /// The request carries at least one of them.
    any: bool,
}

/// How many of the proxy's cookie names a [`Jar`] keeps; a config with more reads the
/// rest with [`cookie`].
const JAR: usize = 8;

impl<'o, 'r> Jar<'o, 'r> {
    fn read(own: &'o [Box<[u8]>], req: &'r impl Fields) -> Jar<'o, 'r> {
        let mut jar = Jar {
            own,
            values: [None; JAR],
            any: false,
        };
        if own.is_empty() {
            return jar;
        }
        for pair in req.values(&COOKIE).flat_map(pairs) {
            if let Some(i) = own.iter().position(|n| **n == *pair.name) {
                jar.any = true;
                if let Some(v @ None) = jar.values.get_mut(i) {
                    *v = Some(pair.value);
                }
            }
        }
        jar
    }

    /// The first value of the cookie `name`, one of the proxy's.
    fn get(&self, name: &[u8], req: &'r impl Fields) -> Option<&'r [u8]> {
        match self.own.iter().position(|n| **n == *name) {
            Some(i) if i < JAR => self.values[i],
            _ => cookie(req, name),
        }
    }
}

/// The value of the first cookie called `name` in the request's `Cookie` fields.
pub fn cookie<'a>(req: &'a impl Fields, name: &[u8]) -> Option<&'a [u8]> {
    req.values(&COOKIE)
        .flat_map(pairs)
        .find(|p| p.name == name)
        .map(|p| p.value)
}

/// One `name=value` pair of a `Cookie` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pair<'a> {
    pub name: &'a [u8],
    pub value: &'a [u8],
    /// The pair as sent, trimmed.
    pub whole: &'a [u8],
}

/// The pairs of a `Cookie` field value, in order; pieces without `=` or with an empty name
/// are skipped, as the `cookie` crate skips them.
pub fn pairs(value: &[u8]) -> impl Iterator<Item = Pair<'_>> {
    value.split(|&b| b == b';').filter_map(|piece| {
        let whole = piece.trim_ascii();
        let eq = whole.iter().position(|&b| b == b'=')?;
        let name = whole[..eq].trim_ascii();
        (!name.is_empty()).then(|| Pair {
            name,
            value: whole[eq + 1..].trim_ascii(),
            whole,
        })
    })
}

/// The cookies a response sets, and whether it must then say `Cache-Control: private`.
#[derive(Debug, Default)]
pub struct SetCookies {
    buf: Vec<u8>,
    /// Where each value ends in `buf`.
    ends: [usize; 2],
    n: usize,
    /// A cookie was set on a pool with `nocache` (or by a split).
    pub private: bool,
}

impl SetCookies {
    /// The `Set-Cookie` values.
    pub fn values(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.n).map(|i| {
            let start = if i == 0 { 0 } else { self.ends[i - 1] };
            &self.buf[start..self.ends[i]]
        })
    }

    /// Cookies with these values (for tests of the edits).
    #[cfg(test)]
    pub fn of(values: &[&[u8]], private: bool) -> SetCookies {
        let mut s = SetCookies {
            private,
            ..SetCookies::default()
        };
        for v in values {
            s.push(|out| out.extend_from_slice(v));
        }
        s
    }

    fn push(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        write(&mut self.buf);
        self.ends[self.n] = self.buf.len();
        self.n += 1;
    }
}

/// The cookies the response to `record`'s request sets, now that `record.backend` answered.
/// A sticky token is set when the request had none that held, when an older key signed
/// it, or when a retry took the request to another backend than its token's (then counted
/// as reassigned); a split cookie when the pool was drawn.
pub fn cookies(record: &mut Record) -> SetCookies {
    let mut set = SetCookies::default();
    if record.sticky.is_none() && record.split.is_none() {
        return set;
    }
    let (Some(snap), Some(p), Some(b)) = (record.snap.as_deref(), record.pool, record.backend)
    else {
        return set;
    };
    let tls = record.conn.tls.is_some();
    if let Some(c) = &mut record.sticky
        && let Some(st) = &snap.pools[p].sticky
    {
        if c.result == StickyResult::Hit && c.token_backend != Some(b) {
            c.result = StickyResult::Reassigned;
        }
        if c.result != StickyResult::Hit || c.old_key {
            set.push(|out| st.set_cookie(b, tls, out));
            set.private |= st.nocache;
        }
    }
    if let Some(c) = record.split
        && !c.by_cookie
        && let Some(r) = record.route
        && let RouteTo::Split(s) = &snap.config.routes[r].to
    {
        let name = &snap.pools[p].name;
        set.push(|out| {
            out.extend_from_slice(s.cookie.as_bytes());
            out.push(b'=');
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"; Path=/");
            sticky::attributes(tls, out);
        });
        set.private = true;
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jar_finds_each_own_cookie_in_one_pass_and_more_than_it_keeps_by_a_scan() {
        let own: Vec<Box<[u8]>> = (0..JAR + 2)
            .map(|i| format!("c{i}").into_bytes().into())
            .collect();
        let req = http::Request::builder()
            .header(COOKIE, "x=1; c1=a")
            .header(COOKIE, "c1=second; c9=z; c0=b")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let jar = Jar::read(&own, &req);
        assert!(jar.any);
        assert_eq!(jar.get(b"c0", &req), Some(&b"b"[..]));
        assert_eq!(
            jar.get(b"c1", &req),
            Some(&b"a"[..]),
            "the first value counts"
        );
        assert_eq!(jar.get(b"c9", &req), Some(&b"z"[..]), "beyond the jar");
        assert_eq!(jar.get(b"c2", &req), None);
        let none = Jar::read(&own[2..3], &req);
        assert!(!none.any, "c2 is not sent");
    }

    #[test]
    fn pairs_split_as_the_cookie_crate_does() {
        for v in [
            "a=1; b=2",
            "a=1;b=2;;c=",
            " sy = tok ; x=\"q\" ",
            "noeq; =empty; ok=1",
            "a=b=c; d=1",
            "",
        ] {
            let ours: Vec<(String, String)> = pairs(v.as_bytes())
                .map(|p| {
                    (
                        String::from_utf8(p.name.to_vec()).unwrap(),
                        String::from_utf8(p.value.to_vec()).unwrap(),
                    )
                })
                .collect();
            let theirs: Vec<(String, String)> = cookie::Cookie::split_parse(v)
                .flatten()
                .map(|c| (c.name().to_string(), c.value().to_string()))
                .collect();
            assert_eq!(ours, theirs, "{v:?}");
        }
    }
}

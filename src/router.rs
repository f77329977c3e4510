//! Which route a request takes. Pure and synchronous: no I/O, no locks.
//!
//! Precedence (SPEC "Routing rules"):
//! 1. Host tier: routes of the exact host, then of the wildcard `*.parent` (exactly one
//!    more label), then routes with no host. A tier with no route for the request falls
//!    through to the next.
//! 2. Within a tier, path patterns (`path:`, a matchit trie: static beats parameter beats
//!    catch-all) come before prefixes, and longer prefixes before shorter ones.
//! 3. Routes on the same pattern or prefix are tried in file order; when one's method,
//!    header or cookie conditions fail, the next is tried, then less specific matches,
//!    down to the shortest prefix. Nothing left is a miss (404).
//!
//! Prefixes are segment-aware: `/api` matches `/api`, `/api/` and `/api/x`, never `/apix`.
//! Each prefix is three trie keys (`/api`, `/api/`, `/api/{*rest}`); falling back from one
//! prefix to a shorter one is another trie lookup at the parent segment.

pub mod path;

use crate::config::{self, HostMatch, PathMatch};
use http::request::Parts;
use http::{HeaderName, HeaderValue, Method};
use std::collections::HashMap;

/// The compiled route table of one snapshot; `find` returns an index into the routes it was
/// compiled from.
#[derive(Default)]
pub struct Router {
    /// Keyed by the host's bytes: hosts are ASCII, and requests give them as bytes.
    exact: HashMap<Box<[u8]>, Bucket>,
    wildcard: HashMap<Box<[u8]>, Bucket>,
    any: Bucket,
    conditions: Vec<Conditions>,
}

/// A route's method, header and cookie conditions (empty means no condition).
struct Conditions {
    methods: Vec<Method>,
    headers: Vec<(HeaderName, HeaderValue)>,
    cookies: Vec<(String, String)>,
}

/// Routes of one host tier entry.
#[derive(Default)]
struct Bucket {
    patterns: matchit::Router<usize>,
    prefixes: matchit::Router<usize>,
    entries: Vec<Entry>,
    /// Pattern entries, most specific first: the fallback order when conditions fail.
    fallback: Vec<usize>,
    /// Trie key -> entry, used while compiling only.
    keys: HashMap<String, usize>,
}

/// One pattern or prefix and the routes on it, in file order.
struct Entry {
    routes: Vec<usize>,
    kind: Kind,
}

enum Kind {
    /// A one-route trie, to test this pattern alone during fallback.
    Pattern(matchit::Router<()>),
    Prefix(Box<str>),
}

/// Two routes whose paths cannot share a trie.
#[derive(Debug)]
pub struct CompileError {
    /// Index of the route that could not be added.
    pub route: usize,
    /// Index of the route it conflicts with (itself for a malformed pattern).
    pub other: usize,
    pub reason: String,
}

impl Router {
    /// Build the table; route indices are positions in `routes`.
    pub fn compile<'a>(
        routes: impl IntoIterator<Item = &'a config::Route>,
    ) -> Result<Router, CompileError> {
        let mut r = Router::default();
        for (i, route) in routes.into_iter().enumerate() {
            let bucket = match &route.host {
                HostMatch::Any => &mut r.any,
                HostMatch::Exact(h) => r.exact.entry(h.as_bytes().into()).or_default(),
                HostMatch::Wildcard(h) => r.wildcard.entry(h.as_bytes().into()).or_default(),
            };
            bucket.add(i, &route.path)?;
            r.conditions.push(Conditions {
                methods: route.methods.clone(),
                headers: route.headers.clone(),
                cookies: route.cookies.clone(),
            });
        }
        for b in r.exact.values_mut().chain(r.wildcard.values_mut()) {
            b.finish();
        }
        r.any.finish();
        Ok(r)
    }

    /// The first route, by SPEC precedence, that takes a request for `host` (lower case,
    /// no port) and normalized `path`.
    pub fn find(&self, host: &[u8], path: &str, req: &impl Fields) -> Option<usize> {
        self.find_traced(host, path, req, &mut ())
    }

    /// [`Router::find`], telling `trace` about every route whose path matched, in the order
    /// they were tried, and why each was taken or passed over (`switchyard explain`).
    pub fn find_traced(
        &self,
        host: &[u8],
        path: &str,
        req: &impl Fields,
        trace: &mut impl Trace,
    ) -> Option<usize> {
        let mut accepts = |i: usize| {
            let verdict = self.conditions[i].check(req);
            trace.candidate(i, verdict);
            verdict.is_ok()
        };
        if !self.exact.is_empty()
            && let Some(b) = self.exact.get(host)
            && let Some(r) = b.find(path, &mut accepts)
        {
            return Some(r);
        }
        if !self.wildcard.is_empty()
            && let Some(dot) = host.iter().position(|&b| b == b'.')
            && dot > 0
            && let Some(b) = self.wildcard.get(&host[dot + 1..])
            && let Some(r) = b.find(path, &mut accepts)
        {
            return Some(r);
        }
        self.any.find(path, &mut accepts)
    }
}

/// What route conditions read from a request: one taken apart by hyper, or one the lane
/// reads on its bytes.
pub trait Fields {
    fn method(&self) -> &Method;
    /// The values of every field called `name`, in order.
    fn values<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]>;
}

impl Fields for Parts {
    fn method(&self) -> &Method {
        &self.method
    }

    fn values<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]> {
        self.headers
            .get_all(name)
            .into_iter()
            .map(HeaderValue::as_bytes)
    }
}

/// Which condition of a route a request failed, for the first one it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failed {
    Method,
    /// The route's header condition at this position.
    Header(usize),
    /// The route's cookie condition at this position.
    Cookie(usize),
}

/// What `find_traced` reports; `()` ignores it, so `find` costs nothing extra.
pub trait Trace {
    /// Route `route` matched the path and its conditions gave `verdict`.
    fn candidate(&mut self, route: usize, verdict: Result<(), Failed>);
}

impl Trace for () {
    #[inline]
    fn candidate(&mut self, _: usize, _: Result<(), Failed>) {}
}

/// The route a request matched, for a request refused after routing (see
/// [`crate::record::Record::refused`]): the first candidate whose conditions held.
#[derive(Debug, Default)]
pub struct Routed(pub Option<usize>);

impl Trace for Routed {
    #[inline]
    fn candidate(&mut self, route: usize, verdict: Result<(), Failed>) {
        if verdict.is_ok() && self.0.is_none() {
            self.0 = Some(route);
        }
    }
}

impl<T: Trace + ?Sized> Trace for &mut T {
    fn candidate(&mut self, route: usize, verdict: Result<(), Failed>) {
        (**self).candidate(route, verdict)
    }
}

impl Conditions {
    fn check(&self, req: &impl Fields) -> Result<(), Failed> {
        if !(self.methods.is_empty() || self.methods.contains(req.method())) {
            return Err(Failed::Method);
        }
        for (i, (n, v)) in self.headers.iter().enumerate() {
            if !req.values(n).any(|x| x == v.as_bytes()) {
                return Err(Failed::Header(i));
            }
        }
        for (i, (n, v)) in self.cookies.iter().enumerate() {
            if !has_cookie(req, n, v) {
                return Err(Failed::Cookie(i));
            }
        }
        Ok(())
    }
}

/// True when a `Cookie` header of the request carries `name=value` (read as sticky and
/// split cookies are: [`crate::proxy::choose::pairs`]).
fn has_cookie(req: &impl Fields, name: &str, value: &str) -> bool {
    req.values(&http::header::COOKIE)
        .filter(|v| crate::wire::is_visible(v))
        .flat_map(crate::proxy::choose::pairs)
        .any(|c| c.name == name.as_bytes() && c.value == value.as_bytes())
}

impl Bucket {
    fn add(&mut self, route: usize, path: &PathMatch) -> Result<(), CompileError> {
        let key = match path {
            PathMatch::Pattern(p) => format!("p:{p}"),
            PathMatch::Prefix(p) => format!("x:{p}"),
        };
        if let Some(&e) = self.keys.get(&key) {
            self.entries[e].routes.push(route);
            return Ok(());
        }
        let e = self.entries.len();
        let kind = match path {
            PathMatch::Pattern(p) => {
                self.patterns.insert(p.as_str(), e).map_err(|err| {
                    let other = match &err {
                        matchit::InsertError::Conflict { with } => self
                            .keys
                            .get(&format!("p:{with}"))
                            .map_or(route, |&o| self.entries[o].routes[0]),
                        _ => route,
                    };
                    CompileError {
                        route,
                        other,
                        reason: err.to_string(),
                    }
                })?;
                let mut alone = matchit::Router::new();
                alone
                    .insert(p.as_str(), ())
                    .expect("a pattern that fits the shared trie fits an empty one");
                Kind::Pattern(alone)
            }
            PathMatch::Prefix(p) => {
                let lit = p.replace('{', "{{").replace('}', "}}");
                let keys = if p == "/" {
                    vec!["/".to_string(), "/{*rest}".to_string()]
                } else {
                    vec![lit.clone(), format!("{lit}/"), format!("{lit}/{{*rest}}")]
                };
                for k in keys {
                    self.prefixes
                        .insert(k, e)
                        .expect("distinct literal prefixes never conflict in the trie");
                }
                Kind::Prefix(p.as_str().into())
            }
        };
        self.keys.insert(key, e);
        self.entries.push(Entry {
            routes: vec![route],
            kind,
        });
        Ok(())
    }

    fn finish(&mut self) {
        let mut patterns: Vec<(Vec<u8>, usize)> = self
            .keys
            .iter()
            .filter_map(|(k, &e)| k.strip_prefix("p:").map(|p| (specificity(p), e)))
            .collect();
        patterns.sort();
        self.fallback = patterns.into_iter().map(|(_, e)| e).collect();
        self.keys = HashMap::new();
    }

    fn find(&self, path: &str, mut accepts: impl FnMut(usize) -> bool) -> Option<usize> {
        if !self.fallback.is_empty()
            && let Ok(m) = self.patterns.at(path)
        {
            let first = *m.value;
            let found = self.entries[first]
                .routes
                .iter()
                .copied()
                .find(|&r| accepts(r));
            if found.is_some() {
                return found;
            }
            for &e in &self.fallback {
                let entry = &self.entries[e];
                if e != first
                    && let Kind::Pattern(alone) = &entry.kind
                    && alone.at(path).is_ok()
                    && let Some(r) = entry.routes.iter().copied().find(|&r| accepts(r))
                {
                    return Some(r);
                }
            }
        }
        let mut probe = path;
        while let Ok(m) = self.prefixes.at(probe) {
            let entry = &self.entries[*m.value];
            if let Some(r) = entry.routes.iter().copied().find(|&r| accepts(r)) {
                return Some(r);
            }
            let Kind::Prefix(prefix) = &entry.kind else {
                unreachable!("the prefix trie holds prefix entries only")
            };
            probe = match prefix.rfind('/') {
                Some(0) if prefix.len() > 1 => "/",
                Some(i) if i > 0 => &prefix[..i],
                _ => break,
            };
        }
        None
    }
}

/// Sort key of a pattern: per segment 0 static, 1 parameter with a prefix or suffix,
/// 2 bare parameter, 3 catch-all; lower sorts first (more specific).
fn specificity(pattern: &str) -> Vec<u8> {
    pattern
        .split('/')
        .map(|s| {
            let s = s.replace("{{", "").replace("}}", "");
            match s.find('{') {
                None => 0,
                Some(_) if s.starts_with("{*") => 3,
                Some(0) if s.ends_with('}') => 2,
                Some(_) => 1,
            }
        })
        .collect()
}

/// Validate a matchit pattern and rename its parameters by position (`{id}` -> `{p0}`), so
/// routes on the same shape share one trie entry whatever they call their parameters.
pub fn pattern(p: &str) -> Result<String, String> {
    let mut out = String::with_capacity(p.len());
    let mut rest = p;
    let mut n = 0;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..2]);
            rest = &tail[2..];
            continue;
        }
        if tail.starts_with('}') {
            return Err("unmatched `}` (write `}}` for a literal brace)".into());
        }
        let close = tail.find('}').ok_or("unclosed `{`")?;
        let name = &tail[1..close];
        let (star, ident) = match name.strip_prefix('*') {
            Some(id) => ("*", id),
            None => ("", name),
        };
        if ident.is_empty() || ident.contains(['{', '/']) {
            return Err(format!("`{{{name}}}` is not a parameter name"));
        }
        out.push_str(&format!("{{{star}p{n}}}"));
        n += 1;
        rest = &tail[close + 1..];
    }
    out.push_str(rest);
    matchit::Router::new()
        .insert(out.as_str(), ())
        .map_err(|e| e.to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests;

//! Hostile input, from both sides of the proxy.
//!
//! Requests: every case of the `http_desync_guardian` corpus (tests/corpus/http_desync_guardian,
//! README.md there) is written as raw bytes on a connection of its own, and a backend
//! records exactly the bytes that reach it. A Severe case must be refused with a 4xx and its
//! connection closed, and reach no backend; any other case is refused with a 4xx or reaches
//! its backend as exactly that one request.
//!
//! Responses: backends that break HTTP/1.1 framing (RFC 9112 §6.3) in the ways that
//! desynchronize a connection pool. The client gets a sane response or a 502, and a
//! connection whose response was faulty is never used for another request.
//!
//! Both tests collect every failing case and fail once, with the whole list.
mod support;

use futures_util::StreamExt;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout_at};

/// How long one exchange may take, from its first write to its last read.
const EXCHANGE: Duration = Duration::from_secs(3);

// ---- Strict HTTP/1.1 framing (RFC 9112), for what reaches a backend and a client ----

/// A message parsed strictly, with its body decoded.
#[derive(Debug)]
struct Msg {
    /// The request's method ("" for a response).
    method: String,
    /// The request's target ("" for a response).
    target: String,
    /// The response's status (0 for a request).
    status: u16,
    /// The content, chunked coding removed.
    body: Vec<u8>,
    /// Bytes the whole message took.
    len: usize,
}

/// How a message's body is delimited.
enum Framing {
    None,
    Length(usize),
    Chunked,
    /// A response read until the connection closes.
    Close,
}

/// A request that does not parse. `method` is set when only its framing is broken.
#[derive(Debug)]
struct Bad {
    why: String,
    method: Option<String>,
}

fn bad(why: impl Into<String>) -> Bad {
    Bad {
        why: why.into(),
        method: None,
    }
}

/// Every field value named `name`.
fn values<'a>(fields: &'a [(String, Vec<u8>)], name: &str) -> Vec<&'a [u8]> {
    fields
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_slice())
        .collect()
}

fn trim_ows(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

/// The coding names of Transfer-Encoding values, lower case, parameters dropped.
fn codings(values: &[&[u8]]) -> Vec<String> {
    values
        .iter()
        .flat_map(|v| v.split(|b| *b == b','))
        .map(trim_ows)
        .filter(|c| !c.is_empty())
        .map(|c| {
            let name = c.split(|b| *b == b';').next().unwrap_or_default();
            String::from_utf8_lossy(trim_ows(name)).to_ascii_lowercase()
        })
        .collect()
}

/// Transfer-Encoding whose final coding is chunked, once.
fn chunked_last(values: &[&[u8]]) -> Result<bool, String> {
    let c = codings(values);
    match c.iter().position(|c| c == "chunked") {
        Some(i) if i + 1 == c.len() => Ok(true),
        Some(_) => Err(format!("chunked is not the final coding once: {c:?}")),
        None => Ok(false),
    }
}

/// One Content-Length field, 1*DIGIT.
fn one_length(values: &[&[u8]]) -> Result<Option<usize>, String> {
    match values {
        [] => Ok(None),
        [v] => {
            let v = trim_ows(v);
            if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
                return Err(format!("Content-Length {:?}", v.escape_ascii().to_string()));
            }
            Ok(Some(String::from_utf8_lossy(v).parse().expect("digits")))
        }
        _ => Err(format!("{} Content-Length fields", values.len())),
    }
}

/// A request's framing: one of Transfer-Encoding (chunked last) or Content-Length, or none.
fn request_framing(fields: &[(String, Vec<u8>)]) -> Result<Framing, String> {
    let te = values(fields, "transfer-encoding");
    let cl = values(fields, "content-length");
    if !te.is_empty() && !cl.is_empty() {
        return Err("both Transfer-Encoding and Content-Length".into());
    }
    if !te.is_empty() {
        return match chunked_last(&te)? {
            true => Ok(Framing::Chunked),
            false => Err(format!(
                "Transfer-Encoding without chunked: {:?}",
                codings(&te)
            )),
        };
    }
    Ok(one_length(&cl)?.map_or(Framing::None, Framing::Length))
}

/// A response's framing, for a request that was `head` or not.
fn response_framing(
    status: u16,
    head: bool,
    fields: &[(String, Vec<u8>)],
) -> Result<Framing, String> {
    let te = values(fields, "transfer-encoding");
    let cl = values(fields, "content-length");
    if (100..200).contains(&status) || status == 204 {
        // RFC 9110 §8.6, RFC 9112 §6.1: a sender MUST NOT send either on these.
        if !te.is_empty() || !cl.is_empty() {
            return Err(format!(
                "a {status} with Content-Length or Transfer-Encoding"
            ));
        }
        return Ok(Framing::None);
    }
    if !te.is_empty() && !cl.is_empty() {
        return Err("both Transfer-Encoding and Content-Length".into());
    }
    let framing = if !te.is_empty() {
        match chunked_last(&te)? {
            true => Framing::Chunked,
            false => Framing::Close,
        }
    } else {
        one_length(&cl)?.map_or(Framing::Close, Framing::Length)
    };
    Ok(if head || status == 304 {
        Framing::None
    } else {
        framing
    })
}

/// The next line from `from`: (end of its content, start of the next line). CRLF only.
fn line(buf: &[u8], from: usize) -> Result<Option<(usize, usize)>, String> {
    for i in from..buf.len() {
        match buf[i] {
            b'\r' if i + 1 == buf.len() => return Ok(None),
            b'\r' if buf[i + 1] == b'\n' => return Ok(Some((i, i + 2))),
            b'\r' => return Err("CR without LF".into()),
            b'\n' => return Err("LF without CR".into()),
            _ if i - from > 8192 => return Err("a line of more than 8 KiB".into()),
            _ => {}
        }
    }
    Ok(None)
}

/// A chunked body at the start of `buf`: (content, bytes taken), or `None` if incomplete.
fn dechunk(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        let Some((end, next)) = line(buf, pos).map_err(|e| format!("chunk size line: {e}"))? else {
            return Ok(None);
        };
        let l = &buf[pos..end];
        let digits = l.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if digits == 0 || digits > 16 {
            return Err(format!("chunk size {:?}", l.escape_ascii().to_string()));
        }
        let ext = trim_ows(&l[digits..]);
        if !ext.is_empty()
            && (ext[0] != b';' || ext.iter().any(|b| b.is_ascii_control() && *b != b'\t'))
        {
            return Err(format!(
                "chunk size line {:?}",
                l.escape_ascii().to_string()
            ));
        }
        let size = u64::from_str_radix(&String::from_utf8_lossy(&l[..digits]), 16).expect("hex");
        pos = next;
        if size == 0 {
            // Trailer fields, then the empty line.
            loop {
                let Some((end, next)) = line(buf, pos).map_err(|e| format!("trailer: {e}"))? else {
                    return Ok(None);
                };
                if end == pos {
                    return Ok(Some((body, next)));
                }
                let f = &buf[pos..end];
                let name = f.split(|b| *b == b':').next().unwrap_or_default();
                if name.is_empty() || name.len() == f.len() || !name.iter().all(is_tchar) {
                    return Err(format!("trailer {:?}", f.escape_ascii().to_string()));
                }
                pos = next;
            }
        }
        if size > (buf.len() - pos) as u64 {
            return Ok(None);
        }
        let size = size as usize;
        if buf.len() < pos + size + 2 {
            return Ok(None);
        }
        if &buf[pos + size..pos + size + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".into());
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        pos += size + 2;
    }
}

fn is_tchar(b: &u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b)
}

/// Every LF in a head ends a CRLF, and every CR starts one (httparse takes a bare LF).
fn crlf_only(head: &[u8]) -> Result<(), String> {
    for (i, b) in head.iter().enumerate() {
        match b {
            b'\n' if i == 0 || head[i - 1] != b'\r' => {
                return Err("LF without CR in the head".into());
            }
            b'\r' if head.get(i + 1) != Some(&b'\n') => {
                return Err("CR without LF in the head".into());
            }
            _ => {}
        }
    }
    Ok(())
}

fn fields_of(headers: &[httparse::Header]) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
        .collect()
}

/// The body after a head of `at` bytes, framed by `framing`; `eof` once nothing more comes.
fn body(
    buf: &[u8],
    at: usize,
    framing: Framing,
    eof: bool,
) -> Result<Option<(Vec<u8>, usize)>, String> {
    let rest = &buf[at..];
    Ok(match framing {
        Framing::None => Some((Vec::new(), at)),
        Framing::Length(n) if rest.len() >= n => Some((rest[..n].to_vec(), at + n)),
        Framing::Length(_) => None,
        Framing::Chunked => dechunk(rest)?.map(|(b, n)| (b, at + n)),
        Framing::Close if eof => Some((rest.to_vec(), buf.len())),
        Framing::Close => None,
    })
}

/// The request at the start of `buf`, or `None` while it is incomplete.
fn parse_request(buf: &[u8]) -> Result<Option<Msg>, Bad> {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut r = httparse::Request::new(&mut headers);
    let at = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(bad(format!("head does not parse: {e}"))),
    };
    crlf_only(&buf[..at]).map_err(bad)?;
    let method = r.method.expect("complete").to_string();
    let target = r.path.expect("complete").to_string();
    let fields = fields_of(r.headers);
    let framed = |why| Bad {
        why,
        method: Some(method.clone()),
    };
    let framing = request_framing(&fields).map_err(framed)?;
    let Some((body, len)) = body(buf, at, framing, false).map_err(framed)? else {
        return Ok(None);
    };
    Ok(Some(Msg {
        method,
        target,
        status: 0,
        body,
        len,
    }))
}

/// The response at the start of `buf` to a request that was `head` or not.
fn parse_response(buf: &[u8], head: bool, eof: bool) -> Result<Option<Msg>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut r = httparse::Response::new(&mut headers);
    let at = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("head does not parse: {e}")),
    };
    crlf_only(&buf[..at])?;
    let status = r.code.expect("complete");
    let fields = fields_of(r.headers);
    let framing = response_framing(status, head, &fields)?;
    let Some((body, len)) = body(buf, at, framing, eof)? else {
        return Ok(None);
    };
    Ok(Some(Msg {
        method: String::new(),
        target: String::new(),
        status,
        body,
        len,
    }))
}

/// Bytes as escaped ASCII, cut at `max` characters.
fn show(b: &[u8], max: usize) -> String {
    let s = b.escape_ascii().to_string();
    if s.len() <= max {
        format!("\"{s}\"")
    } else {
        format!("\"{}\"... ({} bytes)", &s[..max], b.len())
    }
}

// ---- A client that reads responses strictly ----

/// What came next on a client connection.
enum Next {
    Msg(Msg),
    /// Closed with no byte of a response.
    Eof,
    /// Reset with no byte of a response.
    Reset,
    /// Closed inside a response.
    Cut,
    /// Bytes that are no response.
    Bad(String),
    /// Nothing complete by the deadline.
    Timeout,
}

struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
    pos: usize,
    eof: bool,
    reset: bool,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        Conn {
            s: TcpStream::connect(addr)
                .await
                .expect("connect to the proxy"),
            buf: Vec::new(),
            pos: 0,
            eof: false,
            reset: false,
        }
    }

    /// Write `bytes`; false if the proxy closed first.
    async fn send(&mut self, bytes: &[u8], until: Instant) -> bool {
        matches!(timeout_at(until, self.s.write_all(bytes)).await, Ok(Ok(())))
    }

    /// The next final response (1xx skipped, but a 101 is final), to a `head` request or not.
    async fn next(&mut self, head: bool, until: Instant) -> Next {
        loop {
            match parse_response(&self.buf[self.pos..], head, self.eof) {
                Err(e) => return Next::Bad(e),
                Ok(Some(m)) => {
                    self.pos += m.len;
                    if (100..200).contains(&m.status) && m.status != 101 {
                        continue;
                    }
                    return Next::Msg(m);
                }
                Ok(None) if self.eof && self.pos == self.buf.len() && self.reset => {
                    return Next::Reset;
                }
                Ok(None) if self.eof && self.pos == self.buf.len() => return Next::Eof,
                Ok(None) if self.eof => return Next::Cut,
                Ok(None) => {}
            }
            let mut chunk = [0u8; 16 * 1024];
            match timeout_at(until, self.s.read(&mut chunk)).await {
                Err(_) => return Next::Timeout,
                Ok(Ok(0)) => self.eof = true,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(Err(_)) => {
                    self.eof = true;
                    self.reset = true;
                }
            }
        }
    }
}

/// A client-side outcome in words.
fn tell(next: &Next) -> String {
    match next {
        Next::Msg(m) => format!("{} with body {}", m.status, show(&m.body, 60)),
        Next::Eof => "the connection closed with no response".into(),
        Next::Reset => "the connection reset with no response".into(),
        Next::Cut => "the connection closed inside a response".into(),
        Next::Bad(e) => format!("bytes that are no response ({e})"),
        Next::Timeout => format!("no complete response within {EXCHANGE:?}"),
    }
}

// ---- A backend that records every byte it receives ----

/// The bytes one connection has received so far.
type Received = Arc<Mutex<Vec<u8>>>;

/// A backend that stores the bytes of each connection, and answers each request it can
/// parse (a head whose framing it cannot follow: that one, then no more) with 200 and a
/// fixed body. It keeps reading until the peer closes.
struct Recorder {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Recorder {
    async fn start(body: &'static str) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("bound");
        let conns = Arc::new(Mutex::new(Vec::new()));
        let c = conns.clone();
        let task = tokio::spawn(async move {
            // Aborting this task drops the set, which aborts every connection's task.
            let mut set = tokio::task::JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                while set.try_join_next().is_some() {}
                let seen = Arc::new(Mutex::new(Vec::new()));
                c.lock().unwrap().push(seen.clone());
                set.spawn(record(tcp, seen, body));
            }
        });
        Recorder { addr, conns, task }
    }

    /// The bytes received so far, per connection.
    fn received(&self) -> Vec<Vec<u8>> {
        let conns = self.conns.lock().unwrap();
        conns.iter().map(|c| c.lock().unwrap().clone()).collect()
    }
}

async fn record(mut tcp: TcpStream, seen: Received, body: &'static str) {
    let mut buf = Vec::new();
    let mut pos = 0;
    let mut answering = true;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        seen.lock().unwrap().extend_from_slice(&chunk[..n]);
        while answering {
            let method = match parse_request(&buf[pos..]) {
                Ok(None) => break,
                Ok(Some(m)) => {
                    pos += m.len;
                    m.method
                }
                Err(Bad {
                    method: Some(m), ..
                }) => {
                    answering = false;
                    m
                }
                Err(_) => {
                    answering = false;
                    break;
                }
            };
            let mut resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
            if method != "HEAD" {
                resp.push_str(body);
            }
            if tcp.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
        }
    }
}

/// What a backend holds: the complete requests, and what follows them on each connection.
struct View {
    requests: Vec<Msg>,
    /// Bytes after the last complete request of a connection: incomplete or invalid.
    tails: Vec<String>,
    bytes: usize,
}

/// Parse each connection's bytes into requests, strictly.
fn view(received: &[Vec<u8>]) -> View {
    let mut v = View {
        requests: Vec::new(),
        tails: Vec::new(),
        bytes: received.iter().map(Vec::len).sum(),
    };
    for (i, buf) in received.iter().enumerate() {
        let mut pos = 0;
        while pos < buf.len() {
            match parse_request(&buf[pos..]) {
                Ok(Some(m)) => {
                    pos += m.len;
                    v.requests.push(m);
                }
                Ok(None) => {
                    v.tails.push(format!(
                        "connection {i}: an incomplete request {}",
                        show(&buf[pos..], 160)
                    ));
                    break;
                }
                Err(b) => {
                    v.tails.push(format!(
                        "connection {i}: {} in {}",
                        b.why,
                        show(&buf[pos..], 160)
                    ));
                    break;
                }
            }
        }
    }
    v
}

/// A backend's view in words.
fn tell_backend(v: &View) -> String {
    if v.bytes == 0 {
        return "nothing".into();
    }
    let mut s = format!(
        "{} bytes, {} complete request(s)",
        v.bytes,
        v.requests.len()
    );
    for r in &v.requests {
        let _ = write!(
            s,
            "; {} {} with {} body bytes",
            r.method,
            show(r.target.as_bytes(), 60),
            r.body.len()
        );
    }
    for t in &v.tails {
        let _ = write!(s, "; then {t}");
    }
    s
}

// ---- The corpus ----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tier {
    Compliant,
    Acceptable,
    Ambiguous,
    Severe,
}

struct Case {
    /// `file.yaml#index`
    id: String,
    name: String,
    tier: Tier,
    method: Vec<u8>,
    uri: Vec<u8>,
    version: Vec<u8>,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The crate's own unescaping (`unescape_value` in its request_analyzer.rs), applied to
/// every string after YAML's: `\xHH`, `\b`, `\f`, `\n`, `\r`, `\t`, and `\c` for `c`.
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        out.push(match chars.next() {
            Some('x') => {
                let hex: String = chars.by_ref().take(2).collect();
                char::from(u8::from_str_radix(&hex, 16).expect("a \\x escape takes two hex digits"))
            }
            Some('b') => '\x08',
            Some('f') => '\x0c',
            Some('n') => '\n',
            Some('r') => '\r',
            Some('t') => '\t',
            Some(c) => c,
            None => panic!("a backslash ends {s:?}"),
        });
    }
    out
}

/// A character up to U+00FF is that byte (the cases write bytes as `\xHH`); the rest UTF-8.
fn octets(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for c in s.chars() {
        match u8::try_from(c) {
            Ok(b) => out.push(b),
            Err(_) => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    out
}

/// A YAML scalar as the crate's harness reads it: a string unescaped, a number in digits.
fn scalar(v: &serde_yaml::Value, what: &str) -> Vec<u8> {
    match v {
        serde_yaml::Value::String(s) => octets(&unescape(s)),
        serde_yaml::Value::Number(n) => n.to_string().into_bytes(),
        other => panic!("corpus: {what} is {other:?}"),
    }
}

/// Every case of every vendored file, files in name order.
fn corpus() -> Vec<Case> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/http_desync_guardian");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("the vendored corpus")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut cases = Vec::new();
    for f in files {
        let file = f
            .file_name()
            .expect("a file")
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&f).expect("readable");
        let list: Vec<serde_yaml::Value> =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        for (i, c) in list.iter().enumerate() {
            let id = format!("{file}#{i}");
            let tier = match c["expected"]["tier"].as_str() {
                Some("Compliant") => Tier::Compliant,
                Some("Acceptable") => Tier::Acceptable,
                Some("Ambiguous") => Tier::Ambiguous,
                Some("Severe") => Tier::Severe,
                other => panic!("{id}: tier {other:?}"),
            };
            let headers = c["headers"]
                .as_sequence()
                .map(|hs| {
                    hs.iter()
                        .map(|h| (scalar(&h["name"], &id), scalar(&h["value"], &id)))
                        .collect()
                })
                .unwrap_or_default();
            cases.push(Case {
                name: c["name"].as_str().expect("a name").to_string(),
                tier,
                method: scalar(&c["method"], &id),
                uri: scalar(&c["uri"], &id),
                version: scalar(&c["version"], &id),
                headers,
                id,
            });
        }
    }
    cases
}

/// A case on the wire.
struct Wire {
    bytes: Vec<u8>,
    /// The body's content, as the client's framing means it.
    payload: Vec<u8>,
    /// The strict reading of `bytes` is one request carrying `payload`, nothing more.
    clean: bool,
}

/// A request a backend must never see: what a misread body turns into.
fn smuggled(host: &str) -> String {
    format!("GET /smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n")
}

/// `len` bytes of body: at each offset in `at` (ascending, the first 0) a smuggled request
/// if it fits before the next, padded with `x`.
fn bait(host: &str, len: usize, at: &[usize]) -> Vec<u8> {
    let s = smuggled(host);
    let mut out = Vec::with_capacity(len);
    for (i, &start) in at.iter().enumerate() {
        let end = at.get(i + 1).copied().unwrap_or(len);
        if end - start >= s.len() {
            out.extend_from_slice(s.as_bytes());
        }
        out.resize(end, b'x');
    }
    out
}

/// The bytes of `case` for pool host `host`.
///
/// The head is built as the crate's harness builds it, plus a `Host` field so the request
/// can reach the case's own pool: as the first field line, or the last where the case's
/// first field line starts with whitespace (what such a case is about), and none where the
/// case has a Host field. The cases carry no body; the one sent follows the head's framing
/// as named exactly (RFC 9112 §6.3, case-insensitive names): chunked when Transfer-Encoding
/// ends in chunked, else the largest Content-Length value. It is bait: a smuggled request at
/// its start and at every other Content-Length offset (inside the chunk data when both are
/// given), so that a proxy reading a different length forwards a request nobody sent.
fn wire(case: &Case, host: &str) -> Wire {
    let own_host = case
        .headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case(b"host"));
    let ws_first = case
        .headers
        .first()
        .is_some_and(|(n, _)| matches!(n.first(), Some(b' ' | b'\t')));
    let host_line = format!("Host: {host}\r\n");
    let mut b = [
        &case.method[..],
        b" ",
        &case.uri,
        b" ",
        &case.version,
        b"\r\n",
    ]
    .concat();
    if !own_host && !ws_first {
        b.extend_from_slice(host_line.as_bytes());
    }
    for (n, v) in &case.headers {
        b.extend_from_slice(&[&n[..], b": ", v, b"\r\n"].concat());
    }
    if !own_host && ws_first {
        b.extend_from_slice(host_line.as_bytes());
    }
    b.extend_from_slice(b"\r\n");

    let named = |name: &str| -> Vec<&[u8]> {
        case.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v.as_slice())
            .collect()
    };
    let mut lengths: Vec<usize> = named("content-length")
        .iter()
        .flat_map(|v| v.split(|b| *b == b','))
        .map(trim_ows)
        .filter(|v| !v.is_empty() && v.len() <= 18 && v.iter().all(u8::is_ascii_digit))
        .map(|v| String::from_utf8_lossy(v).parse().expect("digits"))
        .collect();
    lengths.sort_unstable();
    lengths.dedup();
    let chunked = codings(&named("transfer-encoding"))
        .last()
        .is_some_and(|c| c == "chunked");
    let payload = if chunked {
        let s = smuggled(host).len();
        let len = s + lengths.last().copied().unwrap_or(0);
        let size_line = format!("{len:x}\r\n");
        let mut at = vec![0];
        at.extend(
            lengths
                .iter()
                .filter(|&&l| l > size_line.len())
                .map(|l| l - size_line.len()),
        );
        let data = bait(host, len, &at);
        b.extend_from_slice(size_line.as_bytes());
        b.extend_from_slice(&data);
        b.extend_from_slice(b"\r\n0\r\n\r\n");
        data
    } else if let Some(&len) = lengths.last() {
        let mut at = vec![0];
        at.extend(lengths.iter().copied().filter(|&l| l > 0 && l < len));
        let data = bait(host, len, &at);
        b.extend_from_slice(&data);
        data
    } else {
        Vec::new()
    };
    let clean = matches!(parse_request(&b), Ok(Some(m)) if m.len == b.len() && m.body == payload);
    Wire {
        bytes: b,
        payload,
        clean,
    }
}

/// Sent on a case's connection after its first response, when the connection stays open:
/// its answer (body `sentinel`) marks the end of what the proxy made of the case's bytes.
const SENTINEL: &[u8] =
    b"GET /sentinel HTTP/1.1\r\nHost: sentinel.corpus\r\nConnection: close\r\n\r\n";

/// What the client saw of one case.
#[derive(Default)]
struct Replay {
    /// Status and body of each response before the sentinel's.
    responses: Vec<(u16, Vec<u8>)>,
    /// How the connection ended, in words.
    end: String,
    /// The proxy closed (or reset) the connection.
    closed: bool,
    /// The sentinel was answered.
    sentinel: bool,
}

/// Write a case's bytes on a new connection and read every response, to the close or the
/// deadline. Unless the case is Severe, the sentinel follows the first response.
async fn replay(proxy: SocketAddr, bytes: &[u8], head: bool, severe: bool) -> Replay {
    let until = Instant::now() + EXCHANGE;
    let mut c = Conn::open(proxy).await;
    let mut r = Replay::default();
    // The proxy may refuse and close before it has read everything: not an error here.
    c.send(bytes, until).await;
    let mut sent_sentinel = false;
    loop {
        let first = r.responses.is_empty() && !r.sentinel;
        match c.next(first && head, until).await {
            Next::Msg(m) if sent_sentinel && m.body == b"sentinel" => r.sentinel = true,
            Next::Msg(m) => r.responses.push((m.status, m.body)),
            Next::Eof | Next::Reset => {
                r.closed = true;
                r.end = if c.reset { "reset" } else { "closed" }.into();
                break;
            }
            Next::Timeout => {
                r.end = format!("left open ({EXCHANGE:?} on)");
                break;
            }
            other => {
                r.end = format!("ended in {}", tell(&other));
                break;
            }
        }
        if !severe && !sent_sentinel && !c.eof {
            sent_sentinel = c.send(SENTINEL, until).await;
        }
    }
    r
}

/// A replay in words.
fn tell_client(r: &Replay) -> String {
    let statuses: Vec<String> = r
        .responses
        .iter()
        .map(|(s, b)| format!("{s} {}", show(b, 40)))
        .collect();
    let mut s = if statuses.is_empty() {
        "no response".to_string()
    } else {
        statuses.join(", then ")
    };
    if r.sentinel {
        s.push_str(", then the sentinel's answer");
    }
    let _ = write!(s, "; connection {}", r.end);
    s
}

/// A refusal: a 4xx, a 505 for a version other than 1.0 and 1.1, or a 501 for a request
/// with a transfer coding the proxy does not decode (RFC 9112 §6.1; what nginx answers).
fn refused(status: u16, case: &Case) -> bool {
    (400..500).contains(&status)
        || (status == 505 && case.version != b"HTTP/1.1" && case.version != b"HTTP/1.0")
        || (status == 501 && has_coding_other_than_chunked(case))
}

/// Whether a case's `Transfer-Encoding` names a registered coding other than chunked.
fn has_coding_other_than_chunked(case: &Case) -> bool {
    case.headers
        .iter()
        .filter(|(n, _)| n.trim_ascii().eq_ignore_ascii_case(b"transfer-encoding"))
        .flat_map(|(_, v)| v.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .any(|t| {
            [
                &b"gzip"[..],
                b"x-gzip",
                b"deflate",
                b"compress",
                b"x-compress",
            ]
            .iter()
            .any(|c| t.eq_ignore_ascii_case(c))
        })
}

/// Why `case` failed, if it did.
fn judge(case: &Case, w: &Wire, r: &Replay, v: &View) -> Option<String> {
    let first = r.responses.first().map(|(s, _)| *s);
    if case.tier == Tier::Severe {
        return match first {
            Some(s) if !(400..500).contains(&s) => Some(format!("Severe, answered {s}")),
            None => Some("Severe, and no response".into()),
            Some(_) if r.responses.len() > 1 => Some("Severe, and more than one response".into()),
            Some(_) if !r.closed => Some("Severe, and the connection was not closed".into()),
            Some(_) if v.bytes > 0 => Some("Severe, and bytes reached the backend".into()),
            Some(_) => None,
        };
    }
    let method = String::from_utf8_lossy(&case.method);
    // The body is checked where the framing is plain and the crate calls the request fine.
    let exact = w.clean && matches!(case.tier, Tier::Compliant | Tier::Acceptable);
    match first {
        None => Some("no response".into()),
        Some(s) if refused(s, case) => {
            if !v.requests.is_empty() {
                Some(format!(
                    "refused with {s}, yet a complete request reached the backend"
                ))
            } else if r.responses.iter().any(|(s, _)| !refused(*s, case)) {
                Some("refused, then answered otherwise".into())
            } else {
                None
            }
        }
        Some(200) => {
            if v.requests.len() != 1 {
                Some(format!(
                    "the backend got {} complete requests, not 1",
                    v.requests.len()
                ))
            } else if !v.tails.is_empty() {
                Some("the backend got more bytes after the request".into())
            } else if v.requests[0].method != method {
                Some(format!("the backend got method {}", v.requests[0].method))
            } else if exact && v.requests[0].body != w.payload {
                Some(format!(
                    "the backend got a body of {} bytes, not the {} sent",
                    v.requests[0].body.len(),
                    w.payload.len()
                ))
            } else if exact && (r.responses.len() != 1 || !r.sentinel) {
                Some("the proxy did not read the case as one request".into())
            } else {
                None
            }
        }
        Some(s) => Some(format!("answered {s}")),
    }
}

/// `n` pools `c0`.. routed by Host `cN.corpus`, each with a backend `{cN}`; the sentinel's
/// pool; and a catch-all pool `{stray}` for requests naming no case.
fn corpus_config(n: usize) -> String {
    let mut s =
        String::from("listeners: [{name: web, bind: \"{listen}\"}]\naccess_log: off\npools:\n");
    let pool = "retries: 0, timeouts: {connect: 500ms, response: 1s}";
    for name in (0..n)
        .map(|i| format!("c{i}"))
        .chain(["sentinel".into(), "stray".into()])
    {
        let _ = writeln!(
            s,
            "  {name}: {{{pool}, backends: [{{addr: \"{{{name}}}\"}}]}}"
        );
    }
    s.push_str("routes:\n");
    for i in 0..n {
        let _ = writeln!(
            s,
            "  - {{name: c{i}, match: {{host: c{i}.corpus}}, pool: c{i}}}"
        );
    }
    s.push_str("  - {name: sentinel, match: {host: sentinel.corpus}, pool: sentinel}\n");
    s.push_str("  - {name: stray, pool: stray}\n");
    s
}

#[tokio::test]
async fn every_corpus_request_is_refused_or_reaches_its_backend_as_that_one_request() {
    let cases = corpus();
    assert_eq!(cases.len(), 159, "the corpus as vendored");
    let mut backends = Vec::new();
    for _ in &cases {
        backends.push(Recorder::start("ok").await);
    }
    let sentinel = Recorder::start("sentinel").await;
    let stray = Recorder::start("stray").await;
    let mut names: Vec<(String, SocketAddr)> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| (format!("c{i}"), b.addr))
        .collect();
    names.push(("sentinel".into(), sentinel.addr));
    names.push(("stray".into(), stray.addr));
    let addrs: Vec<(&str, SocketAddr)> = names.iter().map(|(n, a)| (n.as_str(), *a)).collect();
    let p = Proxy::start(&corpus_config(cases.len()), &addrs).await;

    let wires: Vec<Wire> = cases
        .iter()
        .enumerate()
        .map(|(i, c)| wire(c, &format!("c{i}.corpus")))
        .collect();
    let replays: Vec<Replay> = futures_util::stream::iter(cases.iter().zip(&wires))
        .map(|(c, w)| {
            replay(
                p.addr,
                &w.bytes,
                c.method == b"HEAD",
                c.tier == Tier::Severe,
            )
        })
        .buffered(8)
        .collect()
        .await;

    // Judged once every case has run, so that late bytes count too. HOSTILE_VERBOSE=1
    // prints every case, passed or not.
    let verbose = std::env::var_os("HOSTILE_VERBOSE").is_some();
    let mut failures = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let v = view(&backends[i].received());
        let why = judge(c, &wires[i], &replays[i], &v);
        let entry = format!(
            "{} [{:?}] {:?}: {}\n    sent: {}\n    client got: {}\n    backend got: {}",
            c.id,
            c.tier,
            c.name,
            why.as_deref().unwrap_or("passed"),
            show(&wires[i].bytes, 200),
            tell_client(&replays[i]),
            tell_backend(&v),
        );
        if verbose {
            eprintln!("{entry}\n");
        }
        if why.is_some() {
            failures.push(entry);
        }
    }
    let v = view(&stray.received());
    if v.bytes > 0 {
        failures.push(format!(
            "requests reached no case's pool: {}",
            tell_backend(&v)
        ));
    }

    let mut c = Conn::open(p.addr).await;
    let until = Instant::now() + EXCHANGE;
    c.send(
        b"GET /after HTTP/1.1\r\nHost: sentinel.corpus\r\n\r\n",
        until,
    )
    .await;
    match c.next(false, until).await {
        Next::Msg(m) if m.status == 200 && m.body == b"sentinel" => {}
        other => failures.push(format!("a normal GET after the corpus: {}", tell(&other))),
    }

    let tiers = [
        Tier::Compliant,
        Tier::Acceptable,
        Tier::Ambiguous,
        Tier::Severe,
    ]
    .map(|t| format!("{t:?} {}", cases.iter().filter(|c| c.tier == t).count()));
    assert!(
        failures.is_empty(),
        "{} failures over the {} corpus cases ({}):\n\n{}",
        failures.len(),
        cases.len(),
        tiers.join(", "),
        failures.join("\n\n")
    );
}

// ---- Responses that break framing ----

const OK_HELLO: &str = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

/// A first response from a backend, and what the client may make of it.
struct Scripted {
    name: &'static str,
    reply: &'static str,
    /// The backend closes after it.
    close: bool,
    /// The request is HEAD (GET or POST otherwise).
    head: bool,
    /// Broken in some way: its connection must not carry another request.
    faulty: bool,
    /// Clean: its connection must carry the next request (the control case).
    reused: bool,
    /// Besides a 502: the status and body the client may get.
    fine: Option<(u16, &'static str)>,
    /// The client's response may break off (the head had passed before the fault).
    cut: bool,
}

const fn faulty(name: &'static str, reply: &'static str) -> Scripted {
    Scripted {
        name,
        reply,
        close: false,
        head: false,
        faulty: true,
        reused: false,
        fine: None,
        cut: false,
    }
}

const SCRIPTED: &[Scripted] = &[
    // Without it, a pool that never reuses anything would pass every check below.
    Scripted {
        faulty: false,
        reused: true,
        fine: Some((200, "hello")),
        ..faulty("a clean response (control)", OK_HELLO)
    },
    Scripted {
        fine: Some((200, "hello")),
        ..faulty(
            "Content-Length and Transfer-Encoding: chunked",
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        )
    },
    faulty(
        "two different Content-Length fields",
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    ),
    Scripted {
        fine: Some((200, "hello")),
        ..faulty(
            "two identical Content-Length fields",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        )
    },
    faulty(
        "Content-Length: 5, 6",
        "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!",
    ),
    Scripted {
        cut: true,
        ..faulty(
            "chunk size zz",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        )
    },
    Scripted {
        cut: true,
        ..faulty(
            "chunk size 0x5",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
        )
    },
    Scripted {
        cut: true,
        ..faulty(
            "chunk size of 20 hex digits (5 modulo 2^64)",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000005\r\nhello\r\n0\r\n\r\n",
        )
    },
    Scripted {
        cut: true,
        fine: Some((200, "hello")),
        ..faulty(
            "chunk size line ended by a bare LF",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
        )
    },
    Scripted {
        cut: true,
        close: true,
        ..faulty(
            "chunk size line with no line end, then close",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5",
        )
    },
    Scripted {
        fine: Some((204, "")),
        ..faulty(
            "a 204 with a body",
            "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello",
        )
    },
    Scripted {
        fine: Some((304, "")),
        ..faulty(
            "a 304 with a body",
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\nhello",
        )
    },
    Scripted {
        head: true,
        fine: Some((200, "")),
        ..faulty("a HEAD answered with a body", OK_HELLO)
    },
    // Found by fuzzing (fuzz/fuzz_targets/upstream_response.rs): no body, yet both framings.
    Scripted {
        head: true,
        fine: Some((200, "")),
        ..faulty(
            "a HEAD answered with both Content-Length and chunked",
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
    },
    Scripted {
        faulty: false,
        fine: Some((200, "hello")),
        ..faulty(
            "100 Continue before the response",
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        )
    },
    Scripted {
        faulty: false,
        fine: Some((200, "hello")),
        ..faulty(
            "100 Continue and 103 Early Hints before the response",
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        )
    },
    Scripted {
        fine: Some((200, "hello")),
        ..faulty(
            "a second response stuck behind the first",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!",
        )
    },
    faulty(
        "101 to a request that asked for no upgrade",
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: evil\r\n\r\nEVIL",
    ),
];

const SCRIPTED_CONFIG: &str = r#"
listeners: [{name: web, bind: "{listen}"}]
access_log: off
pools: {p: {timeouts: {connect: 500ms, response: 2s}, backends: [{addr: "{b}"}]}}
routes: [{name: all, pool: p}]
"#;

/// Why `case` failed for a request with a body or without, if it did.
async fn scripted(case: &'static Scripted, with_body: bool) -> Option<String> {
    let firsts = Arc::new(AtomicUsize::new(0));
    let seconds = Arc::new(Mutex::new(Vec::new()));
    let (f, s) = (firsts.clone(), seconds.clone());
    let b = RawBackend::start(move |n, head| {
        // A POST's body is not read, so the next head on its connection starts after it.
        if head.contains(" /second ") {
            // `n` is the request's number on its connection: 0 on a new one.
            s.lock().unwrap().push(n);
            return Reply::bytes("HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond");
        }
        f.fetch_add(1, Ordering::SeqCst);
        let reply = Reply::bytes(case.reply);
        if case.close {
            reply.then_close()
        } else {
            reply
        }
    })
    .await;
    let p = Proxy::start(SCRIPTED_CONFIG, &[("b", b.addr)]).await;
    let method = match (case.head, with_body) {
        (true, _) => "HEAD",
        (false, true) => "POST",
        (false, false) => "GET",
    };
    let body = if with_body {
        "Content-Length: 4\r\n\r\nping"
    } else {
        "\r\n"
    };
    let first_req = format!("{method} /first HTTP/1.1\r\nHost: hostile.test\r\n{body}");
    // The next request takes the same internal path as the first: bodiless requests and
    // requests with bodies use different upstream clients, with pools of their own.
    let next_req = if with_body {
        "POST /second HTTP/1.1\r\nHost: hostile.test\r\nContent-Length: 4\r\n\r\nping"
    } else {
        "GET /second HTTP/1.1\r\nHost: hostile.test\r\n\r\n"
    };
    let label = format!(
        "{} ({method}{})",
        case.name,
        if with_body { " with a body" } else { "" }
    );

    let until = Instant::now() + EXCHANGE;
    let mut c = Conn::open(p.addr).await;
    c.send(first_req.as_bytes(), until).await;
    let first = c.next(case.head, until).await;
    let got_first = format!("{}; bytes {}", tell(&first), show(&c.buf, 200));
    let conns_before = b.conns();

    // The second request goes on the same client connection when it is still open, and on
    // a new one when the proxy closed it (or closes it now).
    let until = Instant::now() + EXCHANGE;
    let mut second = Next::Eof;
    if matches!(&first, Next::Msg(m) if m.status != 101)
        && !c.eof
        && c.send(next_req.as_bytes(), until).await
    {
        second = c.next(false, until).await;
    }
    if matches!(second, Next::Eof | Next::Reset) {
        c = Conn::open(p.addr).await;
        c.send(next_req.as_bytes(), until).await;
        second = c.next(false, until).await;
    }
    let conns_after = b.conns();
    let seconds = seconds.lock().unwrap().clone();

    let mut why = Vec::new();
    let first_ok = match &first {
        Next::Msg(m) if m.status == 502 => true,
        Next::Msg(m) => case
            .fine
            .is_some_and(|(s, body)| m.status == s && m.body == body.as_bytes()),
        Next::Cut => case.cut,
        _ => false,
    };
    if !first_ok {
        let mut allowed = vec!["502".to_string()];
        allowed.extend(case.fine.map(|(s, b)| format!("{s} {b:?}")));
        if case.cut {
            allowed.push("a response broken off".into());
        }
        why.push(format!(
            "the client got {}, not {}",
            tell(&first),
            allowed.join(" or ")
        ));
    }
    if !matches!(&second, Next::Msg(m) if m.status == 200 && m.body == b"second") {
        why.push(format!("the next request got {}", tell(&second)));
    }
    if case.faulty && seconds.first().is_some_and(|n| *n > 0) {
        why.push(format!(
            "the next request went on the same backend connection (its request {} there; {conns_before} -> {conns_after} connections)",
            seconds[0]
        ));
    }
    if case.reused && seconds.first() != Some(&1) {
        why.push(format!(
            "the next request did not reuse the connection ({conns_before} -> {conns_after} connections): the reuse checks of this path say nothing"
        ));
    }
    let posts = firsts.load(Ordering::SeqCst);
    if method == "POST" && posts > 1 {
        why.push(format!("the POST reached the backend {posts} times"));
    }
    let entry = format!(
        "{label}: {}\n    backend wrote: {}\n    client got: {got_first}\n    next request: {} (backend connections {conns_before} -> {conns_after}, its request numbers {seconds:?})",
        if why.is_empty() {
            "passed".into()
        } else {
            why.join("; ")
        },
        show(case.reply.as_bytes(), 200),
        tell(&second),
    );
    if std::env::var_os("HOSTILE_VERBOSE").is_some() {
        eprintln!("{entry}\n");
    }
    (!why.is_empty()).then_some(entry)
}

#[tokio::test]
async fn a_response_that_breaks_framing_is_a_502_or_sane_and_its_connection_is_not_reused() {
    let runs = SCRIPTED.iter().flat_map(|c| [(c, false), (c, true)]);
    let total = runs.clone().count();
    let failures: Vec<String> = futures_util::stream::iter(runs)
        .map(|(c, with_body)| scripted(c, with_body))
        .buffered(4)
        .filter_map(|f| async move { f })
        .collect()
        .await;
    assert!(
        failures.is_empty(),
        "{} of {total} scripted responses failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
